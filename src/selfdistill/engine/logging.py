"""Run logs: ``metrics.csv`` (one row per epoch, rewritten from the checkpointed history), TensorBoard events and
a console progress bar."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write per-epoch rows (the union of their keys as columns) atomically to ``path``."""
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


class TensorBoardLog:
    """Scalars to TensorBoard (silently off when tensorboard is not installed)."""

    def __init__(self, folder: Path, enabled: bool) -> None:
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                return
            self.writer = SummaryWriter(str(folder))

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Log every finite float in ``values``."""
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, int | float) and math.isfinite(v):
                self.writer.add_scalar(k.replace("_", "/", 1), v, step)
        self.writer.flush()

    def close(self) -> None:
        """Close the event file."""
        if self.writer is not None:
            self.writer.close()


def progress_bar(total: int, initial: int, desc: str, mode: bool | str, enabled: bool) -> tqdm:
    """A tqdm bar over an epoch's steps (``mode`` ``auto`` shows it only on a terminal)."""
    show = enabled and (sys.stderr.isatty() if mode == "auto" else bool(mode))
    return tqdm(total=total, initial=initial, desc=desc, disable=not show, dynamic_ncols=True, leave=False)


def format_epoch(row: dict[str, float], epochs: int, metrics: tuple[str, ...], train_metric: str) -> str:
    """One console line for an epoch's row: loss, training accuracy, test metrics, validation, time and rate."""
    main, *others = metrics
    parts = [f"epoch {int(row['epoch'])}/{epochs}", f"loss {row['train_loss']:.4f}",
             f"train {train_metric} {row[f'train_{train_metric}']:.2f}%"]
    if f"test_{main}" in row:
        rest = ", ".join(f"{m} {row[f'test_{m}']:.3g}" for m in others)
        parts.append(f"test {main} {row[f'test_{main}']:.2f} ({rest})")
    if f"val_{main}" in row:
        parts.append(f"val {main} {row[f'val_{main}']:.2f}")
    parts.append(f"{row['train_time_s']:.1f}s {row['images_per_s']:.0f} img/s")
    return " | ".join(parts)
