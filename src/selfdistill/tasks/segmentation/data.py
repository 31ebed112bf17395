"""Segmentation data: image + label-map datasets held in memory as uint8, a batched joint scale/crop/flip of
images and label maps on the device, and the class-presence pair sampler of dense IPS (docs/tasks.md, segmentation)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ...batch import Batch, DataRequirements
from ...config import DataConfig
from ...data.samplers import (
    IndexBatch,
    ShuffleSampler,
    assemble_batch,
    epoch_generator,
    eval_ranges,
    global_batch,
    step_seed,
)
from ...data.sources import DataError, channel_stats
from ...data.splits import hold_out
from ...data.transforms import normalize
from ...registry import Registry
from .config import SegmentationConfig
from .ops import class_presence, draw_partners, load_segmentation_folder


@dataclass(frozen=True)
class SegSource:
    """A segmentation dataset layout: class names, its void label and its background class (if any)."""

    layout: Literal["camvid", "voc"]
    classes: tuple[str, ...]
    void: int | None
    background: int | None


SEG_DATASETS: Registry[SegSource] = Registry("segmentation dataset")
SEG_DATASETS.register("camvid")(SegSource(
    "camvid", ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
               "Bicyclist"), void=11, background=None))
SEG_DATASETS.register("voc")(SegSource(
    "voc", ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
            "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"),
    void=None, background=0))


@dataclass
class SegSplit:
    """One split in memory: uint8 images ``(N, C, H, W)`` and uint8 label maps ``(N, H, W)``."""

    images: Tensor
    labels: Tensor
    names: list[str]

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, keep: list[int]) -> SegSplit:
        """The images at ``keep``, in that order."""
        idx = torch.tensor(keep, dtype=torch.long, device=self.images.device)
        return SegSplit(self.images[idx], self.labels[idx], [self.names[i] for i in keep])


def sample_scale_crop_flip(n: int, size: tuple[int, int], crop: tuple[int, int], scale: tuple[float, float],
                           hflip: bool, generator: torch.Generator) -> Tensor:
    """Per-image ``(scale, top, left, flip)`` rows ``(n, 4)``: a scale factor in ``scale``, the integer offset of
    the crop in the scaled image (negative offsets pad an image smaller than the crop) and a flip flag."""
    s = scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=generator, dtype=torch.float64)
    out = [s]
    for full, c in zip(size, crop, strict=True):
        room = torch.floor(s * full) - c  # free pixels of the scaled image (negative: padding needed)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        out.append(torch.floor(u * (room.abs() + 1)) * torch.sign(room))
    flip = torch.rand(n, generator=generator) < 0.5 if hflip else torch.zeros(n, dtype=torch.bool)
    return torch.stack([*out, flip.double()], 1)


def scale_crop_flip(images: Tensor, labels: Tensor, params: Tensor, crop: tuple[int, int], ignore_index: int
                    ) -> tuple[Tensor, Tensor]:
    """Apply :func:`sample_scale_crop_flip`'s parameters jointly: images (float ``(N, C, H, W)``) are resampled
    bilinearly, label maps ``(N, H, W)`` by nearest neighbour, from the same sampling grid, so every output label
    is a source label at the position its pixel came from. Pixels outside the source get 0 (images) and
    ``ignore_index`` (labels)."""
    h, w = images.shape[-2:]
    p = params.to(images.device, torch.float64)
    s, top, left, flip = p[:, 0:1], p[:, 1:2], p[:, 2:3], p[:, 3:4] > 0.5
    ch, cw = crop
    rows = torch.arange(ch, device=images.device, dtype=torch.float64)
    cols = torch.arange(cw, device=images.device, dtype=torch.float64)
    cols = torch.where(flip, cw - 1 - cols, cols)
    # output pixel j sits at scaled coordinate left + j, i.e. source coordinate (left + j + ½)/s − ½;
    # grid_sample (align_corners=False) takes 2·(source + ½)/W − 1
    gy = 2 * (top + rows + 0.5) / (s * h) - 1  # (N, ch)
    gx = 2 * (left + cols + 0.5) / (s * w) - 1  # (N, cw)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), -1).to(images.dtype)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    lab = F.grid_sample((labels.to(images.dtype) + 1)[:, None], grid, mode="nearest", padding_mode="zeros",
                        align_corners=False)[:, 0].round().long() - 1  # 0 (= −1 after the shift) is outside
    lab = torch.where(lab < 0, torch.full_like(lab, ignore_index), lab)
    return out, lab


class PresencePairSampler(ShuffleSampler):
    """Shuffled anchors plus, for each, a partner sharing a class ``c*`` drawn from the anchor's present classes
    (a random partner when the anchor has none): the dense-IPS pairing (docs/tasks.md)."""

    def __init__(self, presence: Tensor, batch_size: int, drop_last: bool, seed: int) -> None:
        super().__init__(torch.arange(presence.shape[0]), batch_size, drop_last, seed)
        self.presence = presence.cpu()

    def epoch(self, epoch: int) -> list[IndexBatch]:
        g = epoch_generator(self.seed, epoch, salt=1)
        return [IndexBatch(a, draw_partners(a, self.presence, g)) for a in self._anchors(epoch)]


class SegDataModule:
    """Loads a segmentation dataset into memory (uint8, on the training device) and serves augmented training
    batches and normalised evaluation batches; the same interface as the classification data module."""

    def __init__(self, cfg: DataConfig, options: SegmentationConfig | None = None, device: torch.device | str = "cpu",
                 rank: int = 0, world: int = 1, memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.cfg = cfg
        self.dense = options if options is not None else SegmentationConfig()
        self.device = torch.device(device)
        self.rank, self.world = rank, world
        self.memory_format = memory_format
        source = SEG_DATASETS.get(cfg.name)
        if cfg.root is None:
            raise DataError(f"data.root is required for the {cfg.name} segmentation dataset (the folder holding "
                            f"its {'train/ and trainannot/' if source.layout == 'camvid' else 'JPEGImages/'})")
        self.source = source
        self.classes = list(source.classes)
        self.num_classes = len(self.classes)
        self.ignore_index = self.dense.ignore_index
        size = tuple(self.dense.size) if self.dense.size else None
        if size is not None and len(size) != 2:
            raise DataError(f"segmentation.size must be [H, W], got {self.dense.size}")

        def load(split: str) -> SegSplit:
            images, labels, names = load_segmentation_folder(Path(cfg.root), split, source.layout, size, source.void,
                                                             self.ignore_index)
            return SegSplit(images.to(self.device), labels.to(self.device), names)

        self.train, self.val = hold_out(load(self.dense.train_split), cfg, self.dense.val_split,
                                        "segmentation.val_split")
        if self.dense.val_split:
            self.val = load(self.dense.val_split)
        self.test = load(self.dense.test_split)
        self.in_chans = self.train.images.shape[1]
        stats = channel_stats(self.train.images.cpu())
        self.mean = torch.tensor(cfg.augment.mean or stats[0], dtype=torch.float32)
        self.std = torch.tensor(cfg.augment.std or stats[1], dtype=torch.float32)
        self.crop = tuple(self.dense.crop) if self.dense.crop else tuple(self.train.images.shape[-2:])
        self.image_size = max(self.crop)
        background = source.background if self.dense.exclude_background else None
        self.presence = class_presence(self.train.labels, self.num_classes, self.dense.min_pixels, self.ignore_index,
                                       exclude_background=background is not None, background=background or 0)

    def prepare(self, images_u8: Tensor) -> Tensor:
        """Normalised float images in the run's memory format."""
        return normalize(images_u8, self.mean, self.std).contiguous(memory_format=self.memory_format)

    def train_loader(self, req: DataRequirements, seed: int) -> SegTrainLoader:
        """Batches for a segmentation method's requirements (one view; ``pair`` = class-presence pairs)."""
        return SegTrainLoader(self, req, seed)

    def eval_batches(self, split: SegSplit) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's shard of ``split`` as normalised ``(x, labels)`` batches, in order (no augmentation)."""
        for start, stop in eval_ranges(len(split), self.cfg.eval_batch_size, self.rank, self.world):
            yield self.prepare(split.images[start:stop]), split.labels[start:stop].long()


