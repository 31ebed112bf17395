"""Run orchestration, above methods and tasks: resolving a config, training (:func:`train`, :class:`Trainer`),
evaluating (:func:`evaluate`) and taking the model out (:func:`export_model`, :func:`load_model`, :func:`predict`)."""

from ..engine.optim import NonFiniteLossError
from ..engine.preemption import EXIT_STOPPED, TrainingStopped
from .api import train
from .evaluation import evaluate, evaluate_split, load_run_model
from .export import export_model, load_model
from .predict import image_files, predict
from .resolve import resolve_config, resolve_device
from .resume import RunExistsError
from .trainer import Trainer

__all__ = [
    "EXIT_STOPPED", "NonFiniteLossError", "RunExistsError", "Trainer", "TrainingStopped", "evaluate", "evaluate_split",
    "export_model", "image_files", "load_model", "load_run_model", "predict", "resolve_config", "resolve_device",
    "train",
]
