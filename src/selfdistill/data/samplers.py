"""Deterministic, DDP-aware batch plans.

A plan turns ``(seed, epoch)`` into the epoch's global index batches, so the order never depends on hidden
iterator state: resuming at step ``s`` of epoch ``e`` just regenerates the plan and starts at ``s``. Each
global batch is split across ranks in contiguous slices; pairs (anchor, partner) always stay on one rank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..batch import Batch
from ..config import ConfigError


@dataclass
class IndexBatch:
    """Dataset indices of one step: anchors and, for the class-pair sampler, their same-class partners."""

    anchor: Tensor
    partner: Tensor | None = None

    def shard(self, rank: int, world: int) -> IndexBatch:
        """This rank's contiguous slice (pairs stay together because both halves are sliced alike)."""
        sl = rank_slice(self.anchor.numel(), rank, world)
        return IndexBatch(self.anchor[sl], None if self.partner is None else self.partner[sl])


def rank_slice(n: int, rank: int, world: int) -> slice:
    """Contiguous part ``rank`` of ``range(n)`` split into ``world`` near-equal parts (as ``tensor_split``)."""
    q, r = divmod(n, world)
    start = rank * q + min(rank, r)
    return slice(start, start + q + (rank < r))


def eval_ranges(n: int, batch_size: int, rank: int, world: int) -> list[tuple[int, int]]:
    """This rank's evaluation batches ``[start, stop)`` of ``range(n)``: the single-process batches (``batch_size``
    rows each, the last one shorter), dealt out whole and contiguously to the ranks. Every image is thus evaluated
    in the same batch whatever the world size, so sharded evaluation computes exactly the single-process outputs
    (kernels may round differently for another batch composition)."""
    batches = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    return batches[rank_slice(len(batches), rank, world)]


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    """The generator of one epoch's plan (``salt`` separates streams, e.g. partner draws from the shuffle)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7919 + salt) % (2**63))


class ShuffleSampler:
    """Plain shuffled pass over the training set (every index once per epoch)."""

    def __init__(self, labels: Tensor, batch_size: int, drop_last: bool, seed: int) -> None:
        if batch_size < 1:
            raise ConfigError("data.batch_size: the batch size must be positive")
        n = labels.numel()
        if drop_last and n < batch_size:
            raise ConfigError(f"data.batch_size: batch size {batch_size} exceeds the {n} training images (set "
                              "data.drop_last=false or use a smaller batch)")
        self.labels = labels
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed

    def __len__(self) -> int:
        n = self.labels.numel()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _anchors(self, epoch: int) -> list[Tensor]:
        perm = torch.randperm(self.labels.numel(), generator=epoch_generator(self.seed, epoch))
        return list(perm.split(self.batch_size))[: len(self)]

    def epoch(self, epoch: int) -> list[IndexBatch]:
        """The global batches of ``epoch``."""
        return [IndexBatch(a) for a in self._anchors(epoch)]


class PairSampler(ShuffleSampler):
    """Class-pair sampler: shuffled anchors plus, for each, a uniformly drawn index of the same class
    (from the whole training set, possibly the anchor itself)."""

    def __init__(self, labels: Tensor, batch_size: int, drop_last: bool, seed: int) -> None:
        super().__init__(labels, batch_size, drop_last, seed)
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels)
        if (counts[labels] == 0).any():  # pragma: no cover - impossible by construction
            raise ValueError("a label has no samples")
        self._sorted = order
        self._start = torch.cumsum(counts, 0) - counts
        self._count = counts

    def partners(self, anchors: Tensor, generator: torch.Generator) -> Tensor:
        """One same-class index per anchor, uniform over the class."""
        y = self.labels[anchors]
        u = torch.rand(anchors.numel(), generator=generator, dtype=torch.float64)
        offset = (u * self._count[y]).long().clamp_max(self._count[y] - 1)
        return self._sorted[self._start[y] + offset]

    def epoch(self, epoch: int) -> list[IndexBatch]:
        g = epoch_generator(self.seed, epoch, salt=1)
        return [IndexBatch(a, self.partners(a, g)) for a in self._anchors(epoch)]


SAMPLERS = {"shuffle": ShuffleSampler, "pair": PairSampler}


def global_batch(batch_size: int, batch_scale: float, world: int) -> int:
    """Anchors per step over all ranks (``data.batch_size`` × the method's ``batch_scale``), checked to split evenly
    over ``world`` ranks."""
    batch = round(batch_size * batch_scale)
    if batch < 1 or batch % world:
        raise ConfigError(f"data.batch_size: {batch} anchors per step (data.batch_size={batch_size} × {batch_scale}) "
                          f"is the global batch and must be a positive multiple of the world size {world}")
    return batch


def assemble_batch(ib: IndexBatch, seed: int, rank: int, world: int,
                   make: Callable[[Tensor, torch.Generator, int, slice], Batch]) -> Batch:
    """One step's batch on this rank: ``make(indices, generator, global rows, rank slice)`` builds the anchors' and
    then the partners' batch from one generator seeded with ``seed`` (the step seed), so every rank draws the same
    numbers for all global rows; the batch carries ``seed + 1`` for the method's own draws."""
    gen = torch.Generator().manual_seed(seed)
    n = ib.anchor.numel()
    sl = rank_slice(n, rank, world)
    local = ib.shard(rank, world)
    batch = make(local.anchor, gen, n, sl)
    if local.partner is not None:
        batch.partner = make(local.partner, gen, n, sl)
    batch.seed, batch.global_size, batch.rows = seed + 1, n, sl
    return batch


def step_seed(seed: int, epoch: int, step: int) -> int:
    """The seed of one training step's random draws (augmentation uses it, methods use it + 1)."""
    return (seed * 6_700_417 + epoch * 100_003 + step * 31 + 17) % (2**62)