class DenseTrainLoader:
    """One epoch's augmented batches of a dense task (segmentation, detection) from any step, deterministically
    from ``(seed, epoch, step)``: one view per image, anchors shuffled (``shuffle``) or paired by class presence
    (``pair``, the data module's ``presence`` table). Subclasses build a batch in :meth:`_batch`."""

    task: ClassVar[str] = ""

    def __init__(self, data: Any, req: DataRequirements, seed: int) -> None:
        if req.views != ("weak",) or req.multicrop is not None:
            raise ValueError(f"{self.task} methods take one augmented view per image")
        batch = global_batch(data.cfg.batch_size, req.batch_scale, data.world)
        if req.sampler == "pair":
            sampler: ShuffleSampler = PresencePairSampler(data.presence, batch, data.cfg.drop_last, seed)
        elif req.sampler == "shuffle":
            sampler = ShuffleSampler(torch.arange(len(data.train)), batch, data.cfg.drop_last, seed)
        else:
            raise ValueError(f"unknown sampler '{req.sampler}' for {self.task} (shuffle, pair)")
        self.data = data
        self.sampler = sampler
        self.seed = seed

    def __len__(self) -> int:
        return len(self.sampler)

    def iterate(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Yield this rank's batches of ``epoch`` from ``start_step`` on."""
        plan = self.sampler.epoch(epoch)
        for step in range(start_step, len(plan)):
            yield assemble_batch(plan[step], step_seed(self.seed, epoch, step), self.data.rank, self.data.world,
                                 self._batch)

    def _batch(self, idx: Tensor, gen: torch.Generator, n: int, sl: slice) -> Batch:
        """The batch of dataset indices ``idx`` (``n`` global rows drawn from ``gen``, this rank's slice ``sl``)."""
        raise NotImplementedError


class SegTrainLoader(DenseTrainLoader):
    """Segmentation batches: joint random scale / crop / flip of images and label maps."""

    task = "segmentation"

    def _batch(self, idx: Tensor, gen: torch.Generator, n: int, sl: slice) -> Batch:
        d = self.data
        params = sample_scale_crop_flip(n, tuple(d.train.images.shape[-2:]), d.crop, tuple(d.dense.scale),
                                        d.cfg.augment.hflip, gen)[sl]
        idx = idx.to(d.device)
        x, y = scale_crop_flip(normalize(d.train.images[idx], d.mean, d.std), d.train.labels[idx], params, d.crop,
                               d.ignore_index)
        x = x.contiguous(memory_format=d.memory_format)
        return Batch(x, y, idx, [x])
