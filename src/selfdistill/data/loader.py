"""The data module: splits, batch plans and on-device batch assembly for every data requirement."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

import torch
from torch import Tensor

from ..batch import Batch, DataRequirements, MultiCrop
from ..config import ConfigError, DataConfig
from .multicrop import resized_crops, sample_crops
from .samplers import SAMPLERS, assemble_batch, eval_ranges, global_batch, step_seed
from .sources import DATASETS, DataError, RawData, Split
from .splits import make_splits
from .strong import sample_strong, strong_augment
from .transforms import crop_flip, normalize, sample_crop_flip

PIPELINES = ("weak", "strong")


class DataModule:
    """Loads a dataset once, splits it (seeded, class-balanced) and serves train and eval batches.

    In-memory data stays a uint8 tensor on the training device and is augmented there in batches; streamed
    data goes through DataLoader workers with torchvision transforms v2.
    """

    def __init__(self, cfg: DataConfig, device: torch.device | str = "cpu", rank: int = 0, world: int = 1,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.rank, self.world = rank, world
        self.memory_format = memory_format
        raw: RawData = DATASETS.get(cfg.name)(cfg)
        self.classes = raw.classes
        self.num_classes = len(raw.classes)
        self.in_chans = raw.in_chans
        train_idx, val_idx = make_splits(raw.train.labels, self.num_classes, cfg.val_fraction, cfg.train_subset,
                                         cfg.split_seed)
        self.train: Split = raw.train.subset(train_idx)
        self.val: Split | None = raw.train.subset(val_idx) if val_idx.numel() else None
        self.test: Split = raw.test
        self.in_memory = raw.in_memory
        self.mean = torch.tensor(cfg.augment.mean or raw.mean, dtype=torch.float32)
        self.std = torch.tensor(cfg.augment.std or raw.std, dtype=torch.float32)
        if self.mean.numel() != self.in_chans or self.std.numel() != self.in_chans:
            raise DataError(f"data.augment.mean/std need {self.in_chans} values for {cfg.name}")
        if self.in_memory:
            for split in (self.train, self.val, self.test):
                if split is not None:
                    split.images = split.images.to(self.device)
        self.image_size = self.train.images.shape[-1] if self.in_memory else (cfg.image_size or 224)

    # -------------------------------------------------------------------------------------------- train
    def train_loader(self, req: DataRequirements, seed: int) -> TrainLoader:
        """Batches for a method's declared requirements."""
        if req.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler '{req.sampler}' (known: {', '.join(SAMPLERS)})")
        unknown = sorted(set(req.views) - set(PIPELINES))
        if unknown or not req.views:
            raise ValueError(f"unknown view pipelines {unknown} (known: {', '.join(PIPELINES)})")
        batch = global_batch(self.cfg.batch_size, req.batch_scale, self.world)
        sampler = SAMPLERS[req.sampler](self.train.labels, batch, self.cfg.drop_last, seed)
        if req.multicrop is not None and not self.in_memory:
            raise ConfigError("data.in_memory: multi-crop views need in-memory data (data.in_memory=always, or a "
                              "dataset under data.memory_limit_gb)")
        return TrainLoader(self, sampler, req.views, seed, req.multicrop)

    def _prepare(self, images_u8: Tensor) -> Tensor:
        return normalize(images_u8, self.mean, self.std).contiguous(memory_format=self.memory_format)

    # --------------------------------------------------------------------------------------------- eval
    def eval_batches(self, split: Split) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's shard of ``split`` as normalised ``(x, y)`` batches, in order (no augmentation)."""
        ranges = eval_ranges(len(split), self.cfg.eval_batch_size, self.rank, self.world)
        if self.in_memory:
            for start, stop in ranges:
                yield self._prepare(split.images[start:stop]), split.labels[start:stop].to(self.device)
            return
        if not ranges:
            return
        from .streaming import eval_loader

        # the shard starts at a batch boundary: the loader's batches are the single-process ones
        for x, y, _ in eval_loader(self, split.subset(torch.arange(ranges[0][0], ranges[-1][1]))):
            yield x.to(self.device).contiguous(memory_format=self.memory_format), y.to(self.device)


def _weak_view(imgs: Tensor, sl: slice, crop, pad: int) -> Tensor:
    return crop_flip(imgs, pad, crop[sl])


def _strong_view(imgs: Tensor, sl: slice, crop, pad: int, strong, fill: Tensor) -> Tensor:
    return strong_augment(crop_flip(imgs, pad, crop[sl]), strong[sl], fill)


def _multicrop_view(imgs: Tensor, sl: slice, params, size: int) -> Tensor:
    return resized_crops(imgs, params[sl], size)


class TrainLoader:
    """Iterates one epoch's batches from any step, deterministically from ``(seed, epoch, step)``."""

    def __init__(self, data: DataModule, sampler, views: tuple[str, ...], seed: int,
                 multicrop: MultiCrop | None = None) -> None:
        self.data = data
        self.multicrop = multicrop
        self.sampler = sampler
        self.views = views
        self.seed = seed
        self.fill = torch.tensor(data.cfg.augment.cutout_fill[:data.in_chans], dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.sampler)

    def iterate(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Yield this rank's batches of ``epoch`` from ``start_step`` on."""
        d = self.data
        plan = self.sampler.epoch(epoch)
        if not d.in_memory:
            from .streaming import train_batches

            yield from train_batches(self, plan, epoch, start_step)
            return
        for step in range(start_step, len(plan)):
            yield assemble_batch(plan[step], step_seed(self.seed, epoch, step), d.rank, d.world,
                                 lambda idx, gen, n, sl: self._batch(idx, self._draw(gen, n), sl))

    def _draw(self, gen: torch.Generator, n: int) -> list[Callable[[Tensor, slice], Tensor]]:
        """Draw every view's parameters for the ``n`` global rows; each view is a function of (uint8 images, this
        rank's row slice)."""
        mc = self.multicrop
        if mc is not None:
            return [partial(_multicrop_view, params=sample_crops(n, scale, mc.jitter, gen), size=size)
                    for scale, size, count in ((mc.global_scale, mc.global_size, mc.n_global),
                                               (mc.local_scale, mc.local_size, mc.n_local)) for _ in range(count)]
        aug = self.data.cfg.augment
        views = []
        for name in self.views:
            crop = sample_crop_flip(n, aug.crop_padding, aug.hflip, gen)
            if name == "strong":
                strong = sample_strong(n, aug.randaugment_ops, aug.randaugment_magnitude, aug.cutout, gen)
                views.append(partial(_strong_view, crop=crop, pad=aug.crop_padding, strong=strong, fill=self.fill))
            else:
                views.append(partial(_weak_view, crop=crop, pad=aug.crop_padding))
        return views

    def _batch(self, idx: Tensor, draws: list[Callable[[Tensor, slice], Tensor]], sl: slice) -> Batch:
        d = self.data
        imgs = d.train.images[idx.to(d.device)]
        views = [d._prepare(view(imgs, sl)) for view in draws]
        return Batch(views[0], d.train.labels[idx].to(d.device), idx.to(d.device), views)
