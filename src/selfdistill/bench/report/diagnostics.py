"""Per-epoch training diagnostics (logit norms, entropies, the KD/CE ratio, gradient norms, the training fit): a
figure of their curves and a table of their last values, for the runs that log them."""

from __future__ import annotations

import statistics
from pathlib import Path

from .plots import pyplot
from .runs import Cell, Run
from .sections import Group, section

# per-epoch training diagnostics plotted by :func:`plot_diagnostics`: panel title and (column, line style) pairs;
# ``kd/ce`` is the ratio of the weighted distillation term to the CE term, ``gradnorm`` every term's gradient norm
DIAGNOSTICS = (("logit norm (training outputs)", (("train_logit_norm", "-"),)),
               ("entropy (training outputs, nats)", (("train_entropy", "-"),)),
               ("logit norm: teacher — / student --", (("train_logit_norm_t", "-"), ("train_logit_norm_s", "--"))),
               ("entropy at T: teacher — / student --", (("train_entropy_t", "-"), ("train_entropy_s", "--"))),
               ("teachers whose argmax is wrong", (("train_teacher_wrong", "-"),)),
               ("λ·KD / CE", (("kd/ce", "-"),)),
               ("gradient norm per term: ce — / kd --", (("train_gradnorm_ce", "-"), ("train_gradnorm_kd", "--"))),
               ("train top-1 — / val top-1 --", (("train_top1", "-"), ("val_top1", "--"))))


def column(run: Run, key: str) -> list[tuple[float, float]]:
    """``(epoch, value)`` of a per-epoch column (``kd/ce``: the ratio of the two loss terms)."""
    if key == "kd/ce":
        return [(r["epoch"], r["train_loss_kd"] / r["train_loss_ce"]) for r in run.rows
                if r.get("train_loss_ce") and "train_loss_kd" in r]
    return [(r["epoch"], r[key]) for r in run.rows if key in r]


def logged(cells: list[Cell], key: str) -> bool:
    """Whether some run of ``cells`` logs the diagnostic column ``key``."""
    return any(column(r, key) for c in cells for r in c.runs)


def plot_diagnostics(cells: list[Cell], title: str, path: Path) -> bool:
    """Per-epoch training diagnostics (:data:`DIAGNOSTICS`) of every cell that logs them, mean over seeds; False
    (and no file) when no run logs any."""
    panels = [(name, keys) for name, keys in DIAGNOSTICS if any(logged(cells, k) for k, _ in keys)]
    if not panels:
        return False
    plt = pyplot()

    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.2 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, keys) in zip(axes.flat, panels, strict=False):
        for i, cell in enumerate(cells):
            for key, style in keys:
                curves = [dict(column(r, key)) for r in cell.runs]
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
    keys = [k for _, pairs in DIAGNOSTICS for k, _ in pairs if logged(cells, k)]
    if not keys:
        return []
    lines = ["Training diagnostics at the last epoch (mean over seeds; – where a run does not log one):", "",
             "| method | " + " | ".join(f"`{k}`" for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for cell in cells:
        values = []
        for key in keys:
            last = [col[-1][1] for r in cell.runs if (col := column(r, key))]
            values.append(f"{statistics.fmean(last):.3f}" if last else "–")
        lines.append(f"| `{cell.label}` | " + " | ".join(values) + " |")
    return [*lines, ""]


@section("diagnostics", 110)
def _diagnostics(group: Group) -> list[str]:
    title = f"{group.title}: training diagnostics (mean over seeds)"
    if not plot_diagnostics(group.plotted, title, group.out / f"diagnostics_{group.slug}.png"):
        return []
    return [f"![training diagnostics](diagnostics_{group.slug}.png)", "", *diagnostics_lines(group.plotted)]
