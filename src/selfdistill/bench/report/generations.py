"""Born-again networks' section: each generation's test top-1 and that of the ensembles of generations, for the runs
of stages. A method's own section lives in a module like this one, registered with :func:`.sections.section`."""

from __future__ import annotations

from .runs import Cell
from .sections import Group, section
from .stats import fmt, mean_std


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


@section("generations", 60, splits=("test",))
def _generations(group: Group) -> list[str]:
    return generation_lines(group.supervised)
