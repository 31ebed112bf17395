"""Model registry shared by the zoo modules."""

from __future__ import annotations

from collections.abc import Callable

from ..registry import Registry

MODELS: Registry = Registry("model")


def register_model(name: str) -> Callable:
    """Decorator: register a model factory ``(num_classes, in_chans, **kwargs) -> nn.Module`` as ``model.name``."""
    return MODELS.register(name)
