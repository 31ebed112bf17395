"""Streaming path for image trees too large for memory (ImageNet): DataLoader workers + transforms v2."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .samplers import IndexBatch, rank_slice, step_seed
from .sources import DataError, Split

if TYPE_CHECKING:
    from ..batch import Batch
    from .loader import DataModule, TrainLoader


class FileDataset(Dataset):
    """Decodes image files with PIL and applies one transforms-v2 pipeline per view."""

    def __init__(self, split: Split, transforms: list) -> None:
        self.files = split.files
        self.labels = split.labels
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                img = im.convert("RGB")
        except Exception as exc:
            raise DataError(f"cannot read image {self.files[i]}: {exc}. Remove or replace the file.") from exc
        return torch.stack([t(img) for t in self.transforms]), int(self.labels[i]), i


def _transforms(data: DataModule, train: bool, pipeline: str = "weak"):
    from torchvision.transforms import v2

    aug = data.cfg.augment
    size = data.image_size
    mean, std = data.mean.tolist(), data.std.tolist()
    after = []
    if train:
        ops = [v2.RandomResizedCrop(size, antialias=True)]
        if aug.hflip:
            ops.append(v2.RandomHorizontalFlip())
        if pipeline == "strong":
            # torchvision's RandAugment (fixed magnitude on its 0..30 scale) and a square erasing of up to
            # cutout² of the area stand in for the in-memory path's per-op magnitudes and Cutout
            ops.append(v2.RandAugment(aug.randaugment_ops, 3 * aug.randaugment_magnitude))
            if aug.cutout > 0:
                fill = [(f / 255 - m) / s for f, m, s in zip(aug.cutout_fill, mean, std, strict=False)]
                after.append(v2.RandomErasing(p=1.0, scale=(0.01, aug.cutout**2), ratio=(1.0, 1.0), value=fill))
    else:
        ops = [v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)]
    return v2.Compose([v2.ToImage(), *ops, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std), *after])


def _loader(data: DataModule, dataset: Dataset, batches, generator: torch.Generator | None = None) -> DataLoader:
    workers = data.cfg.num_workers
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=data.device.type == "cuda",
                      persistent_workers=False, generator=generator, prefetch_factor=4 if workers else None)


def train_batches(loader: TrainLoader, plan: list[IndexBatch], epoch: int, start_step: int) -> Iterator[Batch]:
    """This rank's batches of a streamed epoch; pairs are fetched as one index list and split again."""
    from ..batch import Batch

    data = loader.data
    local = [ib.shard(data.rank, data.world) for ib in plan[start_step:]]
    lists = [ib.anchor.tolist() + ([] if ib.partner is None else ib.partner.tolist()) for ib in local]
    dataset = FileDataset(data.train, [_transforms(data, True, name) for name in loader.views])
    gen = torch.Generator().manual_seed(loader.seed * 1_000_003 + epoch)
    for step, ib, (x, y, idx) in zip(range(start_step, len(plan)), local, _loader(data, dataset, lists, gen),
                                     strict=True):
        x = x.to(data.device, non_blocking=True)
        y, idx = y.to(data.device), idx.to(data.device)
        parts = [slice(0, ib.anchor.numel())]
        if ib.partner is not None:
            parts.append(slice(ib.anchor.numel(), None))
        made = []
        for p in parts:
            views = [x[p, v].contiguous(memory_format=data.memory_format) for v in range(len(loader.views))]
            made.append(Batch(views[0], y[p], idx[p], views))
        if len(made) == 2:
            made[0].partner = made[1]
        n = plan[step].anchor.numel()
        made[0].seed, made[0].global_size = step_seed(loader.seed, epoch, step) + 1, n
        made[0].rows = rank_slice(n, data.rank, data.world)
        yield made[0]


def eval_loader(data: DataModule, split: Split) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Ordered, un-augmented batches of a streamed split (single view squeezed)."""
    dataset = FileDataset(split, [_transforms(data, train=False)])
    n, bs = len(split), data.cfg.eval_batch_size
    batches = [list(range(s, min(s + bs, n))) for s in range(0, n, bs)]
    for x, y, idx in _loader(data, dataset, batches):
        yield x[:, 0], y, idx
