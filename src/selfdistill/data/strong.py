"""The ``strong`` view pipeline, batched on uint8 tensors: RandAugment (the FixMatch op list) then Cutout.

Per image, ``n`` ops are drawn uniformly with replacement from :data:`OPS`; each is applied with probability ½
at a magnitude ``v`` drawn uniformly from ``1..m`` (of 10). Then a square of side ``U(0, cutout)·W`` centred
uniformly in the image is filled with ``fill`` (as in SLD's strong view). Every op runs once per op type on the rows
that drew it, never in a loop over images. Parameters are drawn for the global batch from a seeded CPU
generator and sliced per rank (like :mod:`selfdistill.data.augment`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

OPS = ("identity", "autocontrast", "equalize", "brightness", "color", "contrast", "sharpness", "posterize",
       "solarize", "rotate", "shear_x", "shear_y", "translate_x", "translate_y")
"""The op list (FixMatch's RandAugment pool)."""

GEOMETRIC_FILL = 128.0


@dataclass
class StrongParams:
    """Per-image draws of the strong pipeline for ``n`` images."""

    ops: Tensor  # (n, k) int64 op ids
    apply: Tensor  # (n, k) bool: the op is applied (probability ½)
    level: Tensor  # (n, k) float magnitude v/10 in (0, 1]
    sign: Tensor  # (n, k) ±1 for the symmetric ops
    cut_center: Tensor  # (n, 2) float in [0, 1): centre row/col as a fraction of the size
    cut_side: Tensor  # (n,) float in [0, cutout): side as a fraction of the width

    def __getitem__(self, sl: slice | Tensor) -> StrongParams:
        return StrongParams(self.ops[sl], self.apply[sl], self.level[sl], self.sign[sl], self.cut_center[sl],
                            self.cut_side[sl])


def sample_strong(n: int, num_ops: int, magnitude: int, cutout: float, generator: torch.Generator) -> StrongParams:
    """Draw the strong pipeline's parameters for ``n`` images."""
    if not 1 <= magnitude <= 10:
        raise ValueError(f"RandAugment magnitude must be in 1..10, got {magnitude}")
    ops = torch.randint(0, len(OPS), (n, num_ops), generator=generator)
    apply = torch.rand(n, num_ops, generator=generator) < 0.5
    level = torch.randint(1, magnitude + 1, (n, num_ops), generator=generator).float() / 10
    sign = torch.where(torch.rand(n, num_ops, generator=generator) < 0.5, -1.0, 1.0)
    cut_center = torch.rand(n, 2, generator=generator)
    cut_side = torch.rand(n, generator=generator) * cutout
    return StrongParams(ops, apply, level, sign, cut_center, cut_side)


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device)[None, :, None, None]
    return (x * w).sum(1, keepdim=True)


def _blend(img: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """PIL ImageEnhance: ``other + factor·(img − other)``, clamped to [0, 255]."""
    return (other + factor[:, None, None, None] * (img - other)).clamp(0, 255)


def _autocontrast(x: Tensor) -> Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(hi > lo, 255.0 / (hi - lo).clamp_min(1e-6), torch.ones_like(hi))
    return torch.where(hi > lo, (x - lo) * scale, x).clamp(0, 255)


def _equalize(x: Tensor) -> Tensor:
    """Per-channel histogram equalisation (PIL's ImageOps.equalize rule), all channels of all images at once."""
    n, c, h, w = x.shape
    v = x.round().long().clamp(0, 255).reshape(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device).scatter_add_(1, v, torch.ones_like(v, dtype=torch.float))
    last = hist.shape[1] - 1 - torch.flip((hist > 0).float(), [1]).argmax(1)  # highest used value
    step = (hist.sum(1) - hist.gather(1, last[:, None])[:, 0]).div(255).floor()
    cdf = hist.cumsum(1) - hist  # pixels strictly below each value
    lut = ((cdf + (step / 2).floor()[:, None]) / step.clamp_min(1)[:, None]).floor().clamp(0, 255)
    out = torch.where(step[:, None] > 0, lut.gather(1, v), v.float())
    return out.reshape(n, c, h, w)


def _sharpness(x: Tensor, factor: Tensor) -> Tensor:
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device) / 13
    c = x.shape[1]
    smooth = F.conv2d(x, k.expand(c, 1, 3, 3), groups=c)
    blurred = x.clone()
    blurred[:, :, 1:-1, 1:-1] = smooth  # PIL keeps the border pixels
    return _blend(x, blurred, factor)


