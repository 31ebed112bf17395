"""Zipf's label smoothing: non-target soft labels from the network's own ranking (docs/methods.md, zipf)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batch import Batch
from ..config import limited
from ..engine.distributed import unwrap
from ..losses import cross_entropy, kl_rows, zipf_targets
from .base import Method, StepOutput, register_method


def dense_votes(features: Tensor, fc: nn.Linear) -> Tensor:
    """Per class, the number of positions of a ``(B, C, H, W)`` feature map where the classifier's arg-max is it."""
    logits = torch.einsum("bchw,kc->bkhw", features.float(), fc.weight.float())
    if fc.bias is not None:
        logits = logits + fc.bias.float()[None, :, None, None]
    winners = logits.argmax(1).flatten(1)  # (B, H·W)
    return torch.zeros(features.shape[0], fc.out_features, device=features.device).scatter_add_(
        1, winners, torch.ones_like(winners, dtype=torch.float))


@dataclass
class ZipfOptions:
    """Zipf's LS options."""

    lam: float = limited(0.1, low=0)
    """Weight λ of the KL term."""
    power: float = limited(1.0, low=0)
    """Zipf exponent (0 gives uniform non-target labels)."""
    score: Literal["dense", "logits"] = "dense"
    """Rank by the classifier's per-position votes on the last feature map (official) or by the logits."""
    rank_scope: Literal["all", "nontarget"] = "all"
    """Rank over all classes before the label is dropped, or over the non-target classes only."""
    mask_correct: bool = False
    """Apply the KL only to samples classified correctly."""
    mask_mean: Literal["batch", "correct"] = "batch"
    """With ``mask_correct``: the KL's mean over the batch (misclassified rows count 0) or over the correctly
    classified rows (the official code's ``--mask``; 0 when there are none)."""


@register_method("zipf")
class ZipfLabelSmoothing(Method):
    """Zipf's LS: CE + λ·KL(q ‖ softmax of the non-target logits), q from the network's own Zipf-ranked votes."""

    Options = ZipfOptions
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"official": {"score": "dense", "mask_mean": "correct"},
                                                    "clean": {"score": "dense"}}

    def setup(self, model: nn.Module) -> None:
        """The feature map is found on the first step (the last 4-D output that feeds the final linear layer)."""
        self.fc: nn.Linear | None = None
        self.feature: Tensor | None = None
        self.score = self.opt.score
        self._resolved = self.score == "logits"

    def _resolve(self, model: nn.Module, x: Tensor) -> Tensor:
        """Run the first forward with hooks on every module and keep the one whose output is the pre-pool map."""
        net = unwrap(model)
        linears = [m for m in net.modules() if isinstance(m, nn.Linear) and m.out_features == self.ctx.num_classes]
        outputs: list[tuple[nn.Module, Tensor]] = []
        handles = [m.register_forward_hook(lambda mod, _i, out: outputs.append((mod, out)))
                   for m in net.modules() if m is not net]
        logits = model(x)
        for h in handles:
            h.remove()
        fc = linears[-1] if linears else None
        cand = [m for m, out in outputs if isinstance(out, Tensor) and out.dim() == 4 and fc is not None
                and out.shape[1] == fc.in_features]
        if not cand:
            warnings.warn("zipf: no pre-pool feature map feeding a linear classifier was found; ranking by the "
                          "logits instead (score=logits)", stacklevel=2)
            self.score = "logits"
        else:
            self.fc = fc
            cand[-1].register_forward_hook(self._keep)
            self.feature = next(out for m, out in reversed(outputs) if m is cand[-1])
        self._resolved = True
        return logits

    def _keep(self, _module: nn.Module, _inputs: Any, output: Tensor) -> None:
        self.feature = output

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        o = self.opt
        z = self._resolve(model, batch.x) if not self._resolved else model(batch.x)
        y = batch.y
        with torch.no_grad():
            scores = dense_votes(self.feature, self.fc) if self.score == "dense" else z.detach()
            q = zipf_targets(scores, y, o.power, o.rank_scope)
        gt = F.one_hot(y, z.shape[1]).bool()
        with torch.autocast(z.device.type, enabled=False):
            log_p = F.log_softmax(z.float().masked_fill(gt, -math.inf), 1).masked_fill(gt, 0.0)
        kl = kl_rows(q, log_p)
        if o.mask_correct:
            correct = (z.detach().argmax(1) == y).float()
            kl = kl * correct
            if o.mask_mean == "correct":  # the batch mean becomes the mean over the correct rows
                kl = kl * (len(y) / correct.sum().clamp_min(1))
        return StepOutput({"ce": cross_entropy(z, y), "zipf": o.lam * kl.mean()}, z, y)
