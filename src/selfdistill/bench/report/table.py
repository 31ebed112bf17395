"""The main table of a group (one row per method configuration: its metrics, its paired gain over the baseline and
its cost), the list of the machines its runs ran on, and the training-fit table."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

from .runs import Cell, Run
from .sections import LABELS, Group, section, task_metrics
from .stats import MIN_PAIRS_FOR_P, environment, fmt, fmt_gain, mean_std, paired, paired_p, step_ratio


def paired_cells(a: list[float], b: list[float]) -> tuple[str, str]:
    """The table's Δ and p cells for a row's values ``a`` and the baseline's ``b`` on the seeds both have: the mean
    ± std of the differences and the paired t-test's p; with fewer pairs than a p needs, each seed's difference (in
    seed order) and no p; dashes without a pair."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    if not diffs:
        return "–", "–"
    if len(diffs) < MIN_PAIRS_FOR_P:
        return f"{', '.join(f'{d:+.2f}' for d in diffs)} (n={len(diffs)})", "–"
    return fmt_gain(*mean_std(diffs), len(diffs)), f"{paired_p(a, b):.3f}"


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
            *(f"{LABELS[m]} (last)" for m in others), f"Δ {LABELS[main]} vs {baseline} (paired)", "p (paired t)",
            "s/epoch", "img/s", "passes/step", f"step time ×{baseline}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for cell in cells:
        values = cell.values(last)
        gain, p_text = paired_cells(*paired(cell, base, last)) if base is not None and cell is not base else ("–", "–")
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


@section("table", 10)
def _table(group: Group) -> list[str]:
    return group_table(group.supervised, group.baseline, group.split) if group.supervised else []


def machine_lines(cells: list[Cell]) -> list[str]:
    """Which environment (device name and platform, from each summary's ``env``) ran which rows, when a group's runs
    recorded more than one: its s/epoch and img/s columns then compare machines as well as methods. Empty otherwise."""
    where: dict[str, list[str]] = defaultdict(list)
    for cell in cells:
        for run in cell.runs:
            where[environment(run)].append(f"`{cell.label}` s{run.seed}")
    if len(where) < 2:
        return []
    return ["", f"These runs recorded {len(where)} environments (device · platform; records written before the CPU's "
            "name was stored give only its architecture): s/epoch and img/s compare runs of one environment only; "
            "the step time ×baseline divides each run's time per step by the baseline's on its own environment "
            "(– where the baseline has no run there).", "",
            *(f"- {machine}: {', '.join(runs)}" for machine, runs in where.items())]


@section("machines", 20)
def _machines(group: Group) -> list[str]:
    return machine_lines(group.supervised)


def fit_lines(cells: list[Cell], split: str = "test") -> list[str]:
    """How well each method fits its own training images: the final model's primary metric on them without
    augmentation (``train.eval_train``) beside its validation (and ``split``) value at the last epoch, and the gap
    between training and validation; mean ± std over the seeds that measured it, and the methods none of whose runs
    did; empty when none did."""
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
    measured_labels = {c.label for c, _ in measured}
    unmeasured = [f"`{c.label}`" for c in cells if c.label not in measured_labels]
    if unmeasured:  # a run trained without train.eval_train, e.g. before a grid turned it on
        lines += ["", f"No training fit in the runs of {', '.join(unmeasured)} "
                  "(`train.eval_train` off when they ran)."]
    return ["", *lines, ""]


@section("training fit", 30)
def _fit(group: Group) -> list[str]:
    return fit_lines(group.supervised, group.split)
