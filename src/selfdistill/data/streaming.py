"""Streaming path for image trees too large for memory (ImageNet): DataLoader workers + transforms v2."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..batch import Batch, MultiCrop
from ..config import ConfigError, DataConfig
from .errors import DataError
from .interface import EpochPlanLoader, Placement
from .samplers import ShuffleSampler, rank_slice, step_seed
from .splits import Split


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


class StreamBackend:
    """Serves splits of image files: decoded by DataLoader workers and transformed there (``image_size`` pixels,
    normalised with ``mean`` and ``std``), then moved to ``placement.device``."""

    def __init__(self, cfg: DataConfig, image_size: int, mean: Tensor, std: Tensor, placement: Placement) -> None:
        self.cfg = cfg
        self.image_size = image_size
        self.mean, self.std = mean.tolist(), std.tolist()
        self.placement = placement

    def train_loader(self, split: Split, sampler: ShuffleSampler, views: tuple[str, ...], seed: int,
                     multicrop: MultiCrop | None) -> StreamTrainLoader:
        """Batches of ``split`` augmented by the workers (multi-crop views need in-memory data)."""
        if multicrop is not None:
            raise ConfigError("data.in_memory: multi-crop views need in-memory data (data.in_memory=always, or a "
                              "dataset under data.memory_limit_gb)")
        return StreamTrainLoader(self, split, sampler, views, seed)

    def eval_batches(self, split: Split, ranges: list[tuple[int, int]]) -> Iterator[tuple[Tensor, Tensor]]:
        """Resized, centre-cropped, normalised ``(x, y)`` batches of ``split``, one per range."""
        if not ranges:
            return
        p = self.placement
        # the shard starts at a batch boundary: the loader's batches are the single-process ones
        for x, y, _ in self._eval_loader(split.subset(torch.arange(ranges[0][0], ranges[-1][1]))):
            yield x.to(p.device).contiguous(memory_format=p.memory_format), y.to(p.device)

    def transforms(self, train: bool, pipeline: str = "weak"):
        """The transforms-v2 pipeline of one view: random-resized crop (+ flip, + RandAugment and erasing for
        ``strong``) for training, resize and centre crop for evaluation."""
        from torchvision.transforms import v2

        aug = self.cfg.augment
        size = self.image_size
        mean, std = self.mean, self.std
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
        return v2.Compose([v2.ToImage(), *ops, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std),
                           *after])

    def loader(self, dataset: Dataset, batches, generator: torch.Generator | None = None) -> DataLoader:
        """A DataLoader over ``batches`` (lists of indices) of ``dataset``."""
        workers = self.cfg.num_workers
        return DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                          pin_memory=self.placement.device.type == "cuda", persistent_workers=False,
                          generator=generator, prefetch_factor=4 if workers else None)

    def _eval_loader(self, split: Split) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Ordered, un-augmented batches of a streamed split (single view squeezed)."""
        dataset = FileDataset(split, [self.transforms(train=False)])
        n, bs = len(split), self.cfg.eval_batch_size
        batches = [list(range(s, min(s + bs, n))) for s in range(0, n, bs)]
        for x, y, idx in self.loader(dataset, batches):
            yield x[:, 0], y, idx


class StreamTrainLoader(EpochPlanLoader):
    """Iterates one streamed epoch's batches from any step; the plan, and so which images each step holds, is
    deterministic from ``(seed, epoch)``, the workers' augmentation from ``(seed, epoch)`` and the start step."""

    backend: StreamBackend

    def iterate(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """This rank's batches of ``epoch`` from ``start_step`` on; pairs are fetched as one index list and split
        again."""
        p = self.backend.placement
        plan = self.sampler.epoch(epoch)
        local = [ib.shard(p.rank, p.world) for ib in plan[start_step:]]
        lists = [ib.anchor.tolist() + ([] if ib.partner is None else ib.partner.tolist()) for ib in local]
        dataset = FileDataset(self.split, [self.backend.transforms(True, name) for name in self.views])
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        for step, ib, (x, y, idx) in zip(range(start_step, len(plan)), local,
                                         self.backend.loader(dataset, lists, gen), strict=True):
            x = x.to(p.device, non_blocking=True)
            y, idx = y.to(p.device), idx.to(p.device)
            parts = [slice(0, ib.anchor.numel())]
            if ib.partner is not None:
                parts.append(slice(ib.anchor.numel(), None))
            made = []
            for part in parts:
                views = [x[part, v].contiguous(memory_format=p.memory_format) for v in range(len(self.views))]
                made.append(Batch(views[0], y[part], idx[part], views))
            if len(made) == 2:
                made[0].partner = made[1]
            n = plan[step].anchor.numel()
            made[0].seed, made[0].global_size = step_seed(self.seed, epoch, step) + 1, n
            made[0].rows = rank_slice(n, p.rank, p.world)
            yield made[0]
