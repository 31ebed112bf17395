"""Intra-class Patch Swap (IPS), the library's headline method (docs/methods.md, ips).

Two images of the same class swap a random set of grid cells at the same positions; the network sees both
swapped images and, by default, the two clean ones too (CE on all four), and within each pair the two swapped
views teach each other through a KD term at a small weight (each detached as the other's teacher). The
specification's reading (``preset: spec``) lets the more confident swapped view alone teach, at λ = 1, with CE on
the swapped images only. One network, no extra parameters; inference is a plain forward of the clean image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batch import Batch, DataRequirements
from ..losses import KLReduction, cross_entropy, entropy_rows, kd_rows_from_probs, reduce_rows, standardize_logits
from ..patch_swap import ImageSwapOptions, swap_with_mask
from .base import Method, StepOutput, register_method


@dataclass
class IPSOptions(ImageSwapOptions):
    """IPS options (docs/methods.md, ips; the shipped defaults: docs/ips.md)."""

    partner_source: Literal["sampler", "inbatch"] = "sampler"
    """``sampler``: B anchors + B same-class partners (2B images); ``inbatch``: pair same-class images inside an
    ordinary batch (B images, up to B/2 pairs)."""
    inbatch_fallback: Literal["mask", "self"] = "mask"
    """``inbatch`` images without a same-class partner: ``mask`` = CE only, ``self`` = paired with themselves."""
    kd_on_unswapped: bool = True
    """Distil pairs that were not swapped (two real same-class images) by the same rule."""
    teacher_rule: Literal["confidence", "symmetric", "always_a", "originals"] = "symmetric"
    """Who teaches: the more confident view; each view the other; always the anchor-side view; or ``originals``:
    each swapped view is taught by the two clean images it is made of, their predictions weighted by the area each
    contributes (one more forward of the clean images, see ``teacher_forward``)."""
    teacher_forward: Literal["no_grad", "joint"] = "no_grad"
    """``originals``: the clean images get a forward of their own without gradient (train mode, after the swapped
    images), or join the swapped images' forward (shared BatchNorm statistics, logits detached; costs their
    backward too). With ``ce_inputs=swapped+original`` the clean logits of that forward are used."""
    symmetric_reduce: Literal["mean", "sum"] = "mean"
    """``symmetric`` and ``originals``: average (½·(…)) or sum of the two directions."""
    conf_measure: Literal["gt_prob", "max_prob", "margin", "neg_entropy"] = "gt_prob"
    """Confidence used by ``confidence``: p_y, max_c p_c, z_y − max_{c≠y} z_c, or Σ p log p. Ties: a teaches."""
    min_conf_gap: float = 0.0
    """Pairs whose confidence gap is below this get no KD term (the mean still divides by all pairs)."""
    detach_teacher: bool = True
    """Stop gradients through the teacher logits."""
    T: float = 4.0
    """Distillation temperature (of the student side, and of the T² factor)."""
    T_teacher: float | None = None
    """Temperature of the teacher side (``None``: ``T``); above ``T`` the target is softer than the student."""
    logit_standardize: bool = False
    """Z-score every row of teacher and student logits before the temperature (logit standardisation): the KD
    term then matches the shape of the two predictions, not their scale."""
    kd_gate: Literal["none", "teacher_correct"] = "none"
    """``teacher_correct``: a pair (or direction) is distilled only where its teacher's target ranks the label
    first; the mean still divides by all pairs."""
    lambda_kd: float = 0.1
    """Weight of the KD term."""
    kd_warmup_epochs: int = 0
    """Linear ramp of λ: λ(e) = λ·min(1, (e−1)/w) for 1-based epoch e (0 = constant)."""
    ce_inputs: Literal["swapped", "swapped+original"] = "swapped+original"
    """Images under the CE term; ``+original`` also forwards the two unswapped images (2B more)."""
    ce_reduce: Literal["mean_of_two", "sum"] = "mean_of_two"
    """CE over the forwarded groups: their mean over images (½[CE(z_a)+CE(z_b)] for the swapped pair alone, a
    quarter of the four groups' sum with the clean images) or the groups' sum."""
    forward: Literal["joint", "separate"] = "joint"
    """One forward of all images (shared BatchNorm statistics) or one per group."""
    batch_counts: Literal["anchors", "images"] = "anchors"
    """``data.batch_size`` counts anchors (2B images per step) or images (B/2 anchors + B/2 partners)."""
    kl_reduction: KLReduction = "batchmean"
    """Reduction of the KD term over pairs."""

    def checks(self) -> list[tuple[bool, str]]:
        return [*super().checks(),
                (self.T > 0 and self.lambda_kd >= 0, "T must be > 0 and lambda_kd >= 0"),
                (self.T_teacher is None or self.T_teacher > 0, "T_teacher must be > 0 (or null: T)"),
                (self.partner_source == "sampler" or self.batch_counts == "anchors",
                 "batch_counts=images needs partner_source=sampler")]


def confidence(logits: Tensor, y: Tensor, measure: str) -> Tensor:
    """Per-row confidence of ``logits`` for labels ``y`` (fp32, no gradient)."""
    with torch.no_grad(), torch.autocast(logits.device.type, enabled=False):
        z = logits.float()
        if measure == "margin":
            others = z.scatter(1, y[:, None], float("-inf"))
            return z.gather(1, y[:, None]).squeeze(1) - others.max(1).values
        p = F.softmax(z, 1)
        if measure == "gt_prob":
            return p.gather(1, y[:, None]).squeeze(1)
        if measure == "max_prob":
            return p.max(1).values
        return torch.xlogy(p, p).sum(1)  # neg_entropy


def ips_kd(za: Tensor, zb: Tensor, y: Tensor, opt: IPSOptions, weight: Tensor | None = None,
           originals: tuple[Tensor, Tensor] | None = None, area: Tensor | None = None
           ) -> tuple[Tensor, dict[str, Tensor]]:
    """The IPS distillation term over pairs ``(za[i], zb[i])`` with label ``y[i]``, and diagnostics.

    ``weight`` (0/1 per pair) removes pairs from the KD term; the reduction still divides by all pairs.
    ``teacher_rule=originals`` needs ``originals``, the clean images' logits ``(za_clean, zb_clean)``, and ``area``,
    the fraction of each pair's pixels that were swapped.
    """
    ca, cb = confidence(za, y, opt.conf_measure), confidence(zb, y, opt.conf_measure)
    gap = (ca - cb).abs()
    keep = torch.ones_like(gap) if weight is None else weight.float()
    if opt.min_conf_gap > 0:
        keep = keep * (gap >= opt.min_conf_gap).float()
    t_teacher = opt.T if opt.T_teacher is None else opt.T_teacher

    def shape(z: Tensor) -> Tensor:
        return standardize_logits(z) if opt.logit_standardize else z.float()

    def target(z: Tensor) -> Tensor:  # the teacher's tempered probabilities
        return F.softmax(shape(z.detach() if opt.detach_teacher else z) / t_teacher, dim=1)

    def term(p: Tensor, zs: Tensor) -> Tensor:  # one direction's per-pair KD, gated
        rows = kd_rows_from_probs(p, shape(zs), opt.T)
        return rows * (p.argmax(1) == y).float() if opt.kd_gate == "teacher_correct" else rows

    a_first = ca >= cb
    if opt.teacher_rule in ("symmetric", "originals"):
        if opt.teacher_rule == "symmetric":
            directions = [(target(za), zb), (target(zb), za)]
            a_teaches = torch.full_like(gap, 0.5)
            by_conf = [torch.where(a_first[:, None], za, zb), torch.where(a_first[:, None], zb, za)]
            seen = (by_conf[0], target(by_conf[0]), by_conf[1])
        else:
            if originals is None or area is None:
                raise ValueError("teacher_rule=originals needs the clean images' logits and the swapped areas")
            r = area.to(za.device, torch.float32)[:, None]
            pa, pb = target(originals[0]), target(originals[1])
            directions = [((1 - r) * pa + r * pb, za), ((1 - r) * pb + r * pa, zb)]
            a_teaches = torch.zeros_like(gap)
            seen = (torch.cat(originals), torch.cat([directions[0][0], directions[1][0]]), torch.cat([za, zb]))
        rows = term(*directions[0]) + term(*directions[1])
        rows = rows / 2 if opt.symmetric_reduce == "mean" else rows
    else:
        a_teaches = a_first if opt.teacher_rule == "confidence" else torch.ones_like(gap, dtype=torch.bool)
        zt = torch.where(a_teaches[:, None], za, zb)
        zs = torch.where(a_teaches[:, None], zb, za)
        p = target(zt)
        rows = term(p, zs)
        a_teaches = a_teaches.float()
        seen = (zt, p, zs)
    kd = reduce_rows(rows * keep, opt.kl_reduction, za.shape[1])
    stats = {"a_teaches": a_teaches.mean(), "conf_gap": gap.mean(), "kd_pairs": keep.mean(),
             **view_diagnostics(*seen, y, lambda z: F.softmax(shape(z) / opt.T, dim=1))}
    return kd, stats


def view_diagnostics(t_logits: Tensor, t_probs: Tensor, s_logits: Tensor, y: Tensor,
                     student_probs: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
    """What tells IPS's mechanisms apart, per step: the mean logit norm of the teacher and student views, the
    entropy of the teacher's target and of the student's tempered prediction, and the fraction of teacher targets
    whose argmax is not the label. ``t_probs`` may hold more rows than ``y`` (both directions): labels repeat."""
    with torch.no_grad():
        labels = y.repeat(len(t_probs) // max(len(y), 1))
        return {"logit_norm_t": t_logits.float().norm(dim=1).mean(),
                "logit_norm_s": s_logits.float().norm(dim=1).mean(),
                "entropy_t": entropy_rows(t_probs).mean(),
                "entropy_s": entropy_rows(student_probs(s_logits.detach())).mean(),
                "teacher_wrong": (t_probs.argmax(1) != labels).float().mean()}


def inbatch_pairs(y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Pair same-class rows of a batch: shuffle each class's rows and pair neighbours.

    Returns ``(a, b, unpaired)`` row indices; every row is in at most one pair.
    """
    n = y.numel()
    noise = torch.randperm(n, generator=generator).to(y.device)
    order = torch.argsort(y * n + noise)
    ys = y[order]
    idx = torch.arange(n, device=y.device)
    new_class = torch.ones(n, dtype=torch.bool, device=y.device)
    new_class[1:] = ys[1:] != ys[:-1]
    start = torch.cummax(torch.where(new_class, idx, torch.zeros_like(idx)), 0).values
    even = (idx - start) % 2 == 0
    has_next = torch.zeros(n, dtype=torch.bool, device=y.device)
    has_next[:-1] = ys[1:] == ys[:-1]
    first = even & has_next
    return order[first], order[first.nonzero().flatten() + 1], order[even & ~has_next]


@register_method("ips")
class IntraClassPatchSwap(Method):
    """Intra-class Patch Swap: same-class pairs swap patches and the two swapped views teach each other."""

    Options = IPSOptions
    # ``spec``: the specification's first reading of the paper (its values are not published), kept reachable
    # beside the library's defaults, which are chosen by measurement (docs/ips.md)
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"spec": {
        "teacher_rule": "confidence", "conf_measure": "gt_prob", "T": 4.0, "T_teacher": None, "lambda_kd": 1.0,
        "logit_standardize": False, "kd_gate": "none", "kd_warmup_epochs": 0, "p_swap": 1.0, "grid": 4,
        "ratio_dist": "uniform", "ratio_low": 0.0, "ratio_high": 1.0, "ce_inputs": "swapped"}}
    requirements = DataRequirements(sampler="pair")
    passes_per_step = 2.0

    @classmethod
    def data_requirements(cls, options: IPSOptions) -> DataRequirements:
        if options.partner_source == "inbatch":
            return DataRequirements()
        return DataRequirements(sampler="pair", batch_scale=0.5 if options.batch_counts == "images" else 1.0)

    @classmethod
    def cost(cls, options: IPSOptions) -> float:
        base = 2.0 if options.partner_source == "sampler" else 1.0
        scale = 0.5 if options.batch_counts == "images" else 1.0
        originals_trained = options.ce_inputs == "swapped+original" or (
            options.teacher_rule == "originals" and options.teacher_forward == "joint")
        return base * scale * (2 if originals_trained else 1)

    def kd_weight(self, epoch: int) -> float:
        """λ(e) with the optional linear warm-up."""
        w = self.opt.kd_warmup_epochs
        return self.opt.lambda_kd * (min(1.0, (epoch - 1) / w) if w > 0 else 1.0)

    def _forward(self, model: nn.Module, groups: list[Tensor]) -> list[Tensor]:
        if self.opt.forward == "joint":
            return list(model(torch.cat(groups)).split([len(g) for g in groups]))
        return [model(g) for g in groups]

    def _ce(self, logits: list[Tensor], targets: list[Tensor]) -> Tensor:
        terms = [cross_entropy(z, t) for z, t in zip(logits, targets, strict=True) if len(t)]
        total = torch.stack(terms).sum()
        if self.opt.ce_reduce == "sum":
            return total
        # mean over images, which is ½[CE(z_a)+CE(z_b)] when every group has the same size
        sizes = torch.tensor([len(t) for t in targets if len(t)], dtype=total.dtype, device=total.device)
        return (torch.stack(terms) * sizes).sum() / sizes.sum()

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        o = self.opt
        h, w = batch.x.shape[-2:]
        gen = batch.generator()  # one stream per step for pairing and masks
        if o.partner_source == "sampler":
            xa, xb, y = batch.x, batch.partner.x, batch.y
            extra_x, extra_y = batch.x[:0], batch.y[:0]
            n_global = batch.global_size if batch.global_size > 0 else len(y)
            mask, swapped = o.masks(gen, n_global, batch.rows, h, w, batch.x.device)
        else:
            ia, ib, lone = inbatch_pairs(batch.y, gen)
            if o.inbatch_fallback == "self":
                ia, ib, lone = torch.cat([ia, lone]), torch.cat([ib, lone]), lone[:0]
            xa, xb, y = batch.x[ia], batch.x[ib], batch.y[ia]
            extra_x, extra_y = batch.x[lone], batch.y[lone]
            mask, swapped = o.masks(gen, len(y), slice(None), h, w, batch.x.device)
        xa_s, xb_s = swap_with_mask(xa, xb, mask)
        clean = o.teacher_rule == "originals"
        with_originals = o.ce_inputs == "swapped+original" or (clean and o.teacher_forward == "joint")
        groups, targets = [xa_s, xb_s, extra_x], [y, y, extra_y]
        if with_originals:
            groups, targets = [*groups, xa, xb], [*targets, y, y]
        logits = self._forward(model, groups)  # swapped a, swapped b, lone rows[, clean a, clean b]
        originals = None
        if clean and with_originals:
            originals = (logits[3].detach(), logits[4].detach())
        elif clean:
            with torch.no_grad():
                originals = tuple(model(torch.cat([xa, xb])).split(len(y)))
        za, zb = logits[0], logits[1]
        weight = None if o.kd_on_unswapped else swapped
        area = mask.float().mean((1, 2, 3)) if clean else None
        kd, stats = ips_kd(za, zb, y, o, weight, originals, area)
        stats["swap_frac"] = mask.float().mean() if len(mask) else torch.zeros((), device=batch.x.device)
        stats["kd_raw"] = kd.detach()
        n_ce = 5 if o.ce_inputs == "swapped+original" else 3
        losses = {"ce": self._ce(logits[:n_ce], targets[:n_ce]), "kd": self.kd_weight(epoch) * kd}
        return StepOutput(losses, torch.cat(logits[:3]), torch.cat(targets[:3]),
                          {k: v.detach() for k, v in stats.items()})
