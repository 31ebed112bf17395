"""Optimisers, per-step learning-rate schedules and a model EMA."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..config import OptimConfig, SchedConfig


def param_groups(modules: Iterable[nn.Module], weight_decay: float, exclude_norm_bias: bool) -> list[dict]:
    """Parameter groups; with ``exclude_norm_bias`` every 0-/1-D tensor (biases, norm scales) gets no decay."""
    decay, no_decay = [], []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                (no_decay if exclude_norm_bias and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(modules: Iterable[nn.Module], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over ``modules``."""
    groups = param_groups(modules, cfg.weight_decay, cfg.wd_exclude_norm_bias)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_factor(step: int, cfg: SchedConfig, steps_per_epoch: int, epochs: int) -> float:
    """LR multiplier at optimiser step ``step`` (0-based), applied to the base LR.

    ``multistep``: × ``gamma`` for every milestone ``m`` with current (1-based) epoch > ``m``.
    ``cosine``: half-cosine from 1 to ``min_lr/lr`` over all steps. Both, and ``constant``, start with a linear
    warm-up from ``warmup_start_factor`` over ``warmup_epochs``.
    """
    total = steps_per_epoch * epochs
    epoch0 = step // steps_per_epoch
    if cfg.name == "multistep":
        factor = cfg.gamma ** sum(epoch0 >= m for m in cfg.milestones)
    elif cfg.name == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0)))
    else:
        factor = 1.0
    warm = cfg.warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        factor *= cfg.warmup_start_factor + (1 - cfg.warmup_start_factor) * step / warm
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedConfig, base_lr: float, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A scheduler stepped once per optimiser step."""
    if cfg.name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=base_lr, total_steps=steps_per_epoch * epochs,
                                                   pct_start=cfg.pct_start, cycle_momentum=False)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg, base_lr, steps_per_epoch, epochs))


def lr_multiplier(cfg: SchedConfig, base_lr: float, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """The learning-rate multiplier after optimiser step ``step`` of the schedules other than ``onecycle``: warm-up,
    then cosine down to ``min_lr`` (a fraction of ``base_lr``) or the multistep decay."""
    floor = cfg.min_lr / base_lr if base_lr > 0 else 0.0

    def fn(step: int) -> float:
        f = lr_factor(step, cfg, steps_per_epoch, epochs)
        return floor + (1 - floor) * f if cfg.name == "cosine" else f

    return fn


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; training stopped before the optimiser step."""


def non_finite_error(losses: dict[str, torch.Tensor], total: torch.Tensor, where: str,
                     checkpoint: Path | None) -> NonFiniteLossError:
    """The error for a non-finite loss at ``where``: it names the first bad term and its value, and the last good
    checkpoint (``None``: none was written yet)."""
    bad = next((k for k, v in losses.items() if not bool(torch.isfinite(v).all())), "total")
    kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
    return NonFiniteLossError(
        f"non-finite loss at {where}: term '{bad}' = {float(losses.get(bad, total).detach())}. Training stopped "
        f"before the update; {kept}. Lower optim.lr, set optim.grad_clip, or use train.amp=none, then continue with "
        "--resume.")


def term_grad_norms(losses: dict[str, torch.Tensor], params: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The gradient norm of each loss term with respect to ``params``, without touching their ``.grad``: what each
    term asks of the shared weights (terms without a graph are left out)."""
    norms = {}
    for name, term in losses.items():
        if not term.requires_grad:
            continue
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        norms[name] = torch.sqrt(sum(g.double().pow(2).sum() for g in grads if g is not None))
    return norms


def cosine_to_one(base: float, step: int, total: int) -> float:
    """An EMA decay rising from ``base`` at step 0 to 1 at step ``total`` along a half cosine (DINO's schedule)."""
    progress = min(step / max(total, 1), 1.0)
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


class ModelEMA(nn.Module):
    """Exponential moving average of a model's parameters and floating buffers. ``buffers``: ``average`` (EMA
    of BatchNorm statistics too), ``copy`` (taken from the model at each update) or ``own`` (left to the EMA
    model's own train-mode forwards); integer buffers are copied unless ``own``."""

    def __init__(self, model: nn.Module, decay: float, buffers: Literal["average", "copy", "own"] = "average"
                 ) -> None:
        super().__init__()
        self.decay = decay
        self.buffers_mode = buffers
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.params = {k for k, _ in self.module.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``ema ← decay·ema + (1−decay)·model``."""
        src = model.state_dict()
        for k, v in self.module.state_dict().items():
            if k in self.params or (v.dtype.is_floating_point and self.buffers_mode == "average"):
                v.lerp_(src[k].detach(), 1 - self.decay)
            elif self.buffers_mode != "own":
                v.copy_(src[k])
