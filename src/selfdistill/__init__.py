"""selfdistill: self-distillation for computer vision."""

__version__ = "0.1.0"

from .config import ConfigError, RunConfig, resolve_config
from .data import list_datasets
from .engine import evaluate, train
from .methods import list_methods
from .models import build_model, list_models

__all__ = [
    "ConfigError", "RunConfig", "__version__", "build_model", "evaluate", "list_datasets", "list_methods",
    "list_models", "resolve_config", "train",
]
