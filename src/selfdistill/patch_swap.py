"""Intra-class patch swap: vectorised, on any device and dtype, usable in your own training loops.

>>> from selfdistill.patch_swap import patch_swap
>>> xa_s, xb_s, mask = patch_swap(xa, xb, grid=4, ratio=(0.0, 1.0))

The IPS variants draw their masks through :class:`SwapOptions`, whose fields are their flat ``method.*`` keys.
Cell ``(i, j)`` of a ``g × g`` grid covers rows ``⌊iH/g⌋ … ⌊(i+1)H/g⌋ − 1`` and the columns likewise, so sizes
need not divide. Swapping is a boolean select (``torch.where``), never arithmetic blending: every output pixel is
bit-identical to one of its two sources (docs/methods.md, ips).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .limits import field_limits, limited

Ratio = float | tuple[float, float]


def draw_ratios(n: int, dist: Literal["uniform", "fixed", "beta"], low: float = 0.0, high: float = 1.0,
                alpha: float = 1.0, beta: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Swap ratios per pair: ``uniform(low, high)``, ``fixed`` (= ``low``) or ``beta(alpha, beta)``."""
    if dist == "fixed":
        return torch.full((n,), float(low))
    if dist == "uniform":
        return low + (high - low) * torch.rand(n, generator=generator)
    if dist == "beta":  # torch's Beta takes no generator: seed NumPy's from it
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return torch.from_numpy(np.random.default_rng(seed).beta(alpha, beta, n)).float()
    raise ValueError(f"unknown ratio distribution '{dist}'")


def cell_counts(ratios: Tensor, grid: int, k_min: int = 0, k_max: int | None = None) -> Tensor:
    """Cells to swap per pair: ``k = clamp(round(r·g²), k_min, k_max)``."""
    k_max = grid * grid if k_max is None else k_max
    return torch.round(ratios * grid * grid).long().clamp(k_min, k_max)


def sample_cells(k: Tensor, grid: int, generator: torch.Generator | None = None) -> Tensor:
    """Bool ``(n, g, g)``: exactly ``k[i]`` cells of row ``i`` chosen uniformly without replacement."""
    n = k.numel()
    ranks = torch.rand(n, grid * grid, generator=generator).argsort(1).argsort(1)
    return (ranks < k[:, None]).view(n, grid, grid)


def cell_index(size: int, grid: int, device: torch.device | str = "cpu") -> Tensor:
    """Cell number of each of ``size`` pixel rows (or columns): row ``r`` is in cell ``i`` when
    ``⌊iH/g⌋ ≤ r < ⌊(i+1)H/g⌋``."""
    bounds = torch.div(torch.arange(1, grid + 1) * size, grid, rounding_mode="floor")
    return torch.searchsorted(bounds, torch.arange(size), right=True).to(device)


def cells_to_mask(cells: Tensor, height: int, width: int) -> Tensor:
    """Expand a bool cell grid ``(n, g, g)`` to a pixel mask ``(n, 1, H, W)``."""
    g = cells.shape[-1]
    rows, cols = cell_index(height, g, cells.device), cell_index(width, g, cells.device)
    return cells[:, rows[:, None], cols[None, :]][:, None]


