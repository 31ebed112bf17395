"""Training utilities that know no method and no task: checkpoints, distributed helpers, stop signals, optimisers and
EMA, metrics, logging, per-sample memories and the run summary."""

from .checkpoint import CheckpointError, atomic_save, load_checkpoint, load_run_checkpoint, save_checkpoint
from .memory import SampleMemory
from .metrics import MetricAccumulator, expected_calibration_error, topk_correct
from .summary import RunSummary

__all__ = [
    "CheckpointError", "MetricAccumulator", "RunSummary", "SampleMemory", "atomic_save", "expected_calibration_error",
    "load_checkpoint", "load_run_checkpoint", "save_checkpoint", "topk_correct",
]
