"""Several benchmarks side by side: each method's paired gain over the baseline on each (``selfdistill report
--compare``), so that the effect of the regime (few or many classes, a small or a large model) is one table.

A benchmark is read from its run folder or from the ``runs.csv`` its report wrote (one row per run), so a
benchmark whose run folders are not kept can still be compared. A benchmark's labels can be renamed for the table
(``--relabel NAME OLD NEW``), e.g. when a method's defaults changed after that benchmark ran, so that one row holds
the same configuration on every benchmark.
"""

from __future__ import annotations

import csv
import re
import shlex
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from ..methods import METHODS
from .report.runs import load_runs
from .report.stats import fmt, fmt_gain, mean_std


@dataclass(frozen=True)
class Result:
    """One run's primary test metric (last epoch) in a (dataset, model) group."""

    group: tuple[str, str]
    label: str
    seed: int
    value: float
    metric: str


def supervised_label(label: str) -> bool:
    """Whether a report label (``name``, ``name(options)`` or ``name [overrides]``) names a supervised method; a
    self-supervised one (DINO) has no trained classifier, so its test top-1 is no gain or loss."""
    name = re.split(r"[ (\[]", label, maxsplit=1)[0]
    return name not in METHODS or METHODS.get(name).supervised


def load_results(source: str | Path) -> list[Result]:
    """The supervised runs of a benchmark: a folder of runs, or a report's ``runs.csv``."""
    source = Path(source)
    if not source.exists():
        raise ConfigError(f"{source} does not exist: name a folder of runs or a report's runs.csv")
    if source.is_file():
        with source.open(newline="") as fh:
            return [Result((r["dataset"], r["model"]), r["method"], int(r["seed"]),
                           float(r[f"test_{r['primary_metric']}_last"]), r["primary_metric"])
                    for r in csv.DictReader(fh) if supervised_label(r["method"])]
    return [Result(run.group, run.label, run.seed, run.metric("test", run.summary.primary), run.summary.primary)
            for run in load_runs(source) if run.summary.supervised]


def main_group(results: list[Result]) -> list[Result]:
    """The results of the benchmark's main (dataset, model) group: the one with the most runs."""
    groups: dict[tuple[str, str], list[Result]] = defaultdict(list)
    for r in results:
        groups[r.group].append(r)
    return max(groups.values(), key=len) if groups else []


Relabel = dict[str, dict[str, str]]
"""Per benchmark name, ``{old label: new label}``."""


def parse_relabel(items: list[list[str]], names: list[str]) -> Relabel:
    """``[NAME, OLD, NEW]`` triples → :data:`Relabel`; a name that is not one of the benchmarks is an error."""
    out: Relabel = defaultdict(dict)
    for name, old, new in items:
        if name not in names:
            raise ConfigError(f"--relabel {name} {old} {new}: no benchmark named {name!r} (have: {', '.join(names)})")
        out[name][old] = new
    return dict(out)


def check_relabel(name: str, rename: dict[str, str], labels: set[str]) -> None:
    """Refuse a rename of a label that benchmark ``name`` does not have (a typo would leave the table silently
    unchanged) and one onto a label it keeps (two configurations' runs would merge into one row)."""
    have = ", ".join(sorted(labels))
    for old, new in rename.items():
        if old not in labels:
            raise ConfigError(f"--relabel {name} {old} {new}: benchmark {name} has no label {old!r} (have: {have})")
        if new in labels and new not in rename:
            raise ConfigError(f"--relabel {name} {old} {new}: benchmark {name} already has a label {new!r}, whose "
                              "runs would merge with the renamed ones; choose another name or rename that label too")


def comparison_lines(benchmarks: dict[str, str | Path], baseline: str = "ce",
                     relabel: Relabel | None = None) -> list[str]:
    """A markdown table: one row per method label, one column per benchmark with the paired gain of the primary
    metric over ``baseline`` (mean ± std over the seeds both have, and their number); ``relabel`` renames a
    benchmark's labels first."""
    columns: dict[str, dict[str, dict[int, float]]] = {}
    heads = []
    for name, source in benchmarks.items():
        results = main_group(load_results(source))
        rename = (relabel or {}).get(name, {})
        check_relabel(name, rename, {r.label for r in results})
        by_label: dict[str, dict[int, float]] = defaultdict(dict)
        for r in results:
            by_label[rename.get(r.label, r.label)][r.seed] = r.value
        columns[name] = by_label
        dataset, model = results[0].group if results else ("?", "?")
        metric = results[0].metric if results else "?"
        heads.append(f"{name} ({dataset} / {model}, {metric})")
    labels = sorted({label for col in columns.values() for label in col}, key=lambda s: (s != baseline, s))
    lines = ["| method | " + " | ".join(f"Δ vs {baseline}: {h}" for h in heads) + " |",
             "|" + "---|" * (len(heads) + 1)]
    for label in labels:
        cells = []
        for col in columns.values():
            base, runs = col.get(baseline, {}), col.get(label, {})
            if not runs:
                cells.append("–")
            elif label == baseline:
                cells.append(f"{fmt(*mean_std(list(runs.values())))} (absolute, n={len(runs)})")
            else:
                diffs = [runs[s] - base[s] for s in sorted(set(runs) & set(base))]
                cells.append(fmt_gain(*mean_std(diffs), len(diffs)))
        lines.append(f"| `{label}` | " + " | ".join(cells) + " |")
    return lines


def write_comparison(benchmarks: dict[str, str | Path], out: str | Path, baseline: str = "ce",
                     relabel: Relabel | None = None) -> Path:
    """Write ``comparison.md`` for the named benchmarks (``name → run folder or runs.csv``); returns its path."""
    out = Path(out)
    renames = [arg for n, m in (relabel or {}).items() for old, new in m.items() for arg in ("--relabel", n, old, new)]
    command = shlex.join(["selfdistill", "report", "--compare", *(f"{n}={s}" for n, s in benchmarks.items()),
                          *renames, *(["--baseline", baseline] if baseline != "ce" else []), "--out", str(out)])
    lines = ["# Benchmarks side by side", "",
             f"Generated by `{command}`. Each cell is the paired",
             "gain of the benchmark's primary test metric (last epoch) over the baseline, mean ± std over the seeds",
             "both have, in each benchmark's main (dataset, model) group; the baseline's row holds its absolute value.",
             "Supervised methods only: a self-supervised one (DINO) trains no classifier (its reports have a table).",
             *(["A `--relabel` renames a benchmark's label before the rows are matched."] if renames else []), "",
             *comparison_lines(benchmarks, baseline, relabel)]
    out.mkdir(parents=True, exist_ok=True)  # after the benchmarks were read: a bad path leaves no folder
    path = out / "comparison.md"
    path.write_text("\n".join(lines) + "\n")
    return path
