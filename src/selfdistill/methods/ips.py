"""Intra-class Patch Swap (IPS), the library's headline method (docs/methods.md, ips).

Two images of the same class swap a random set of grid cells at the same positions; the network sees both
swapped images (CE on each) and, by default, the two swapped views teach each other through a KD term at a small
weight (each detached as the other's teacher): two images forwarded per anchor. ``preset: robust`` adds CE on the
two clean images (four per anchor), for data on which CE underfits; the specification's reading (``preset: spec``)
lets the more confident swapped view alone teach, at λ = 1. One network, no extra parameters; inference is a plain
forward of the clean image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batch import Batch, DataRequirements
from ..config import limited
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
    min_conf_gap: float = limited(0.0, low=0)
    """Pairs whose confidence gap is below this get no KD term (the mean still divides by all pairs)."""
    detach_teacher: bool = True
    """Stop gradients through the teacher logits."""
    T: float = limited(4.0, low=0, low_open=True)
    """Distillation temperature (of the student side, and of the T² factor)."""
    T_teacher: float | None = limited(None, low=0, low_open=True)
    """Temperature of the teacher side (``None``: ``T``); above ``T`` the target is softer than the student."""
    logit_standardize: bool = False
    """Z-score every row of teacher and student logits before the temperature (logit standardisation): the KD
    term then matches the shape of the two predictions, not their scale."""
    kd_gate: Literal["none", "teacher_correct"] = "none"
    """``teacher_correct``: a pair (or direction) is distilled only where its teacher's target ranks the label
    first; the mean still divides by all pairs."""
    lambda_kd: float = limited(0.1, low=0)
    """Weight of the KD term."""
    kd_warmup_epochs: int = limited(0, low=0)
    """Linear ramp of λ: λ(e) = λ·min(1, (e−1)/w) for 1-based epoch e (0 = constant)."""
    ce_inputs: Literal["swapped", "swapped+original"] = "swapped"
    """Images under the CE term; ``+original`` also forwards the two unswapped images (2B more: ``preset: robust``)."""
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
        return [*super().checks(), (self.partner_source == "sampler" or self.batch_counts == "anchors",
                                    "batch_counts=images needs partner_source=sampler")]

    @property
    def forwards_clean(self) -> bool:
        """Whether the clean images join the swapped ones' forward: under CE, or as joint ``originals`` teachers."""
        return self.ce_inputs == "swapped+original" or (
            self.teacher_rule == "originals" and self.teacher_forward == "joint")

    def shaped(self, z: Tensor) -> Tensor:
        """Logits as the KD term reads them: fp32, z-scored per row with ``logit_standardize``."""
        return standardize_logits(z) if self.logit_standardize else z.float()

    def target(self, z: Tensor) -> Tensor:
        """A teacher's target: its tempered probabilities at ``T_teacher``, detached with ``detach_teacher``."""
        t = self.T if self.T_teacher is None else self.T_teacher
        return F.softmax(self.shaped(z.detach() if self.detach_teacher else z) / t, dim=1)

    def student_probs(self, z: Tensor) -> Tensor:
        """A student's tempered probabilities at ``T``."""
        return F.softmax(self.shaped(z) / self.T, dim=1)


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


# ------------------------------------------------------------------------------------------ teacher rules
@dataclass
class Pair:
    """What a teacher rule reads: the two swapped views' logits, per pair whether view a is at least as confident
    as b, the teacher's target function, and for ``originals`` the clean images' logits and the swapped areas."""

    za: Tensor
    zb: Tensor
    a_first: Tensor
    target: Callable[[Tensor], Tensor]
    originals: tuple[Tensor, Tensor] | None = None
    area: Tensor | None = None


@dataclass
class Teaching:
    """A rule's answer: ``(target, student logits)`` per direction (one or two), per pair how much the anchor-side
    view teaches, and ``(teacher logits, target, student logits)`` for :func:`view_diagnostics`."""

    directions: list[tuple[Tensor, Tensor]]
    a_teaches: Tensor
    seen: tuple[Tensor, Tensor, Tensor]


