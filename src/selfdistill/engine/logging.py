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
