"""Batched, vectorised image augmentation on uint8 tensors (no Python loop over samples).

Random parameters are drawn for the *global* batch from a seeded CPU generator and then sliced per rank,
so a run gives the same images whatever its world size and wherever it resumes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class CropFlipParams:
    """Per-sample crop offsets (into the padded image) and flip flags."""

    top: Tensor  # (N,) int64 in [0, 2*pad]
    left: Tensor  # (N,) int64 in [0, 2*pad]
    flip: Tensor  # (N,) bool

    def __getitem__(self, sl: slice | Tensor) -> CropFlipParams:
        return CropFlipParams(self.top[sl], self.left[sl], self.flip[sl])

    def to(self, device: torch.device | str) -> CropFlipParams:
        """Move the parameters to ``device``."""
        return CropFlipParams(self.top.to(device), self.left.to(device), self.flip.to(device))


def sample_crop_flip(n: int, pad: int, hflip: bool, generator: torch.Generator) -> CropFlipParams:
    """Draw crop offsets uniformly in ``[0, 2*pad]`` and flips with probability ½ for ``n`` images."""
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5 if hflip else torch.zeros(n, dtype=torch.bool)
    return CropFlipParams(top, left, flip)


def crop_flip(x: Tensor, pad: int, params: CropFlipParams) -> Tensor:
    """Zero-pad ``x`` (N, C, H, W) by ``pad`` pixels, crop back to H×W at the given offsets, then flip.

    Equivalent to torchvision's ``RandomCrop(size, padding=pad)`` followed by ``RandomHorizontalFlip`` applied to
    each image with the same parameters. Works on any dtype and device; output has the input's dtype.
    """
    n, _, h, w = x.shape
    params = params.to(x.device)
    if pad > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        rows = params.top[:, None] + torch.arange(h, device=x.device)  # (N, H)
        cols = params.left[:, None] + torch.arange(w, device=x.device)  # (N, W)
        flip_cols = torch.where(params.flip[:, None], cols.flip(1), cols)
        batch = torch.arange(n, device=x.device)[:, None, None]
        # advanced indexing gives (N, H, W, C); move channels back
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], flip_cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()
    return torch.where(params.flip[:, None, None, None], x.flip(3), x)


def normalize(x: Tensor, mean: Tensor, std: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Map uint8 images to ``(x/255 - mean) / std`` in ``dtype``; ``mean``/``std`` are (C,) in [0, 1]."""
    scale = (1.0 / (255.0 * std)).to(x.device, dtype)
    shift = (mean / std).to(x.device, dtype)
    return x.to(dtype) * scale[:, None, None] - shift[:, None, None]
