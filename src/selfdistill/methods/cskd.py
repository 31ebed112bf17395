"""CS-KD: class-wise self-knowledge distillation (Yun et al., CVPR 2020; docs/methods.md, cskd)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..batch import Batch, DataRequirements
from ..config import limited
from ..losses import KLReduction, cross_entropy, kd_loss
from .base import Method, StepOutput, register_method


@dataclass
class CSKDOptions:
    """CS-KD options."""

    T: float = limited(4.0, low=0, low_open=True)
    """Distillation temperature."""
    lambda_cls: float = limited(1.0, low=0)
    """Weight of the class-wise KD term (1 on CIFAR/TinyImageNet, 3 on fine-grained data)."""
    partner_forward: Literal["separate_no_grad", "joint_detached"] = "separate_no_grad"
    """``separate_no_grad`` (official): the partner batch gets its own no-grad forward in train mode, after the
    anchors' (its own BN statistics, and it updates the running ones); ``joint_detached`` (clean): one forward
    over anchors and partners, partner logits detached."""
    kl_reduction: KLReduction = "batchmean"
    """Reduction of the KD term over anchors."""


@register_method("cskd")
class ClassWiseSelfKD(Method):
    """CS-KD: an anchor's prediction is pulled towards the network's prediction on another image of its class."""

    Options = CSKDOptions
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"official": {"partner_forward": "separate_no_grad"},
                                                    "clean": {"partner_forward": "joint_detached"}}
    requirements = DataRequirements(sampler="pair")
    passes_per_step = 1.0  # B trained; plus B no-grad partner forwards

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        o = self.opt
        if o.partner_forward == "joint_detached":
            za, zp = model(torch.cat([batch.x, batch.partner.x])).chunk(2)
        else:
            za = model(batch.x)
            with torch.no_grad():
                zp = model(batch.partner.x)
        kd = kd_loss(zp.detach(), za, o.T, o.kl_reduction)
        return StepOutput({"ce": cross_entropy(za, batch.y), "cls": o.lambda_cls * kd}, za, batch.y)
