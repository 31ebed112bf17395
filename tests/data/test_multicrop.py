"""Multi-crop views (DINO): the drawn crop parameters, the crops by hand (identity, quadrant, flip, jitter, grey),
shapes and value range, the loader's global and local crops."""

import math

import pytest
import torch

from selfdistill.batch import DataRequirements, MultiCrop
from selfdistill.config import DataConfig
from selfdistill.data import DataModule
from selfdistill.data.multicrop import CropParams, resized_crops, sample_crops
from selfdistill.models import build_model


def _images(n: int = 3, c: int = 3, size: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def _box(n: int, cy: float, cx: float, h: float, w: float, flip: bool = False,
         color: tuple[float, float, float] = (1.0, 1.0, 1.0), gray: bool = False) -> CropParams:
    """The same box, flip, colour factors and grey flag for ``n`` images."""
    return CropParams(torch.full((n,), cy), torch.full((n,), cx), torch.full((n,), h), torch.full((n,), w),
                      torch.full((n,), flip), torch.tensor([color] * n), torch.full((n,), gray))


def test_drawn_boxes_lie_inside_the_image_with_the_drawn_area_and_aspect():
    p = sample_crops(4000, (0.1, 0.5), 0.4, torch.Generator().manual_seed(1))
    assert torch.all(p.cy - p.h / 2 >= 0) and torch.all(p.cy + p.h / 2 <= 1 + 1e-6)
    assert torch.all(p.cx - p.w / 2 >= 0) and torch.all(p.cx + p.w / 2 <= 1 + 1e-6)
    area, ratio = p.h * p.w, p.w / p.h  # no side reaches 1 at these scales, so nothing is clamped
    assert area.min() >= 0.1 - 1e-6 and area.max() <= 0.5 + 1e-6
    assert ratio.min() >= 3 / 4 - 1e-5 and ratio.max() <= 4 / 3 + 1e-5
    assert abs(p.flip.float().mean().item() - 0.5) < 0.03 and abs(p.gray.float().mean().item() - 0.2) < 0.03
    jittered = (p.color != 1).any(1)
    assert abs(jittered.float().mean().item() - 0.8) < 0.03
    assert p.color[jittered].min() >= 0.6 and p.color[jittered].max() <= 1.4


def test_drawing_is_a_function_of_the_generator():
    def draw(seed: int) -> CropParams:
        return sample_crops(16, (0.14, 1.0), 0.4, torch.Generator().manual_seed(seed))

    a, b, c = draw(3), draw(3), draw(4)
    for field in ("cy", "cx", "h", "w", "flip", "color", "gray"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.cy, c.cy)
    part = a[2:5]
    assert torch.equal(part.color, a.color[2:5]) and torch.equal(part.h, a.h[2:5])


def test_the_whole_image_without_flip_or_jitter_is_the_image():
    x = _images()
    torch.testing.assert_close(resized_crops(x, _box(3, 0.5, 0.5, 1.0, 1.0), 8), x.float(), rtol=0, atol=1e-3)


def test_a_quarter_box_at_half_the_size_is_that_quadrant_and_a_flip_mirrors_it():
    x = _images()
    top_left = resized_crops(x, _box(3, 0.25, 0.25, 0.5, 0.5), 4)
    torch.testing.assert_close(top_left, x[:, :, :4, :4].float(), rtol=0, atol=1e-3)
    bottom_right = resized_crops(x, _box(3, 0.75, 0.75, 0.5, 0.5, flip=True), 4)
    torch.testing.assert_close(bottom_right, x[:, :, 4:, 4:].flip(-1).float(), rtol=0, atol=1e-3)


def test_brightness_scales_and_grey_averages_the_channels():
    x = _images()
    darker = resized_crops(x, _box(3, 0.5, 0.5, 1.0, 1.0, color=(0.5, 1.0, 1.0)), 8)
    torch.testing.assert_close(darker, x.float() * 0.5, rtol=0, atol=1e-3)
    grey = resized_crops(x, _box(3, 0.5, 0.5, 1.0, 1.0, gray=True), 8)
    luma = (x.float() * torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]).sum(1, keepdim=True)
    torch.testing.assert_close(grey, luma.expand_as(grey), rtol=0, atol=1e-3)


@pytest.mark.parametrize("channels", [1, 3])
def test_random_crops_have_the_asked_size_and_stay_in_the_pixel_range(channels):
    x = _images(n=64, c=channels, size=12)
    p = sample_crops(64, (0.05, 1.0), 0.9, torch.Generator().manual_seed(2))
    out = resized_crops(x, p, 5)
    assert out.shape == (64, channels, 5, 5) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255 and math.isfinite(float(out.sum()))


def test_multicrop_batches_and_same_resolution_batching():
    dm = DataModule(DataConfig(name="synthetic", synthetic_size=32, batch_size=8, num_classes=4, image_size=16))
    req = DataRequirements(multicrop=MultiCrop(2, 3, 16, 8))
    b = next(dm.train_loader(req, seed=0).iterate(1))
    assert [tuple(v.shape[-2:]) for v in b.views] == [(16, 16)] * 2 + [(8, 8)] * 3
    assert not torch.equal(b.views[0], b.views[1])
    torch.manual_seed(0)
    model = build_model("resnet8", 4, 3).eval()
    with torch.no_grad():
        joint = model(torch.cat(b.views[2:]))
        apart = torch.cat([model(v) for v in b.views[2:]])
    torch.testing.assert_close(joint, apart, atol=1e-5, rtol=1e-5)
