"""Loading and labelling finished runs: a run folder's summary and per-epoch rows, its timing, and the label that
tells its method configuration (and any setting in which it differs from its group) apart."""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...engine.summary import RunSummary
from ..runner import method_label


@dataclass
class Run:
    """One finished run: its summary and per-epoch rows."""

    summary: RunSummary
    rows: list[dict[str, float]]
    label: str = ""
    group: tuple[str, str] = ("", "")
    timing: dict[str, float] = field(default_factory=dict)
    """``seconds_per_epoch`` and ``images_per_s`` from the per-epoch rows (see :func:`epoch_timing`); they take
    precedence over the summary's values."""

    @property
    def seed(self) -> int:
        return self.summary.seed

    @property
    def checkpoint(self) -> Path:
        """The checkpoint of the model the run exports: its ``last.pt``, or its last stage's (a born-again
        generation) for a staged run."""
        return self.summary.checkpoint()

    def metric(self, split: str, metric: str, at: str = "last") -> float:
        """``split``'s (``test`` or ``val``) value of ``metric`` at the last epoch (``at='last'``; validation values
        come from the last evaluated epoch's row) or at the best-validation epoch (``at='best'``)."""
        if at == "best":
            return self.summary.at_best_val(split, metric)
        if split == "test":
            return self.summary.test(metric)
        return next((r[f"{split}_{metric}"] for r in reversed(self.rows) if f"{split}_{metric}" in r), math.nan)

    @property
    def seconds_per_epoch(self) -> float:
        return self.timing.get("seconds_per_epoch", self.summary.seconds_per_epoch)

    @property
    def images_per_s(self) -> float:
        return self.timing.get("images_per_s", self.summary.images_per_s)


@dataclass
class Cell:
    """All seeds of one method configuration in one (dataset, model) group."""

    label: str
    runs: list[Run] = field(default_factory=list)

    def values(self, value: Callable[[Run], float]) -> list[float]:
        """``value`` of each run, by seed."""
        return [value(r) for r in sorted(self.runs, key=lambda r: r.seed)]


def read_rows(run_dir: Path) -> list[dict[str, float]]:
    """A run folder's per-epoch rows (its ``metrics.csv``, empty cells left out); none without the file."""
    if not (run_dir / "metrics.csv").is_file():
        return []
    with (run_dir / "metrics.csv").open(newline="") as fh:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(fh)]


def epoch_timing(stages: list[list[dict[str, float]]]) -> dict[str, float]:
    """Seconds per epoch and images/s of a run from the per-epoch rows of each of its stages (one stage for an
    ordinary run; one per born-again generation): medians over epochs, so that an epoch slowed by a pause of the
    machine or by other work on it does not count; stages add their epoch times (images/s: the rate of passing
    every image through all stages). Empty when a stage has no timed rows."""
    seconds, rates = [], []
    for rows in stages:
        t = [r["train_time_s"] for r in rows if "train_time_s" in r]
        v = [r["images_per_s"] for r in rows if "images_per_s" in r]
        if not t or not v:
            return {}
        seconds.append(statistics.median(t))
        rates.append(statistics.median(v))
    if not seconds:
        return {}
    return {"seconds_per_epoch": sum(seconds), "images_per_s": 1.0 / sum(1.0 / r for r in rates)}


def load_runs(root: str | Path) -> list[Run]:
    """Every run under ``root`` that has a ``summary.json``. A run's stages (born-again generations inside it) are
    part of that run, not runs of their own, also while the run is unfinished: a directory holding a run's
    ``config.yaml`` or ``summary.json`` is a run."""
    runs = []
    root = Path(root)
    paths = sorted(root.rglob("summary.json"))
    run_dirs = {p.parent for p in paths}

    def is_run_dir(d: Path) -> bool:
        return d in run_dirs or (d / "config.yaml").is_file()

    for path in paths:
        if any(is_run_dir(d) for d in path.parent.parents if d == root or root in d.parents):
            continue
        summary = RunSummary.load(path)
        summary.relocate(path.parent)
        stages = [d for d in sorted(run_dirs) if d.parent == path.parent]
        rows = read_rows(path.parent)
        cfg = summary.config
        label = method_label(cfg["method"], cfg.get("task", "classification"))
        timing = epoch_timing([read_rows(d) for d in stages] if stages else [rows])
        runs.append(Run(summary, rows, label, (cfg["data"]["name"], cfg["model"]["name"]), timing))
    _label_settings(runs)
    return runs


# run-environment settings that do not change what a run measures
_NOT_A_SETTING = ("seed", "name", "out", "method.", "data.root", "data.cache_dir", "data.num_workers",
                  "train.threads", "train.progress", "train.tensorboard", "train.log_every", "train.grad_norm_every",
                  "train.checkpoint_every_steps", "train.stop_signals")


def _flat(node: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": repr(v)})
    return out


def _label_settings(runs: list[Run]) -> None:
    """Tell apart runs of one method whose other settings differ (e.g. a grid entry with ``train.epochs: 48``):
    a setting that every run of the (dataset, model) group records but not all with the same value is appended
    to the label of the runs that differ from its most common value, e.g. ``ce [train.epochs=48]``."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.group].append(run)
    for members in groups.values():
        flats = [_flat(r.summary.config) for r in members]
        shared = set.intersection(*(set(f) for f in flats)) if flats else set()
        suffix: dict[int, list[str]] = defaultdict(list)
        for key in sorted(k for k in shared if not k.startswith(_NOT_A_SETTING)):
            values = [f[key] for f in flats]
            if len(set(values)) > 1:
                common = max(set(values), key=lambda v: (values.count(v), -values.index(v)))
                for i, v in enumerate(values):
                    if v != common:
                        suffix[i].append(f"{key}={v}")
        for i, parts in suffix.items():
            members[i].label += f" [{', '.join(parts)}]"
