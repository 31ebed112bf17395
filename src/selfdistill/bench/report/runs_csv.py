"""``runs.csv``: every run of a report, one row each (what ``selfdistill report --compare`` reads back)."""

from __future__ import annotations

import csv
from pathlib import Path

from .runs import Run


def write_csv(runs: list[Run], path: Path) -> None:
    """``runs.csv``: one row per run, with every task's metrics as columns (empty where a run's task has none)."""
    from ...tasks import get_task, list_tasks

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
