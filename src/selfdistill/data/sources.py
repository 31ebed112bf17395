"""Dataset sources: each returns raw train/test splits as uint8 tensors (or file lists when streamed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..config import DataConfig
from ..registry import Registry
from .errors import DataError
from .folder_cache import ARCHIVE_SUFFIXES, estimate_bytes, load_folder_split, scan_folder, unpack_archive
from .splits import Split, make_splits


@dataclass
class RawData:
    """What a source returns: splits, class names and normalisation statistics."""

    train: Split
    test: Split
    classes: list[str]
    mean: list[float]
    std: list[float]
    in_chans: int = 3

    @property
    def in_memory(self) -> bool:
        return self.train.images is not None


DATASETS: Registry = Registry("dataset")


def register_dataset(name: str) -> Callable[[Callable[[DataConfig], RawData]], Callable[[DataConfig], RawData]]:
    """Decorator: register a classification source ``(DataConfig) -> RawData`` as ``data.name``."""
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    """Names accepted by ``data.name``."""
    return DATASETS.names()


def valid_mask(sizes: Tensor, height: int, width: int, device: torch.device | str) -> Tensor:
    """``(N, 1, height, width)`` bool: true on each image's top-left ``h × w`` pixels (``sizes``: ``(N, 2)``),
    false on the padding of a canvas."""
    s = sizes.to(device)
    rows = torch.arange(height, device=device)[None, :, None] < s[:, 0, None, None]
    cols = torch.arange(width, device=device)[None, None, :] < s[:, 1, None, None]
    return (rows & cols)[:, None]


def channel_stats(images: Tensor, sizes: Tensor | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] of uint8 images ``(N, C, H, W)``, in float64 chunks of about 2²⁴
    values; with ``sizes`` (``(N, 2)`` heights and widths), over each image's top-left ``h × w`` pixels only."""
    n, c, h, w = images.shape
    total = torch.zeros(c, dtype=torch.float64)
    sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    rows = max(1, 2**24 // max(1, c * h * w))
    for start in range(0, n, rows):
        x = images[start:start + rows].to(torch.float64) / 255.0
        if sizes is not None:
            mask = valid_mask(sizes[start:start + rows], h, w, images.device)
            x = x * mask
            count += int(mask.sum())
        else:
            count += x.shape[0] * h * w
        total += x.sum((0, 2, 3)).cpu()
        sq += (x * x).sum((0, 2, 3)).cpu()
    mean = total / max(count, 1)
    std = (sq / max(count, 1) - mean**2).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


# ------------------------------------------------------------------------------------------------ CIFAR
def _cifar(cfg: DataConfig, hundred: bool) -> RawData:
    import torchvision

    cls = torchvision.datasets.CIFAR100 if hundred else torchvision.datasets.CIFAR10
    folder = "cifar-100-python" if hundred else "cifar-10-batches-py"
    files = "train, test, meta" if hundred else "data_batch_1..5, test_batch, batches.meta"
    root = cfg.root or "data"
    try:
        splits = [cls(root, train=t, download=cfg.download) for t in (True, False)]
    except RuntimeError as exc:
        raise DataError(
            f"{cls.__name__} not found under '{root}': expected {Path(root) / folder}/ with {files}. "
            "Set data.download=true (needs internet) or data.root to the folder that holds it; a JPEG "
            "ImageFolder copy can be read with data.name=imagefolder."
        ) from exc
    train, test = (
        Split(torch.tensor(s.targets, dtype=torch.long), torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous())
        for s in splits
    )
    if hundred:  # the statistics of the common CIFAR-100 KD benchmarks
        mean, std = [0.5071, 0.4867, 0.4408], [0.2675, 0.2565, 0.2761]
    else:
        mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
    return RawData(train, test, list(splits[0].classes), mean, std)


@DATASETS.register("cifar10")
def cifar10(cfg: DataConfig) -> RawData:
    """CIFAR-10 via torchvision (``data.download`` fetches it)."""
    return _cifar(cfg, hundred=False)


@DATASETS.register("cifar100")
def cifar100(cfg: DataConfig) -> RawData:
    """CIFAR-100 via torchvision (``data.download`` fetches it)."""
    return _cifar(cfg, hundred=True)


# ----------------------------------------------------------------------------------------------- digits
@DATASETS.register("digits")
def digits(cfg: DataConfig) -> RawData:
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images, offline): a fixed, class-balanced split of
    1,201 training and 596 test images (split seed 0, independent of the run seed)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8))[:, None]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = make_splits(labels, 10, val_fraction=597 / 1797, train_subset=0, seed=0)
    train = Split(labels[train_idx], images[train_idx])
    mean, std = channel_stats(train.images)
    return RawData(train, Split(labels[test_idx], images[test_idx]), [str(i) for i in range(10)], mean, std,
                   in_chans=1)


