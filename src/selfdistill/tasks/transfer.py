"""The ``transfer`` mode of dense tasks: a segmenter's or detector's backbone initialised from a selfdistill
classification run of the matching torchvision network."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from ..engine.checkpoint import CheckpointError, load_checkpoint


def copy_backbone(target: nn.Module, expected: str, checkpoint: str | Path, model_name: str) -> int:
    """Copy a classification run's weights into ``target`` (a backbone cut from ``torchvision:<expected>``).

    The run must be a ``torchvision:<expected>`` model; every tensor of ``target`` must be found under its own name
    or under ``features.<name>`` (MobileNets keep their body in ``features``) with the same shape. Returns the
    number of tensors copied.
    """
    ck = load_checkpoint(checkpoint)
    if not (isinstance(ck, dict) and "model" in ck and "config" in ck):
        raise CheckpointError(f"{checkpoint} is not a selfdistill run checkpoint (<run>/last.pt)")
    got = ck["config"]["model"]["name"]
    if got.removeprefix("torchvision:") != expected:
        raise CheckpointError(f"model.init_backbone: {checkpoint} holds a '{got}', the backbone of '{model_name}' is "
                              f"torchvision:{expected}")
    source: dict[str, Tensor] = ck["model"]
    copied = {}
    for key, value in target.state_dict().items():
        src = next((k for k in (key, f"features.{key}") if k in source), None)
        if src is None or source[src].shape != value.shape:
            raise CheckpointError(f"model.init_backbone: backbone tensor '{key}' {tuple(value.shape)} has no match in "
                                  f"{checkpoint}")
        copied[key] = source[src]
    target.load_state_dict(copied)
    return len(copied)
