"""Model registry shared by the zoo modules."""

from __future__ import annotations

from ..registry import Registry

MODELS: Registry = Registry("model")