def one_teacher(pair: Pair, a_teaches: Tensor) -> Teaching:
    """View a teaches b where ``a_teaches``, b teaches a elsewhere."""
    zt = torch.where(a_teaches[:, None], pair.za, pair.zb)
    zs = torch.where(a_teaches[:, None], pair.zb, pair.za)
    p = pair.target(zt)
    return Teaching([(p, zs)], a_teaches.float(), (zt, p, zs))


def more_confident_teaches(pair: Pair) -> Teaching:
    """``confidence``: the more confident view teaches (ties: a)."""
    return one_teacher(pair, pair.a_first)


def anchor_teaches(pair: Pair) -> Teaching:
    """``always_a``: the anchor-side view teaches."""
    return one_teacher(pair, torch.ones_like(pair.a_first))


def each_teaches_the_other(pair: Pair) -> Teaching:
    """``symmetric``: each view teaches the other; the diagnostics read the more confident view as the teacher."""
    half = torch.full_like(pair.a_first, 0.5, dtype=torch.float32)
    return Teaching([(pair.target(pair.za), pair.zb), (pair.target(pair.zb), pair.za)], half,
                    more_confident_teaches(pair).seen)


def originals_teach(pair: Pair) -> Teaching:
    """``originals``: each swapped view is taught by the two clean images it is made of, their targets mixed by
    the area each contributes."""
    if pair.originals is None or pair.area is None:
        raise ValueError("teacher_rule=originals needs the clean images' logits and the swapped areas")
    r = pair.area.to(pair.za.device, torch.float32)[:, None]
    pa, pb = pair.target(pair.originals[0]), pair.target(pair.originals[1])
    ta, tb = (1 - r) * pa + r * pb, (1 - r) * pb + r * pa
    return Teaching([(ta, pair.za), (tb, pair.zb)], torch.zeros_like(pair.a_first, dtype=torch.float32),
                    (torch.cat(pair.originals), torch.cat([ta, tb]), torch.cat([pair.za, pair.zb])))


TEACHER_RULES: dict[str, Callable[[Pair], Teaching]] = {
    "confidence": more_confident_teaches, "symmetric": each_teaches_the_other, "always_a": anchor_teaches,
    "originals": originals_teach}


def kd_rows(target: Tensor, zs: Tensor, y: Tensor, opt: IPSOptions) -> Tensor:
    """One direction's per-pair KD term; with ``kd_gate: teacher_correct``, zero where the target's argmax is not
    the label."""
    rows = kd_rows_from_probs(target, opt.shaped(zs), opt.T)
    return rows * (target.argmax(1) == y).float() if opt.kd_gate == "teacher_correct" else rows


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
    teaching = TEACHER_RULES[opt.teacher_rule](Pair(za, zb, ca >= cb, opt.target, originals, area))
    rows = kd_rows(*teaching.directions[0], y, opt)
    if len(teaching.directions) == 2:  # both views taught: the two directions' mean or sum
        rows = rows + kd_rows(*teaching.directions[1], y, opt)
        rows = rows / 2 if opt.symmetric_reduce == "mean" else rows
    kd = reduce_rows(rows * keep, opt.kl_reduction, za.shape[1])
    stats = {"a_teaches": teaching.a_teaches.mean(), "conf_gap": gap.mean(), "kd_pairs": keep.mean(),
             **view_diagnostics(*teaching.seen, y, opt.student_probs)}
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


# ------------------------------------------------------------------------------------------ the method
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


Groups = dict[str, tuple[Tensor, Tensor]]  # group name → (images, labels)
CLEAN = ("clean_a", "clean_b")  # the pairs' unswapped images: forwarded with ``forwards_clean`` only


