"""The gain ladder (``selfdistill report --ladder A --ladder B ...``): a chain of method configurations in which
each rung adds one thing to the rung before it (e.g. CE; CE on the partner images too; the swap; the term), and the
paired gain of each step on the seeds every rung has. On those seeds the steps' mean gains add up to the last rung's
gain over the first (a row of its own from three rungs), so the table tells how much of a method's gain each of its
parts brings."""

from __future__ import annotations

from .runs import Cell, Run
from .sections import LABELS, Group, section, task_metrics
from .table import paired_cells


def ladder_lines(cells: list[Cell], labels: list[str], split: str = "test") -> list[str]:
    """The ladder table of ``labels`` (method labels, in rung order) among ``cells``: one row per step (its gain over
    the rung before it, paired over the seeds all rungs measured) and, from three rungs, a last row for the whole
    ladder. Empty when the group has none of the rungs; a line naming the missing ones when it has some."""
    by_label = {c.label: c for c in cells}
    present = [label for label in labels if label in by_label]
    if not present:
        return []
    missing = [label for label in labels if label not in by_label]
    if missing:
        return ["", "Gain ladder: no finished runs of " + ", ".join(f"`{m}`" for m in missing)
                + " in this group yet.", ""]
    main = task_metrics(cells)[0]

    def last(run: Run) -> float:
        return run.metric(split, main)

    values = [{r.seed: v for r in by_label[label].runs if (v := last(r)) == v} for label in labels]  # NaN left out
    seeds = sorted(set.intersection(*(set(v) for v in values)))
    if not seeds:
        return ["", "Gain ladder: its rungs share no seed yet.", ""]
    rungs = [[v[s] for s in seeds] for v in values]
    whole = len(rungs) > 2  # with one step the step is the whole ladder: no row of its own
    lines = ["", f"Gain ladder: each rung adds one thing to the one above it; Δ is the paired {split} "
             f"{LABELS[main]} gain of a rung over the one above it (last epoch), on the {len(seeds)} seed(s) every "
             f"rung has ({', '.join(map(str, seeds))})"
             + ("; the steps' means add up to the last line's." if whole else "."), "",
             f"| rung | {split} {LABELS[main]} (last) | Δ over the rung above (paired) | p (paired t) |",
             "|---|---|---|---|"]
    for i, (label, rung) in enumerate(zip(labels, rungs, strict=True)):
        gain, p = paired_cells(rung, rungs[i - 1]) if i else ("–", "–")
        lines.append(f"| `{label}` | {sum(rung) / len(rung):.2f} | {gain} | {p} |")
    if whole:
        gain, p = paired_cells(rungs[-1], rungs[0])
        lines.append(f"| all steps: `{labels[-1]}` over `{labels[0]}` | – | {gain} | {p} |")
    return [*lines, ""]


@section("ladder", 17)
def _ladder(group: Group) -> list[str]:
    return ladder_lines(group.supervised, list(group.ladder), group.split) if group.ladder else []
