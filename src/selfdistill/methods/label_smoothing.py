"""Label smoothing (docs/methods.md, baselines)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..batch import Batch
from ..config import limited
from ..losses import soft_cross_entropy
from .base import Method, StepOutput, register_method


def smoothed_targets(y: Tensor, num_classes: int, epsilon: float,
                     form: Literal["uniform_all", "uniform_nontarget"] = "uniform_all") -> Tensor:
    """Smoothed one-hot targets: ``uniform_all`` gives ``(1−ε)e_y + ε/K``; ``uniform_nontarget`` gives the
    target ``1−ε`` and every other class ``ε/(K−1)``."""
    if form == "uniform_all":
        off, on = epsilon / num_classes, 1.0 - epsilon + epsilon / num_classes
    elif form == "uniform_nontarget":
        off, on = epsilon / (num_classes - 1), 1.0 - epsilon
    else:
        raise ValueError(f"unknown label-smoothing form '{form}'")
    q = torch.full((y.numel(), num_classes), off, device=y.device)
    return q.scatter_(1, y[:, None], on)


@dataclass
class LSOptions:
    """Label-smoothing options."""

    epsilon: float = limited(0.1, low=0, high=1)
    """Smoothing mass ε taken from the label."""
    ls_form: Literal["uniform_all", "uniform_nontarget"] = "uniform_all"
    """``uniform_all``: (1−ε)e_y + ε/K; ``uniform_nontarget``: the label keeps 1−ε, every other class ε/(K−1)."""


@register_method("label_smoothing")
class LabelSmoothing(Method):
    """Cross-entropy against smoothed one-hot targets: L = H(ỹ, z)."""

    Options = LSOptions

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.x)
        q = smoothed_targets(batch.y, logits.shape[1], self.opt.epsilon, self.opt.ls_form)
        return StepOutput({"ls": soft_cross_entropy(logits, q)}, logits, batch.y)
