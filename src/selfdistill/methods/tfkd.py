"""TF-KD: teacher-free KD with a self-teacher (``tfkd_self``) or a virtual teacher (``tfkd_reg``)
(docs/methods.md, tfkd)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batch import Batch
from ..config import limited
from ..losses import KLReduction, cross_entropy, kd_loss, kl_div
from .base import Method, StepOutput, register_method
from .teacher import TeacherMethod, TeacherOptions


@dataclass
class TFKDSelfOptions(TeacherOptions):
    """Tf-KD_self options (the teacher is a CE-trained copy of the same architecture)."""

    alpha: float = limited(0.95, low=0, high=1)
    """Weight of the distillation term; CE gets ``1 − alpha``."""
    T: float = limited(6.0, low=0, low_open=True)
    """Temperature."""
    multiplier: float = limited(50.0, low=0)
    """Extra factor on the distillation term (official 50 with ``elementwise_mean``)."""
    kl_reduction: KLReduction = "elementwise_mean"
    """Reduction of the KL (official ``elementwise_mean`` = ÷B·K)."""


@register_method("tfkd_self")
class TeacherFreeSelfKD(TeacherMethod):
    """Tf-KD_self: L = (1−α)·CE + α·multiplier·T²·KL(σ_T(sg z_t) ‖ σ_T(z_s)) from a self-teacher."""

    Options = TFKDSelfOptions
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "official": {"alpha": 0.95, "T": 6.0, "multiplier": 50.0, "kl_reduction": "elementwise_mean"},
        "clean": {"alpha": 0.95, "T": 6.0, "multiplier": 1.0, "kl_reduction": "batchmean"},
    }

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        o = self.opt
        zt = self.teacher(batch.x)  # the teacher first (same values): on CPU its forward ran
        # slower after the student's (benchmarks/throughput/README.md, beside torchdistill)
        zs = model(batch.x)
        return StepOutput({"ce": (1 - o.alpha) * cross_entropy(zs, batch.y),
                           "kd": o.alpha * o.multiplier * kd_loss(zt, zs, o.T, o.kl_reduction)}, zs, batch.y)


def virtual_teacher(y: Tensor, num_classes: int, a: float = 0.99) -> Tensor:
    """``p^d``: probability ``a`` on the label and ``(1 − a)/(K − 1)`` on every other class."""
    q = torch.full((y.numel(), num_classes), (1 - a) / (num_classes - 1), device=y.device)
    return q.scatter_(1, y[:, None], a)


def virtual_targets(y: Tensor, num_classes: int, a: float, tau: float,
                    form: Literal["prob_softmax", "logit_softmax"]) -> Tensor:
    """The virtual teacher's target: ``softmax(p^d/τ)`` (official, on the probability vector) or
    ``softmax(log p^d / τ) ∝ (p^d)^{1/τ}`` (clean, ``log p^d`` taken as logits)."""
    p = virtual_teacher(y, num_classes, a)
    return F.softmax((p if form == "prob_softmax" else p.log()) / tau, dim=1)


@dataclass
class TFKDRegOptions:
    """Tf-KD_reg (virtual teacher) options; defaults are the ``official`` preset."""

    a: float = limited(0.99, low=0, high=1)
    """Virtual teacher's probability on the true class."""
    tau: float = limited(20.0, low=0, low_open=True)
    """Temperature of the virtual target."""
    alpha: float = limited(0.1, low=0, high=1)
    """Weight of the regulariser; CE gets ``1 − alpha``."""
    target_form: Literal["prob_softmax", "logit_softmax"] = "prob_softmax"
    """``prob_softmax``: softmax of the probability vector ÷τ (official quirk); ``logit_softmax``: of ``log p^d``/τ."""
    temper_student: bool = False
    """Divide the student logits by τ in the KL (clean) or not (official)."""
    scale_T2: bool = False
    """Multiply the KL by τ² (clean)."""
    multiplier: float = limited(100.0, low=0)
    """Extra factor on the KL (official 100 with ``elementwise_mean``)."""
    kl_reduction: KLReduction = "elementwise_mean"
    """Reduction of the KL."""


@register_method("tfkd_reg")
class TeacherFreeVirtualKD(Method):
    """Tf-KD_reg: CE plus a KL towards a hand-designed virtual teacher that favours the true class."""

    Options = TFKDRegOptions
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "official": {"target_form": "prob_softmax", "temper_student": False, "scale_T2": False,
                     "multiplier": 100.0, "kl_reduction": "elementwise_mean"},
        "clean": {"target_form": "logit_softmax", "temper_student": True, "scale_T2": True, "multiplier": 1.0,
                  "kl_reduction": "batchmean"},
    }

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        o = self.opt
        z = model(batch.x)
        q = virtual_targets(batch.y, z.shape[1], o.a, o.tau, o.target_form)
        with torch.autocast(z.device.type, enabled=False):
            log_p = F.log_softmax(z.float() / (o.tau if o.temper_student else 1.0), dim=1)
        scale = o.multiplier * (o.tau**2 if o.scale_T2 else 1.0)
        reg = scale * kl_div(q, log_p, o.kl_reduction)
        return StepOutput({"ce": (1 - o.alpha) * cross_entropy(z, batch.y), "reg": o.alpha * reg}, z, batch.y)
