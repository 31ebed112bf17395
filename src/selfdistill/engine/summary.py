"""The run summary: one typed record, written to ``<run>/summary.json`` and read back (CLI, report, born-again
generations) by the same code."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..version import __version__


@dataclass
class RunSummary:
    """What a finished run measured. ``last`` holds ``test_<metric>`` of the last evaluated epoch; ``best_val`` the
    epoch with the best validation value of the primary metric, with its ``val_<metric>`` and ``test_<metric>``
    (the test value that model selection on validation picks); times are medians over epochs."""

    run: str = ""
    task: str = "classification"
    metrics: list[str] = field(default_factory=list)
    """The task's metrics, the primary one first (summaries written before it was stored: the ``last`` keys)."""
    method: str = ""
    model: str = ""
    dataset: str = ""
    seed: int = 0
    epochs: int = 0
    last: dict[str, float] = field(default_factory=dict)
    last_per_class: dict[str, float] = field(default_factory=dict)
    """Per-class test results of the last epoch (segmentation IoU, detection AP)."""
    best_val: dict[str, float] | None = None
    ema_last: dict[str, float] | None = None
    supervised: bool = True
    extra_last: dict[str, float] = field(default_factory=dict)
    """A method's own evaluation at the last epoch (e.g. DINO's k-NN and linear-probe accuracies)."""
    eval_models_last: dict[str, dict[str, float]] = field(default_factory=dict)
    """Other models a method evaluates (BYOT's exits, the mean teacher's EMA model): their test metrics."""
    last_test_reliability: dict[str, list[float]] | None = None
    train_fit: dict[str, float] = field(default_factory=dict)
    """The final model's metrics on its own training images without augmentation (``train.eval_train``)."""
    seconds_per_epoch: float = math.nan
    images_per_s: float = math.nan
    passes_per_step: float = 1.0
    teachers: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    steps_per_epoch: int = 0
    num_params: int = 0
    num_train: int = 0
    num_val: int = 0
    num_test: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    generations: list[dict[str, Any]] | None = None
    """A run of stages (born-again generations): each stage's run, last and best-validation metrics."""
    ensemble: list[dict[str, Any]] | None = None
    """Ensembles of the stages' models: their members and metrics."""
    cost_note: str = ""

    def __post_init__(self) -> None:
        if not self.metrics:
            self.metrics = [k.removeprefix("test_") for k in self.last]

    @property
    def primary(self) -> str:
        """The primary metric."""
        return self.metrics[0]

    def test(self, metric: str) -> float:
        """The last epoch's test value of ``metric`` (nan when absent)."""
        return self.last.get(f"test_{metric}", math.nan)

    def at_best_val(self, split: str, metric: str) -> float:
        """``split``'s (``val`` or ``test``) value of ``metric`` at the best-validation epoch (nan without one)."""
        return math.nan if self.best_val is None else self.best_val.get(f"{split}_{metric}", math.nan)

    def checkpoint(self) -> Path:
        """The checkpoint of the model the run exports: its ``last.pt``, or its last stage's."""
        return Path(self.generations[-1]["run"] if self.generations else self.run) / "last.pt"

    def relocate(self, run_dir: str | Path) -> None:
        """Point the run's paths (its own and its stages') at ``run_dir``, where its folder is now: a moved run,
        or a run record committed from another checkout."""
        old, new = Path(self.run), Path(run_dir)
        for stage in self.generations or []:
            path = Path(stage["run"])
            stage["run"] = str(new / path.relative_to(old)) if path.is_relative_to(old) else stage["run"]
        self.run = str(new)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        """The summary of plain data (keys it does not know, from another version of the library, are dropped)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, path: str | Path) -> None:
        """Write ``summary.json``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> RunSummary:
        """Read a ``summary.json``."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def metric_results(history: list[dict[str, float]], metrics: tuple[str, ...] | list[str]
                   ) -> tuple[dict[str, Any], dict[str, float]]:
    """The summary's results from a run's per-epoch rows: ``last`` (the last evaluated epoch's test metrics),
    ``last_per_class`` (its other ``test_*`` columns), ``best_val`` (the earliest epoch of the best validation value
    of the primary metric, with its validation and test metrics) and the median epoch time and rate; and the last
    evaluated epoch's row itself."""
    main = metrics[0]
    evaluated = [r for r in history if f"test_{main}" in r]
    last = evaluated[-1] if evaluated else {}
    best = None
    with_val = [r for r in evaluated if f"val_{main}" in r]
    if with_val:
        b = max(with_val, key=lambda r: (r[f"val_{main}"], -r["epoch"]))  # earliest epoch among ties
        best = {"epoch": int(b["epoch"]), **{f"val_{m}": b[f"val_{m}"] for m in metrics},
                **{f"test_{m}": b[f"test_{m}"] for m in metrics}}
    times = [r["train_time_s"] for r in history]
    return {
        "epochs": len(history),
        "last": {f"test_{m}": last.get(f"test_{m}", math.nan) for m in metrics},
        "last_per_class": {k[5:]: v for k, v in last.items() if k.startswith("test_") and k[5:] not in metrics},
        "best_val": best,
        "ema_last": {m: last[f"ema_test_{m}"] for m in metrics} if f"ema_test_{main}" in last else None,
        # medians: an epoch slowed by a pause of the machine or by other work on it does not count
        "seconds_per_epoch": statistics.median(times) if times else math.nan,
        "images_per_s": statistics.median(r["images_per_s"] for r in history) if history else math.nan,
    }, last


def git_sha() -> str | None:
    """The library's commit: ``$SELFDISTILL_GIT_SHA`` if set (a copy exported from git, e.g. by ``git archive``,
    has no ``.git`` to ask), else the checkout's ``HEAD``; None outside a git checkout."""
    if os.environ.get("SELFDISTILL_GIT_SHA"):
        return os.environ["SELFDISTILL_GIT_SHA"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# instruction-set extensions that decide which CPU kernels run (bf16 autocast is emulated without avx512_bf16/amx)
_CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name and its speed-deciding extensions, e.g. ``Intel(R) Xeon(R) Processor [avx2 avx512f]``,
    read from ``cpuinfo`` (default: Linux's ``/proc/cpuinfo``); the platform's processor string elsewhere."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    first = cpuinfo.split("\n\n", 1)[0]  # one block per logical CPU: the first describes them all
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    return f"{fields['model name']} [{' '.join(f for f in _CPU_FEATURES if f in flags)}]"


def run_environment(device: torch.device, world_size: int) -> dict[str, Any]:
    """Library version and commit, torch, Python, platform, device (with the CPU's extensions) and threads of a run."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"selfdistill": __version__, "git_sha": git_sha(), "torch": torch.__version__,
            "python": sys.version.split()[0], "platform": platform.platform(), "device": str(device),
            "device_name": name, "threads": torch.get_num_threads(), "world_size": world_size}
