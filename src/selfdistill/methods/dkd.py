"""DKD: decoupled knowledge distillation, target-class and non-target-class terms (docs/methods.md, dkd)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batch import Batch
from ..config import limited
from ..losses import cross_entropy, kl_rows
from .base import StepOutput, register_method
from .teacher import TeacherMethod, TeacherOptions


def _binary_log_probs(z: Tensor, gt: Tensor) -> Tensor:
    """``log [p_y, 1 − p_y]`` per row, from log-sum-exps (no ``log(softmax)``)."""
    lse = z.logsumexp(1)
    log_py = (z.masked_fill(~gt, -math.inf)).logsumexp(1) - lse
    log_rest = (z.masked_fill(gt, -math.inf)).logsumexp(1) - lse
    return torch.stack([log_py, log_rest], 1)


def dkd_terms(zt: Tensor, zs: Tensor, y: Tensor, T: float, nckd_mask: float = 1000.0) -> tuple[Tensor, Tensor]:
    """Per-row ``(TCKD, NCKD)``, each ×T² (docs/methods.md, dkd).

    ``nckd_mask`` is subtracted from the target logit (after ÷T) before the non-target softmax: 1000 as in the
    official code, ``inf`` for true masking (the target entry is then left out of the KL).
    """
    with torch.autocast(zs.device.type, enabled=False):
        zt, zs = zt.float() / T, zs.float() / T
        gt = F.one_hot(y, zs.shape[1]).bool()
        tckd = kl_rows(_binary_log_probs(zt, gt).exp(), _binary_log_probs(zs, gt))
        if math.isinf(nckd_mask):
            mt, ms = zt.masked_fill(gt, -math.inf), zs.masked_fill(gt, -math.inf)
            p = F.softmax(mt, 1)
            log_q = F.log_softmax(ms, 1).masked_fill(gt, 0.0)  # p = 0 there: the entry drops out
            nckd = kl_rows(p, log_q)
        else:
            nckd = kl_rows(F.softmax(zt - nckd_mask * gt, 1), F.log_softmax(zs - nckd_mask * gt, 1))
        return T * T * tckd, T * T * nckd


@dataclass
class DKDOptions(TeacherOptions):
    """DKD options (defaults: mdistiller CIFAR, ResNet32x4 → ResNet8x4)."""

    alpha: float = limited(1.0, low=0)
    """Weight of TCKD."""
    beta: float = limited(8.0, low=0)
    """Weight of NCKD (2 for ResNet56→20 and 110→32, 6 for WRN/VGG pairs, 0.5 on ImageNet)."""
    T: float = limited(4.0, low=0, low_open=True)
    """Temperature."""
    warmup: int = limited(20, low=0)
    """Epochs of the linear warm-up of the KD part: factor ``min(e / warmup, 1)`` at 1-based epoch e."""
    w_ce: float = limited(1.0, low=0)
    """Weight of the label cross-entropy."""
    nckd_mask: float = limited(1000.0, low=0)
    """Subtracted from the target logit in the non-target softmax: 1000 (official) or ``inf`` (clean)."""


@register_method("dkd")
class DecoupledKD(TeacherMethod):
    """DKD: L = w_ce·CE + min(e/warmup, 1)·(α·TCKD + β·NCKD) against a frozen teacher."""

    Options = DKDOptions
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"official": {"nckd_mask": 1000.0},
                                                    "clean": {"nckd_mask": math.inf}}

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        o = self.opt
        zt = self.teacher(batch.x)  # the teacher first (same values): on CPU its forward ran
        # slower after the student's (benchmarks/throughput/README.md, beside torchdistill)
        zs = model(batch.x)
        tckd, nckd = dkd_terms(zt, zs, batch.y, o.T, o.nckd_mask)
        ramp = min(epoch / o.warmup, 1.0) if o.warmup > 0 else 1.0
        return StepOutput({"ce": o.w_ce * cross_entropy(zs, batch.y), "tckd": ramp * o.alpha * tckd.mean(),
                           "nckd": ramp * o.beta * nckd.mean()}, zs, batch.y, {"dkd_ramp": torch.tensor(ramp)})
