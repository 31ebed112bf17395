"""Multi-crop views (DINO): batched random-resized crops at two resolutions plus colour jitter, on tensors.

Each crop is one ``affine_grid`` + ``grid_sample`` over the whole batch (no loop over images); parameters are
drawn for the global batch from a seeded generator and sliced per rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .strong import _blend, _gray


@dataclass
class CropParams:
    """Per-image crop box (centre and size as fractions of the image), flip and colour factors."""

    cy: Tensor
    cx: Tensor
    h: Tensor
    w: Tensor
    flip: Tensor
    color: Tensor  # (n, 3) brightness, contrast, saturation factors
    gray: Tensor

    def __getitem__(self, sl: slice) -> CropParams:
        return CropParams(*(getattr(self, f)[sl] for f in ("cy", "cx", "h", "w", "flip", "color", "gray")))


def sample_crops(n: int, scale: tuple[float, float], jitter: float, generator: torch.Generator,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> CropParams:
    """Draw random-resized-crop boxes (area in ``scale``, aspect ratio log-uniform in ``ratio``), flips and
    colour-jitter factors for ``n`` images."""
    area = torch.empty(n).uniform_(*scale, generator=generator)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    w = (area * log_r.exp()).sqrt().clamp(max=1.0)
    h = (area / log_r.exp()).sqrt().clamp(max=1.0)
    cy = h / 2 + torch.rand(n, generator=generator) * (1 - h)
    cx = w / 2 + torch.rand(n, generator=generator) * (1 - w)
    flip = torch.rand(n, generator=generator) < 0.5
    factors = 1 + (torch.rand(n, 3, generator=generator) * 2 - 1) * jitter
    apply = torch.rand(n, 1, generator=generator) < 0.8
    color = torch.where(apply, factors, torch.ones_like(factors))
    gray = torch.rand(n, generator=generator) < 0.2
    return CropParams(cy, cx, h, w, flip, color, gray)


def resized_crops(x: Tensor, p: CropParams, size: int) -> Tensor:
    """Crop each image's box, resize it to ``size`` (bilinear), flip and colour-jitter; float in [0, 255]."""
    n = x.shape[0]
    dev = x.device
    sx = p.w.to(dev) * torch.where(p.flip.to(dev), -1.0, 1.0)
    zero = torch.zeros(n, device=dev)
    theta = torch.stack([torch.stack([sx, zero, 2 * p.cx.to(dev) - 1], 1),
                         torch.stack([zero, p.h.to(dev), 2 * p.cy.to(dev) - 1], 1)], 1)
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    c = p.color.to(dev)
    out = _blend(out, torch.zeros_like(out), c[:, 0])
    out = _blend(out, _gray(out).mean(dim=(1, 2, 3), keepdim=True).expand_as(out), c[:, 1])
    if out.shape[1] == 3:
        out = _blend(out, _gray(out).expand_as(out), c[:, 2])
        out = torch.where(p.gray.to(dev)[:, None, None, None], _gray(out).expand_as(out), out)
    return out
