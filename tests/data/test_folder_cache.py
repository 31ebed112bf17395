"""ImageFolder trees on disk: conversion to RGB, the decode cache and its invalidation, unreadable images, archives."""

import pytest
import torch
from PIL import Image

from selfdistill.config import DataConfig
from selfdistill.data import DataError, DataModule
from tests.helpers import image_folder


@pytest.mark.parametrize("mode", ["L", "P", "RGB"])
def test_imagefolder_converts_to_rgb_and_caches(tmp_path, mode):
    root = image_folder(tmp_path / "ds", mode=mode)
    cfg = DataConfig(name="imagefolder", root=str(root), cache_dir=str(tmp_path / "cache"), batch_size=2)
    dm = DataModule(cfg)
    assert dm.train.images.shape == (6, 3, 5, 6) and dm.classes == ["a", "b"]
    assert len(list((tmp_path / "cache").glob("imagefolder-*.pt"))) == 2
    again = DataModule(cfg)  # served from the cache
    assert torch.equal(again.train.images, dm.train.images)


def test_imagefolder_cache_invalidates_when_files_change(tmp_path):
    root = image_folder(tmp_path / "ds")
    cfg = DataConfig(name="imagefolder", root=str(root), cache_dir=str(tmp_path / "cache"), batch_size=2)
    DataModule(cfg)
    Image.new("RGB", (6, 5), (255, 255, 255)).save(root / "train" / "a" / "0.png")
    dm = DataModule(cfg)
    assert dm.train.images[dm.train.labels == 0].max() == 255


def test_corrupt_image_is_named_or_skipped(tmp_path):
    root = image_folder(tmp_path / "ds")
    bad = root / "train" / "b" / "broken.png"
    bad.write_bytes(b"not an image")
    cfg = dict(name="imagefolder", root=str(root), cache_dir=str(tmp_path / "cache"), batch_size=2)
    with pytest.raises(DataError, match=r"broken\.png.*skip_corrupt"):
        DataModule(DataConfig(**cfg))
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        dm = DataModule(DataConfig(**cfg, skip_corrupt=True))
    assert len(dm.train) == 6


def test_skip_corrupt_when_the_first_file_is_corrupt(tmp_path):
    root = image_folder(tmp_path / "ds")
    (root / "train" / "a" / "0.png").write_bytes(b"not an image")  # the first file of the split, sorted
    cfg = dict(name="imagefolder", root=str(root), cache_dir=str(tmp_path / "cache"), batch_size=2)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        assert len(DataModule(DataConfig(**cfg, skip_corrupt=True)).train) == 5
    for f in (root / "train").rglob("*.png"):
        f.write_bytes(b"nothing readable")
    with pytest.raises(DataError, match="no readable image among the 6 files"):
        DataModule(DataConfig(**cfg, skip_corrupt=True))


def test_the_decode_cache_remembers_skipped_files(tmp_path):
    root = image_folder(tmp_path / "ds")
    (root / "train" / "b" / "broken.png").write_bytes(b"not an image")
    cfg = dict(name="imagefolder", root=str(root), cache_dir=str(tmp_path / "cache"), batch_size=2)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        DataModule(DataConfig(**cfg, skip_corrupt=True))
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable images, e\.g\. .*broken\.png"):  # from the cache
        assert len(DataModule(DataConfig(**cfg, skip_corrupt=True)).train) == 6
    with pytest.raises(DataError, match=r"broken\.png.*skip_corrupt"):  # the cache does not hide it
        DataModule(DataConfig(**cfg))


@pytest.mark.parametrize("fmt", ["gztar", "zip"])
def test_imagefolder_reads_an_archive_once(tmp_path, fmt):
    import shutil

    src = image_folder(tmp_path / "src" / "mydata")
    archive = shutil.make_archive(str(tmp_path / "mydata"), fmt, root_dir=tmp_path / "src")
    cfg = DataConfig(name="imagefolder", root=archive, cache_dir=str(tmp_path / "cache"), batch_size=2)
    dm = DataModule(cfg)
    assert dm.classes == ["a", "b"] and len(dm.train) == 6
    unpacked = list((tmp_path / "cache" / "archives").iterdir())
    assert len(unpacked) == 1 and (unpacked[0] / "mydata" / "train" / "a" / "0.png").is_file()
    shutil.rmtree(src)  # the unpacked copy serves the next run
    assert torch.equal(DataModule(cfg).train.images, dm.train.images)
    (tmp_path / "broken.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(DataError, match=r"cannot unpack .*broken\.tar\.gz"):
        DataModule(DataConfig(name="imagefolder", root=str(tmp_path / "broken.tar.gz"),
                              cache_dir=str(tmp_path / "cache")))
    assert [p.name for p in (tmp_path / "cache" / "archives").iterdir()] == [unpacked[0].name]  # no debris
