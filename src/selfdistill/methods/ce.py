"""Plain cross-entropy and its equal-images control ``ce_2x`` (docs/methods.md, baselines)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..batch import Batch, DataRequirements
from ..losses import cross_entropy
from .base import Method, StepOutput, register_method


@register_method("ce")
class CrossEntropy(Method):
    """Plain cross-entropy on one augmented view: L = CE(z, y)."""

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.x)
        return StepOutput({"ce": cross_entropy(logits, batch.y)}, logits, batch.y)


@dataclass
class CE2xOptions:
    """``ce_2x`` options."""

    second_view: Literal["weak", "strong"] = "weak"
    """The second view's pipeline: ``weak`` (two crop + flip views) or ``strong`` (as SLD's second view)."""


@register_method("ce_2x")
class CrossEntropy2x(Method):
    """CE on two augmented views of every image (2B images per step, one joint forward): the control for methods
    that train on 2B images per step (IPS, CS-KD, DLB, SLD, two-view consistency)."""

    Options = CE2xOptions
    passes_per_step = 2.0

    @classmethod
    def data_requirements(cls, options: CE2xOptions) -> DataRequirements:
        return DataRequirements(views=("weak", options.second_view))

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        z = model(torch.cat(batch.views))
        return StepOutput({"ce": cross_entropy(z, batch.y.repeat(2))}, z[:len(batch.y)], batch.y)
