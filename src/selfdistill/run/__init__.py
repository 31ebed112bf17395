"""Run orchestration, above methods and tasks: resolving a config, training (:func:`train`, :class:`Trainer`) and
evaluating (:func:`evaluate`)."""

from ..engine.optim import NonFiniteLossError
from .api import train
from .evaluation import evaluate, evaluate_split, load_run_model
from .resolve import resolve_config, resolve_device
from .resume import RunExistsError
from .trainer import Trainer

__all__ = [
    "NonFiniteLossError", "RunExistsError", "Trainer", "evaluate", "evaluate_split", "load_run_model",
    "resolve_config", "resolve_device", "train",
]
