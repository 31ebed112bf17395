"""Plain cross-entropy (methods.md §15)."""

from __future__ import annotations

from torch import nn

from ..data.loader import Batch
from ..losses import cross_entropy
from .base import Method, StepOutput, register_method


@register_method("ce")
class CrossEntropy(Method):
    """Plain cross-entropy on one augmented view: L = CE(z, y)."""

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.x)
        return StepOutput({"ce": cross_entropy(logits, batch.y)}, logits, batch.y)
