"""Loss functions shared by the methods. All are computed in fp32 with autocast off:
log-probabilities come from ``log_softmax``, target probabilities use ``xlogy`` so that 0·log 0 = 0."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

KLReduction = Literal["batchmean", "elementwise_mean", "sum"]


def _fp32(x: Tensor) -> Tensor:
    return x.float()


def reduce_rows(per_row: Tensor, reduction: KLReduction, num_classes: int) -> Tensor:
    """Reduce per-row divergences: ``batchmean`` (/B), ``elementwise_mean`` (/(B·K)) or ``sum``."""
    if reduction == "batchmean":
        return per_row.sum() / per_row.shape[0]
    if reduction == "elementwise_mean":
        return per_row.sum() / (per_row.shape[0] * num_classes)
    if reduction == "sum":
        return per_row.sum()
    raise ValueError(f"unknown reduction '{reduction}'")


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean ``CE(z, y) = −log σ(z)_y`` over rows, in fp32."""
    with torch.autocast(logits.device.type, enabled=False):
        return F.cross_entropy(_fp32(logits), target)


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Mean over rows of ``H(q, z) = −Σ_c q_c log σ(z)_c`` for target distributions ``q``."""
    with torch.autocast(logits.device.type, enabled=False):
        return -(_fp32(target_probs) * F.log_softmax(_fp32(logits), dim=1)).sum(1).mean()


def kl_rows(target_probs: Tensor, log_q: Tensor) -> Tensor:
    """Per-row ``KL(p‖q) = Σ_c p_c (log p_c − log q_c)`` from target probabilities and trained log-probabilities."""
    with torch.autocast(log_q.device.type, enabled=False):
        p = _fp32(target_probs)
        return (torch.xlogy(p, p) - p * _fp32(log_q)).sum(1)


def kl_div(target_probs: Tensor, log_q: Tensor, reduction: KLReduction = "batchmean") -> Tensor:
    """``KL(p‖q)`` reduced over rows (``batchmean``, ``elementwise_mean`` = /(B·K), or ``sum``)."""
    return reduce_rows(kl_rows(target_probs, log_q), reduction, target_probs.shape[1])


def kd_rows(teacher_logits: Tensor, student_logits: Tensor, T: float = 4.0) -> Tensor:
    """Per-row ``T² · KL(σ_T(t) ‖ σ_T(s))``; the teacher logits are used as given (detach them where needed)."""
    with torch.autocast(student_logits.device.type, enabled=False):
        p = F.softmax(_fp32(teacher_logits) / T, dim=1)
        log_q = F.log_softmax(_fp32(student_logits) / T, dim=1)
        return T * T * kl_rows(p, log_q)


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Z-score each row: ``(z − mean(z)) / (std(z) + eps)`` over classes (logit standardisation, Sun et al., CVPR
    2024), in fp32. Softmax of the result no longer depends on the scale of the logits, only on their shape."""
    with torch.autocast(logits.device.type, enabled=False):
        z = _fp32(logits)
        return (z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True) + eps)


def entropy_rows(probs: Tensor) -> Tensor:
    """Per-row entropy ``−Σ_c p_c log p_c`` (nats) of probability rows, with ``0·log 0 = 0``."""
    with torch.autocast(probs.device.type, enabled=False):
        p = _fp32(probs)
        return -torch.xlogy(p, p).sum(1)


def kd_rows_from_probs(target_probs: Tensor, student_logits: Tensor, T: float = 4.0) -> Tensor:
    """Per-row ``T² · KL(p ‖ σ_T(s))`` for target probabilities ``p`` (e.g. a tempered teacher, or a mixture)."""
    with torch.autocast(student_logits.device.type, enabled=False):
        return T * T * kl_rows(target_probs, F.log_softmax(_fp32(student_logits) / T, dim=1))


def kd_loss(teacher_logits: Tensor, student_logits: Tensor, T: float = 4.0,
            reduction: KLReduction = "batchmean") -> Tensor:
    """Standard distillation term ``KD_T(t, s) = T² · KL(σ_T(t) ‖ σ_T(s))``.

    The teacher logits are used as given: detach them first where the method says so.
    """
    return reduce_rows(kd_rows(teacher_logits, student_logits, T), reduction, student_logits.shape[1])


def min_ranks(scores: Tensor) -> Tensor:
    """Per-row ranks by descending score, 1-based, ties sharing the smaller rank (``rankdata(-s, "min")``)."""
    neg = -scores
    return torch.searchsorted(neg.sort(1).values.contiguous(), neg.contiguous(), side="left") + 1


def zipf_targets(scores: Tensor, y: Tensor, power: float = 1.0, rank_scope: Literal["all", "nontarget"] = "all"
                 ) -> Tensor:
    """Zipf soft labels over the non-target classes: ``q_c ∝ 1/rank(c)^power``, 0 at the label, rows sum to 1."""
    gt = F.one_hot(y, scores.shape[1]).bool()
    s = scores.float()
    if rank_scope == "nontarget":
        s = s.masked_fill(gt, -math.inf)
    q = min_ranks(s).float().pow(-power).masked_fill(gt, 0.0)
    return q / q.sum(1, keepdim=True)