def _affine(x: Tensor, matrix: Tensor) -> Tensor:
    """Apply per-image 2×3 affine maps (output → input, normalised coordinates); nearest, fill 128."""
    grid = F.affine_grid(matrix, list(x.shape), align_corners=False)
    ones = torch.ones_like(x[:, :1])
    out = F.grid_sample(torch.cat([x, ones], 1), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return torch.where(out[:, -1:] > 0.5, out[:, :-1], torch.full_like(out[:, :-1], GEOMETRIC_FILL))


def _apply_op(name: str, x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """One op on float images in [0, 255]; ``level`` in (0, 1] per image, ``sign`` ±1 per image."""
    n = x.shape[0]
    if name == "identity":
        return x
    if name == "autocontrast":
        return _autocontrast(x)
    if name == "equalize":
        return _equalize(x)
    if name in ("brightness", "color", "contrast", "sharpness"):
        factor = level * 0.9 + 0.05  # FixMatch pool: enhance factor in (0.05, 0.95]
        if name == "brightness":
            return _blend(x, torch.zeros_like(x), factor)
        if name == "color":
            return _blend(x, _gray(x).expand_as(x), factor)
        if name == "contrast":
            mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True).round()
            return _blend(x, mean.expand_as(x), factor)
        return _sharpness(x, factor)
    if name == "posterize":
        bits = (level * 4).long() + 4  # 4..8 bits kept
        shift = (8 - bits).float()[:, None, None, None]
        div = torch.pow(2.0, shift)
        return torch.floor(x.round() / div) * div
    if name == "solarize":
        threshold = (256 - level * 256)[:, None, None, None]
        return torch.where(x >= threshold, 255 - x, x)
    zero, one = torch.zeros(n, device=x.device), torch.ones(n, device=x.device)
    if name == "rotate":
        a = sign * level * 30 * math.pi / 180
        m = torch.stack([torch.stack([a.cos(), -a.sin(), zero], 1), torch.stack([a.sin(), a.cos(), zero], 1)], 1)
    elif name in ("shear_x", "shear_y"):
        s = sign * level * 0.3
        if name == "shear_x":
            m = torch.stack([torch.stack([one, s, zero], 1), torch.stack([zero, one, zero], 1)], 1)
        else:
            m = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([s, one, zero], 1)], 1)
    elif name in ("translate_x", "translate_y"):
        t = sign * level * 0.3 * 2  # a fraction of the size, in normalised coordinates (width 2)
        tx, ty = (t, zero) if name == "translate_x" else (zero, t)
        m = torch.stack([torch.stack([one, zero, tx], 1), torch.stack([zero, one, ty], 1)], 1)
    else:
        raise ValueError(f"unknown op '{name}'")
    return _affine(x, m)


def cutout(x: Tensor, center: Tensor, side: Tensor, fill: Tensor) -> Tensor:
    """Fill one square per image (side ``side·W`` px, centred at ``center`` fractions, clipped at the border)."""
    h, w = x.shape[-2:]
    half = (side.to(x.device) * w / 2)[:, None]
    cy = center[:, 0].to(x.device)[:, None] * h
    cx = center[:, 1].to(x.device)[:, None] * w
    r = torch.arange(h, device=x.device)[None, :] + 0.5
    q = torch.arange(w, device=x.device)[None, :] + 0.5
    rows = (r >= cy - half) & (r < cy + half)
    cols = (q >= cx - half) & (q < cx + half)
    mask = (rows[:, :, None] & cols[:, None, :])[:, None]
    return torch.where(mask, fill.to(x.device, x.dtype)[None, :, None, None], x)


def strong_augment(x: Tensor, params: StrongParams, fill: Tensor) -> Tensor:
    """Apply RandAugment + Cutout to uint8 ``(N, C, H, W)`` images; returns uint8 of the same shape."""
    out = x.float()
    ops, apply = params.ops.to(x.device), params.apply.to(x.device)
    level, sign = params.level.to(x.device), params.sign.to(x.device)
    for k in range(ops.shape[1]):
        for op_id, name in enumerate(OPS):
            rows = ((ops[:, k] == op_id) & apply[:, k]).nonzero()[:, 0]
            if rows.numel() and name != "identity":
                out[rows] = _apply_op(name, out[rows], level[rows, k], sign[rows, k])
    out = cutout(out, params.cut_center, params.cut_side, fill.float())
    return out.round().clamp(0, 255).to(torch.uint8)
