"""Model zoo: CIFAR networks of the distillation literature plus any ``timm:`` or ``torchvision:`` model."""

from __future__ import annotations

from typing import Any

from torch import nn

from . import mobilenetv2, resnet_3stage, resnet_4stage, shufflenet, vgg, wrn  # noqa: F401  (registration)
from .features import FeatureTaps, feature_names
from .registry import MODELS, register_model

__all__ = ["MODELS", "FeatureTaps", "build_model", "feature_names", "is_model", "list_models", "register_model"]


def list_models(external: bool = False) -> list[str]:
    """Zoo names; with ``external`` also a hint for the ``timm:``/``torchvision:`` prefixes."""
    names = MODELS.names()
    return [*names, "timm:<name>", "torchvision:<name>"] if external else names


def is_model(name: str) -> bool:
    """Whether :func:`build_model` knows ``name``: a zoo name, a timm architecture (with or without a pretrained
    tag; a ``hf-hub:``/``local-dir:`` source is taken on trust) or a torchvision model."""
    if name.startswith("timm:"):
        import timm

        return ":" in name[5:] or timm.is_model(name[5:])
    if name.startswith("torchvision:"):
        import torchvision

        return name[12:] in torchvision.models.list_models()
    return name in MODELS


def build_model(name: str, num_classes: int, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """Build a model with ``num_classes`` outputs; ``timm:NAME`` and ``torchvision:NAME`` build those
    libraries' models with random weights (``pretrained=True`` is passed through to timm)."""
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name[5:], num_classes=num_classes, in_chans=in_chans, **kwargs)
    if name.startswith("torchvision:"):
        import torchvision

        if in_chans != 3:
            raise ValueError("torchvision models take 3-channel input; use a zoo or timm model for "
                             f"{in_chans}-channel data")
        return torchvision.models.get_model(name[12:], weights=None, num_classes=num_classes, **kwargs)
    return MODELS.get(name)(num_classes=num_classes, in_chans=in_chans, **kwargs)
