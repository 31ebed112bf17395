"""Detection training methods (``task: detection``): the detector's own losses (``ce``) and dense IPS with
box-aware swaps and distillation on matched proposals (docs/tasks.md, detection)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...batch import Batch, DataRequirements
from ...config import limited
from ...methods.base import Method, NoOptions, StepOutput, register_method
from ...patch_swap import SwapOptions
from ...registry import Registry
from .ops import box_swap

DET_METHODS: Registry[type[Method]] = Registry("method")
HeadKD = Literal["softmax", "bernoulli", "sigmoid_softmax"]


def detector_step(model: nn.Module, x: Tensor, targets: list[dict[str, Tensor]]) -> tuple[dict[str, Tensor], dict]:
    """Forward a detector in training mode: its losses (``loss_`` prefixes dropped) and its raw output."""
    out = model(x, targets)
    return {k.removeprefix("loss_"): v for k, v in out["losses"].items()}, out


def positive_labels(targets: list[dict[str, Tensor]], gt: Tensor) -> Tensor:
    """The class (1..K) of each positive's assigned box."""
    return torch.cat([t["labels"] for t in targets]).to(gt.device)[gt]


@register_method("ce", DET_METHODS)
class DetectorLoss(Method):
    """The detector's own losses (classification, box regression, objectness/centerness): the baseline."""

    Options = NoOptions

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        losses, out = detector_step(model, batch.x, batch.y)
        return StepOutput(losses, out["logits"], positive_labels(batch.y, out["gt"]))


def pool_boxes(logits: Tensor, gt: Tensor, n_boxes: int, T: float, head: HeadKD, iou: Tensor | None = None
               ) -> tuple[Tensor, Tensor, Tensor]:
    """Per-box distributions pooled over the positives assigned to each box: their mean, or with ``iou`` (each
    positive's IoU with its box) the positive of highest IoU (``pool = max_iou``; tied positives are averaged).

    Returns ``(q_T, p_1, has)``: the pooled distributions at temperature ``T`` and at 1, ``(n_boxes, C)``, and
    which boxes have a positive. ``softmax`` (Faster R-CNN): ``C = K + 1`` classes with background in column 0;
    ``bernoulli``: per-class sigmoids of the K classes; ``sigmoid_softmax``: a softmax over the K class logits.
    Class ``c`` (1..K) sits in column ``c`` for ``softmax`` and ``c − 1`` otherwise.
    """
    with torch.autocast(logits.device.type, enabled=False):
        z = logits.float() if head == "softmax" else logits.float()[:, 1:]
        weight = torch.ones_like(gt, dtype=torch.float32)
        if iou is not None:
            best = torch.full((n_boxes,), -1.0, device=z.device).scatter_reduce(0, gt, iou.float(), "amax")
            weight = (iou.float() == best[gt]).float()
        count = torch.zeros(n_boxes, device=z.device).index_add_(0, gt, weight)

        def pooled(t: float) -> Tensor:
            p = torch.sigmoid(z / t) if head == "bernoulli" else F.softmax(z / t, dim=1)
            total = torch.zeros(n_boxes, z.shape[1], device=z.device).index_add_(0, gt, p * weight[:, None])
            return total / count.clamp_min(1)[:, None]

        return pooled(T), pooled(1.0), count > 0


def box_kl(target: Tensor, student: Tensor, head: HeadKD) -> Tensor:
    """Row-wise KL(target ‖ student) of pooled distributions: categorical, or for ``bernoulli`` the per-class
    Bernoulli KL summed over classes."""
    eps = 1e-12
    kl = torch.xlogy(target, target) - target * student.clamp_min(eps).log()
    if head == "bernoulli":
        rest, rest_s = 1 - target, 1 - student
        kl = kl + torch.xlogy(rest, rest) - rest * rest_s.clamp_min(eps).log()
    return kl.sum(1)


