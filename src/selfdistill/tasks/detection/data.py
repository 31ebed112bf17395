"""Detection data: COCO-format and Penn-Fudan datasets held in memory as uint8 canvases on the device, a batched
horizontal flip of images and boxes, and the class-presence pair sampler (shared with segmentation)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...batch import Batch, DataRequirements
from ...config import DataConfig
from ...data.samplers import eval_ranges
from ...data.sources import DataError, channel_stats, valid_mask
from ...data.splits import hold_out
from ...data.transforms import normalize
from ..segmentation.data import DenseTrainLoader
from .config import DetectionConfig
from .ops import pennfudan_split

DET_DATASETS = ("pennfudan", "coco")


@dataclass
class DetSplit:
    """One split in memory: uint8 canvases ``(N, 3, S, S)``, each image's valid ``(h, w)`` on its canvas, and its
    boxes ``(M, 4)`` (``x1, y1, x2, y2`` canvas pixels) and labels ``(M,)`` (1..K)."""

    images: Tensor
    sizes: Tensor
    boxes: list[Tensor]
    labels: list[Tensor]
    names: list[str]

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, keep: list[int]) -> DetSplit:
        """The images at ``keep``, in that order."""
        idx = torch.tensor(keep, dtype=torch.long, device=self.images.device)
        return DetSplit(self.images[idx], self.sizes[idx], [self.boxes[i] for i in keep],
                        [self.labels[i] for i in keep], [self.names[i] for i in keep])

    def to(self, device: torch.device) -> DetSplit:
        """The split with its canvases on ``device`` (boxes stay small CPU tensors until a batch needs them)."""
        return DetSplit(self.images.to(device), self.sizes, self.boxes, self.labels, self.names)

    def targets(self, index: Tensor, device: torch.device) -> list[dict[str, Tensor]]:
        """Per-image target dicts (``boxes``, ``labels``, ``size``) of the images at ``index``."""
        return [{"boxes": self.boxes[i].to(device), "labels": self.labels[i].to(device),
                 "size": self.sizes[i]} for i in index.tolist()]


def load_canvases(items: list[tuple[Path, Tensor, Tensor]], size: int, min_box: float) -> DetSplit:
    """Decode ``(path, boxes, labels)`` items, resize each image so that its longer side is ``size`` and place it
    top-left on a ``size × size`` zero canvas; boxes are scaled alike and those under ``min_box`` px dropped."""
    from PIL import Image, UnidentifiedImageError

    canvases = torch.zeros(len(items), 3, size, size, dtype=torch.uint8)
    sizes = torch.zeros(len(items), 2, dtype=torch.long)
    boxes, labels = [], []
    for i, (path, b, lab) in enumerate(items):
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                scale = size / max(im.size)
                w, h = max(1, round(im.width * scale)), max(1, round(im.height * scale))
                arr = np.asarray(im.resize((w, h), Image.BILINEAR))
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"cannot read image {path}: {e}. Remove or replace the file.") from e
        canvases[i, :, :h, :w] = torch.from_numpy(arr.copy()).permute(2, 0, 1)
        sizes[i] = torch.tensor([h, w])
        sb = (b * scale).clamp_min(0)
        sb[:, 0::2], sb[:, 1::2] = sb[:, 0::2].clamp_max(w), sb[:, 1::2].clamp_max(h)
        keep = ((sb[:, 2] - sb[:, 0]) >= min_box) & ((sb[:, 3] - sb[:, 1]) >= min_box)
        boxes.append(sb[keep])
        labels.append(lab[keep].long())
    return DetSplit(canvases, sizes, boxes, labels, [p.stem for p, _, _ in items])


def coco_items(root: Path, split: str) -> tuple[list[tuple[Path, Tensor, Tensor]], list[str]]:
    """``(path, boxes, labels)`` per image of a COCO-format split (``annotations/instances_<split>.json``, images
    in ``<split>/``) and the class names. Category ids map to labels 1..K in id order; crowd annotations are
    left out."""
    ann_file = root / "annotations" / f"instances_{split}.json"
    if not ann_file.is_file():
        raise DataError(f"no COCO annotation file {ann_file} (expected <root>/annotations/instances_<split>.json)")
    coco = json.loads(ann_file.read_text())
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: i + 1 for i, c in enumerate(cats)}
    per_image: dict[int, list[list[float]]] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        if not a.get("iscrowd", 0):
            x, y, w, h = a["bbox"]
            per_image[a["image_id"]].append([x, y, x + w, y + h, label_of[a["category_id"]]])
    items = []
    for im in sorted(coco["images"], key=lambda m: m["file_name"]):
        rows = torch.tensor(per_image[im["id"]], dtype=torch.float32).reshape(-1, 5)
        items.append((root / split / im["file_name"], rows[:, :4], rows[:, 4].long()))
    return items, [c["name"] for c in cats]


class DetDataModule:
    """Loads a detection dataset into memory (uint8 canvases on the training device) and serves flipped training
    batches and normalised evaluation batches; the same interface as the other tasks' data modules."""

    def __init__(self, cfg: DataConfig, options: DetectionConfig | None = None, device: torch.device | str = "cpu",
                 rank: int = 0, world: int = 1, memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.cfg, self.det = cfg, options if options is not None else DetectionConfig()
        self.device = torch.device(device)
        self.rank, self.world = rank, world
        self.memory_format = memory_format
        if cfg.name not in DET_DATASETS:
            from ...registry import did_you_mean

            raise DataError(f"unknown detection dataset '{cfg.name}'.{did_you_mean(cfg.name, list(DET_DATASETS))} "
                            f"Known: {', '.join(DET_DATASETS)}")
        if cfg.root is None:
            raise DataError(f"data.root is required for the {cfg.name} detection dataset")
        root = Path(cfg.root)
        if not root.is_dir():
            raise DataError(f"data.root {root} is not a folder")

        def load(split: str) -> tuple[DetSplit, list[str]]:
            if cfg.name == "pennfudan":
                if split not in ("train", "test"):
                    raise DataError(f"Penn-Fudan has the splits 'train' and 'test', not '{split}'")
                pf = pennfudan_split(root, split, self.det.test_count)
                items = [(p, b, torch.ones(len(b), dtype=torch.long)) for p, b in pf]
                classes = ["person"]
            else:
                items, classes = coco_items(root, split)
            return load_canvases(items, self.det.size, self.det.min_box).to(self.device), classes

        train, self.classes = load(self.det.train_split)
        self.train, self.val = hold_out(train, cfg, self.det.val_split, "detection.val_split")
        if self.det.val_split:
            self.val, _ = load(self.det.val_split)
        self.test, test_classes = load(self.det.test_split)
        if test_classes != self.classes:
            raise DataError("the test split's categories differ from the training split's")
        self.num_classes = len(self.classes)
        self.in_chans = 3
        self.image_size = self.det.size
        mean, std = channel_stats(self.train.images, self.train.sizes)
        self.mean = torch.tensor(cfg.augment.mean or mean, dtype=torch.float32)
        self.std = torch.tensor(cfg.augment.std or std, dtype=torch.float32)
        self.presence = torch.zeros(len(self.train), self.num_classes + 1, dtype=torch.bool)
        for i, lab in enumerate(self.train.labels):
            self.presence[i, lab.cpu()] = True
        self.presence = self.presence[:, 1:]

    def prepare(self, images_u8: Tensor, sizes: Tensor) -> Tensor:
        """Normalised float canvases (padding stays exactly 0) in the run's memory format."""
        side = images_u8.shape[-1]
        x = normalize(images_u8, self.mean, self.std) * valid_mask(sizes, side, side, self.device)
        return x.contiguous(memory_format=self.memory_format)

    def train_loader(self, req: DataRequirements, seed: int) -> DetTrainLoader:
        """Batches for a detection method's requirements (one view; ``pair`` = images sharing a class)."""
        return DetTrainLoader(self, req, seed)

    def eval_batches(self, split: DetSplit) -> Iterator[tuple[Tensor, list[dict[str, Tensor]]]]:
        """This rank's shard of ``split`` as ``(canvases, targets)`` batches, in order; targets carry the image's
        position in the split as ``image_id``."""
        for start, stop in eval_ranges(len(split), self.cfg.eval_batch_size, self.rank, self.world):
            idx = torch.arange(start, stop)
            targets = split.targets(idx, self.device)
            for t, i in zip(targets, idx.tolist(), strict=True):
                t["image_id"] = torch.tensor(i)
            yield self.prepare(split.images[idx.to(self.device)], split.sizes[idx]), targets


def hflip_boxes(boxes: Tensor, width: int | Tensor) -> Tensor:
    """Boxes mirrored inside an image of ``width`` pixels."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)


def hflip_valid(images: Tensor, sizes: Tensor, flip: Tensor) -> Tensor:
    """Mirror each flagged image inside its valid width (the padding stays on the right), in one gather."""
    n, c, h, side = images.shape
    col = torch.arange(side, device=images.device)
    w = sizes[:, 1].to(images.device)[:, None]
    src = torch.where(flip.to(images.device)[:, None] & (col[None] < w), w - 1 - col[None], col[None])
    return images.gather(3, src[:, None, None, :].expand(n, c, h, side))


class DetTrainLoader(DenseTrainLoader):
    """Detection batches: a random horizontal flip of each image inside its width, boxes mirrored with it."""

    task = "detection"

    def _batch(self, idx: Tensor, gen: torch.Generator, n: int, sl: slice) -> Batch:
        d = self.data
        flip = torch.rand(n, generator=gen) < 0.5 if d.cfg.augment.hflip else torch.zeros(n, dtype=torch.bool)
        flip = flip[sl]
        idx = idx.cpu()
        sizes = d.train.sizes[idx]
        x = hflip_valid(d.prepare(d.train.images[idx.to(d.device)], sizes), sizes, flip)
        targets = d.train.targets(idx, d.device)
        for t, f in zip(targets, flip.tolist(), strict=True):
            if f:
                t["boxes"] = hflip_boxes(t["boxes"], int(t["size"][1]))
        return Batch(x, targets, idx.to(d.device), [x])
