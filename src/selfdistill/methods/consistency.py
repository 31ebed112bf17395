"""Augmentation-consistency self-distillation: views of one image teach each other (docs/methods.md, consistency)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batch import Batch, DataRequirements
from ..config import limited
from ..engine.distributed import unwrap
from ..losses import KLReduction, cross_entropy, kd_loss, kl_rows
from ..models.features import last_linear
from .base import Method, StepOutput, register_method


def jsd(logits: list[Tensor]) -> Tensor:
    """``(1/n) Σ_v KL(σ(z^v) ‖ M)`` with ``M`` the mean of the views' softmaxes, mean over rows (no stop-gradient);
    between 0 and ``log n``."""
    with torch.autocast(logits[0].device.type, enabled=False):
        probs = [F.softmax(z.float(), 1) for z in logits]
        log_m = torch.stack(probs).mean(0).clamp_min(1e-12).log()
        return torch.stack([kl_rows(p, log_m) for p in probs]).mean(0).mean()


@dataclass
class ConsistencyOptions:
    """Augmentation-consistency options (defaults: ``symmetric_kl``, two weak views, T = 4, λ = 1)."""

    form: Literal["symmetric_kl", "one_way", "jsd"] = "symmetric_kl"
    """``symmetric_kl``: every view teaches every other (detached targets); ``one_way``: weak → strong;
    ``jsd``: Jensen–Shannon divergence of all views (no stop-gradient), CE on the first (clean) view only."""
    views: int = limited(2, low=2)
    """Views per image (``jsd`` uses a clean view and ``views − 1`` augmented ones)."""
    T: float = limited(4.0, low=0, low_open=True)
    """Temperature of the KL forms."""
    lam: float = limited(1.0, low=0)
    """Weight of the consistency term (the AugMix JSD weight is 12)."""
    kl_reduction: KLReduction = "batchmean"
    """Reduction of the KL terms."""
    divergence: Literal["kl", "mse"] = "kl"
    """``symmetric_kl``/``one_way``: KD_T (KL at temperature T) or the mean squared error between the views'
    probabilities (target side detached)."""
    ce_scale: float = limited(1.0, low=0)
    """Factor on the CE term (DDGSD's code halves its mean over the two views: 0.5)."""
    feat_weight: float = limited(0.0, low=0)
    """Weight of the feature term ``Σ_{v<w} (mean f^v − mean f^w)²``, ``f^v`` the pooled features (the classifier's
    input) of view v, each mean over all rows and channels (DDGSD's code: 5e-4 with two views; 0: off)."""


@register_method("consistency")
class AugmentationConsistency(Method):
    """Views of the same image pulled together: CE on the views plus a KL (or JSD) between their predictions."""

    Options = ConsistencyOptions
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "official": {"form": "symmetric_kl", "views": 2, "T": 4.0, "lam": 1.0, "ce_scale": 0.5, "feat_weight": 5e-4},
        "clean": {"form": "symmetric_kl", "views": 2, "T": 4.0, "lam": 1.0},
        "augmix": {"form": "jsd", "views": 3, "lam": 12.0},
        "weak_strong": {"form": "one_way", "views": 2},
    }

    @classmethod
    def data_requirements(cls, options: ConsistencyOptions) -> DataRequirements:
        rest = ("strong",) if options.form in ("one_way", "jsd") else ("weak",)
        return DataRequirements(views=("weak",) + rest * (options.views - 1))

    @classmethod
    def cost(cls, options: ConsistencyOptions) -> float:
        return float(options.views)

    def setup(self, model: nn.Module) -> None:
        """With ``feat_weight``, hook the classifier's input (the pooled features of all views)."""
        self.feats: Tensor | None = None
        if self.opt.feat_weight > 0:
            last_linear(unwrap(model)).register_forward_pre_hook(self._keep)

    def _keep(self, _module: nn.Module, args: tuple[Tensor, ...]) -> None:
        self.feats = args[0]

    def _divergence(self, target: Tensor, z: Tensor) -> Tensor:
        o = self.opt
        if o.divergence == "kl":
            return kd_loss(target, z, o.T, o.kl_reduction)
        with torch.autocast(z.device.type, enabled=False):
            return F.mse_loss(z.float().softmax(1), target.float().softmax(1))

    def training_step(self, model, batch: Batch, epoch: int) -> StepOutput:
        o = self.opt
        n = len(batch.views)
        z = list(model(torch.cat(batch.views)).chunk(n))
        y = batch.y
        feat: dict[str, Tensor] = {}
        feats, self.feats = self.feats, None  # this step's forward only: never a stale (e.g. evaluation) batch
        if o.feat_weight > 0:
            if feats is None or len(feats) != sum(len(v) for v in batch.views):
                raise RuntimeError("consistency: feat_weight > 0 but the step's forward did not pass the classifier "
                                   "that setup hooked (the model's last nn.Linear)")
            means = feats.float().flatten(1).chunk(n)
            feat = {"feat": o.feat_weight * sum((means[v].mean() - means[w].mean()) ** 2
                                                for v in range(n) for w in range(v + 1, n))}
        if o.form == "jsd":
            return StepOutput({"ce": o.ce_scale * cross_entropy(z[0], y), "jsd": o.lam * jsd(z), **feat}, z[0], y)
        ce = sum(cross_entropy(zv, y) for zv in z) / n
        pairs = [(0, n - 1)] if o.form == "one_way" else [(w, v) for v in range(n) for w in range(n) if v != w]
        cons = sum(self._divergence(z[w].detach(), z[v]) for w, v in pairs)
        return StepOutput({"ce": o.ce_scale * ce, "consistency": o.lam * cons, **feat}, z[0], y,
                          {"view_agree": (z[0].argmax(1) == z[-1].argmax(1)).float().mean()})