@register_method("ips")
class IntraClassPatchSwap(Method):
    """Intra-class Patch Swap: same-class pairs swap patches and the two swapped views teach each other."""

    Options = IPSOptions
    # ``spec``: the specification's first reading of the paper (its values are not published), kept reachable
    # beside the library's defaults, which are chosen by measurement (docs/ips.md); ``robust``: the four-image
    # reading (CE on the clean images too; the defaults until the two-image reading replaced them), the one that
    # stays above CE where CE underfits (docs/ips.md)
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "spec": {"teacher_rule": "confidence", "conf_measure": "gt_prob", "T": 4.0, "T_teacher": None,
                 "lambda_kd": 1.0, "logit_standardize": False, "kd_gate": "none", "kd_warmup_epochs": 0,
                 "p_swap": 1.0, "grid": 4, "ratio_dist": "uniform", "ratio_low": 0.0, "ratio_high": 1.0,
                 "ce_inputs": "swapped"},
        "robust": {"teacher_rule": "symmetric", "conf_measure": "gt_prob", "T": 4.0, "T_teacher": None,
                   "lambda_kd": 0.1, "logit_standardize": False, "kd_gate": "none", "kd_warmup_epochs": 0,
                   "p_swap": 1.0, "grid": 4, "ratio_dist": "uniform", "ratio_low": 0.0, "ratio_high": 1.0,
                   "ce_inputs": "swapped+original"}}
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
        return base * scale * (2 if options.forwards_clean else 1)

    def kd_weight(self, epoch: int) -> float:
        """λ(e) with the optional linear warm-up."""
        w = self.opt.kd_warmup_epochs
        return self.opt.lambda_kd * (min(1.0, (epoch - 1) / w) if w > 0 else 1.0)

    def groups(self, batch: Batch, gen: torch.Generator) -> tuple[Groups, Tensor, Tensor]:
        """The step's images by group — the pairs' two swapped views, the rows left without a partner (``lone``),
        the pairs' clean images — and the pairs' masks and swap flags, all drawn from ``gen``."""
        o = self.opt
        h, w = batch.x.shape[-2:]
        if o.partner_source == "sampler":
            xa, xb, y = batch.x, batch.partner.x, batch.y
            lone = (batch.x[:0], batch.y[:0])
            n_global = batch.global_size if batch.global_size > 0 else len(y)
            mask, swapped = o.masks(gen, n_global, batch.rows, h, w, batch.x.device)
        else:
            ia, ib, alone = inbatch_pairs(batch.y, gen)
            if o.inbatch_fallback == "self":
                ia, ib, alone = torch.cat([ia, alone]), torch.cat([ib, alone]), alone[:0]
            xa, xb, y = batch.x[ia], batch.x[ib], batch.y[ia]
            lone = (batch.x[alone], batch.y[alone])
            mask, swapped = o.masks(gen, len(y), slice(None), h, w, batch.x.device)
        xa_s, xb_s = swap_with_mask(xa, xb, mask)
        return ({"swapped_a": (xa_s, y), "swapped_b": (xb_s, y), "lone": lone, "clean_a": (xa, y), "clean_b": (xb, y)},
                mask, swapped)

    def _forward(self, model: nn.Module, images: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.opt.forward == "joint":
            logits = model(torch.cat(list(images.values()))).split([len(x) for x in images.values()])
            return dict(zip(images, logits, strict=True))
        return {name: model(x) for name, x in images.items()}

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
        groups, mask, swapped = self.groups(batch, batch.generator())  # one stream per step: pairs and masks
        y = groups["swapped_a"][1]
        z = self._forward(model, {g: x for g, (x, _) in groups.items() if g not in CLEAN or o.forwards_clean})
        originals = None
        if o.teacher_rule == "originals" and o.forwards_clean:
            originals = (z["clean_a"].detach(), z["clean_b"].detach())
        elif o.teacher_rule == "originals":
            with torch.no_grad():
                originals = tuple(model(torch.cat([groups[g][0] for g in CLEAN])).split(len(y)))
        area = mask.float().mean((1, 2, 3)) if originals is not None else None
        kd, stats = ips_kd(z["swapped_a"], z["swapped_b"], y, o, None if o.kd_on_unswapped else swapped,
                           originals, area)
        stats["swap_frac"] = mask.float().mean() if len(mask) else torch.zeros((), device=batch.x.device)
        stats["kd_raw"] = kd.detach()
        under_ce = [g for g in z if g not in CLEAN or o.ce_inputs == "swapped+original"]
        losses = {"ce": self._ce([z[g] for g in under_ce], [groups[g][1] for g in under_ce]),
                  "kd": self.kd_weight(epoch) * kd}
        seen = [g for g in z if g not in CLEAN]  # the training accuracy reads the swapped views and lone rows
        return StepOutput(losses, torch.cat([z[g] for g in seen]), torch.cat([groups[g][1] for g in seen]),
                          {k: v.detach() for k, v in stats.items()})
