"""Tables and plots from a tree of finished runs (``selfdistill report RUNS_DIR``).

For each (dataset, model) and method configuration: mean ± sample std over seeds of last-epoch test top-1,
test top-1 at the best-validation epoch, ECE and NLL; the paired gain over the baseline (same seeds) with a
paired t-test; seconds per epoch and images/s (medians over epochs), declared passes per step and the measured
step time relative to the baseline. Also a CSV of every run, test-accuracy curves, reliability diagrams and
accuracy against training cost (PNG).

Modules: :mod:`.runs` loads and labels runs, :mod:`.stats` holds the statistics, :mod:`.sections` the registry of a
group's markdown sections (built by :mod:`.table`, :mod:`.ladder`, :mod:`.cost`, :mod:`.breakdowns`,
:mod:`.generations`, :mod:`.plots` and :mod:`.diagnostics`), :mod:`.write` writes ``report.md`` and :mod:`.runs_csv`
``runs.csv``, :mod:`.readme` splices reports into a markdown file's generated blocks (results, headline).
"""

from .breakdowns import eval_model_lines, per_class_lines, self_supervised_lines, teacher_lines
from .diagnostics import diagnostics_lines
from .generations import generation_lines
from .ladder import ladder_lines
from .readme import (
    HEADLINE_END,
    HEADLINE_START,
    README_END,
    README_START,
    Headline,
    headline_sections,
    results_sections,
    update_headline,
    update_readme,
)
from .runs import Cell, Run, epoch_timing, load_runs, read_rows
from .sections import LABELS, Group, section
from .stats import fmt, fmt_gain, mean_std, paired, paired_p, step_ratio
from .table import fit_lines, group_table, machine_lines, paired_cells
from .write import write_report

__all__ = ["HEADLINE_END", "HEADLINE_START", "LABELS", "README_END", "README_START", "Cell", "Group", "Headline", "Run",
           "diagnostics_lines", "epoch_timing", "eval_model_lines", "fit_lines", "fmt", "fmt_gain", "generation_lines",
           "group_table", "headline_sections", "ladder_lines", "load_runs", "machine_lines", "mean_std", "paired",
           "paired_cells", "paired_p", "per_class_lines", "read_rows", "results_sections", "section",
           "self_supervised_lines", "step_ratio", "teacher_lines", "update_headline", "update_readme", "write_report"]
