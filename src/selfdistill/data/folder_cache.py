"""ImageFolder trees on disk: scanning, decoding into uint8 tensors, the on-disk decode cache, archive unpacking and
decoded-size estimates."""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..config import DataConfig
from ..fileio import atomic_save
from .errors import DataError
from .splits import Split

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def scan_folder(split_dir: Path) -> tuple[list[str], list[str], Tensor]:
    """Classes (sorted folder names), image paths and labels of an ImageFolder split."""
    if not split_dir.is_dir():
        raise DataError(f"missing split folder {split_dir}")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not classes:
        raise DataError(f"{split_dir} has no class folders (expected {split_dir}/<class>/<image>)")
    files, labels = [], []
    for i, c in enumerate(classes):
        imgs = sorted(e.path for e in os.scandir(split_dir / c) if e.name.lower().endswith(IMG_EXTENSIONS))
        if not imgs:
            raise DataError(f"class folder {split_dir / c} holds no images ({', '.join(IMG_EXTENSIONS)})")
        files += imgs
        labels += [i] * len(imgs)
    return classes, files, torch.tensor(labels, dtype=torch.long)


def _decode(path: str, size: int | None) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")  # grayscale, palette and RGBA become RGB
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except Exception:
        return None


def decode_images(files: list[str], size: int | None, skip_corrupt: bool) -> tuple[Tensor, list[int]]:
    """Decode image files into one uint8 ``(N, 3, H, W)`` tensor; returns it and the kept positions.

    A file that cannot be read fails with its name, or is skipped (and counted) with ``skip_corrupt``.
    """
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        arrays = list(pool.map(lambda f: _decode(f, size), files, chunksize=256))
    kept = [i for i, a in enumerate(arrays) if a is not None]
    _report_skipped([files[i] for i, a in enumerate(arrays) if a is None], skip_corrupt)
    shapes = {arrays[i].shape for i in kept}
    if len(shapes) > 1:
        raise DataError(f"images have different sizes ({sorted(shapes)[:3]} ...); set data.image_size to resize "
                        "them on decode")
    if not kept:
        raise DataError("no readable images")
    return torch.from_numpy(np.stack([arrays[i] for i in kept])).permute(0, 3, 1, 2).contiguous(), kept


def _cache_key(files: list[str], size: int | None) -> str:
    h = hashlib.sha1(f"v2|{size}".encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def cache_dir(cfg: DataConfig) -> Path:
    """Folder for decoded-dataset caches."""
    return Path(cfg.cache_dir or os.environ.get("SELFDISTILL_CACHE") or Path.home() / ".cache" / "selfdistill")


def _report_skipped(skipped: list[str], skip_corrupt: bool) -> None:
    """Fail on unreadable images, naming the first, or warn how many were skipped (``data.skip_corrupt``)."""
    if skipped and not skip_corrupt:
        raise DataError(f"cannot read image {skipped[0]} ({len(skipped)} unreadable in all). Remove or replace it, or "
                        "set data.skip_corrupt=true to skip unreadable images.")
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable images, e.g. {skipped[0]}", stacklevel=3)


def load_folder_split(files: list[str], labels: Tensor, cfg: DataConfig, in_memory: bool) -> Split:
    """Decode a scanned split into memory (cached on disk) or keep its file list for streaming.

    The cache holds the readable images and the list of unreadable files, so a cached split fails (or warns) on a
    corrupt file exactly as a fresh decode does."""
    if not in_memory:
        return Split(labels, files=files)
    path = cache_dir(cfg) / f"imagefolder-{_cache_key(files, cfg.image_size)}.pt"
    if path.is_file():
        blob = torch.load(path, weights_only=True)
        _report_skipped(blob["skipped"], cfg.skip_corrupt)
        return Split(blob["labels"], blob["images"])
    images, kept = decode_images(files, cfg.image_size, cfg.skip_corrupt)
    split = Split(labels[kept], images)
    kept_set = set(kept)
    skipped = [f for i, f in enumerate(files) if i not in kept_set]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save({"images": split.images, "labels": split.labels, "skipped": skipped}, path)
    except OSError as exc:  # a cache is an optimisation: warn, keep going
        warnings.warn(f"could not write the decode cache {path}: {exc}", stacklevel=2)
    return split


def estimate_bytes(files: list[str], size: int | None) -> int:
    """Decoded size of ``files`` in bytes, from ``size`` or from the first readable image's size."""
    if size is None:
        from PIL import Image

        for f in files:
            try:
                with Image.open(f) as im:
                    w, h = im.size
                break
            except (OSError, ValueError):  # unreadable: judged by the decode (named, or skipped and counted)
                continue
        else:
            raise DataError(f"no readable image among the {len(files)} files of {Path(files[0]).parents[1]}")
    else:
        w = h = size
    return len(files) * 3 * w * h


ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def unpack_archive(archive: Path, cfg: DataConfig) -> Path:
    """The folder an archive (``.tar.gz``, ``.tgz``, ``.tar``, ``.zip``) unpacks to, under the cache folder: unpacked
    once (into a temporary folder renamed when complete), then reused while the archive is unchanged. When the
    archive holds one top-level folder, that folder is returned."""
    import shutil
    import tarfile
    import zipfile

    st = archive.stat()
    key = hashlib.sha1(f"{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = archive.name.split(".")[0]
    dest = cache_dir(cfg) / "archives" / f"{stem}-{key}"
    if not dest.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            if archive.name.endswith(".zip"):
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(tmp)
            else:
                with tarfile.open(archive) as tf:
                    if hasattr(tarfile, "data_filter"):  # refuses absolute paths, links out of tmp, devices
                        tf.extractall(tmp, filter="data")
                    else:  # Pythons before the filter: refuse what it would
                        bad = [m.name for m in tf.getmembers() if m.name.startswith("/") or ".." in Path(m.name).parts
                               or not (m.isfile() or m.isdir())]
                        if bad:
                            raise tarfile.TarError(f"unsafe member {bad[0]}")
                        tf.extractall(tmp)
            os.replace(tmp, dest)
        except (OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if not dest.is_dir():  # another process may have finished the same unpacking first
                raise DataError(f"cannot unpack {archive} into {dest.parent}: {exc}. Check the file and the free "
                                "space there (data.cache_dir or $SELFDISTILL_CACHE choose the folder).") from exc
    entries = [e for e in dest.iterdir() if not e.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest
