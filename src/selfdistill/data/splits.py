"""Seeded, class-balanced subsets and validation splits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch
from torch import Tensor

from ..config import DataConfig
from .errors import DataError


@dataclass
class Split:
    """One split: uint8 images ``(N, C, H, W)`` held in memory, or image files to stream."""

    labels: Tensor
    images: Tensor | None = None
    files: list[str] | None = None

    def __len__(self) -> int:
        return self.labels.numel()

    def subset(self, idx: Tensor) -> Split:
        """The split restricted to ``idx``."""
        return Split(
            self.labels[idx],
            None if self.images is None else self.images[idx],
            None if self.files is None else [self.files[i] for i in idx.tolist()],
        )


def balanced_take(labels: Tensor, per_class: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Take ``per_class[c]`` random indices of each class ``c``; return ``(taken, rest)``, both sorted."""
    taken = []
    for c in range(per_class.numel()):  # loop over classes, not samples
        idx = (labels == c).nonzero().flatten()
        k = int(per_class[c])
        if k > idx.numel():
            raise ValueError(f"class {c} has {idx.numel()} images, {k} were requested")
        taken.append(idx[torch.randperm(idx.numel(), generator=generator)[:k]])
    chosen = torch.cat(taken) if taken else torch.empty(0, dtype=torch.long)
    mask = torch.zeros(labels.numel(), dtype=torch.bool)
    mask[chosen] = True
    return mask.nonzero().flatten(), (~mask).nonzero().flatten()


def split_counts(labels: Tensor, num_classes: int, *, fraction: float | None = None, total: int | None = None,
                 generator: torch.Generator) -> Tensor:
    """Per-class counts for a balanced selection: ``round(fraction·n_c)`` or ``total`` spread evenly.

    With ``total``, the remainder ``total mod K`` goes to randomly chosen classes, one each.
    """
    counts = torch.bincount(labels, minlength=num_classes)
    if fraction is not None:
        return torch.round(counts.double() * fraction).long()
    assert total is not None
    per = torch.full((num_classes,), total // num_classes, dtype=torch.long)
    extra = torch.randperm(num_classes, generator=generator)[: total % num_classes]
    per[extra] += 1
    return torch.minimum(per, counts)


def make_splits(labels: Tensor, num_classes: int, val_fraction: float, train_subset: int,
                seed: int) -> tuple[Tensor, Tensor]:
    """Return ``(train_idx, val_idx)``: the validation split is drawn first from the full training set, then
    ``train_subset`` images (0 = all) are drawn from the rest; both class-balanced and seeded by ``seed``."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    g = torch.Generator().manual_seed(seed)
    if val_fraction > 0:
        val_idx, train_idx = balanced_take(labels, split_counts(labels, num_classes, fraction=val_fraction,
                                                                generator=g), g)
    else:
        val_idx, train_idx = torch.empty(0, dtype=torch.long), torch.arange(labels.numel())
    if train_subset:
        if train_subset > train_idx.numel():
            raise DataError(f"data.train_subset={train_subset} exceeds the {train_idx.numel()} training images")
        counts = split_counts(labels[train_idx], num_classes, total=train_subset, generator=g)
        sub, _ = balanced_take(labels[train_idx], counts, g)
        train_idx = train_idx[sub]
    return train_idx, val_idx


def random_splits(n: int, train_subset: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Splits of a set without one label per image (segmentation, detection): ``train_subset`` random images
    (0 = all) drawn with ``seed``, then a ``val_fraction`` of those held out with ``seed + 1``; returns the sorted
    ``(train, val)`` indices."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    keep = torch.arange(n)
    if train_subset:
        if train_subset > n:
            raise DataError(f"data.train_subset={train_subset} exceeds the {n} training images")
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:train_subset].sort().values
    val = torch.empty(0, dtype=torch.long)
    if val_fraction > 0:
        order = torch.randperm(keep.numel(), generator=torch.Generator().manual_seed(seed + 1))
        n_val = max(1, round(val_fraction * keep.numel()))
        val, keep = keep[order[:n_val].sort().values], keep[order[n_val:].sort().values]
    return keep.tolist(), val.tolist()


class _Subsettable(Protocol):
    def __len__(self) -> int: ...
    def subset(self, keep: list[int]) -> _Subsettable: ...


S = TypeVar("S", bound=_Subsettable)


def hold_out(train: S, cfg: DataConfig, val_split: str | None, key: str) -> tuple[S, S | None]:
    """A dense task's training split after ``data.train_subset``, and the ``data.val_fraction`` held out of it
    (:func:`random_splits`; ``None`` when nothing is). ``val_split`` (the task's named validation split, config key
    ``key``) and a fraction exclude each other. The loaded split is kept, not copied, when nothing is taken out."""
    if val_split and cfg.val_fraction > 0:
        raise DataError(f"data.val_fraction={cfg.val_fraction} and {key}='{val_split}' both name a validation "
                        f"split: keep one ({key}: null holds out data.val_fraction of the training images)")
    train_idx, val_idx = random_splits(len(train), cfg.train_subset, cfg.val_fraction, cfg.split_seed)
    kept = train if len(train_idx) == len(train) else train.subset(train_idx)
    return kept, (train.subset(val_idx) if val_idx else None)
