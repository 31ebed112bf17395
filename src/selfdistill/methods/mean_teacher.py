"""Supervised mean teacher: an EMA copy of the network teaches the student across views
(docs/methods.md, mean_teacher)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..batch import Batch, DataRequirements
from ..config import limited
from ..engine.distributed import unwrap, update_center
from ..engine.optim import ModelEMA, cosine_to_one
from ..losses import cross_entropy, kd_loss, kl_div
from .base import Method, StepOutput, register_method


@dataclass
class MeanTeacherOptions:
    """Mean-teacher options (library design)."""

    T: float = limited(4.0, low=0, low_open=True)
    """Temperature of the ``kl`` consistency."""
    lam: float = limited(1.0, low=0)
    """Weight of the consistency term after the ramp."""
    ramp_fraction: float = limited(0.05, low=0, high=1)
    """Fraction of training over which the weight ramps up as ``exp(−5(1 − t)²)``."""
    ema_decay: float = limited(0.999, low=0, high=1)
    """EMA decay per step (the start value under the cosine schedule)."""
    ema_schedule: Literal["constant", "cosine", "warmup"] = "constant"
    """``cosine``: decay rises from ``ema_decay`` to 1 over training (DINO-style); ``warmup``: update n (1-based)
    uses ``min(1 − 1/(n + 1), ema_decay)``, the true average of the weights so far until it reaches ``ema_decay``
    (Mean Teacher's code)."""
    consistency: Literal["kl", "mse_prob"] = "kl"
    """``kl``: KD_T(sg z_t, z_s); ``mse_prob``: mean squared error between the probabilities (the original form)."""
    student_view: Literal["weak", "strong"] = "weak"
    """The student's view: an independent weak view or a strong (RandAugment + Cutout) one."""
    teacher_temp: float = limited(0.0, low=0)
    """DINO-style target instead of ``σ_T(z_t)``: ``softmax((z_t − c)/teacher_temp)`` with a centre ``c`` (an EMA
    of the teacher's logits, momentum ``center_momentum``); 0 keeps the plain temperature T (``kl`` only)."""
    center_momentum: float = limited(0.9, low=0, high=1)
    """Momentum of the centre used with ``teacher_temp``."""
    teacher_bn: Literal["copy", "average", "batch"] = "batch"
    """The teacher's BatchNorm: ``batch`` = the teacher normalises by its own batch's statistics (train-mode forward,
    as Mean Teacher's code does) and keeps its own running statistics, which its evaluation uses; ``copy`` = the
    student's running statistics (eval-mode forward); ``average`` = an EMA of them like the weights."""


BUFFERS: dict[str, Literal["average", "copy", "own"]] = {"copy": "copy", "average": "average", "batch": "own"}


@register_method("mean_teacher")
class MeanTeacher(Method):
    """Mean teacher: CE on the student view + λ(e)·consistency with the EMA model's prediction on a weak view."""

    Options = MeanTeacherOptions
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"official": {"consistency": "mse_prob", "teacher_bn": "batch",
                                                                 "ema_schedule": "warmup"},
                                                    "clean": {"consistency": "kl", "teacher_bn": "batch"}}

    @classmethod
    def data_requirements(cls, options: MeanTeacherOptions) -> DataRequirements:
        return DataRequirements(views=("weak", options.student_view))

    def setup(self, model: nn.Module) -> None:
        """The EMA teacher starts equal to the student; its BN buffers follow ``teacher_bn``."""
        self.ema = ModelEMA(unwrap(model), self.opt.ema_decay, buffers=BUFFERS[self.opt.teacher_bn])
        if self.opt.teacher_bn == "batch":  # the teacher normalises by its batch: synchronised like the student
            self.ema.module = self.ctx.sync_batchnorm(self.ema.module)
        self.step = 0
        self.center = torch.zeros(1, self.ctx.num_classes, device=self.ctx.device)

    def eval_models(self) -> dict[str, nn.Module]:
        """The EMA teacher, reported beside the student."""
        return {"teacher": self.ema.module}

    def weight(self) -> float:
        """``λ·exp(−5(1 − t)²)`` during the ramp, ``λ`` after it."""
        total = self.opt.ramp_fraction * self.ctx.epochs * self.ctx.steps_per_epoch
        t = min(self.step / total, 1.0) if total > 0 else 1.0
        return self.opt.lam * math.exp(-5 * (1 - t) ** 2)

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        o = self.opt
        zs = model(batch.views[1])
        with torch.no_grad():
            teacher = self.ema.module.train(o.teacher_bn == "batch")
            zt = teacher(batch.views[0]).float()
            teacher.eval()
        if o.consistency == "kl" and o.teacher_temp > 0:
            with torch.autocast(zs.device.type, enabled=False):
                target = F.softmax((zt - self.center) / o.teacher_temp, 1)
                cons = o.T**2 * kl_div(target, F.log_softmax(zs.float() / o.T, 1))
            update_center(self.center, zt, o.center_momentum, self.ctx.world)
        elif o.consistency == "kl":
            cons = kd_loss(zt, zs, o.T)
        else:
            with torch.autocast(zs.device.type, enabled=False):
                cons = F.mse_loss(zs.float().softmax(1), zt.softmax(1))
        w = self.weight()
        return StepOutput({"ce": cross_entropy(zs, batch.y), "consistency": w * cons}, zs, batch.y,
                          {"mt_weight": torch.tensor(w), "ema_decay": torch.tensor(self.decay_at(self.step))})

    def after_step(self, model: nn.Module) -> None:
        """Advance the EMA teacher with the decay of this step (:meth:`decay_at`)."""
        self.ema.decay = self.decay_at(self.step)
        self.step += 1
        self.ema.update(model)

    def state_dict(self) -> dict[str, Any]:
        """The EMA teacher and the step count."""
        return {"ema": self.ema.module.state_dict(), "step": self.step, "center": self.center}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the EMA teacher and the step count."""
        self.ema.module.load_state_dict(state["ema"])
        self.step = state["step"]
        self.center.copy_(state["center"])

    def decay_at(self, step: int) -> float:
        """The EMA decay of the update after the 0-based optimiser step ``step`` (the one logged with that step):
        ``ema_decay``; on the cosine from ``ema_decay`` towards 1 at ``step + 1``; under ``warmup``
        ``min(1 − 1/(step + 2), ema_decay)``, the official ``min(1 − 1/(global_step + 1), α)`` with the 1-based
        ``global_step``."""
        n = step + 1
        if self.opt.ema_schedule == "cosine":
            return cosine_to_one(self.opt.ema_decay, n, self.ctx.epochs * self.ctx.steps_per_epoch)
        if self.opt.ema_schedule == "warmup":
            return min(1 - 1 / (n + 1), self.opt.ema_decay)
        return self.opt.ema_decay
