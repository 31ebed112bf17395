"""In-memory backend: uint8 images held on the training device, augmented there in batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

import torch
from torch import Tensor

from ..batch import Batch, MultiCrop
from ..config import DataConfig
from .interface import EpochPlanLoader, Placement
from .multicrop import resized_crops, sample_crops
from .samplers import ShuffleSampler, assemble_batch, step_seed
from .splits import Split
from .strong import sample_strong, strong_augment
from .transforms import crop_flip, sample_crop_flip


class MemoryBackend:
    """Serves splits whose uint8 images are on ``placement.device``; ``prepare`` normalises a uint8 batch."""

    def __init__(self, cfg: DataConfig, in_chans: int, prepare: Callable[[Tensor], Tensor],
                 placement: Placement) -> None:
        self.cfg = cfg
        self.prepare = prepare
        self.placement = placement
        self.fill = torch.tensor(cfg.augment.cutout_fill[:in_chans], dtype=torch.uint8)

    def train_loader(self, split: Split, sampler: ShuffleSampler, views: tuple[str, ...], seed: int,
                     multicrop: MultiCrop | None) -> TrainLoader:
        """Batches of ``split`` augmented on the device."""
        return TrainLoader(self, split, sampler, views, seed, multicrop)

    def eval_batches(self, split: Split, ranges: list[tuple[int, int]]) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalised ``(x, y)`` slices of ``split``, one per range."""
        for start, stop in ranges:
            yield self.prepare(split.images[start:stop]), split.labels[start:stop].to(self.placement.device)


def _weak_view(imgs: Tensor, sl: slice, crop, pad: int) -> Tensor:
    return crop_flip(imgs, pad, crop[sl])


def _strong_view(imgs: Tensor, sl: slice, crop, pad: int, strong, fill: Tensor) -> Tensor:
    return strong_augment(crop_flip(imgs, pad, crop[sl]), strong[sl], fill)


def _multicrop_view(imgs: Tensor, sl: slice, params, size: int) -> Tensor:
    return resized_crops(imgs, params[sl], size)


class TrainLoader(EpochPlanLoader):
    """Iterates one epoch's batches from any step, deterministically from ``(seed, epoch, step)``."""

    backend: MemoryBackend

    def __init__(self, backend: MemoryBackend, split: Split, sampler: ShuffleSampler, views: tuple[str, ...],
                 seed: int, multicrop: MultiCrop | None = None) -> None:
        super().__init__(backend, split, sampler, views, seed)
        self.multicrop = multicrop

    def iterate(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Yield this rank's batches of ``epoch`` from ``start_step`` on."""
        p = self.backend.placement
        plan = self.sampler.epoch(epoch)
        for step in range(start_step, len(plan)):
            yield assemble_batch(plan[step], step_seed(self.seed, epoch, step), p.rank, p.world,
                                 lambda idx, gen, n, sl: self._batch(idx, self._draw(gen, n), sl))

    def _draw(self, gen: torch.Generator, n: int) -> list[Callable[[Tensor, slice], Tensor]]:
        """Draw every view's parameters for the ``n`` global rows; each view is a function of (uint8 images, this
        rank's row slice)."""
        mc = self.multicrop
        if mc is not None:
            return [partial(_multicrop_view, params=sample_crops(n, scale, mc.jitter, gen), size=size)
                    for scale, size, count in ((mc.global_scale, mc.global_size, mc.n_global),
                                               (mc.local_scale, mc.local_size, mc.n_local)) for _ in range(count)]
        aug = self.backend.cfg.augment
        views = []
        for name in self.views:
            crop = sample_crop_flip(n, aug.crop_padding, aug.hflip, gen)
            if name == "strong":
                strong = sample_strong(n, aug.randaugment_ops, aug.randaugment_magnitude, aug.cutout, gen)
                views.append(partial(_strong_view, crop=crop, pad=aug.crop_padding, strong=strong,
                                     fill=self.backend.fill))
            else:
                views.append(partial(_weak_view, crop=crop, pad=aug.crop_padding))
        return views

    def _batch(self, idx: Tensor, draws: list[Callable[[Tensor, slice], Tensor]], sl: slice) -> Batch:
        device = self.backend.placement.device
        imgs = self.split.images[idx.to(device)]
        views = [self.backend.prepare(view(imgs, sl)) for view in draws]
        return Batch(views[0], self.split.labels[idx].to(device), idx.to(device), views)
