"""Tables and plots from a tree of finished runs (``selfdistill report RUNS_DIR``).

For each (dataset, model) and method configuration: mean ± sample std over seeds of last-epoch test top-1,
test top-1 at the best-validation epoch, ECE and NLL; the paired gain over the baseline (same seeds) with a
Welch t-test; seconds per epoch and images/s (medians over epochs), declared passes per step and the measured
step time relative to the baseline. Also a CSV of every run, test-accuracy curves and reliability diagrams (PNG).
"""

from __future__ import annotations

import csv
import math
import shlex
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.summary import RunSummary
from .runner import method_label


@dataclass
class Run:
    """One finished run: its summary and per-epoch rows."""

    summary: RunSummary
    rows: list[dict[str, float]]
    label: str = ""
    group: tuple[str, str] = ("", "")
    timing: dict[str, float] = field(default_factory=dict)
    """``seconds_per_epoch`` and ``images_per_s`` from the per-epoch rows (see :func:`epoch_timing`); they take
    precedence over the summary's values."""

    @property
    def seed(self) -> int:
        return self.summary.seed

    @property
    def checkpoint(self) -> Path:
        """The checkpoint of the model the run exports: its ``last.pt``, or its last stage's (a born-again
        generation) for a staged run."""
        return self.summary.checkpoint()

    def metric(self, split: str, metric: str, at: str = "last") -> float:
        """``split``'s (``test`` or ``val``) value of ``metric`` at the last epoch (``at='last'``; validation values
        come from the last evaluated epoch's row) or at the best-validation epoch (``at='best'``)."""
        if at == "best":
            return self.summary.at_best_val(split, metric)
        if split == "test":
            return self.summary.test(metric)
        return next((r[f"{split}_{metric}"] for r in reversed(self.rows) if f"{split}_{metric}" in r), math.nan)

    @property
    def seconds_per_epoch(self) -> float:
        return self.timing.get("seconds_per_epoch", self.summary.seconds_per_epoch)

    @property
    def images_per_s(self) -> float:
        return self.timing.get("images_per_s", self.summary.images_per_s)


@dataclass
class Cell:
    """All seeds of one method configuration in one (dataset, model) group."""

    label: str
    runs: list[Run] = field(default_factory=list)

    def values(self, value: Callable[[Run], float]) -> list[float]:
        """``value`` of each run, by seed."""
        return [value(r) for r in sorted(self.runs, key=lambda r: r.seed)]


def _read_rows(run_dir: Path) -> list[dict[str, float]]:
    if not (run_dir / "metrics.csv").is_file():
        return []
    with (run_dir / "metrics.csv").open(newline="") as fh:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(fh)]


def epoch_timing(stages: list[list[dict[str, float]]]) -> dict[str, float]:
    """Seconds per epoch and images/s of a run from the per-epoch rows of each of its stages (one stage for an
    ordinary run; one per born-again generation): medians over epochs, so that an epoch slowed by a pause of the
    machine or by other work on it does not count; stages add their epoch times (images/s: the rate of passing
    every image through all stages). Empty when a stage has no timed rows."""
    seconds, rates = [], []
    for rows in stages:
        t = [r["train_time_s"] for r in rows if "train_time_s" in r]
        v = [r["images_per_s"] for r in rows if "images_per_s" in r]
        if not t or not v:
            return {}
        seconds.append(statistics.median(t))
        rates.append(statistics.median(v))
    if not seconds:
        return {}
    return {"seconds_per_epoch": sum(seconds), "images_per_s": 1.0 / sum(1.0 / r for r in rates)}


def load_runs(root: str | Path) -> list[Run]:
    """Every run under ``root`` that has a ``summary.json``. A run's stages (born-again generations inside it) are
    part of that run, not runs of their own, also while the run is unfinished: a directory holding a run's
    ``config.yaml`` or ``summary.json`` is a run."""
    runs = []
    root = Path(root)
    paths = sorted(root.rglob("summary.json"))
    run_dirs = {p.parent for p in paths}

    def is_run_dir(d: Path) -> bool:
        return d in run_dirs or (d / "config.yaml").is_file()

    for path in paths:
        if any(is_run_dir(d) for d in path.parent.parents if d == root or root in d.parents):
            continue
        summary = RunSummary.load(path)
        summary.relocate(path.parent)
        stages = [d for d in sorted(run_dirs) if d.parent == path.parent]
        rows = _read_rows(path.parent)
        cfg = summary.config
        label = method_label(cfg["method"], cfg.get("task", "classification"))
        timing = epoch_timing([_read_rows(d) for d in stages] if stages else [rows])
        runs.append(Run(summary, rows, label, (cfg["data"]["name"], cfg["model"]["name"]), timing))
    _label_settings(runs)
    return runs


