"""Training engine: loop, checkpoints, distributed helpers, metrics, method state and logs."""

from .checkpoint import CheckpointError, atomic_save, load_checkpoint, save_checkpoint
from .metrics import MetricAccumulator, expected_calibration_error, topk_correct
from .state import SampleMemory, load_frozen_model
from .trainer import NonFiniteLossError, RunExistsError, Trainer, evaluate, train

__all__ = [
    "CheckpointError", "MetricAccumulator", "NonFiniteLossError", "RunExistsError", "SampleMemory", "Trainer",
    "atomic_save", "evaluate", "expected_calibration_error", "load_checkpoint", "load_frozen_model",
    "save_checkpoint", "topk_correct", "train",
]
