"""The data interface: what training and evaluation use of the data, whichever backend (in memory, streamed)
serves it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ..batch import Batch, MultiCrop
from .samplers import ShuffleSampler
from .splits import Split


@dataclass(frozen=True)
class Placement:
    """Where batches go: the device, this process's rank among ``world`` ranks, the memory format of images."""

    device: torch.device
    rank: int = 0
    world: int = 1
    memory_format: torch.memory_format = torch.contiguous_format


class TrainBatches(Protocol):
    """What the trainer uses of a train loader: the steps of an epoch, and this rank's batches of an epoch from any
    step on, a function of ``(seed, epoch, step)`` only (so a resumed run continues exactly)."""

    def __len__(self) -> int: ...

    def iterate(self, epoch: int, start_step: int = 0) -> Iterator[Batch]: ...


class Backend(Protocol):
    """How a split's images reach the device: training batches of a sampler's plan, and ordered evaluation
    batches."""

    def train_loader(self, split: Split, sampler: ShuffleSampler, views: tuple[str, ...], seed: int,
                     multicrop: MultiCrop | None) -> TrainBatches:
        """Training batches of ``split``: one augmented view per named pipeline, or ``multicrop``'s crops."""
        ...

    def eval_batches(self, split: Split, ranges: list[tuple[int, int]]) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalised, un-augmented ``(x, y)`` batches of ``split``, one per ``[start, stop)`` of ``ranges``."""
        ...


class EpochPlanLoader:
    """The part both backends' train loaders share: a split, the sampler whose plan gives each epoch's steps, the
    named augmentation pipelines and the seed; a backend adds :meth:`iterate`."""

    def __init__(self, backend: Any, split: Split, sampler: ShuffleSampler, views: tuple[str, ...],
                 seed: int) -> None:
        self.backend = backend
        self.split = split
        self.sampler = sampler
        self.views = views
        self.seed = seed

    def __len__(self) -> int:
        return len(self.sampler)
