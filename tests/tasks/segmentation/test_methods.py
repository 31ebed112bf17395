"""Segmentation methods: pixel cross-entropy by hand, the border band of swapped cells, dense IPS (zero KD on identical
pairs, the context, pixel-agree and originals forms, CE on the clean images)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selfdistill.batch import Batch
from selfdistill.methods import MethodContext
from selfdistill.tasks.segmentation import (
    DenseIPS,
    border_pixels,
    pixel_cross_entropy,
)
from selfdistill.tasks.segmentation.methods import DenseIPSOptions
from selfdistill.tasks.segmentation.ops import pixel_kd_loss

IGNORE = 255


def test_pixel_cross_entropy_by_hand_and_with_nothing_labelled():
    z = torch.zeros(1, 2, 1, 3)
    z[0, 0, 0, 0] = 2.0  # pixel 0: logits (2, 0); pixels 1-2: (0, 0)
    y = torch.tensor([[[0, 1, IGNORE]]])
    expected = (torch.log1p(torch.exp(torch.tensor(-2.0))) + torch.log(torch.tensor(2.0))) / 2
    assert float(pixel_cross_entropy(z, y)) == pytest.approx(float(expected), abs=1e-6)
    assert float(pixel_cross_entropy(z, torch.full_like(y, IGNORE))) == 0.0


def test_border_pixels_are_the_band_around_swapped_cells():
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[..., :4, :4] = True  # one swapped quadrant
    near = border_pixels(mask, 1)[0]
    assert near[3, 0] and near[4, 0] and near[0, 3] and near[0, 4] and near[4, 4]
    assert not near[0, 0] and not near[7, 7] and not near[1, 1] and not near[6, 6]
    assert not border_pixels(torch.zeros_like(mask), 2).any()


def _ctx() -> MethodContext:
    return MethodContext(5, 10, 1, 1, torch.device("cpu"))


def _pair_batch(x: torch.Tensor, y: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> Batch:
    n = len(x)
    b = Batch(x, y, torch.arange(n), [x], Batch(xb, yb, torch.arange(n), [xb]), seed=3, global_size=n)
    return b


class _PixelModel(torch.nn.Module):
    """A 1×1-conv segmenter (per-pixel logits) for exact checks."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize("mode", ["pixel_agree", "class_region", "context", "originals"])
def test_dense_ips_identical_pair_gives_zero_kd(mode):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 16, 16, generator=g)
    y = torch.randint(0, 5, (2, 16, 16), generator=g)
    method = DenseIPS(DenseIPSOptions(dense_kd=mode, grid=4, min_pixels=1), _ctx())
    out = method.training_step(_PixelModel(), _pair_batch(x, y, x.clone(), y.clone()), 1)
    assert float(out.losses["kd"].detach()) == pytest.approx(0.0, abs=1e-6)
    assert float(out.losses["ce"].detach()) > 0


def test_dense_ips_context_is_zero_without_swaps_and_positive_with_them():
    g = torch.Generator().manual_seed(6)
    x, xb = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    y, yb = torch.randint(0, 5, (2, 16, 16), generator=g), torch.randint(0, 5, (2, 16, 16), generator=g)

    class Context(_PixelModel):  # a 3×3 conv: a pixel's prediction depends on its neighbours
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 5, 3, padding=1)

    kd_none = DenseIPS(DenseIPSOptions(dense_kd="context", grid=4, p_swap=0.0), _ctx()).training_step(
        Context(), _pair_batch(x, y, xb, yb), 1).losses["kd"]
    kd_swap = DenseIPS(DenseIPSOptions(dense_kd="context", grid=4, ratio_low=0.5, lambda_kd=1.0), _ctx()).training_step(
        Context(), _pair_batch(x, y, xb, yb), 1).losses["kd"]
    assert kd_none.item() == pytest.approx(0.0, abs=1e-6) and kd_swap.item() > 1e-4


def test_dense_ips_pixel_agree_matches_a_loop_over_pixels():
    g = torch.Generator().manual_seed(7)
    x, xb = torch.randn(1, 3, 8, 8, generator=g), torch.randn(1, 3, 8, 8, generator=g)
    y, yb = torch.randint(0, 3, (1, 8, 8), generator=g), torch.randint(0, 3, (1, 8, 8), generator=g)
    model = _PixelModel()
    opt = DenseIPSOptions(grid=2, T=2.0, ratio_low=0.5, ratio_high=0.5, lambda_kd=1.0, ce_inputs="swapped")
    batch = _pair_batch(x, y, xb, yb)
    out = DenseIPS(opt, _ctx()).training_step(model, batch, 1)
    # recompute: the swapped label maps are in out.targets, the logits in out.logits
    za, zb = out.logits[:1].detach(), out.logits[1:].detach()
    ya, yb_s = out.targets[:1], out.targets[1:]
    terms = []
    for i in range(8):
        for j in range(8):
            if ya[0, i, j] != yb_s[0, i, j]:
                continue
            c = int(ya[0, i, j])
            pa, pb = za[0, :, i, j].softmax(0), zb[0, :, i, j].softmax(0)
            t, s = (za, zb) if pa[c] >= pb[c] else (zb, za)
            pt = (t[0, :, i, j] / 2).softmax(0)
            terms.append(4 * float((pt * (pt.log() - (s[0, :, i, j] / 2).log_softmax(0))).sum()))
    assert terms and out.losses["kd"].item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # labels are conserved over the pair
    assert torch.equal(torch.sort(torch.cat([y, yb]).flatten()).values,
                       torch.sort(torch.cat([ya, yb_s]).flatten()).values)


