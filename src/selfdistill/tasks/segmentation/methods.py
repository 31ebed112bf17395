"""Segmentation training methods (``task: segmentation``): pixel-wise CE and dense IPS (docs/tasks.md, segmentation).

They are :class:`~selfdistill.methods.Method` classes in their own registry, so ``method: {name: ips}`` means
dense IPS in a segmentation run and image-level IPS in a classification run, with the same engine, configs,
checkpoints and resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...batch import Batch, DataRequirements
from ...config import limited
from ...engine.distributed import global_mean
from ...methods.base import Method, NoOptions, StepOutput, register_method
from ...patch_swap import SwapOptions, swap_with_mask
from ...registry import Registry
from .ops import _upsample, class_region_loss, pixel_agree_loss, pixel_kd_loss

SEG_METHODS: Registry[type[Method]] = Registry("method")


def pixel_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = 255,
                        share: tuple[int, int] | None = None) -> Tensor:
    """Mean CE over the labelled pixels (logits upsampled to the labels; 0 when no pixel is labelled); with
    ``share`` (this rank's and the global batch's rows), over the global batch's labelled pixels under DDP."""
    with torch.autocast(logits.device.type, enabled=False):
        z = _upsample(logits.float(), labels.shape[-2:])
        total = F.cross_entropy(z, labels.long(), ignore_index=ignore_index, reduction="sum")
        return global_mean(total, (labels != ignore_index).sum(), share)


def border_pixels(mask: Tensor, margin: int) -> Tensor:
    """Bool ``(N, H, W)``: pixels within ``margin`` px of a boundary between swapped and kept cells."""
    m = mask.float()
    k = 2 * margin + 1
    grown = F.max_pool2d(m, k, stride=1, padding=margin)
    shrunk = -F.max_pool2d(-m, k, stride=1, padding=margin)
    return (grown != shrunk)[:, 0]


@register_method("ce", SEG_METHODS)
class SegCrossEntropy(Method):
    """Pixel-wise cross-entropy (ignore-aware): the segmentation baseline."""

    Options = NoOptions

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.x)
        ce = pixel_cross_entropy(logits, batch.y, self.ctx.ignore_index, (len(batch), batch.global_size))
        return StepOutput({"ce": ce}, logits, batch.y)


@dataclass
class DenseIPSOptions(SwapOptions):
    """Dense IPS options (docs/tasks.md, segmentation)."""

    dense_kd: Literal["pixel_agree", "class_region", "context", "originals"] = "pixel_agree"
    """``pixel_agree``: per-pixel KL over co-located same-label pixels; ``class_region``: KL between class-mean
    distributions; ``context``: the originals are forwarded too and each pixel's original- and swapped-context
    predictions are distilled, the more confident teaching (4 images per pair); ``originals``: each swapped image's
    pixel is taught by the same pixel of the clean image it comes from (a forward of the clean images without
    gradient)."""
    T: float = limited(4.0, low=0, low_open=True)
    """Distillation temperature."""
    lambda_kd: float = limited(0.01, low=0)
    """Weight of the dense distillation term (the specification's reading: 1)."""
    min_pixels: int = limited(64, low=0)
    """``class_region``: a class counts in a swapped map when it covers at least this many pixels."""
    border_margin: int = limited(0, low=0)
    """Pixels within this many px of a swapped/kept boundary are left out of the distillation term."""
    ce_inputs: Literal["swapped", "swapped+original"] = "swapped+original"
    """Images under the CE term: the swapped pair, or also the two clean images (forwarded with the swapped ones:
    4 images per pair; CE is the mean of the four maps' pixel CE). ``originals`` then takes its teacher from that
    forward, detached."""