def box_mask(ratios: Tensor, height: int, width: int, generator: torch.Generator | None = None) -> Tensor:
    """One rectangle per pair of area ≈ ``r·H·W`` (sides ``round(√r·H)``, ``round(√r·W)``) placed uniformly
    inside the image (CutMix-style layout); bool ``(n, 1, H, W)``."""
    n = ratios.numel()
    side = ratios.clamp(0, 1).sqrt()
    h = torch.round(side * height).long()
    w = torch.round(side * width).long()
    top = (torch.rand(n, generator=generator) * (height - h + 1)).long()
    left = (torch.rand(n, generator=generator) * (width - w + 1)).long()
    r = torch.arange(height)[None, :]
    c = torch.arange(width)[None, :]
    in_rows = (r >= top[:, None]) & (r < (top + h)[:, None])
    in_cols = (c >= left[:, None]) & (c < (left + w)[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


@dataclass
class SwapOptions:
    """The swap every IPS variant configures: per pair a ratio ``r`` drawn uniformly from ``[ratio_low,
    ratio_high]``, ``round(r·g²)`` cells of a ``g × g`` grid exchanged at the same positions, the pair swapped at
    all with probability ``p_swap``. A variant's options class derives from it, so these are flat ``method.*`` keys.

    The finer knobs of the draw are fixed here, as class attributes; :class:`ImageSwapOptions` makes them options.
    Each option's range is declared with it (:func:`~selfdistill.limits.limited`): the config checks it where it is
    read, and construction checks it too, for direct use (:func:`patch_swap`).
    """

    grid: int = limited(8, low=1)
    """Cells per side of the swap grid (8 on 512-px crops gives 64-px cells)."""
    ratio_low: float = limited(0.0, low=0, high=1)
    """Lower bound of the uniform per-pair swap ratio."""
    ratio_high: float = limited(1.0, low=0, high=1)
    """Upper bound of the uniform per-pair swap ratio."""
    p_swap: float = limited(1.0, low=0, high=1)
    """Probability that a pair is swapped at all."""

    layout = "grid"
    patch_size = None
    ratio_dist = "uniform"
    beta_a = 1.0
    beta_b = 1.0
    k_min = 0
    k_max = None
    mask_per = "pair"

    def __post_init__(self) -> None:
        for name, limits in field_limits(type(self)).items():
            limits.check(getattr(self, name), name)
        for ok, message in self.checks():
            if not ok:
                raise ValueError(message)

    def checks(self) -> list[tuple[bool, str]]:
        """``(condition, message)`` pairs of options that must fit together (each option's own range is declared
        with it); a variant adds its own to these."""
        return [
            (self.ratio_low <= self.ratio_high, f"ratio_low must be <= ratio_high, got {self.ratio_low} > "
                                                f"{self.ratio_high}"),
            (self.k_max is None or self.k_max >= self.k_min, f"k_max must be >= k_min (or null: grid²), got "
                                                             f"{self.k_max} < {self.k_min}"),
        ]

    def masks(self, generator: torch.Generator | None, n_global: int, rows: slice, height: int, width: int,
              device: torch.device | str) -> tuple[Tensor, Tensor]:
        """Pixel masks ``(n, 1, H, W)`` (true = from the partner) and swap flags of the pairs ``rows``, drawn from
        ``generator`` for all ``n_global`` pairs of the step (so they do not depend on the split across ranks)."""
        ratios = draw_ratios(n_global, self.ratio_dist, self.ratio_low, self.ratio_high, self.beta_a, self.beta_b,
                             generator)
        if self.layout == "grid":
            g = self.grid if self.patch_size is None else max(1, round(height / self.patch_size))
            cells = sample_cells(cell_counts(ratios, g, self.k_min, self.k_max), g, generator)
            mask = cells_to_mask(cells, height, width)
        else:
            mask = box_mask(ratios, height, width, generator)
        if self.mask_per == "batch":
            mask = mask[:1].expand_as(mask)
        swapped = torch.rand(n_global, generator=generator) < self.p_swap
        mask = mask & swapped[:, None, None, None]
        return mask[rows].to(device), swapped[rows].to(device)


@dataclass
class ImageSwapOptions(SwapOptions):
    """The swap of image-level IPS: every knob of the draw is an option."""

    layout: Literal["grid", "box"] = "grid"
    """``grid``: k random cells of a g×g grid; ``box``: one rectangle of area ≈ r·HW at the same place."""
    grid: int = limited(4, low=1)
    """Cells per side (4 on 32-px images gives 8-px cells)."""
    patch_size: int | None = limited(None, low=1)
    """Cell side in pixels; when set it overrides ``grid`` (g = round(H / patch_size))."""
    ratio_dist: Literal["uniform", "fixed", "beta"] = "uniform"
    """Distribution of the per-pair swap ratio r."""
    ratio_low: float = limited(0.0, low=0, high=1)
    """``uniform``: lower bound; ``fixed``: the ratio."""
    ratio_high: float = limited(1.0, low=0, high=1)
    """``uniform``: upper bound."""
    beta_a: float = limited(1.0, low=0, low_open=True)
    """``beta``: first shape parameter."""
    beta_b: float = limited(1.0, low=0, low_open=True)
    """``beta``: second shape parameter."""
    k_min: int = limited(0, low=0)
    """Fewest cells swapped in a pair."""
    k_max: int | None = limited(None, low=0)
    """Most cells swapped in a pair (default g²)."""
    mask_per: Literal["pair", "batch"] = "pair"
    """``batch`` reuses the first pair's mask for every pair."""


def grid_swap_mask(n: int, height: int, width: int, grid: int, ratio: Ratio, p: float = 1.0,
                   generator: torch.Generator | None = None) -> Tensor:
    """Bool ``(n, 1, H, W)`` masks of ``round(r·grid²)`` random grid cells per pair, ``r`` drawn uniformly from
    ``ratio`` (a float or a ``(low, high)`` range); a pair is masked at all with probability ``p``."""
    low, high = (ratio, ratio) if isinstance(ratio, int | float) else ratio
    return SwapOptions(grid, low, high, p).masks(generator, n, slice(None), height, width, "cpu")[0]


def swap_with_mask(xa: Tensor, xb: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(where(M, xb, xa), where(M, xa, xb))``: the two complementary images."""
    mask = mask.to(xa.device)
    return torch.where(mask, xb, xa), torch.where(mask, xa, xb)


def patch_swap(xa: Tensor, xb: Tensor, grid: int, ratio: Ratio, p: float = 1.0,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Swap a random set of grid cells between paired images, at the same positions.

    Args:
        xa, xb: ``(N, C, H, W)`` images of any dtype and device (pairs along dim 0).
        grid: cells per side; ``H`` and ``W`` need not be divisible by it.
        ratio: fraction of the ``grid²`` cells to swap, a float or a ``(low, high)`` range drawn per pair;
            the count is ``round(ratio·grid²)``.
        p: probability that a pair is swapped at all (otherwise it is returned unchanged).
        generator: a CPU ``torch.Generator`` for reproducible draws.

    Returns:
        ``(xa_swapped, xb_swapped, mask)`` where ``mask`` is a bool ``(N, 1, H, W)`` tensor that is true where
        a pixel came from the partner.
    """
    if xa.shape != xb.shape or xa.dim() != 4:
        raise ValueError(f"xa and xb must be (N, C, H, W) of one shape, got {tuple(xa.shape)} and {tuple(xb.shape)}")
    n, _, h, w = xa.shape
    mask = grid_swap_mask(n, h, w, grid, ratio, p, generator).to(xa.device)
    xa_s, xb_s = swap_with_mask(xa, xb, mask)
    return xa_s, xb_s, mask
