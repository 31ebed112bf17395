"""Segmentation networks: torchvision's FCN, DeepLabV3 and LR-ASPP built without downloaded weights, returning
plain logit maps; optionally with the backbone initialised from a selfdistill classification run (``transfer``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ...engine.checkpoint import CheckpointError, load_checkpoint

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
    ``lraspp_mobilenet_v3_large``); every backbone tensor must be found with the same shape. Returns the number
    of tensors copied.
    """
    expected = BACKBONES[name.removeprefix("torchvision:")]
    ck = load_checkpoint(checkpoint)
    if not (isinstance(ck, dict) and "model" in ck and "config" in ck):
        raise CheckpointError(f"{checkpoint} is not a selfdistill run checkpoint (<run>/last.pt)")
    got = ck["config"]["model"]["name"]
    if got.removeprefix("torchvision:") != expected:
        raise CheckpointError(f"model.init_backbone: {checkpoint} holds a '{got}', the backbone of '{name}' is "
                              f"torchvision:{expected}")
    source: dict[str, Tensor] = ck["model"]
    target = model.net.backbone.state_dict()
    copied = {}
    for key, value in target.items():
        # resnets keep their module names; mobilenets' backbone is the classifier's ``features``
        src = next((k for k in (key, f"features.{key}") if k in source), None)
        if src is None or source[src].shape != value.shape:
            raise CheckpointError(f"model.init_backbone: backbone tensor '{key}' {tuple(value.shape)} has no match in "
                                  f"{checkpoint}")
        copied[key] = source[src]
    model.net.backbone.load_state_dict(copied)
    return len(copied)

