"""DLB: self-distillation from the last mini-batch (docs/methods.md, dlb).

Each step forwards the current batch's first view and the previous batch's second view; the previous batch is
pulled towards the logits it got one step earlier. The cache (inputs, labels, logits) carries across epoch
boundaries and is checkpointed, so a resumed run distils exactly what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..batch import Batch, DataRequirements
from ..config import limited
from ..losses import KLReduction, cross_entropy, kd_loss
from .base import Method, StepOutput, register_method


@dataclass
class DLBOptions:
    """DLB options (T = 3, α = 1: the commonly attributed values [unverified])."""

    T: float = limited(3.0, low=0, low_open=True)
    """Distillation temperature."""
    alpha: float = limited(1.0, low=0)
    """Weight of the distillation term."""
    joint_forward: bool = False
    """``false`` (official): two forwards, the current batch first, then the previous batch's second view (each
    normalised by its own BatchNorm statistics, the running ones updated in that order); ``true``: one forward over
    both (shared statistics)."""
    kl_reduction: KLReduction = "batchmean"
    """Reduction of the KL over rows."""


@register_method("dlb")
class LastBatchSelfKD(Method):
    """DLB: the previous batch, re-forwarded on its second view, is distilled towards its logits of one step ago."""

    Options = DLBOptions
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"official": {"joint_forward": False},
                                                    "clean": {"joint_forward": True}}
    requirements = DataRequirements(views=("weak", "weak"))
    passes_per_step = 2.0  # B current + B previous images (the first step of training: B)

    def setup(self, model: nn.Module) -> None:
        """Start with an empty cache (the first step of training is plain CE)."""
        self.cache: dict[str, Tensor] | None = None

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        o = self.opt
        x_cur, x_next = batch.views[0], batch.views[1]
        prev = self.cache
        if prev is None:
            z_cur = model(x_cur)
            losses = {"ce": cross_entropy(z_cur, batch.y)}
        else:
            if o.joint_forward:
                z_prev, z_cur = model(torch.cat([prev["x"], x_cur])).split([len(prev["y"]), len(batch.y)])
            else:  # the official order: current batch, then the previous one
                z_cur = model(x_cur)
                z_prev = model(prev["x"])
            losses = {"ce": cross_entropy(torch.cat([z_prev, z_cur]), torch.cat([prev["y"], batch.y])),
                      "kd": o.alpha * kd_loss(prev["logits"], z_prev, o.T, o.kl_reduction)}
        self.cache = {"x": x_next.detach(), "y": batch.y.detach(), "logits": z_cur.detach().float()}
        return StepOutput(losses, z_cur, batch.y)

    def state_dict(self) -> dict[str, Any]:
        """The previous batch's second view, labels and logits."""
        return {"cache": self.cache}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the cache."""
        cache = state["cache"]
        self.cache = None if cache is None else {k: v.to(self.ctx.device) for k, v in cache.items()}
