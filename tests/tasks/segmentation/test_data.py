"""Segmentation data: the joint scale, crop and flip of images and label maps (identity, exact flip, integer crops,
aligned labels, offsets), the class-presence pair sampler, the validation split."""

from __future__ import annotations

import pytest
import torch

from selfdistill.config import DataConfig
from selfdistill.data import DataError
from selfdistill.tasks.segmentation import (
    PresencePairSampler,
    SegDataModule,
    class_presence,
    sample_scale_crop_flip,
    scale_crop_flip,
)
from selfdistill.tasks.segmentation.config import SegmentationConfig

IGNORE = 255


def _params(n: int, scale: float = 1.0, top: float = 0.0, left: float = 0.0, flip: bool = False) -> torch.Tensor:
    return torch.tensor([[scale, top, left, float(flip)]] * n, dtype=torch.float64)


def test_identity_parameters_return_the_input():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 12, 16, generator=g)
    y = torch.randint(0, 5, (2, 12, 16), generator=g)
    out, lab = scale_crop_flip(x, y, _params(2), (12, 16), IGNORE)
    assert torch.allclose(out, x, atol=1e-5) and torch.equal(lab, y)


def test_flip_mirrors_image_and_labels_exactly():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 8, 10, generator=g)
    y = torch.randint(0, 5, (1, 8, 10), generator=g)
    out, lab = scale_crop_flip(x, y, _params(1, flip=True), (8, 10), IGNORE)
    assert torch.allclose(out, x.flip(-1), atol=1e-5) and torch.equal(lab, y.flip(-1))


def test_integer_crop_is_a_slice_and_padding_is_ignored():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 10, 12, generator=g)
    y = torch.randint(0, 5, (1, 10, 12), generator=g)
    out, lab = scale_crop_flip(x, y, _params(1, top=3, left=2), (6, 8), IGNORE)
    assert torch.allclose(out, x[..., 3:9, 2:10], atol=1e-5) and torch.equal(lab, y[:, 3:9, 2:10])
    # a crop larger than the image: the outside is ignore (labels) and 0 (images)
    out, lab = scale_crop_flip(x, y, _params(1, top=-2, left=0), (12, 12), IGNORE)
    assert (lab[:, :2] == IGNORE).all() and (out[..., :2, :] == 0).all()
    assert torch.equal(lab[:, 2:], y) and torch.allclose(out[..., 2:, :], x, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_random_scale_keeps_labels_aligned_and_from_the_source(seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 6, (4, 24, 32), generator=g)
    y[:, :3] = IGNORE
    x = (y.float() * 10)[:, None].expand(4, 3, 24, 32).contiguous()  # the image encodes its label
    params = sample_scale_crop_flip(4, (24, 32), (16, 20), (0.5, 2.0), True, g)
    out, lab = scale_crop_flip(x, y, params, (16, 20), IGNORE)
    assert set(lab.unique().tolist()) <= set(y.unique().tolist()) | {IGNORE}
    assert lab.shape == (4, 16, 20) and out.shape == (4, 3, 16, 20)
    params_int = params.clone()
    params_int[:, 0] = 1.0  # at scale 1 and integer offsets every pixel is copied: exact agreement
    params_int[:, 1:3] = params_int[:, 1:3].clamp(min=0).clamp(max=torch.tensor([8.0, 12.0]))
    out, lab = scale_crop_flip(x, y, params_int, (16, 20), IGNORE)
    valid = lab != IGNORE
    assert torch.allclose(out[:, 0][valid], 10 * lab[valid].float(), atol=1e-4)


def test_crop_offsets_stay_inside_the_scaled_image_or_pad_it():
    g = torch.Generator().manual_seed(3)
    p = sample_scale_crop_flip(500, (30, 40), (20, 24), (0.5, 2.0), True, g)
    s, top, left = p[:, 0], p[:, 1], p[:, 2]
    for off, full, crop in ((top, 30, 20), (left, 40, 24)):
        room = torch.floor(s * full) - crop
        assert ((off >= torch.minimum(room, torch.zeros_like(room))) & (off <= room.clamp(min=0))).all()
        assert torch.equal(off, off.round())
    assert 0.3 < p[:, 3].mean() < 0.7 and s.min() >= 0.5 and s.max() <= 2.0


def test_presence_sampler_partners_share_a_class():
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 4, (40, 16, 16), generator=g)
    labels[::5] = 0  # some images hold only the background
    presence = class_presence(labels, 4, min_pixels=10, exclude_background=True)
    sampler = PresencePairSampler(presence, 8, True, seed=0)
    for ib in sampler.epoch(1):
        has = presence[ib.anchor].any(1)
        shared = (presence[ib.anchor] & presence[ib.partner]).any(1)
        assert shared[has].all()
    assert len(sampler) == 5


def test_validation_is_the_val_split_or_a_seeded_fraction_of_train_never_both(camvid_root):
    def data(**kw) -> DataConfig:
        return DataConfig(name="camvid", root=str(camvid_root), train_subset=10, **kw)

    seg = SegmentationConfig(size=[18, 24], test_split="val")
    split = SegDataModule(data(), seg)
    assert len(split.train) == 10 and len(split.val) == 101  # CamVid's own val split
    cfg = data(val_fraction=0.3)
    own = SegmentationConfig(size=[18, 24], test_split="val", val_split=None)
    held = SegDataModule(cfg, own)
    assert (len(held.train), len(held.val)) == (7, 3)
    assert sorted(held.train.names + held.val.names) == sorted(split.train.names)  # held out of the same subset
    cfg.val_fraction = 0.0
    assert SegDataModule(cfg, own).val is None
    with pytest.raises(DataError, match="both name a validation split"):
        SegDataModule(data(val_fraction=0.3), seg)
