"""The contract between data and methods: what a training step receives (:class:`Batch`) and what a method asks
the data pipeline for (:class:`DataRequirements`). It sits at the bottom of the package: data modules build
batches, methods read them, and neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class MultiCrop:
    """``n_global`` crops of ``global_size`` px at area fraction ``global_scale`` and ``n_local`` crops of
    ``local_size`` px at ``local_scale`` (docs/methods.md, dino, CIFAR-scale defaults)."""

    n_global: int = 2
    n_local: int = 4
    global_size: int = 32
    local_size: int = 16
    global_scale: tuple[float, float] = (0.14, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.14)
    jitter: float = 0.4
    """Brightness/contrast/saturation jitter strength (applied with probability 0.8); grayscale with p 0.2."""


@dataclass
class Batch:
    """One training step's data on the device.

    ``x`` is the first augmented view (normalised float), ``y`` the labels (class indices, label maps, or for
    detection one target dict per image with ``boxes``, ``labels`` and ``size``), ``views`` all ``n`` views
    (``views[0] is x``), ``index`` the dataset indices, ``partner`` the same-class partners' batch under the
    class-pair sampler.
    ``seed`` is a per-step seed, equal on every rank: a method that draws random numbers for the batch draws
    them for all ``global_size`` rows from ``generator()`` and keeps ``rows``, its rank's slice, so results do
    not depend on the world size and a resumed run draws the same numbers.
    """

    x: Tensor
    y: Tensor | list[dict[str, Tensor]]
    index: Tensor
    views: list[Tensor] = field(default_factory=list)
    partner: Batch | None = None
    seed: int = 0
    global_size: int = -1
    rows: slice = field(default_factory=lambda: slice(None))

    def generator(self) -> torch.Generator:
        """A fresh CPU generator seeded with this step's seed."""
        return torch.Generator().manual_seed(self.seed)

    def __len__(self) -> int:
        return self.index.numel()


@dataclass(frozen=True)
class DataRequirements:
    """What a method needs from the data pipeline (docs/extending.md)."""

    sampler: str = "shuffle"
    """``shuffle`` or ``pair`` (class-pair sampler: anchors plus same-class partners)."""
    views: tuple[str, ...] = ("weak",)
    """One pipeline name per independently augmented view: ``weak`` (crop + flip) or ``strong`` (crop + flip,
    then RandAugment + Cutout, :mod:`selfdistill.data.strong`)."""
    batch_scale: float = 1.0
    """Anchors per step as a fraction of ``data.batch_size`` (e.g. ½ when partners count towards the batch)."""
    multicrop: MultiCrop | None = None
    """Multi-crop views instead of ``views``: global crops first, then local crops (DINO)."""
