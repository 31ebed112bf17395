"""Tables beside the main one, for the runs that have them: the teachers of distillation runs, the other models a
run evaluates, self-supervised runs' own evaluations and per-class results."""

from __future__ import annotations

import math
import statistics
from typing import Any

from .runs import Cell
from .sections import Group, section
from .stats import fmt, mean_std


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


@section("teachers", 40, splits=("test",))
def _teachers(group: Group) -> list[str]:
    return teacher_lines(group.supervised)


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


@section("other models", 50, splits=("test",))
def _eval_models(group: Group) -> list[str]:
    return eval_model_lines(group.supervised)


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


@section("self-supervised", 70, splits=("test",))
def _self_supervised(group: Group) -> list[str]:
    return self_supervised_lines(group.unsupervised)


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


@section("per class", 80, splits=("test",))
def _per_class(group: Group) -> list[str]:
    return per_class_lines(group.supervised)
