import pytest
import torch
from PIL import Image

from selfdistill.config import DataConfig
from selfdistill.data import DataError, DataModule, DataRequirements, list_datasets
from selfdistill.data.sources import DATASETS, channel_stats, valid_mask


def _make_folder(root, classes=("a", "b"), per_class=3, splits=("train", "test"), size=(6, 5), mode="RGB"):
    colours = {"RGB": (10, 200, 30), "L": 128, "P": 3}
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                im = Image.new(mode, size, colours[mode])
                im.save(d / f"{i}.png")
    return root


def test_registry_lists_all_sources():
    assert list_datasets() == ["cifar10", "cifar100", "digits", "imagefolder", "synthetic"]


def test_synthetic_is_seeded_and_balanced():
    a = DATASETS.get("synthetic")(DataConfig(name="synthetic", synthetic_size=100, num_classes=5))
    b = DATASETS.get("synthetic")(DataConfig(name="synthetic", synthetic_size=100, num_classes=5))
    assert torch.equal(a.train.images, b.train.images) and a.train.images.dtype == torch.uint8
    assert torch.bincount(a.train.labels).tolist() == [20] * 5
    assert a.train.images.shape == (100, 3, 16, 16)


def test_digits_is_a_fixed_real_split():
    raw = DATASETS.get("digits")(DataConfig(name="digits"))
    assert raw.in_chans == 1 and raw.train.images.shape[1:] == (1, 8, 8)
    assert len(raw.train) + len(raw.test) == 1797
    assert raw.train.images.max() == 255