def match_boxes(labels_a: Tensor, labels_b: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random one-to-one matching of same-class boxes across two images: for each class present in both, the
    boxes of ``a`` and ``b`` are shuffled and paired in order (``min`` of the two counts). Returns the matched
    positions in ``labels_a`` and ``labels_b``."""
    ia, ib = [], []
    for c in sorted(set(labels_a.tolist()) & set(labels_b.tolist())):
        ca, cb = (labels_a == c).nonzero()[:, 0], (labels_b == c).nonzero()[:, 0]
        ca = ca[torch.randperm(len(ca), generator=generator)]
        cb = cb[torch.randperm(len(cb), generator=generator)]
        m = min(len(ca), len(cb))
        ia.append(ca[:m])
        ib.append(cb[:m])
    empty = torch.zeros(0, dtype=torch.long)
    return (torch.cat(ia), torch.cat(ib)) if ia else (empty, empty)


def matched_box_kd(q_T: Tensor, p_1: Tensor, box_labels: Tensor, first: Tensor, second: Tensor, T: float,
                   head: HeadKD, positives: Tensor | None = None, terms: float | None = None
                   ) -> tuple[Tensor, Tensor]:
    """``T²·KL(sg q_t ‖ q_s)`` over matched box pairs ``(first[i], second[i])`` (rows of ``q_T``): the teacher of a
    pair is the box with the higher pooled probability of its class at T = 1. Reduced by the mean over pairs, or,
    given ``positives`` (per box, the positives assigned to it) and ``terms``, like the detector's classification
    loss: each student box's KL counts once per positive, and the sum is divided by ``terms``. Returns the loss (0
    without pairs) and the fraction of pairs taught by ``first``."""
    if first.numel() == 0:
        return q_T.sum() * 0.0, q_T.new_zeros(())
    col = box_labels[first] - (0 if head == "softmax" else 1)
    conf_first = p_1[first].gather(1, col[:, None])[:, 0]
    conf_second = p_1[second].gather(1, col[:, None])[:, 0]
    first_teaches = conf_first >= conf_second
    t = torch.where(first_teaches, first, second)
    s = torch.where(first_teaches, second, first)
    kl = box_kl(q_T[t].detach(), q_T[s], head)
    total = kl.mean() if positives is None else (kl * positives[s].to(kl.dtype)).sum() / terms
    return T * T * total, first_teaches.float().mean()


def pair_generator(batch: Batch, row: int, salt: int = 0) -> torch.Generator:
    """A CPU generator for the pair at ``row`` of this rank's batch, seeded by the step seed and the pair's global
    row (so draws do not depend on the world size)."""
    return torch.Generator().manual_seed((batch.seed * 1_000_003 + (batch.rows.start or 0) + row + salt) % 2**62)


@dataclass
class DetIPSOptions(SwapOptions):
    """Detection IPS options (docs/tasks.md, detection)."""

    # the swap's grid and ratio (SwapOptions), described as they act on the pair's common canvas
    grid: int = limited(8, low=1)
    """Cells per side of the grid laid over the pair's common canvas."""
    ratio_low: float = limited(0.0, low=0, high=1)
    """Lower bound of the uniform per-pair swap ratio (``k = round(ratio·grid²)`` cells)."""
    box_policy: Literal["object_preserving", "background_only", "free"] = "object_preserving"
    """``object_preserving``: whole units of cells linked by a box (no box is cut); ``background_only``: only
    cells touching no box; ``free``: any cells, cut boxes become the box of their visible part."""
    k_max: int | None = limited(None, low=0)
    """``object_preserving``: a unit that would take the swap past this many cells is skipped (``None``: grid²)."""
    min_visible: float = limited(0.5, low=0, high=1)
    """``free``: a cut box is dropped when less than this fraction of it stays visible."""
    T: float = limited(4.0, low=0, low_open=True)
    """Distillation temperature."""
    lambda_kd: float = limited(1.0, low=0)
    """Weight of the matched-proposal distillation term."""
    kd_norm: Literal["classification", "pairs"] = "classification"
    """``classification``: the term is normalised like the detector's classification loss (each student box's KL
    counted once per positive assigned to it, divided by the sampled RoIs, or the foreground anchors of a focal-loss
    detector); ``pairs``: the mean over matched pairs (the specification's first reading, far stronger)."""
    pool: Literal["mean", "max_iou"] = "mean"
    """How a box's distribution is pooled over its positives: their mean, or the positive of highest IoU."""
    sigmoid_kd: Literal["bernoulli", "softmax"] = "bernoulli"
    """Sigmoid heads (RetinaNet, FCOS): per-class Bernoulli KL summed over classes, or a softmax over the K class
    logits. Softmax heads (Faster R-CNN) always use the K + 1-way distribution."""