@register_method("ips", SEG_METHODS)
class DenseIPS(Method):
    """Dense Intra-class Patch Swap: image pairs sharing a class swap grid cells together with their label maps;
    the more confident prediction of each co-labelled pixel (or class region) teaches the other. By default CE also
    covers the two clean images and the term is light (λ = 0.01), chosen on CamVid's val split (docs/ips.md)."""

    Options = DenseIPSOptions
    # ``spec``: the specification's first reading (co-located same-label pixels, the more confident teaching, T = 4,
    # λ = 1, grid 8, CE on the swapped pair alone), kept beside the defaults chosen by measurement (docs/ips.md)
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"spec": {"dense_kd": "pixel_agree", "T": 4.0, "lambda_kd": 1.0,
                                                             "ratio_low": 0.0, "ratio_high": 1.0, "p_swap": 1.0,
                                                             "grid": 8, "ce_inputs": "swapped"}}
    requirements = DataRequirements(sampler="pair")

    @classmethod
    def cost(cls, options: DenseIPSOptions) -> float:
        return 4.0 if options.dense_kd == "context" or options.ce_inputs == "swapped+original" else 2.0

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        o, ignore = self.opt, self.ctx.ignore_index
        a, b = batch, batch.partner
        if b is None:
            raise RuntimeError("dense IPS needs the class-presence pair sampler (data requirement 'pair')")
        n, _, h, w = a.x.shape
        mask, _ = o.masks(batch.generator(), batch.global_size, batch.rows, h, w, a.x.device)
        xa, xb = swap_with_mask(a.x, b.x, mask)
        ya, yb = swap_with_mask(a.y, b.y, mask[:, 0])
        with_originals = o.dense_kd == "context" or o.ce_inputs == "swapped+original"
        z = _upsample(model(torch.cat([xa, xb, a.x, b.x] if with_originals else [xa, xb])), (h, w))
        za, zb = z[:n], z[n:2 * n]
        share = (len(batch), batch.global_size)
        maps = [(za, ya), (zb, yb)]
        if o.ce_inputs == "swapped+original":
            maps += [(z[2 * n:3 * n], a.y), (z[3 * n:], b.y)]
        ce = sum(pixel_cross_entropy(zi, yi, ignore, share) for zi, yi in maps) / len(maps)
        near = border_pixels(mask, o.border_margin) if o.border_margin > 0 else None

        def kd_labels(y: Tensor) -> Tensor:  # labels for the KD term: pixels near a cell boundary left out
            return y if near is None else torch.where(near, torch.full_like(y, ignore), y)

        stats: dict[str, Tensor] = {}
        if o.dense_kd == "pixel_agree":
            kd, omega = pixel_agree_loss(za, zb, kd_labels(ya), kd_labels(yb), o.T, ignore, share)
            stats["kd_pixels"] = omega.float() / (n * h * w)
        elif o.dense_kd == "originals":
            if with_originals:
                clean = z[2 * n:]  # pixel_kd_loss detaches the teacher
            else:
                with torch.no_grad():
                    clean = _upsample(model(torch.cat([a.x, b.x])), (h, w))
            m = mask.expand_as(za)
            teacher = torch.cat([torch.where(m, clean[n:], clean[:n]), torch.where(m, clean[:n], clean[n:])])
            kd, omega = pixel_kd_loss(teacher, torch.cat([za, zb]), torch.cat([kd_labels(ya), kd_labels(yb)]), o.T,
                                      ignore, share)
            stats["kd_pixels"] = omega.float() / (2 * n * h * w)
        elif o.dense_kd == "class_region":
            kd = class_region_loss(za, zb, kd_labels(ya), kd_labels(yb), o.T, o.min_pixels, ignore, share)
        else:
            # each original pixel is predicted in its own context and in the swapped one (x̃_a where M = 0, x̃_b
            # where M = 1); both predictions carry the pixel's own label, so Ω is every labelled pixel
            m = mask.expand_as(za)
            swapped_ctx = torch.cat([torch.where(m, zb, za), torch.where(m, za, zb)])
            y_orig = torch.cat([kd_labels(a.y), kd_labels(b.y)])
            kd, omega = pixel_agree_loss(z[2 * n:], swapped_ctx, y_orig, y_orig, o.T, ignore, share)
            stats["kd_pixels"] = omega.float() / (2 * n * h * w)
        return StepOutput({"ce": ce, "kd": o.lambda_kd * kd}, torch.cat([za, zb]), torch.cat([ya, yb]), stats)
