"""Accuracy against training cost: each method's primary metric against its cost relative to the baseline, beside
the baseline at equal image visits (the baseline at 1× and its runs trained for k× the epochs), the line a method
must be above to be worth its cost."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from .plots import pyplot
from .runs import Cell, Run
from .sections import LABELS, Group, section, task_metrics
from .stats import mean_std, step_ratio


@dataclass(frozen=True)
class CostPoint:
    """One point of the figure: a cell's mean ± std over seeds of the primary metric, at ``cost`` ×baseline."""

    label: str
    cost: float
    mean: float
    std: float
    measured: bool = True
    """Whether ``cost`` is the measured step time ×baseline (else the declared passes per step over the
    baseline's: no baseline run on that cell's machine)."""


@dataclass(frozen=True)
class CostFigure:
    """The points of a group's figure: the baseline, its runs at k× the epochs and the methods."""

    baseline: CostPoint
    references: list[CostPoint]
    """The baseline's configuration trained for k× the epochs, at cost k (equal image visits), by cost."""
    methods: list[CostPoint]


def epochs_multiple(cell: Cell, base: Cell) -> float | None:
    """``k`` when ``cell`` is the baseline's configuration trained for k× its epochs: labelled
    ``<baseline> [train.epochs=N]`` (the report appends the settings in which a group's runs differ, so no other
    setting differs from the baseline's); None otherwise."""
    match = re.fullmatch(re.escape(base.label) + r" \[train\.epochs=(\d+)\]", cell.label)
    base_epochs = base.runs[0].summary.epochs
    return int(match.group(1)) / base_epochs if match and base_epochs else None


def cost_figure(cells: list[Cell], baseline: str, split: str = "test") -> CostFigure | None:
    """The figure's points for a group's supervised ``cells`` on ``split`` (last epoch's primary metric): each
    method at its step time ×baseline times its epochs over the baseline's, or at its declared passes per step
    over the baseline's where the step time has no baseline run to divide by; None without a baseline cell or
    without another cell beside it."""
    base = next((c for c in cells if c.label == baseline), None)
    if base is None or len(cells) < 2:
        return None
    main = task_metrics(cells)[0]

    def point(cell: Cell, cost: float, measured: bool = True) -> CostPoint:
        return CostPoint(cell.label, cost, *mean_std(cell.values(lambda r: r.metric(split, main))), measured)

    def passes(run: Run) -> float:
        return run.summary.passes_per_step

    references, methods = [], []
    for cell in cells:
        if cell is base:
            continue
        if (k := epochs_multiple(cell, base)) is not None:
            references.append(point(cell, k))
            continue
        epochs = cell.runs[0].summary.epochs / (base.runs[0].summary.epochs or math.nan)
        ratio = step_ratio(cell, base)
        measured = not math.isnan(ratio)
        if not measured:
            ratio = passes(cell.runs[0]) / passes(base.runs[0])
        methods.append(point(cell, ratio * epochs, measured))
    return CostFigure(point(base, 1.0), sorted(references, key=lambda p: p.cost), methods)


def plot_cost(figure: CostFigure, ylabel: str, title: str, path: Path) -> None:
    """Draw ``figure`` to ``path``: methods as labelled points (hollow where the cost is declared, not measured)
    with ±std error bars, the baseline and its k×-epoch runs joined by a dashed line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    base = figure.baseline
    line = [base, *figure.references]
    if figure.references:
        ax.plot([p.cost for p in line], [p.mean for p in line], "k--", linewidth=1,
                label=f"{base.label} at equal image visits")
    else:
        ax.axhline(base.mean, color="k", linestyle="--", linewidth=1, label=f"{base.label} (no run at more epochs)")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, p in enumerate(figure.methods):
        colour = colours[i % len(colours)]
        ax.errorbar(p.cost, p.mean, yerr=0.0 if math.isnan(p.std) else p.std, fmt="o", color=colour, capsize=2,
                    markerfacecolor=colour if p.measured else "none")
        ax.annotate(p.label, (p.cost, p.mean), textcoords="offset points", xytext=(4, 3), fontsize=6, color=colour)
    for p, marker, text in [(base, "s", base.label),
                            *((r, "D", f"{base.label} ×{r.cost:g} epochs") for r in figure.references)]:
        ax.errorbar(p.cost, p.mean, yerr=0.0 if math.isnan(p.std) else p.std, fmt=marker, color="k", capsize=2)
        ax.annotate(text, (p.cost, p.mean), textcoords="offset points", xytext=(4, -9), fontsize=6)
    ax.plot([], [], "o", color="k", label="measured step time")
    if any(not p.measured for p in figure.methods):
        ax.plot([], [], "o", color="k", markerfacecolor="none", label="declared passes/step (no baseline run there)")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x:g}×"))
    ax.set_xlabel(f"training cost ×{base.label} (step time × epochs)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def caption(figure: CostFigure, metric: str, link: str) -> str:
    """The sentence under the figure that says how to read it."""
    base = figure.baseline.label
    line = (f"the dashed line joins `{base}` at 1× to `{base}` trained for k× the epochs (`{base} ×k epochs`: as many "
            "image visits as a method of cost k)" if figure.references else
            f"the dashed line is `{base}`'s level (no `{base}` run at more epochs here: docs/bench.md says how to add "
            "them)")
    hollow = (f" Hollow markers: no `{base}` run on that method's machine, so its cost is its declared passes per "
              f"step over `{base}`'s." if any(not p.measured for p in figure.methods) else "")
    return (f"[Accuracy against cost]({link}): each method's {metric} (last epoch, mean ± std over seeds) against its "
            f"training cost ×{base} (its step time ×{base} times its epochs over `{base}`'s); {line}. A method is "
            f"worth its cost only above that line.{hollow}")


@section("cost", 15)
def _cost(group: Group) -> list[str]:
    figure = cost_figure(group.supervised, group.baseline, group.split) if group.supervised else None
    if figure is None:
        return []
    metric = f"{group.split} {LABELS[task_metrics(group.supervised)[0]]}"
    name = f"cost_{group.slug}.png"
    plot_cost(figure, metric, f"{group.title}: {metric} against training cost", group.out / name)
    return ["", f"![{metric} against training cost]({name})", "", caption(figure, metric, name)]
