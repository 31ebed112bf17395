"""Dataset sources: the registry, synthetic, digits and CIFAR sources, ImageFolder structure errors, channel
statistics (canvases included)."""

import pytest
import torch
from PIL import Image

from selfdistill.config import DataConfig
from selfdistill.data import DataError, DataModule, list_datasets
from selfdistill.data.sources import DATASETS, channel_stats, valid_mask
from tests.helpers import image_folder


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


def test_imagefolder_structure_errors(tmp_path):
    with pytest.raises(DataError, match="must contain train/ and val/ or test/"):
        DATASETS.get("imagefolder")(DataConfig(name="imagefolder", root=str(tmp_path)))
    root = image_folder(tmp_path / "mismatch")
    (root / "test" / "b").rename(root / "test" / "c")
    with pytest.raises(DataError, match=r"only in train \['b'\].*only in test \['c'\]"):
        DATASETS.get("imagefolder")(DataConfig(name="imagefolder", root=str(root)))
    root = image_folder(tmp_path / "empty")
    (root / "train" / "z").mkdir()
    with pytest.raises(DataError, match=r"train/z holds no images"):
        DATASETS.get("imagefolder")(DataConfig(name="imagefolder", root=str(root)))
    root = image_folder(tmp_path / "sizes")
    Image.new("RGB", (9, 9)).save(root / "train" / "a" / "big.png")
    with pytest.raises(DataError, match="image_size"):
        DataModule(DataConfig(name="imagefolder", root=str(root), cache_dir=str(tmp_path / "c")))
    dm = DataModule(DataConfig(name="imagefolder", root=str(root), cache_dir=str(tmp_path / "c"), image_size=4))
    assert dm.train.images.shape[-2:] == (4, 4)


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
