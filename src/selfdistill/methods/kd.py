"""Hinton KD: a student matches a frozen teacher's softened outputs (docs/methods.md, kd)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from ..batch import Batch
from ..config import limited
from ..losses import KLReduction, cross_entropy, kd_loss
from .base import StepOutput, register_method
from .teacher import TeacherMethod, TeacherOptions


@dataclass
class KDOptions(TeacherOptions):
    """Hinton KD options (defaults: the CRD CIFAR protocol, RepDistiller ``-r 0.1 -a 0.9``)."""

    T: float = limited(4.0, low=0, low_open=True)
    """Distillation temperature."""
    w_ce: float = limited(0.1, low=0)
    """Weight of the label cross-entropy."""
    w_kd: float = limited(0.9, low=0)
    """Weight of ``KD_T(teacher, student)`` (already ×T²)."""
    kl_reduction: KLReduction = "batchmean"
    """Reduction of the KL over rows (``elementwise_mean`` divides by B·K)."""


@register_method("kd")
class HintonKD(TeacherMethod):
    """Hinton KD: L = w_ce·CE(z_s, y) + w_kd·KD_T(z_t, z_s) with a frozen teacher on the same view."""

    Options = KDOptions
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "cifar": {"T": 4.0, "w_ce": 0.1, "w_kd": 0.9},
        "imagenet": {"T": 1.0, "w_ce": 0.5, "w_kd": 0.5},
    }

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        o = self.opt
        zt = self.teacher(batch.x)  # the teacher first (same values): on CPU its forward ran
        # slower after the student's (benchmarks/throughput/README.md, beside torchdistill)
        zs = model(batch.x)
        return StepOutput({"ce": o.w_ce * cross_entropy(zs, batch.y),
                           "kd": o.w_kd * kd_loss(zt, zs, o.T, o.kl_reduction)}, zs, batch.y)