@register_method("ips", DET_METHODS)
class DetectionIPS(Method):
    """Dense IPS for detection: image pairs sharing a class swap grid cells under a box policy (boxes move with
    their cells); the detector trains on both swapped images with its own losses, and matched same-class boxes
    across the pair distil the more confident box's pooled classification into the other's."""

    Options = DetIPSOptions
    # ``spec``: the specification's first reading (T = 4, λ = 1, the mean over matched pairs, which diverges from
    # scratch on Penn-Fudan), kept beside the defaults chosen by measurement (docs/tasks.md)
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"spec": {"T": 4.0, "lambda_kd": 1.0, "kd_norm": "pairs"}}
    requirements = DataRequirements(sampler="pair")

    @classmethod
    def cost(cls, options: DetIPSOptions) -> float:
        return 2.0

    def swap(self, batch: Batch) -> tuple[Tensor, Tensor, list[dict[str, Tensor]], list[dict[str, Tensor]], Tensor]:
        """The swapped canvases ``x̃_a``, ``x̃_b``, their targets and the swap masks ``(N, 1, S, S)``.

        Each pair draws from its own generator seeded by (step seed, global row), so the swap does not depend on
        the world size."""
        o, a, b = self.opt, batch, batch.partner
        if b is None:
            raise RuntimeError("detection IPS needs the class-presence pair sampler (data requirement 'pair')")
        n, side = len(a), a.x.shape[-1]
        mask = torch.zeros(n, 1, side, side, dtype=torch.bool)
        ta, tb = [], []
        for r, (sa, sb) in enumerate(zip(a.y, b.y, strict=True)):
            g = pair_generator(batch, r)
            u = torch.rand(2, generator=g)
            ratio = o.ratio_low + (o.ratio_high - o.ratio_low) * float(u[1])
            k = round(ratio * o.grid * o.grid) if float(u[0]) < o.p_swap else 0
            sw = box_swap(sa["boxes"].cpu(), sb["boxes"].cpu(), sa["labels"].cpu(), sb["labels"].cpu(),
                          tuple(sa["size"].tolist()), tuple(sb["size"].tolist()), o.grid, k, o.box_policy,
                          o.k_max, o.min_visible, g)
            mask[r, 0, :sw.mask.shape[0], :sw.mask.shape[1]] = sw.mask
            dev = sa["boxes"].device
            ta.append({"boxes": sw.boxes_a.to(dev), "labels": sw.labels_a.to(dev), "size": sa["size"]})
            tb.append({"boxes": sw.boxes_b.to(dev), "labels": sw.labels_b.to(dev), "size": sb["size"]})
        mask = mask.to(a.x.device)
        return torch.where(mask, b.x, a.x), torch.where(mask, a.x, b.x), ta, tb, mask

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        o = self.opt
        xa, xb, ta, tb, mask = self.swap(batch)
        targets = ta + tb
        losses, out = detector_step(model, torch.cat([xa, xb]), targets)
        head: HeadKD = "softmax" if out["softmax"] else ("bernoulli" if o.sigmoid_kd == "bernoulli"
                                                          else "sigmoid_softmax")
        counts = [len(t["labels"]) for t in targets]
        starts = torch.tensor([0, *counts]).cumsum(0).tolist()
        box_labels = torch.cat([t["labels"] for t in targets]).to(out["logits"].device)
        q_T, p_1, has = pool_boxes(out["logits"], out["gt"], starts[-1], o.T, head,
                                   out["iou"] if o.pool == "max_iou" else None)
        first, second = [], []
        n, labels_cpu, has_cpu = len(ta), box_labels.cpu(), has.cpu()  # the matching is bookkeeping on CPU
        for i in range(n):
            sa, sb = slice(starts[i], starts[i + 1]), slice(starts[n + i], starts[n + i + 1])
            ok_a, ok_b = has_cpu[sa].nonzero()[:, 0], has_cpu[sb].nonzero()[:, 0]
            ia, ib = match_boxes(labels_cpu[sa][ok_a], labels_cpu[sb][ok_b], pair_generator(batch, i, salt=7))
            first.append(ok_a[ia] + starts[i])
            second.append(ok_b[ib] + starts[n + i])
        first_t = torch.cat(first).to(q_T.device)
        second_t = torch.cat(second).to(q_T.device)
        positives, terms = None, None
        if o.kd_norm == "classification":
            positives, terms = torch.bincount(out["gt"], minlength=starts[-1]), out["cls_terms"]
        kd, anchor_teaches = matched_box_kd(q_T, p_1, box_labels, first_t, second_t, o.T, head, positives, terms)
        stats = {"matched_boxes": torch.tensor(float(first_t.numel()) / n, device=q_T.device),
                 "swapped": mask.float().mean(), "anchor_teaches": anchor_teaches}
        return StepOutput({**losses, "kd": o.lambda_kd * kd}, out["logits"], positive_labels(targets, out["gt"]),
                          stats)

