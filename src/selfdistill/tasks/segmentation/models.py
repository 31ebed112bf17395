"""Segmentation networks: torchvision's FCN, DeepLabV3 and LR-ASPP built without downloaded weights, returning
plain logit maps; optionally with the backbone initialised from a selfdistill classification run (``transfer``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..transfer import copy_backbone

SEG_MODELS = ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
              "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")
# the torchvision classification network each segmenter's backbone is cut from
BACKBONES = {"fcn_resnet50": "resnet50", "fcn_resnet101": "resnet101", "deeplabv3_resnet50": "resnet50",
             "deeplabv3_resnet101": "resnet101", "deeplabv3_mobilenet_v3_large": "mobilenet_v3_large",
             "lraspp_mobilenet_v3_large": "mobilenet_v3_large"}


class SegmentationNet(nn.Module):
    """A torchvision segmenter whose forward returns the ``(N, K, H, W)`` logits of its ``out`` head."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)["out"]


def build_segmentation_model(name: str, num_classes: int, in_chans: int = 3, **kwargs: Any) -> SegmentationNet:
    """``name`` (with or without ``torchvision:``) from :data:`SEG_MODELS`, random weights, ``num_classes``
    outputs; ``kwargs`` go to torchvision's builder (``aux_loss`` is off: only ``out`` is trained)."""
    import torchvision

    base = name.removeprefix("torchvision:")
    if base not in SEG_MODELS:
        from ...registry import did_you_mean

        raise ValueError(f"unknown segmentation model '{name}'.{did_you_mean(base, list(SEG_MODELS))} Known: "
                         f"{', '.join(SEG_MODELS)}")
    if in_chans != 3:
        raise ValueError("torchvision segmentation models take 3-channel input")
    return SegmentationNet(torchvision.models.get_model(base, weights=None, weights_backbone=None,
                                                        num_classes=num_classes, aux_loss=False, **kwargs))


def init_backbone(model: SegmentationNet, name: str, checkpoint: str | Path) -> int:
    """Copy a selfdistill classification run's network into ``model``'s backbone (the ``transfer`` mode).

    The run must be a ``torchvision:<backbone>`` model of the segmenter's family (e.g. ``mobilenet_v3_large`` for
    ``lraspp_mobilenet_v3_large``). Returns the number of tensors copied.
    """
    return copy_backbone(model.net.backbone, BACKBONES[name.removeprefix("torchvision:")], checkpoint, name)
