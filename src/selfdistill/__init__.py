"""selfdistill: self-distillation for computer vision."""

from .config import ConfigError, RunConfig
from .data import list_datasets
from .engine import RunSummary
from .methods import list_methods
from .models import build_model, list_models
from .run import TrainingStopped, evaluate, export_model, load_model, resolve_config, train
from .version import __version__

__all__ = [
    "ConfigError", "RunConfig", "RunSummary", "TrainingStopped", "__version__", "build_model", "evaluate",
    "export_model", "list_datasets", "list_methods", "list_models", "load_model", "resolve_config", "train",
]
