"""The report's figures of every group: the primary metric per epoch and the reliability diagrams."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .runs import Cell
from .sections import LABELS, Group, section, task_metrics


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (imported on first use: the rest of the library does not
    need matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(cells: list[Cell], title: str, path: Path, split: str = "test") -> None:
    """Mean ± std over seeds of each cell's primary metric on ``split`` per epoch, written to ``path``."""
    plt = pyplot()
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


@section("curves", 90)
def _curves(group: Group) -> list[str]:
    cells = group.plotted
    metric = f"{group.split} {LABELS[task_metrics(cells)[0]]}"
    plot_curves(cells, f"{group.title}: {metric}", group.out / f"curves_{group.slug}.png", group.split)
    return ["", f"![{metric}](curves_{group.slug}.png)", ""]


def plot_reliability(cells: list[Cell], title: str, path: Path) -> bool:
    """Pooled reliability diagrams of the cells that have them; False (and no file) when none has."""
    plt = pyplot()

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


@section("reliability", 100, splits=("test",))
def _reliability(group: Group) -> list[str]:
    path = group.out / f"reliability_{group.slug}.png"
    if not plot_reliability(group.plotted, f"{group.title}: reliability (last epoch, seeds pooled)", path):
        return []
    return [f"![reliability](reliability_{group.slug}.png)", ""]
