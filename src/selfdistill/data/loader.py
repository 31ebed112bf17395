"""The data module: splits and batch plans for every data requirement, served by the in-memory or the streaming
backend (chosen once, when the data is loaded)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ..batch import DataRequirements
from ..config import DataConfig
from .interface import Backend, Placement, TrainBatches
from .memory import MemoryBackend
from .samplers import SAMPLERS, eval_ranges, global_batch
from .sources import DATASETS, DataError, RawData, Split
from .splits import make_splits
from .streaming import StreamBackend
from .transforms import normalize

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
        placement = Placement(self.device, rank, world, memory_format)
        self.backend: Backend
        if self.in_memory:
            for split in (self.train, self.val, self.test):
                if split is not None:
                    split.images = split.images.to(self.device)
            self.image_size = self.train.images.shape[-1]
            self.backend = MemoryBackend(cfg, self.in_chans, self._prepare, placement)
        else:
            self.image_size = cfg.image_size or 224
            self.backend = StreamBackend(cfg, self.image_size, self.mean, self.std, placement)

    # -------------------------------------------------------------------------------------------- train
    def train_loader(self, req: DataRequirements, seed: int) -> TrainBatches:
        """Batches for a method's declared requirements."""
        if req.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler '{req.sampler}' (known: {', '.join(SAMPLERS)})")
        unknown = sorted(set(req.views) - set(PIPELINES))
        if unknown or not req.views:
            raise ValueError(f"unknown view pipelines {unknown} (known: {', '.join(PIPELINES)})")
        batch = global_batch(self.cfg.batch_size, req.batch_scale, self.world)
        sampler = SAMPLERS[req.sampler](self.train.labels, batch, self.cfg.drop_last, seed)
        return self.backend.train_loader(self.train, sampler, req.views, seed, req.multicrop)

    def _prepare(self, images_u8: Tensor) -> Tensor:
        return normalize(images_u8, self.mean, self.std).contiguous(memory_format=self.memory_format)

    # --------------------------------------------------------------------------------------------- eval
    def eval_batches(self, split: Split) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's shard of ``split`` as normalised ``(x, y)`` batches, in order (no augmentation)."""
        yield from self.backend.eval_batches(split, eval_ranges(len(split), self.cfg.eval_batch_size, self.rank,
                                                                self.world))
