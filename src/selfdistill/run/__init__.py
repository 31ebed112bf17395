"""Run orchestration, above methods and tasks: resolving a config, training (:func:`train`, :class:`Trainer`) and
evaluating (:func:`evaluate`)."""

from ..engine.optim import NonFiniteLossError
from ..engine.preemption import EXIT_STOPPED, TrainingStopped
from .api import train
from .evaluation import evaluate, evaluate_split, load_run_model
from .resolve import resolve_config, resolve_device
from .trainer import RunExistsError, Trainer

__all__ = [
    "EXIT_STOPPED", "NonFiniteLossError", "RunExistsError", "Trainer", "TrainingStopped", "evaluate", "evaluate_split",
    "load_run_model", "resolve_config", "resolve_device", "train",
]
