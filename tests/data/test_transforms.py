"""Crop + flip and normalisation on uint8 batches: against a per-image reference slice, identity and involution,
zero padding, seeded sampling."""

import pytest
import torch

from selfdistill.data.transforms import CropFlipParams, crop_flip, normalize, sample_crop_flip


def _images(n=6, c=3, h=9, w=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("pad", [0, 1, 4])
def test_crop_matches_reference_slice_per_image(pad):
    x = _images()
    params = sample_crop_flip(len(x), pad, True, torch.Generator().manual_seed(3))
    out = crop_flip(x, pad, params)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    for i in range(len(x)):  # reference: one image at a time
        t, l = int(params.top[i]), int(params.left[i])
        assert 0 <= t <= 2 * pad and 0 <= l <= 2 * pad
        ref = padded[i, :, t:t + x.shape[2], l:l + x.shape[3]]
        if params.flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)


def test_centre_crop_without_flip_is_identity():
    x = _images()
    n = len(x)
    params = CropFlipParams(torch.full((n,), 4), torch.full((n,), 4), torch.zeros(n, dtype=torch.bool))
    assert torch.equal(crop_flip(x, 4, params), x)


def test_flip_is_exact_and_involutive():
    x = _images()
    n = len(x)
    flip = CropFlipParams(torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long),
                          torch.ones(n, dtype=torch.bool))
    once = crop_flip(x, 0, flip)
    assert torch.equal(once, x.flip(-1))
    assert torch.equal(crop_flip(once, 0, flip), x)


def test_padding_region_is_zero():
    x = torch.full((2, 1, 4, 4), 200, dtype=torch.uint8)
    params = CropFlipParams(torch.tensor([0, 4]), torch.tensor([0, 4]), torch.zeros(2, dtype=torch.bool))
    out = crop_flip(x, 2, params)
    assert torch.equal(out[0, 0, :2], torch.zeros(2, 4, dtype=torch.uint8))  # top rows came from padding
    assert torch.equal(out[1, 0, 2:, 2:], torch.zeros(2, 2, dtype=torch.uint8))


def test_sampling_is_deterministic_and_covers_range():
    a = sample_crop_flip(4000, 4, True, torch.Generator().manual_seed(7))
    b = sample_crop_flip(4000, 4, True, torch.Generator().manual_seed(7))
    assert torch.equal(a.top, b.top) and torch.equal(a.flip, b.flip)
    assert set(a.top.tolist()) == set(range(9)) and set(a.left.tolist()) == set(range(9))
    assert 0.45 < a.flip.float().mean() < 0.55
    assert not sample_crop_flip(100, 4, False, torch.Generator().manual_seed(0)).flip.any()


def test_normalize_values():
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)
    mean, std = torch.tensor([0.5, 0.2]), torch.tensor([0.25, 0.2])
    out = normalize(x, mean, std)
    expected = torch.tensor([[[[-2.0, 2.0]], [[0.0, 1.0]]]])
    assert torch.allclose(out, expected, atol=1e-6)
    assert out.dtype == torch.float32
