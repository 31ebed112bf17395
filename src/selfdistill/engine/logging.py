"""Run logs: ``metrics.csv`` (one row per epoch, rewritten from the checkpointed history), the common interface of
the per-epoch scalar logs (TensorBoard events here, experiment trackers in :mod:`.trackers`) and a console progress
bar."""

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


class ScalarLog:
    """Where per-epoch scalars go: :meth:`scalars` after each epoch, :meth:`close` once at the end. As a context
    manager it closes on exit, telling :meth:`close` whether training finished (no exception)."""

    def scalars(self, values: dict[str, Any], step: int) -> None:
        """Log every finite number in ``values`` at ``step``."""
        finite = {k: float(v) for k, v in values.items() if isinstance(v, int | float) and math.isfinite(v)}
        if finite:
            self._write(finite, step)

    def _write(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def close(self, finished: bool = True) -> None:
        """End the log; ``finished`` is false when training stopped early (an exception or a stop signal)."""

    def __enter__(self) -> ScalarLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.close(finished=exc_type is None)


class TensorBoardLog(ScalarLog):
    """Scalars to TensorBoard event files in ``folder`` (``train_loss`` is written as ``train/loss``)."""

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def _write(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k.replace("_", "/", 1), v, step)
        self.writer.flush()

    def close(self, finished: bool = True) -> None:
        """Close the event file."""
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