def test_cifar_missing_names_the_expected_files(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*data_batch_1\.\.5.*download=true"):
        DATASETS.get("cifar10")(DataConfig(name="cifar10", root=str(tmp_path)))
    with pytest.raises(DataError, match=r"cifar-100-python"):
        DATASETS.get("cifar100")(DataConfig(name="cifar100", root=str(tmp_path)))


@pytest.mark.parametrize("mode", ["L", "P", "RGB"])
def test_imagefolder_converts_to_rgb_and_caches(tmp_path, mode):
    root = _make_folder(tmp_path / "ds", mode=mode)
    cfg = DataConfig(name="imagefolder", root=str(root), cache_dir=str(tmp_path / "cache"), batch_size=2)
    dm = DataModule(cfg)
    assert dm.train.images.shape == (6, 3, 5, 6) and dm.classes == ["a", "b"]
    assert len(list((tmp_path / "cache").glob("imagefolder-*.pt"))) == 2
    again = DataModule(cfg)  # served from the cache
    assert torch.equal(again.train.images, dm.train.images)


def test_imagefolder_cache_invalidates_when_files_change(tmp_path):
    root = _make_folder(tmp_path / "ds")
    cfg = DataConfig(name="imagefolder", root=str(root), cache_dir=str(tmp_path / "cache"), batch_size=2)
    DataModule(cfg)
    Image.new("RGB", (6, 5), (255, 255, 255)).save(root / "train" / "a" / "0.png")
    dm = DataModule(cfg)
    assert dm.train.images[dm.train.labels == 0].max() == 255


def test_corrupt_image_is_named_or_skipped(tmp_path):
    root = _make_folder(tmp_path / "ds")
    bad = root / "train" / "b" / "broken.png"
    bad.write_bytes(b"not an image")
    cfg = dict(name="imagefolder", root=str(root), cache_dir=str(tmp_path / "cache"), batch_size=2)
    with pytest.raises(DataError, match=r"broken\.png.*skip_corrupt"):
        DataModule(DataConfig(**cfg))
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        dm = DataModule(DataConfig(**cfg, skip_corrupt=True))
    assert len(dm.train) == 6


def test_skip_corrupt_when_the_first_file_is_corrupt(tmp_path):
    root = _make_folder(tmp_path / "ds")
    (root / "train" / "a" / "0.png").write_bytes(b"not an image")  # the first file of the split, sorted
    cfg = dict(name="imagefolder", root=str(root), cache_dir=str(tmp_path / "cache"), batch_size=2)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        assert len(DataModule(DataConfig(**cfg, skip_corrupt=True)).train) == 5
    for f in (root / "train").rglob("*.png"):
        f.write_bytes(b"nothing readable")
    with pytest.raises(DataError, match="no readable image among the 6 files"):
        DataModule(DataConfig(**cfg, skip_corrupt=True))


def test_the_decode_cache_remembers_skipped_files(tmp_path):
    root = _make_folder(tmp_path / "ds")
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

    src = _make_folder(tmp_path / "src" / "mydata")
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


def test_imagefolder_structure_errors(tmp_path):
    with pytest.raises(DataError, match="must contain train/ and val/ or test/"):
        DATASETS.get("imagefolder")(DataConfig(name="imagefolder", root=str(tmp_path)))
    root = _make_folder(tmp_path / "mismatch")
    (root / "test" / "b").rename(root / "test" / "c")
    with pytest.raises(DataError, match=r"only in train \['b'\].*only in test \['c'\]"):
        DATASETS.get("imagefolder")(DataConfig(name="imagefolder", root=str(root)))
    root = _make_folder(tmp_path / "empty")
    (root / "train" / "z").mkdir()
    with pytest.raises(DataError, match=r"train/z holds no images"):
        DATASETS.get("imagefolder")(DataConfig(name="imagefolder", root=str(root)))
    root = _make_folder(tmp_path / "sizes")
    Image.new("RGB", (9, 9)).save(root / "train" / "a" / "big.png")
    with pytest.raises(DataError, match="image_size"):
        DataModule(DataConfig(name="imagefolder", root=str(root), cache_dir=str(tmp_path / "c")))
    dm = DataModule(DataConfig(name="imagefolder", root=str(root), cache_dir=str(tmp_path / "c"), image_size=4))
    assert dm.train.images.shape[-2:] == (4, 4)


def test_batches_views_pairs_and_indices():
    cfg = DataConfig(name="synthetic", synthetic_size=64, batch_size=16, num_classes=4)
    dm = DataModule(cfg)
    loader = dm.train_loader(DataRequirements(sampler="pair", views=("weak", "weak")), seed=0)
    batches = list(loader.iterate(1))
    assert len(batches) == 4
    b = batches[0]
    assert b.x.shape == (16, 3, 16, 16) and b.x.dtype == torch.float32
    assert len(b.views) == 2 and b.views[0] is b.x and not torch.equal(b.views[0], b.views[1])
    assert torch.equal(b.partner.y, b.y)
    assert torch.equal(dm.train.labels[b.index], b.y)
    # resuming mid-epoch gives the very same batches
    tail = list(loader.iterate(1, start_step=2))
    assert torch.equal(tail[0].x, batches[2].x) and torch.equal(tail[1].partner.x, batches[3].partner.x)


def test_rank_shards_reassemble_the_global_batch():
    cfg = DataConfig(name="synthetic", synthetic_size=64, batch_size=16, num_classes=4)
    whole = next(DataModule(cfg).train_loader(DataRequirements(), seed=5).iterate(1))
    parts = [next(DataModule(cfg, rank=r, world=2).train_loader(DataRequirements(), seed=5).iterate(1))
             for r in range(2)]
    assert torch.equal(torch.cat([p.x for p in parts]), whole.x)
    assert torch.equal(torch.cat([p.index for p in parts]), whole.index)
    with pytest.raises(ValueError, match="multiple of the world size"):
        DataModule(DataConfig(name="synthetic", batch_size=15), world=2).train_loader(DataRequirements(), 0)


def test_streaming_imagefolder(tmp_path):
    root = _make_folder(tmp_path / "ds", size=(12, 12), per_class=4)
    cfg = DataConfig(name="imagefolder", root=str(root), in_memory="never", num_workers=0, image_size=8,
                     batch_size=4, eval_batch_size=3)
    dm = DataModule(cfg)
    assert not dm.in_memory
    batches = list(dm.train_loader(DataRequirements(sampler="pair"), seed=0).iterate(1))
    assert len(batches) == 2 and batches[0].x.shape == (4, 3, 8, 8)
    assert torch.equal(batches[0].partner.y, batches[0].y)
    ys = torch.cat([y for _, y in dm.eval_batches(dm.test)])
    assert torch.equal(ys, dm.test.labels)


def test_channel_stats_match_a_direct_computation_across_chunks():
    g = torch.Generator().manual_seed(0)
    small = torch.randint(0, 256, (7, 3, 5, 6), dtype=torch.uint8, generator=g)
    big = torch.randint(0, 256, (3, 1, 4096, 4097), dtype=torch.uint8, generator=g)  # > 2**24 values: 1 per chunk
    for images in (small, big):
        x = images.double() / 255
        mean, std = channel_stats(images)
        assert torch.allclose(torch.tensor(mean, dtype=torch.float64), x.mean((0, 2, 3)), atol=1e-9)
        assert torch.allclose(torch.tensor(std, dtype=torch.float64), x.std((0, 2, 3), unbiased=False), atol=1e-7)


def test_channel_stats_of_canvases_ignore_the_padding():
    g = torch.Generator().manual_seed(1)
    sizes = torch.tensor([[4, 6], [6, 3], [1, 1]])
    images = torch.randint(0, 256, (3, 2, 6, 6), dtype=torch.uint8, generator=g)
    padded = images.clone()
    mask = valid_mask(sizes, 6, 6, "cpu")
    assert mask.shape == (3, 1, 6, 6) and mask.sum((1, 2, 3)).tolist() == [24, 18, 1]
    assert mask[1, 0, :, :3].all() and not mask[1, 0, :, 3:].any()
    padded[~mask.expand_as(padded)] = 255  # whatever the padding holds
    valid = torch.cat([images[i, :, :h, :w].reshape(2, -1) for i, (h, w) in enumerate(sizes.tolist())], 1)
    for canvases in (images, padded):
        mean, std = channel_stats(canvases, sizes)
        assert torch.allclose(torch.tensor(mean, dtype=torch.float64), valid.double().mean(1) / 255, atol=1e-9)
        assert torch.allclose(torch.tensor(std, dtype=torch.float64), (valid.double() / 255).std(1, unbiased=False),
                              atol=1e-7)