# -------------------------------------------------------------------------------------------- synthetic
def synthetic_split(n: int, num_classes: int, size: int, seed: int) -> Split:
    """Procedural, learnable images: each class is a fixed smooth colour pattern (seed 1234), each sample
    that pattern randomly shifted, scaled in contrast and noised (``seed``)."""
    proto_g = torch.Generator().manual_seed(1234)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=proto_g)
    protos = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    shifts = torch.randint(-2, 3, (n, 2), generator=g)
    x = protos[labels]
    rows = (torch.arange(size)[None, :] - shifts[:, :1]) % size
    cols = (torch.arange(size)[None, :] - shifts[:, 1:]) % size
    x = x[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)
    x = (x - 0.5) * contrast + 0.5 + 0.08 * torch.randn(x.shape, generator=g)
    return Split(labels, (x.clamp(0, 1) * 255).round().to(torch.uint8))


@DATASETS.register("synthetic")
def synthetic(cfg: DataConfig) -> RawData:
    """Seeded procedural data for tests: ``synthetic_size`` images per split, ``image_size`` (16) pixels."""
    k = cfg.num_classes or 10
    size = cfg.image_size or 16
    train = synthetic_split(cfg.synthetic_size, k, size, seed=1)
    test = synthetic_split(max(cfg.synthetic_size // 2, k), k, size, seed=2)
    return RawData(train, test, [f"class_{i}" for i in range(k)], [0.5] * 3, [0.25] * 3)


# ------------------------------------------------------------------------------------------ imagefolder
@DATASETS.register("imagefolder")
def imagefolder(cfg: DataConfig) -> RawData:
    """Any ``root/{train,val|test}/<class>/<image>`` tree, or an archive of one (unpacked once into the cache
    folder). Held in memory as uint8 when it fits (``data.in_memory``, ``data.memory_limit_gb``), streamed through
    DataLoader workers otherwise."""
    if not cfg.root:
        raise DataError("data.root must point at a folder (or a .tar.gz/.tgz/.tar/.zip archive of one) with train/ "
                        "and val/ or test/ inside")
    root = Path(cfg.root).expanduser()
    if root.is_file() and root.name.endswith(ARCHIVE_SUFFIXES):
        root = unpack_archive(root, cfg)
    if root.is_file():
        raise DataError(f"data.root '{root}' is a file, not a folder or an archive ({', '.join(ARCHIVE_SUFFIXES)}): "
                        "point it at a folder with train/ and val/ or test/ inside, or at an archive of one")
    if not root.is_dir():
        raise DataError(f"data.root '{root}' does not exist")
    test_name = next((n for n in ("val", "test") if (root / n).is_dir()), None)
    if test_name is None or not (root / "train").is_dir():
        raise DataError(f"{root} must contain train/ and val/ or test/ (found: "
                        f"{', '.join(sorted(p.name for p in root.iterdir())) or 'nothing'})")
    classes, train_files, train_labels = scan_folder(root / "train")
    test_classes, test_files, test_labels = scan_folder(root / test_name)
    if test_classes != classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise DataError(f"class folders differ between train/ and {test_name}/: only in train {only_train[:5]}, "
                        f"only in {test_name} {only_test[:5]}")
    if cfg.in_memory == "auto":
        in_memory = estimate_bytes(train_files, cfg.image_size) * 1.2 < cfg.memory_limit_gb * 2**30
    else:
        in_memory = cfg.in_memory == "always"
    train = load_folder_split(train_files, train_labels, cfg, in_memory)
    test = load_folder_split(test_files, test_labels, cfg, in_memory)
    if in_memory:
        mean, std = channel_stats(train.images)
    else:
        mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    return RawData(train, test, classes, mean, std)