def test_dense_ips_originals_teach_each_swapped_pixel_from_its_source_image():
    """A 1×1-conv model predicts a pixel from that pixel alone: a swapped pixel's prediction equals its source
    image's, so the term is 0 exactly when every pixel is paired with its own source (the other image's prediction
    of the same position differs). A 3×3 conv sees the swapped context: the term is then positive."""
    g = torch.Generator().manual_seed(8)
    x, xb = torch.randn(1, 3, 8, 8, generator=g), torch.randn(1, 3, 8, 8, generator=g)
    y, yb = torch.randint(0, 3, (1, 8, 8), generator=g), torch.randint(0, 3, (1, 8, 8), generator=g)
    y[0, 0, 0] = 255  # an unlabelled pixel has no term
    opt = DenseIPSOptions(dense_kd="originals", grid=2, T=2.0, ratio_low=0.5, ratio_high=0.5, lambda_kd=1.0,
                          ce_inputs="swapped")
    out = DenseIPS(opt, _ctx()).training_step(_PixelModel(), _pair_batch(x, y, xb, yb), 1)
    assert out.losses["kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert float(out.stats["kd_pixels"]) == pytest.approx(127 / 128)
    wrong = pixel_kd_loss(_PixelModel()(torch.cat([xb, x])), _PixelModel()(torch.cat([x, xb])), torch.cat([y, yb]))
    assert wrong[0].item() > 1e-3  # the other image's prediction as teacher: not 0

    class Context(_PixelModel):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 5, 3, padding=1)

    assert DenseIPS(opt, _ctx()).training_step(Context(), _pair_batch(x, y, xb, yb), 1).losses["kd"].item() > 1e-4


def test_dense_ips_ce_on_the_clean_images_too_is_the_mean_of_four_maps():
    g = torch.Generator().manual_seed(9)
    x, xb = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    y, yb = torch.randint(0, 5, (2, 8, 8), generator=g), torch.randint(0, 5, (2, 8, 8), generator=g)
    y[0, :2] = IGNORE  # unlabelled pixels count in no map
    model = _PixelModel()
    opt = DenseIPSOptions(grid=2, ratio_low=0.5, ratio_high=0.5, ce_inputs="swapped+original")
    out = DenseIPS(opt, _ctx()).training_step(model, _pair_batch(x, y, xb, yb), 1)
    za, zb, ya, yb_s = out.logits[:2], out.logits[2:], out.targets[:2], out.targets[2:]
    with torch.no_grad():
        maps = [(za, ya), (zb, yb_s), (model(x), y), (model(xb), yb)]
        expected = sum(F.cross_entropy(z, t, ignore_index=IGNORE) for z, t in maps) / 4
    assert out.losses["ce"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert DenseIPS.cost(opt) == 4.0 == DenseIPS.cost(DenseIPSOptions())
    assert DenseIPS.cost(DenseIPSOptions(ce_inputs="swapped")) == 2.0
    # without a swap the clean images are the swapped ones: the same CE as on the swapped pair alone
    flat = {"grid": 2, "p_swap": 0.0}
    ce_two = DenseIPS(DenseIPSOptions(**flat, ce_inputs="swapped"), _ctx()).training_step(
        model, _pair_batch(x, y, xb, yb), 1)
    ce_four = DenseIPS(DenseIPSOptions(**flat, ce_inputs="swapped+original"), _ctx()).training_step(
        model, _pair_batch(x, y, xb, yb), 1)
    assert ce_four.losses["ce"].item() == pytest.approx(ce_two.losses["ce"].item(), rel=1e-6)


def test_dense_ips_originals_reuse_the_clean_forward_of_the_ce_term():
    g = torch.Generator().manual_seed(10)
    x, xb = torch.randn(1, 3, 8, 8, generator=g), torch.randn(1, 3, 8, 8, generator=g)
    y, yb = torch.randint(0, 3, (1, 8, 8), generator=g), torch.randint(0, 3, (1, 8, 8), generator=g)

    class Context(_PixelModel):  # no BatchNorm: one forward of all images equals separate ones
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 5, 3, padding=1)

    kw = {"dense_kd": "originals", "grid": 2, "ratio_low": 0.5, "ratio_high": 0.5, "lambda_kd": 1.0}
    m_sep, m_joint = Context(), Context()
    separate = DenseIPS(DenseIPSOptions(**kw, ce_inputs="swapped"), _ctx()).training_step(
        m_sep, _pair_batch(x, y, xb, yb), 1)
    joint = DenseIPS(DenseIPSOptions(**kw, ce_inputs="swapped+original"), _ctx()).training_step(
        m_joint, _pair_batch(x, y, xb, yb), 1)
    assert separate.losses["kd"].item() > 1e-4
    assert joint.losses["kd"].item() == pytest.approx(separate.losses["kd"].item(), rel=1e-5)
    # the term's gradient flows through the students only (the clean teacher is detached), as without the CE maps
    g_sep = torch.autograd.grad(separate.losses["kd"], list(m_sep.parameters()))
    g_joint = torch.autograd.grad(joint.losses["kd"], list(m_joint.parameters()))
    for a, b in zip(g_sep, g_joint, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
