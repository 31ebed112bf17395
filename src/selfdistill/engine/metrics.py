"""Classification metrics: top-k accuracy, NLL and expected calibration error (15 equal-width bins).

:class:`MetricAccumulator` keeps only sums, so results over shards (DDP ranks, eval batches) add up exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .distributed import DistInfo, all_reduce_sum


def topk_correct(logits: Tensor, target: Tensor, k: int) -> Tensor:
    """Number of rows whose label is among the ``k`` largest logits (``k`` capped at the class count)."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == target[:, None]).any(1).sum()


def ece_bins(probs: Tensor, target: Tensor, n_bins: int = 15) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin (count, sum of confidences, number correct) over max-softmax confidence in ``n_bins`` equal
    bins of (0, 1]; bin ``b`` holds confidences in ``(b/n, (b+1)/n]``."""
    conf, pred = probs.max(1)
    idx = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins).double()
    conf_sum = torch.bincount(idx, weights=conf.double(), minlength=n_bins)
    correct = torch.bincount(idx, weights=(pred == target).double(), minlength=n_bins)
    return count, conf_sum, correct


def ece_from_bins(count: Tensor, conf_sum: Tensor, correct: Tensor) -> float:
    """``ECE = Σ_b (|B_b|/N)·|acc(B_b) − conf(B_b)|`` from bin sums (a fraction, not %)."""
    n = count.sum()
    return float((correct - conf_sum).abs().sum() / n) if n > 0 else float("nan")


def expected_calibration_error(logits: Tensor, target: Tensor, n_bins: int = 15) -> float:
    """ECE of softmax(``logits``) as a fraction in [0, 1]."""
    return ece_from_bins(*ece_bins(F.softmax(logits.double(), 1), target, n_bins))


class SummedMetrics:
    """An evaluator whose state is one tensor of sums, added over DDP ranks."""

    sums: Tensor

    def reduce(self, dist: DistInfo) -> None:
        """Sum the ranks' ``sums`` in place."""
        all_reduce_sum(self.sums, dist)


class MetricAccumulator(SummedMetrics):
    """Accumulates top-1/top-5 hits, NLL and ECE bins over batches."""

    def __init__(self, device: torch.device | str = "cpu", n_bins: int = 15) -> None:
        self.n_bins = n_bins
        # [n, top1, top5, nll_sum] then 3 × n_bins ECE sums, all float64 so one all_reduce covers everything
        self.sums = torch.zeros(4 + 3 * n_bins, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor) -> None:
        """Add a batch of logits and labels."""
        logits = logits.double()
        logp = F.log_softmax(logits, 1)
        self.sums[0] += target.numel()
        self.sums[1] += topk_correct(logits, target, 1)
        self.sums[2] += topk_correct(logits, target, 5)
        self.sums[3] += F.nll_loss(logp, target, reduction="sum")
        bins = ece_bins(logp.exp(), target, self.n_bins)
        self.sums[4:] += torch.cat(bins).to(self.sums.device)

    def reliability(self) -> dict[str, list[float]]:
        """Per-bin image count, mean confidence and accuracy (for reliability diagrams)."""
        s = self.sums.cpu()
        b = self.n_bins
        count = s[4:4 + b]
        safe = count.clamp_min(1)
        return {"count": count.tolist(), "confidence": (s[4 + b:4 + 2 * b] / safe).tolist(),
                "accuracy": (s[4 + 2 * b:] / safe).tolist()}

    def compute(self) -> dict[str, float]:
        """``top1``/``top5``/``ece`` in %, ``nll`` in nats per image, ``n`` images."""
        s = self.sums.cpu()
        n = float(s[0])
        if n == 0:
            return {"n": 0.0, "top1": float("nan"), "top5": float("nan"), "nll": float("nan"), "ece": float("nan")}
        b = self.n_bins
        ece = ece_from_bins(s[4:4 + b], s[4 + b:4 + 2 * b], s[4 + 2 * b:])
        return {"n": n, "top1": 100 * float(s[1]) / n, "top5": 100 * float(s[2]) / n, "nll": float(s[3]) / n,
                "ece": 100 * ece}