# run-environment settings that do not change what a run measures
_NOT_A_SETTING = ("seed", "name", "out", "method.", "data.root", "data.cache_dir", "data.num_workers",
                  "train.threads", "train.progress", "train.tensorboard", "train.log_every", "train.grad_norm_every",
                  "train.checkpoint_every_steps", "train.stop_signals")


def _flat(node: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": repr(v)})
    return out


def _label_settings(runs: list[Run]) -> None:
    """Tell apart runs of one method whose other settings differ (e.g. a grid entry with ``train.epochs: 48``):
    a setting that every run of the (dataset, model) group records but not all with the same value is appended
    to the label of the runs that differ from its most common value, e.g. ``ce [train.epochs=48]``."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.group].append(run)
    for members in groups.values():
        flats = [_flat(r.summary.config) for r in members]
        shared = set.intersection(*(set(f) for f in flats)) if flats else set()
        suffix: dict[int, list[str]] = defaultdict(list)
        for key in sorted(k for k in shared if not k.startswith(_NOT_A_SETTING)):
            values = [f[key] for f in flats]
            if len(set(values)) > 1:
                common = max(set(values), key=lambda v: (values.count(v), -values.index(v)))
                for i, v in enumerate(values):
                    if v != common:
                        suffix[i].append(f"{key}={v}")
        for i, parts in suffix.items():
            members[i].label += f" [{', '.join(parts)}]"


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n−1); std is nan for one value."""
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else float("nan")


def fmt(mean: float, std: float, digits: int = 2, signed: bool = False) -> str:
    """``mean ± std`` (or ``mean`` when std is undefined, ``–`` when mean is); ``signed`` writes the mean's sign."""
    if math.isnan(mean):
        return "–"
    m = f"{mean:{'+' if signed else ''}.{digits}f}"
    return m if math.isnan(std) else f"{m} ± {std:.{digits}f}"


def fmt_gain(mean: float, std: float, n: int) -> str:
    """A paired gain: signed ``mean ± std (n=…)`` over ``n`` paired seeds, ``–`` without one."""
    return "–" if math.isnan(mean) else f"{fmt(mean, std, signed=True)} (n={n})"


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided Welch t-test p-value (nan with fewer than two values per side)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    from scipy import stats

    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def paired_gain(cell: Cell, base: Cell, value: Callable[[Run], float]) -> tuple[float, float, int]:
    """Mean ± std of per-seed differences ``cell − base`` of ``value`` over the seeds both have."""
    a = {r.seed: value(r) for r in cell.runs}
    b = {r.seed: value(r) for r in base.runs}
    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    m, s = mean_std(diffs)
    return m, s, len(diffs)


def _step_time(run: Run) -> float:
    return run.seconds_per_epoch / (run.summary.steps_per_epoch or math.nan)


def _environment(run: Run) -> str:
    env = run.summary.env
    return f"{env.get('device_name', '?')} · {env.get('platform', '?')}"


def step_ratio(cell: Cell, base: Cell) -> float:
    """Mean over the cell's runs of its time per step over the baseline's (mean over the baseline's runs of the same
    environment): a cost ratio that never divides one machine's time by another's. NaN when no run has one."""
    base_steps: dict[str, list[float]] = defaultdict(list)
    for run in base.runs:
        base_steps[_environment(run)].append(_step_time(run))
    ratios = [_step_time(run) / statistics.fmean(base_steps[_environment(run)])
              for run in cell.runs if _environment(run) in base_steps]
    return statistics.fmean(ratios) if ratios else math.nan


LABELS = {"top1": "top-1", "top5": "top-5", "nll": "NLL", "ece": "ECE %", "miou": "mIoU %", "pixel_acc": "pixel acc. %",
          "map": "mAP %", "ap50": "AP50 %", "ap75": "AP75 %"}


def task_metrics(cells: list[Cell]) -> list[str]:
    """The runs' metrics, the primary one first (summaries before tasks existed are classification)."""
    return cells[0].runs[0].summary.metrics


def group_table(cells: list[Cell], baseline: str, split: str = "test") -> list[str]:
    """Markdown table of one (dataset, model) group, on the ``test`` split (last epoch and at the best validation
    epoch) or on the ``val`` split (last epoch and the best epoch: what model and setting choices may read)."""
    main, *others = task_metrics(cells)
    others = [m for m in others if m != "top5"]

    def last(run: Run) -> float:
        return run.metric(split, main)

    base = next((c for c in cells if c.label == baseline), None)
    best_head = f"test {LABELS[main]} @ best val" if split == "test" else f"val {LABELS[main]} (best epoch)"
    head = ["method", "n", f"{split} {LABELS[main]} (last)", best_head,
            *(f"{LABELS[m]} (last)" for m in others), f"Δ {LABELS[main]} vs {baseline} (paired)", "p (Welch)",
            "s/epoch", "img/s", "passes/step", f"step time ×{baseline}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for cell in cells:
        values = cell.values(last)
        if base is not None and cell is not base:
            gain = fmt_gain(*paired_gain(cell, base, last))
            p = welch_p(values, base.values(last))
            p_text = "–" if math.isnan(p) else f"{p:.3f}"
        else:
            gain, p_text = "–", "–"
        ratio = step_ratio(cell, base) if base is not None else math.nan
        lines.append("| " + " | ".join([
            f"`{cell.label}`", str(len(cell.runs)), fmt(*mean_std(values)),
            fmt(*mean_std(cell.values(lambda r: r.metric(split, main, "best")))),
            *(fmt(*mean_std(cell.values(lambda r, m=m: r.metric(split, m))), 3 if m == "nll" else 2) for m in others),
            gain, p_text, f"{statistics.fmean(cell.values(lambda r: r.seconds_per_epoch)):.1f}",
            f"{statistics.fmean(cell.values(lambda r: r.images_per_s)):.0f}",
            f"{cell.runs[0].summary.passes_per_step:g}",
            "–" if math.isnan(ratio) else f"{ratio:.2f}",
        ]) + " |")
    return lines


def _plot_curves(cells: list[Cell], title: str, path: Path, split: str = "test") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = task_metrics(cells)[0]
    key = f"{split}_{main}"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cell in cells:
        curves = [[r[key] for r in run.rows if key in r] for run in cell.runs]
        length = min(len(c) for c in curves)
        if length == 0:
            continue
        epochs = [run_row["epoch"] for run_row in cell.runs[0].rows if key in run_row][:length]
        cols = list(zip(*[c[:length] for c in curves], strict=True))
        mean = [statistics.fmean(c) for c in cols]
        std = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in cols]
        ax.plot(epochs, mean, label=f"{cell.label} (n={len(cell.runs)})")
        ax.fill_between(epochs, [m - s for m, s in zip(mean, std, strict=True)],
                        [m + s for m, s in zip(mean, std, strict=True)], alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{split} {LABELS[main]}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# per-epoch training diagnostics plotted by :func:`_plot_diagnostics`: panel title and (column, line style) pairs;
# ``kd/ce`` is the ratio of the weighted distillation term to the CE term, ``gradnorm`` every term's gradient norm
DIAGNOSTICS = (("logit norm (training outputs)", (("train_logit_norm", "-"),)),
               ("entropy (training outputs, nats)", (("train_entropy", "-"),)),
               ("logit norm: teacher — / student --", (("train_logit_norm_t", "-"), ("train_logit_norm_s", "--"))),
               ("entropy at T: teacher — / student --", (("train_entropy_t", "-"), ("train_entropy_s", "--"))),
               ("teachers whose argmax is wrong", (("train_teacher_wrong", "-"),)),
               ("λ·KD / CE", (("kd/ce", "-"),)),
               ("gradient norm per term: ce — / kd --", (("train_gradnorm_ce", "-"), ("train_gradnorm_kd", "--"))),
               ("train top-1 — / val top-1 --", (("train_top1", "-"), ("val_top1", "--"))))


def _column(run: Run, key: str) -> list[tuple[float, float]]:
    """``(epoch, value)`` of a per-epoch column (``kd/ce``: the ratio of the two loss terms)."""
    if key == "kd/ce":
        return [(r["epoch"], r["train_loss_kd"] / r["train_loss_ce"]) for r in run.rows
                if r.get("train_loss_ce") and "train_loss_kd" in r]
    return [(r["epoch"], r[key]) for r in run.rows if key in r]


def _logged(cells: list[Cell], key: str) -> bool:
    """Whether some run of ``cells`` logs the diagnostic column ``key``."""
    return any(_column(r, key) for c in cells for r in c.runs)


def _plot_diagnostics(cells: list[Cell], title: str, path: Path) -> bool:
    """Per-epoch training diagnostics (:data:`DIAGNOSTICS`) of every cell that logs them, mean over seeds; False
    (and no file) when no run logs any."""
    panels = [(name, keys) for name, keys in DIAGNOSTICS if any(_logged(cells, k) for k, _ in keys)]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.2 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, keys) in zip(axes.flat, panels, strict=False):
        for i, cell in enumerate(cells):
            for key, style in keys:
                curves = [dict(_column(r, key)) for r in cell.runs]
                epochs = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
                if epochs:
                    ax.plot(epochs, [statistics.fmean(c[e] for c in curves) for e in epochs], style,
                            color=colours[i % len(colours)], label=cell.label if style == "-" else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat[1:len(panels)]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04 + 0.015 * ((len(labels) + 2) // 3), 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def diagnostics_lines(cells: list[Cell]) -> list[str]:
    """A table of the last-epoch value of each diagnostic (:data:`DIAGNOSTICS`) that some run logs, mean over seeds:
    the numbers behind the diagnostics plot; empty when no run logs any."""
    keys = [k for _, pairs in DIAGNOSTICS for k, _ in pairs if _logged(cells, k)]
    if not keys:
        return []
    lines = ["Training diagnostics at the last epoch (mean over seeds; – where a run does not log one):", "",
             "| method | " + " | ".join(f"`{k}`" for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for cell in cells:
        values = []
        for key in keys:
            last = [col[-1][1] for r in cell.runs if (col := _column(r, key))]
            values.append(f"{statistics.fmean(last):.3f}" if last else "–")
        lines.append(f"| `{cell.label}` | " + " | ".join(values) + " |")
    return [*lines, ""]


def fit_lines(cells: list[Cell], split: str = "test") -> list[str]:
    """How well each method fits its own training images: the final model's primary metric on them without
    augmentation (``train.eval_train``) beside its validation (and ``split``) value at the last epoch, and the gap
    between training and validation; mean ± std over the seeds that measured it; empty when none did."""
    main = task_metrics(cells)[0] if cells else ""
    measured = [(c, runs) for c in cells if (runs := [r for r in c.runs if main in r.summary.train_fit])]
    if not measured:
        return []
    splits = ["val", "test"] if split == "test" else ["val"]
    lines = [f"Training fit: the final model on its own training images without augmentation "
             f"(`train.eval_train`), last epoch; the gap is training minus validation {LABELS[main]}:", "",
             f"| method | n | train {LABELS[main]} (clean) | "
             + " | ".join(f"{s} {LABELS[main]}" for s in splits) + " | gap |", "|---|---|---|" + "---|" * len(splits)
             + "---|"]
    for cell, runs in measured:
        fit = [r.summary.train_fit[main] for r in runs]
        held = {s: [r.metric(s, main) for r in runs] for s in splits}
        gap = [a - b for a, b in zip(fit, held["val"], strict=True)]
        lines.append(f"| `{cell.label}` | {len(runs)} | {fmt(*mean_std(fit))} | "
                     + " | ".join(fmt(*mean_std(held[s])) for s in splits) + f" | {fmt(*mean_std(gap))} |")
    return ["", *lines, ""]


def machine_lines(cells: list[Cell]) -> list[str]:
    """Which environment (device name and platform, from each summary's ``env``) ran which rows, when a group's runs
    recorded more than one: its s/epoch and img/s columns then compare machines as well as methods. Empty otherwise."""
    where: dict[str, list[str]] = defaultdict(list)
    for cell in cells:
        for run in cell.runs:
            where[_environment(run)].append(f"`{cell.label}` s{run.seed}")
    if len(where) < 2:
        return []
    return ["", f"These runs recorded {len(where)} environments (device · platform; records written before the CPU's "
            "name was stored give only its architecture): s/epoch and img/s compare runs of one environment only; "
            "the step time ×baseline divides each run's time per step by the baseline's on its own environment "
            "(– where the baseline has no run there).", "",
            *(f"- {machine}: {', '.join(runs)}" for machine, runs in where.items())]


def _plot_reliability(cells: list[Cell], title: str, path: Path) -> bool:
    """Pooled reliability diagrams of the cells that have them; False (and no file) when none has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in cells if all(r.summary.last_test_reliability for r in c.runs)]
    if not cells:
        return False
    fig, axes = plt.subplots(1, len(cells), figsize=(3.2 * len(cells), 3.4), squeeze=False)
    for ax, cell in zip(axes[0], cells, strict=True):
        bins = len(cell.runs[0].summary.last_test_reliability["count"])
        count = [0.0] * bins
        conf = [0.0] * bins
        acc = [0.0] * bins
        for run in cell.runs:  # pool the seeds: sums weighted by bin counts
            rel = run.summary.last_test_reliability
            for i in range(bins):
                count[i] += rel["count"][i]
                conf[i] += rel["confidence"][i] * rel["count"][i]
                acc[i] += rel["accuracy"][i] * rel["count"][i]
        centres = [(i + 0.5) / bins for i in range(bins)]
        heights = [a / c if c else 0.0 for a, c in zip(acc, count, strict=True)]
        ax.bar(centres, heights, width=1 / bins, edgecolor="black", linewidth=0.5, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ece = statistics.fmean(cell.values(lambda r: r.metric("test", "ece")))
        ax.set_title(f"{cell.label}\nECE {ece:.2f}%", fontsize=8)
        ax.set_xlabel("confidence")
    axes[0][0].set_ylabel("accuracy")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _write_csv(runs: list[Run], path: Path) -> None:
    from ..tasks import get_task, list_tasks

    every = list(dict.fromkeys(m for name in list_tasks() for m in get_task(name).metrics))  # every task's
    cols = ["dataset", "model", "method", "seed", "epochs", "num_train", "num_val", *(f"test_{m}_last" for m in every),
            "primary_metric", "best_val_epoch", "val_primary_best", "test_primary_at_best_val",
            "seconds_per_epoch", "images_per_s", "passes_per_step", "run"]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in runs:
            s = r.summary
            best, main = s.best_val or {}, s.primary
            w.writerow([*r.group, r.label, r.seed, s.epochs, s.num_train, s.num_val,
                        *(s.last.get(f"test_{m}", "") for m in every), main,
                        best.get("epoch", ""), best.get(f"val_{main}", ""), best.get(f"test_{main}", ""),
                        r.seconds_per_epoch, r.images_per_s, s.passes_per_step, s.run])


def self_supervised_lines(cells: list[Cell]) -> list[str]:
    """Self-supervised runs: their own evaluation metrics (k-NN, linear probe), mean ± std over seeds."""
    if not cells:
        return []
    keys = sorted({k for c in cells for r in c.runs for k in r.summary.extra_last})
    lines = ["", "Self-supervised (labels unused in training; accuracy of frozen features, last epoch):", "",
             "| method | n | " + " | ".join(keys) + " | s/epoch |", "|" + "---|" * (len(keys) + 3)]
    for cell in cells:
        vals = [fmt(*mean_std([r.summary.extra_last[k] for r in cell.runs if k in r.summary.extra_last]))
                for k in keys]
        lines.append(f"| `{cell.label}` | {len(cell.runs)} | " + " | ".join(vals)
                     + f" | {statistics.fmean(cell.values(lambda r: r.seconds_per_epoch)):.1f} |")
    return lines


def per_class_lines(cells: list[Cell]) -> list[str]:
    """Per-class results of the last epoch (segmentation IoU, detection AP), mean over seeds; none for
    classification, nor for one class (the main table already holds it)."""
    keys = list(cells[0].runs[0].summary.last_per_class) if cells else []
    if len(keys) < 2:
        return []
    lines = ["", "Per class (last epoch, test, mean over seeds):", "",
             "| method | " + " | ".join(k.split("_", 1)[-1] for k in keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for cell in cells:
        vals = [statistics.fmean(r.summary.last_per_class[k] for r in cell.runs) for k in keys]
        lines.append(f"| `{cell.label}` | " + " | ".join("–" if math.isnan(v) else f"{v:.1f}" for v in vals) + " |")
    return lines


def teacher_lines(cells: list[Cell]) -> list[str]:
    """The frozen teachers the group's runs were distilled from, with their measured accuracy."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for cell in cells:
        for run in cell.runs:
            for name, res in run.summary.teachers.items():
                path = run.summary.config["method"].get("teacher", "")
                seen.setdefault((cell.label, f"{name}: `{path}`"), res)
    if not seen:
        return []
    lines = ["", "Teachers, measured at the start of each distillation run:", "",
             "| method | teacher | test top-1 | test NLL | test ECE % |", "|---|---|---|---|---|"]
    for (label, teacher), res in sorted(seen.items()):
        t = res["test"]
        lines.append(f"| `{label}` | {teacher} | {t['top1']:.2f} | {t['nll']:.3f} | {t['ece']:.2f} |")
    return lines


def eval_model_lines(cells: list[Cell]) -> list[str]:
    """The other models a method evaluates beside the exported one (BYOT's exits and their ensemble, the mean
    teacher's EMA model), test split, last epoch, mean ± std over seeds."""
    rows = []
    for cell in cells:
        for name in cell.runs[0].summary.eval_models_last:
            res = [r.summary.eval_models_last.get(name, {}) for r in cell.runs]
            vals = [fmt(*mean_std([float(x.get(k, float("nan"))) for x in res]), 3 if k == "nll" else 2)
                    for k in ("top1", "ece", "nll")]
            rows.append(f"| `{cell.label}` | {name} | {len(res)} | " + " | ".join(vals) + " |")
    if not rows:
        return []
    return ["", "Other models of a run (the table above is the exported model), test split, last epoch:", "",
            "| method | model | n | test top-1 | ECE % | NLL |", "|---|---|---|---|---|---|", *rows]


def generation_lines(cells: list[Cell]) -> list[str]:
    """Per-generation and ensemble test top-1 (last epoch) of multi-generation runs, mean ± std over seeds."""
    lines: list[str] = []
    for cell in cells:
        runs = [r for r in cell.runs if r.summary.generations]
        if not runs:
            continue
        lines += ["", f"Generations of `{cell.label}` (test top-1, last epoch; ensemble = mean softmax):", "",
                  "| generation | test top-1 | ensemble of | ensemble test top-1 |", "|---|---|---|---|"]
        n_gen = min(len(r.summary.generations) for r in runs)
        for k in range(n_gen):
            acc = fmt(*mean_std([r.summary.generations[k]["last"]["test_top1"] for r in runs]))
            ens = [e for e in runs[0].summary.ensemble or [] if e["generations"][-1] == k]
            if ens:
                idx = runs[0].summary.ensemble.index(ens[0])
                members = ", ".join(str(g) for g in ens[0]["generations"])
                ens_acc = fmt(*mean_std([r.summary.ensemble[idx]["test_top1"] for r in runs]))
            else:
                members, ens_acc = "–", "–"
            lines.append(f"| {k} | {acc} | {members} | {ens_acc} |")
    return lines


def write_report(runs_dirs: str | Path | list[str | Path], out: str | Path | None = None, baseline: str = "ce",
                 split: str = "test") -> Path:
    """Write ``report.md``, ``runs.csv`` and PNG plots for the runs under ``runs_dirs`` (one folder or several);
    returns the markdown path. ``split='val'`` builds the tables and curves from the validation split only (a
    screening of settings, which must not read the test split)."""
    dirs = [Path(d) for d in (runs_dirs if isinstance(runs_dirs, list) else [runs_dirs])]
    runs = [run for d in dirs for run in load_runs(d)]
    if not runs:
        raise FileNotFoundError(f"no finished runs (summary.json) under {', '.join(map(str, dirs))}")
    out = Path(out) if out is not None else dirs[0].parent / "report"
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, str], dict[str, Cell]] = defaultdict(dict)
    for run in runs:
        groups[run.group].setdefault(run.label, Cell(run.label)).runs.append(run)
    source = shlex.join([*map(str, dirs), *(["--split", "val"] if split == "val" else []),
                         *(["--baseline", baseline] if baseline != "ce" else [])])
    if split == "val":
        what = ["Metrics are on the validation split (held out of the training images): the numbers a choice of",
                "setting may read. 'Last' is the final epoch, 'best epoch' the epoch of the best validation value;",
                "mean ± sample std over seeds. Δ is the per-seed paired difference to the baseline, on the last",
                "epoch's validation value."]
    else:
        what = ["Metrics are on the test split; mean ± sample std over seeds. 'Last' is the final epoch; '@ best val'",
                "is the test value at the epoch with the best validation value of the same metric (model selection",
                "never looks at the test split). Δ is the per-seed paired difference to the baseline."]
    lines = ["# Benchmark report", "", f"Generated by `selfdistill report {source}` from {len(runs)} finished runs.",
             *what, "s/epoch and img/s are each run's medians over its epochs (a run of stages, e.g. born-again",
             "generations, adds them up), then the mean over seeds; the step time is relative to the baseline's.", ""]
    for (dataset, model), by_label in sorted(groups.items()):
        cells = sorted(by_label.values(), key=lambda c: (c.label != baseline, c.label))
        first = cells[0].runs[0].summary
        slug = f"{dataset}_{model}".replace(":", "-").replace("/", "-")
        lines += [f"## {dataset} / {model}", "",
                  f"{first.num_train} training images, {first.num_val} validation, {first.num_test} test; "
                  f"{first.epochs} epochs; batch {first.config['data']['batch_size']}"
                  + ("; a label's `[key=value]` is a setting in which its runs differ from the others."
                     if any("[" in c.label for c in cells) else "."), ""]
        supervised = [c for c in cells if c.runs[0].summary.supervised]
        lines += group_table(supervised, baseline, split) if supervised else []
        lines += machine_lines(supervised)
        lines += fit_lines(supervised, split)
        if split == "test":
            lines += teacher_lines(supervised) + eval_model_lines(supervised) + generation_lines(supervised)
            lines += self_supervised_lines([c for c in cells if c not in supervised]) + per_class_lines(supervised)
        cells = supervised or cells
        metric = f"{split} {LABELS[task_metrics(cells)[0]]}"
        _plot_curves(cells, f"{dataset} / {model}: {metric}", out / f"curves_{slug}.png", split)
        lines += ["", f"![{metric}](curves_{slug}.png)", ""]
        if split == "test" and _plot_reliability(cells, f"{dataset} / {model}: reliability (last epoch, seeds pooled)",
                                                 out / f"reliability_{slug}.png"):
            lines += [f"![reliability](reliability_{slug}.png)", ""]
        if _plot_diagnostics(cells, f"{dataset} / {model}: training diagnostics (mean over seeds)",
                             out / f"diagnostics_{slug}.png"):
            lines += [f"![training diagnostics](diagnostics_{slug}.png)", "", *diagnostics_lines(cells)]
    _write_csv(runs, out / "runs.csv")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


README_START = "<!-- results:start (generated by selfdistill report --readme; do not edit) -->"
README_END = "<!-- results:end -->"


def _report_body(report: Path, readme: Path) -> tuple[str, list[str]]:
    """A report's tables for a README (plots dropped: their paths are relative to the report) and its link."""
    lines = report.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
    body: list[str] = []
    for line in lines[start:]:
        if line.startswith("!["):
            continue
        if line or (body and body[-1]):  # no runs of blank lines
            body.append(line.replace("## ", "#### ", 1) if line.startswith("## ") else line)
    try:
        link = str(report.resolve().relative_to(readme.resolve().parent))
    except ValueError:
        link = str(report)
    return link, body


def update_readme(readme: str | Path, sections: list[tuple[str | Path, str, str]] | str | Path,
                  command: str = "") -> None:
    """Replace the README block between the results markers with reports' tables: ``sections`` lists
    ``(report.md, the command that reproduces it, a heading)`` (or is one report, with ``command``); each gets a
    link to its report and its command."""
    readme = Path(readme)
    if not isinstance(sections, list):
        sections = [(sections, command, "")]
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no results block; add the lines\n{README_START}\n{README_END}")
    block = [README_START, ""]
    for report, cmd, heading in sections:
        link, body = _report_body(Path(report), readme)
        block += ([f"### {heading}", ""] if heading else []) + [f"From [{link}]({link}), reproduced by:", "",
                                                               "```bash", cmd, "```", "", *body, ""]
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    readme.write_text(head + "\n".join([*block, README_END]) + tail)


def results_sections(manifest: str | Path) -> list[tuple[str, str, str]]:
    """The README's results sections from a YAML list of ``{report, command, heading}`` (paths relative to the
    working directory)."""
    from ..config import load_yaml_list

    return [(item["report"], item["command"], item.get("heading", "")) for item in load_yaml_list(manifest)]
