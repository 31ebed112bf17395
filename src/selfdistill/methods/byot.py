"""BYOT: layer-wise self-distillation through auxiliary heads on intermediate stages (docs/methods.md, byot).

Heads sit on feature taps of any backbone (the CIFAR zoo, ``timm:``, ``torchvision:``): by default every stage
but the last (:func:`selfdistill.models.features.find_stages`), or the modules named in ``taps``. Each head
brings its tap to the deepest stage's channels and resolution with stride-2 bottleneck blocks, then pools and
classifies. Heads are trained with the model but are not part of it: the exported and evaluated model is the
plain backbone; each exit and the ensemble of all exits are evaluated beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batch import Batch
from ..config import limited
from ..engine.distributed import unwrap
from ..losses import cross_entropy, kd_loss, soft_cross_entropy
from ..models.features import FeatureTaps, find_stages, tap_stages
from .base import Method, StepOutput, register_method


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 stride 2, 1×1 expand, with a projection shortcut (stride 2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = max(cout // 4, 8)
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, 2, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def pooled(f: Tensor) -> Tensor:
    """Global average pooling of a ``(B, C, H, W)`` map to ``(B, C)``."""
    return torch.flatten(F.adaptive_avg_pool2d(f, 1), 1)


class AuxHead(nn.Module):
    """``n_down`` bottlenecks to ``channels`` at the deepest stride, global average pooling and a linear layer;
    returns ``(logits, feature map before pooling)``."""

    def __init__(self, cin: int, channels: int, n_down: int, num_classes: int) -> None:
        super().__init__()
        blocks = [Bottleneck(cin if i == 0 else channels, channels) for i in range(n_down)]
        self.blocks = nn.Sequential(*blocks) if blocks else nn.Identity()
        self.proj = nn.Identity() if blocks or cin == channels else nn.Conv2d(cin, channels, 1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.proj(self.blocks(x))
        return self.fc(pooled(f)), f


class Exit(nn.Module):
    """Backbone + one auxiliary head (``head=None``: the ensemble of every head and the backbone's own output,
    as log mean probabilities) for evaluation."""

    def __init__(self, method: BYOT, model: nn.Module, head: int | None) -> None:
        super().__init__()
        self.method, self.model, self.head = method, model, head
        self.heads = method.heads  # a sub-module, so that eval() reaches the heads' BatchNorm too

    def forward(self, x: Tensor) -> Tensor:
        deepest = self.model(x)
        exits = self.method.head_outputs()
        if self.head is not None:
            return exits[self.head][0]
        probs = torch.stack([z.float().softmax(1) for z, _ in exits] + [deepest.float().softmax(1)]).mean(0)
        return probs.clamp_min(1e-12).log()


@dataclass
class BYOTOptions:
    """BYOT options (default: the journal code's logit loss with T² and without its feature term, the ``clean``
    preset; the ``official`` preset is the journal code's loss)."""

    byot_form: Literal["official_journal", "paper", "selfkdlib"] = "official_journal"
    """``official_journal``: CE(q_N) + Σ 0.7·CE(q_i) + 0.3·H(σ_T(sg q_N), q_i/T) (+ ``journal_feat_weight``);
    ``paper``: (1−α)·CE on every exit + α·KD_T + λ·feature hint; ``selfkdlib``: CE on every exit + KD_4 + 0.05·MSE
    feature hint."""
    taps: list[str] = field(default_factory=list)
    """Modules to attach heads to (empty: every stage but the last, found automatically)."""
    T: float = limited(3.0, low=0, low_open=True)
    """Temperature."""
    alpha: float = limited(0.3, low=0, high=1)
    """Weight of the soft term (``paper``: α; CE gets 1 − α)."""
    feat_weight: float = limited(1e-6, low=0)
    """Feature-hint weight λ of the ``paper`` form (``selfkdlib`` uses 0.05)."""
    t2_scale: bool = True
    """Multiply the ``official_journal`` soft term by T² (the journal code does not)."""
    journal_feat_weight: float = limited(0.0, low=0)
    """``official_journal``: weight of the journal code's feature term ``‖A_i(pool F_i) − sg pool F_N‖`` (``A_i`` a
    trainable linear layer, the L2 norm of the whole batch's difference) on every head but the deepest one, as its
    code does (its comment says the shallowest); the journal code: 0.03; 0: off."""


@register_method("byot")
class BYOT(Method):
    """BYOT: auxiliary heads on intermediate stages learn from the deepest classifier (logits and features)."""

    Options = BYOTOptions
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "official": {"byot_form": "official_journal", "T": 3.0, "alpha": 0.3, "t2_scale": False,
                     "journal_feat_weight": 0.03},
        "clean": {"byot_form": "official_journal", "T": 3.0, "alpha": 0.3, "t2_scale": True},
        "paper": {"byot_form": "paper", "T": 3.0, "alpha": 0.1, "feat_weight": 1e-6},
        "selfkdlib": {"byot_form": "selfkdlib", "T": 4.0, "feat_weight": 0.05},
    }

    def setup(self, model: nn.Module) -> None:
        """Find the stages, build one head per tap, and hook the taps and the last stage."""
        net = unwrap(model)
        stages = find_stages(net, self.ctx.in_chans, self.ctx.image_size)
        if len(stages) < 2 and not self.opt.taps:
            raise ValueError("byot: the backbone has fewer than two stages; name the taps in method.taps")
        last = stages[-1]
        self.taps = tap_stages(net, self.opt.taps, self.ctx.in_chans, self.ctx.image_size) if self.opt.taps \
            else stages[:-1]
        taps = self.taps
        self.heads = nn.ModuleList(
            AuxHead(s.channels, last.channels, max(round(math.log2(s.height / last.height)), 0),
                    self.ctx.num_classes) for s in taps)
        # the journal code's adaptation layers, one per head but the deepest (pooled head feature → deepest's)
        self.adapt: nn.ModuleList | None = None
        if self.opt.journal_feat_weight > 0 and len(taps) > 1:
            self.adapt = nn.ModuleList(nn.Linear(last.channels, last.channels) for _ in taps[:-1])
        self.hooks = FeatureTaps(net, [s.name for s in taps] + [last.name])
        self.last = last.name
        self._model = net

    def trainable_modules(self) -> list[nn.Module]:
        """The auxiliary heads and the journal feature term's adaptation layers (optimised, not exported)."""
        return [self.heads] + ([self.adapt] if self.adapt is not None else [])

    def head_outputs(self) -> list[tuple[Tensor, Tensor]]:
        """``(logits, pre-pool feature)`` of every head for the last forward."""
        return [head(self.hooks.features[s.name]) for head, s in zip(self.heads, self.taps, strict=True)]

    def eval_models(self) -> dict[str, nn.Module]:
        """Every exit and the ensemble of all exits (mean softmax)."""
        exits = {f"exit{i + 1}": Exit(self, self._model, i) for i in range(len(self.heads))}
        return {**exits, "ensemble": Exit(self, self._model, None)}

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        o = self.opt
        y = batch.y
        q_n = model(batch.x)
        f_n = self.hooks.features[self.last]
        exits = self.head_outputs()
        target = q_n.detach()
        if o.byot_form == "official_journal":
            soft = [soft_cross_entropy(q / o.T, F.softmax(target.float() / o.T, 1)) for q, _ in exits]
            scale = o.T**2 if o.t2_scale else 1.0
            losses = {"ce": cross_entropy(q_n, y),
                      "ce_exits": 0.7 * sum(cross_entropy(q, y) for q, _ in exits),
                      "kd_exits": 0.3 * scale * sum(soft)}
            if self.adapt is not None:
                t_n = pooled(f_n.detach()).float()
                losses["hint"] = o.journal_feat_weight * sum(
                    torch.dist(a(pooled(f)).float(), t_n) for a, (_, f) in zip(self.adapt, exits[:-1], strict=True))
        elif o.byot_form == "paper":
            losses = {"ce": (1 - o.alpha) * (cross_entropy(q_n, y) + sum(cross_entropy(q, y) for q, _ in exits)),
                      "kd_exits": o.alpha * sum(kd_loss(target, q, o.T) for q, _ in exits),
                      "hint": o.feat_weight * sum(((f - f_n.detach()) ** 2).sum() / len(y) for _, f in exits)}
        else:
            losses = {"ce": cross_entropy(q_n, y) + sum(cross_entropy(q, y) for q, _ in exits),
                      "kd_exits": sum(kd_loss(target, q, o.T) for q, _ in exits),
                      "hint": o.feat_weight * sum(F.mse_loss(f, f_n.detach()) for _, f in exits)}
        stats = {f"exit{i + 1}_acc": (q.argmax(1) == y).float().mean() for i, (q, _) in enumerate(exits)}
        return StepOutput(losses, q_n, y, stats)
