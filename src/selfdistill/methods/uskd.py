"""USKD: normalised self-KD with customised target and Zipf non-target soft labels (docs/methods.md, uskd)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batch import Batch
from ..config import limited
from ..engine.distributed import batch_mean, unwrap
from ..losses import cross_entropy, soft_cross_entropy, zipf_targets
from ..models.features import FeatureTaps, find_stages, tap_stages
from .base import Method, StepOutput, register_method


def uskd_target_weights(s_y: Tensor, world: int = 1) -> Tensor:
    """``p_i = s_{i,y}² + 1 − mean_batch(s_y²)`` (detached; its batch mean is exactly 1). ``world > 1``: the mean
    over the global batch of all ranks (the official code takes each GPU's own)."""
    sq = s_y.detach() ** 2
    return sq + 1 - batch_mean(sq, world)


def uskd_nontarget_targets(z: Tensor, w: Tensor, y: Tensor, rank_by: Literal["prob", "log_prob"] = "prob",
                           rank_scope: Literal["all", "nontarget"] = "nontarget") -> Tensor:
    """Zipf (1/rank) soft labels over the non-target classes, ranked by ``softmax(w)_c/(1 − softmax(w)_y) +
    s_c/(1 − s_y)``, ``s`` the probabilities or (``log_prob``) the log-probabilities of ``z``; ranks count the
    label's own place with ``rank_scope="all"``. 0 at the label, rows sum to 1."""
    z = z.detach().float()
    s, sw = (F.log_softmax(z, 1) if rank_by == "log_prob" else z.softmax(1)), w.detach().float().softmax(1)
    s_y, sw_y = s.gather(1, y[:, None]), sw.gather(1, y[:, None])
    score = sw / (1 - sw_y).clamp_min(1e-12) + s / (1 - s_y).clamp_min(1e-12)
    return zipf_targets(score, y, power=1.0, rank_scope=rank_scope)


@dataclass
class USKDOptions:
    """USKD options (defaults: CIFAR-100 values of ``yzd-v/cls_KD``)."""

    alpha: float = limited(0.1, low=0)
    """Weight of the normalised target term (ImageNet: 1)."""
    beta: float = limited(0.1, low=0)
    """Weight of the non-target term."""
    mu: float = limited(0.1, low=0)
    """Weight of the weak head's label-smoothed CE (ImageNet: 0.005)."""
    tap: str = ""
    """Module feeding the weak head (empty: the penultimate stage, found automatically)."""
    rank_by: Literal["prob", "log_prob"] = "prob"
    """The network's part of the non-target ranking score ``s_c/(1 − s_y)``: ``s`` its probabilities (the library's
    reading) or its log-probabilities (the official code's). Not the same ranking: the weak head's part is added."""
    rank_scope: Literal["all", "nontarget"] = "nontarget"
    """Rank the non-target classes among themselves, or among all classes with the label's own place counted before
    it is dropped (the official code)."""


@register_method("uskd")
class UniversalSelfKD(Method):
    """USKD: CE + α·normalised target term + β·Zipf non-target term + a weak auxiliary head on a shallower stage."""

    Options = USKDOptions
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"official": {"alpha": 0.1, "beta": 0.1, "mu": 0.1,
                                                                 "rank_by": "log_prob", "rank_scope": "all"},
                                                    "clean": {"alpha": 0.1, "beta": 0.1, "mu": 0.1},
                                                    "imagenet": {"alpha": 1.0, "beta": 0.1, "mu": 0.005,
                                                                 "rank_by": "log_prob", "rank_scope": "all"}}

    def setup(self, model: nn.Module) -> None:
        """Attach the weak head (pooling + linear) to the penultimate stage or the named tap."""
        net = unwrap(model)
        if self.opt.tap:
            stage = tap_stages(net, [self.opt.tap], self.ctx.in_chans, self.ctx.image_size)[0]
        else:
            stages = find_stages(net, self.ctx.in_chans, self.ctx.image_size)
            if len(stages) < 2:
                raise ValueError("uskd: the backbone has fewer than two stages; name the weak head's tap in method.tap")
            stage = stages[-2]
        self.taps = FeatureTaps(net, [stage.name])
        self.tap = stage.name
        self.weak = nn.Linear(stage.channels, self.ctx.num_classes)

    def trainable_modules(self) -> list[nn.Module]:
        """The weak head (optimised, not exported)."""
        return [self.weak]

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        o = self.opt
        y = batch.y
        z = model(batch.x)
        w = self.weak(torch.flatten(F.adaptive_avg_pool2d(self.taps.features[self.tap], 1), 1))
        k = z.shape[1]
        with torch.autocast(z.device.type, enabled=False):
            log_s = F.log_softmax(z.float(), 1)
            log_s_y = log_s.gather(1, y[:, None])[:, 0]
            # with sync_bn, batch statistics cover the global batch: this batch mean too
            p = uskd_target_weights(log_s_y.exp(), self.ctx.world if self.ctx.sync_bn else 1)
            target = -(p * log_s_y).mean()
            gt = F.one_hot(y, k).bool()
            log_nt = F.log_softmax(z.float().masked_fill(gt, -math.inf), 1).masked_fill(gt, 0.0)
            nontarget = -(uskd_nontarget_targets(z, w, y, o.rank_by, o.rank_scope) * log_nt).sum(1).mean()
        smooth = 0.9 * F.one_hot(y, k).float() + 0.1 / k
        return StepOutput({"ce": cross_entropy(z, y), "target": o.alpha * target, "nontarget": o.beta * nontarget,
                           "weak": o.mu * soft_cross_entropy(w, smooth)}, z, y,
                          {"weak_acc": (w.argmax(1) == y).float().mean()})
