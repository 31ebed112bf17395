"""The batched strong pipeline (RandAugment + Cutout) against PIL references and its invariants."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from selfdistill.data.strong import OPS, StrongParams, _apply_op, cutout, sample_strong, strong_augment


def _images(n=4, h=12, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


def _pil(x):
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def _tensor(img):
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float()


def _one(name, x, level=0.5, sign=1.0):
    n = x.shape[0]
    return _apply_op(name, x.float(), torch.full((n,), level), torch.full((n,), sign))


@pytest.mark.parametrize("name,reference,tol", [
    ("equalize", ImageOps.equalize, 0),
    ("autocontrast", ImageOps.autocontrast, 1),
    ("solarize", lambda im: ImageOps.solarize(im, 256 - 0.5 * 256), 0),
    ("posterize", lambda im: ImageOps.posterize(im, 6), 0),
    ("brightness", lambda im: ImageEnhance.Brightness(im).enhance(0.5), 1),
    ("color", lambda im: ImageEnhance.Color(im).enhance(0.5), 2),
    ("contrast", lambda im: ImageEnhance.Contrast(im).enhance(0.5), 2),
])
def test_pixel_ops_match_pil(name, reference, tol):
    x = _images()
    x[1, :, :4] = 7  # a flat block: histograms with few values
    out = _one(name, x, level=0.5)  # enhancers: factor 0.9·0.5 + 0.05 = 0.5; solarize 128; posterize 6 bits
    for i in range(len(x)):
        ref = _tensor(reference(_pil(x[i])))
        assert (out[i].round() - ref).abs().max() <= tol, name


def test_equalize_of_a_constant_image_is_identity():
    x = torch.full((2, 3, 5, 5), 77, dtype=torch.uint8)
    assert torch.equal(_one("equalize", x), x.float())


def test_translate_moves_pixels_by_whole_columns_and_fills_128():
    x = _images(n=2, h=10, w=10)
    out = _one("translate_x", x, level=1 / 3, sign=1.0)  # 0.1 × 10 px = 1 px
    shift = (out[:, :, :, 1:] == x[:, :, :, :-1].float()).all()
    back = (out[:, :, :, :-1] == x[:, :, :, 1:].float()).all()
    assert bool(shift) or bool(back)
    edge = out[:, :, :, 0] if bool(shift) else out[:, :, :, -1]
    assert torch.all(edge == 128)


@pytest.mark.parametrize("name", ["rotate", "shear_x", "shear_y", "translate_y"])
def test_geometric_ops_keep_shape_and_range_and_move_pixels(name):
    x = _images(n=3, h=16, w=16)
    out = _one(name, x, level=1.0)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255
    assert not torch.equal(out, x.float())


def test_cutout_fills_a_square_of_the_drawn_side():
    x = torch.zeros(3, 3, 20, 20, dtype=torch.uint8)
    fill = torch.tensor([125, 123, 114], dtype=torch.uint8)
    out = cutout(x, torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.0, 0.0]]), torch.tensor([0.5, 0.0, 0.5]), fill)
    filled = (out == fill[None, :, None, None]).all(1)
    assert filled[0].sum() == 100  # 10 × 10 centred square
    assert filled[1].sum() == 0  # zero side
    assert filled[2].sum() == 25  # clipped at the corner: 5 × 5
    assert torch.equal(out[0, :, 5:15, 5:15], fill[:, None, None].expand(3, 10, 10))


def test_strong_augment_is_deterministic_uint8_and_identity_when_nothing_applies():
    x = _images(n=8, h=16, w=16)
    fill = torch.tensor([125, 123, 114], dtype=torch.uint8)
    p1 = sample_strong(8, 2, 10, 0.5, torch.Generator().manual_seed(1))
    p2 = sample_strong(8, 2, 10, 0.5, torch.Generator().manual_seed(1))
    a, b = strong_augment(x, p1, fill), strong_augment(x, p2, fill)
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b)
    off = StrongParams(p1.ops, torch.zeros_like(p1.apply), p1.level, p1.sign, p1.cut_center, torch.zeros(8))
    assert torch.equal(strong_augment(x, off, fill), x)
    assert p1.level.min() >= 0.1 and p1.level.max() <= 1.0 and p1.ops.max() < len(OPS)


def test_strong_augment_rows_do_not_depend_on_the_rest_of_the_batch():
    """Per-rank slicing: augmenting a slice with the slice's parameters equals slicing the whole result."""
    x = _images(n=8, h=16, w=16)
    fill = torch.tensor([125, 123, 114], dtype=torch.uint8)
    p = sample_strong(8, 2, 10, 0.5, torch.Generator().manual_seed(4))
    whole = strong_augment(x, p, fill)
    assert torch.equal(strong_augment(x[4:], p[4:], fill), whole[4:])


def test_magnitude_is_validated():
    with pytest.raises(ValueError, match="magnitude"):
        sample_strong(2, 2, 11, 0.5, torch.Generator())


def test_loader_serves_weak_and_strong_views():
    from selfdistill.batch import DataRequirements
    from selfdistill.config import DataConfig
    from selfdistill.data import DataModule

    dm = DataModule(DataConfig(name="synthetic", synthetic_size=32, batch_size=8, num_classes=4))
    b = next(dm.train_loader(DataRequirements(views=("weak", "strong")), seed=0).iterate(1))
    assert len(b.views) == 2 and b.views[1].shape == b.x.shape and not torch.equal(b.views[0], b.views[1])
    with pytest.raises(ValueError, match="unknown view pipelines"):
        dm.train_loader(DataRequirements(views=("weak", "fancy")), seed=0)
