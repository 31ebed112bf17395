"""The grid patch swap shared by the IPS variants: its invariants (conservation, cells, no-swap cases,
normalisation), one draw for every variant, the swap keys checked in every task."""

import pytest
import torch

from selfdistill.config import ConfigError
from selfdistill.data import normalize
from selfdistill.methods.ips import IPSOptions
from selfdistill.patch_swap import (
    SwapOptions,
    cell_counts,
    cells_to_mask,
    grid_swap_mask,
    patch_swap,
    sample_cells,
    swap_with_mask,
)
from selfdistill.run import resolve_config
from selfdistill.tasks.detection.methods import DetIPSOptions
from selfdistill.tasks.segmentation.methods import DenseIPSOptions


def _pair(n=5, c=3, h=10, w=7, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return (torch.randint(0, 256, (n, c, h, w), generator=g, dtype=dtype),
                torch.randint(0, 256, (n, c, h, w), generator=g, dtype=dtype))
    return torch.randn(n, c, h, w, generator=g).to(dtype), torch.randn(n, c, h, w, generator=g).to(dtype)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.bfloat16])
def test_conservation_and_boolean_select(dtype):  # invariant 1
    xa, xb = _pair(dtype=dtype)
    sa, sb, mask = patch_swap(xa, xb, grid=3, ratio=(0.0, 1.0), generator=_gen())
    assert sa.dtype == dtype and mask.dtype == torch.bool and mask.shape == (5, 1, 10, 7)
    if dtype != torch.uint8:  # uint8 sums overflow; the pixel-set check below covers it
        assert torch.equal(sa + sb, xa + xb)
    from_a = (sa == xa) & (sb == xb)
    from_b = (sa == xb) & (sb == xa)
    assert (from_a | from_b).all()  # every pixel is bit-identical to a source, the pair exchanged as a set
    m = mask.expand_as(xa)
    assert torch.equal(sa[m], xb[m]) and torch.equal(sa[~m], xa[~m])


def test_mask_is_constant_per_cell_and_has_exactly_k_cells():  # invariant 2
    g, h, w = 4, 10, 13  # sizes not divisible by the grid
    ratios = torch.tensor([0.0, 0.1, 0.5, 0.77, 1.0])
    k = cell_counts(ratios, g)
    assert k.tolist() == [0, 2, 8, 12, 16]  # round(r·g²)
    cells = sample_cells(k, g, _gen())
    assert cells.sum((1, 2)).tolist() == k.tolist()
    mask = cells_to_mask(cells, h, w)[:, 0]
    rows = [range(i * h // g, (i + 1) * h // g) for i in range(g)]
    cols = [range(j * w // g, (j + 1) * w // g) for j in range(g)]
    for n in range(len(k)):
        area = 0
        for i in range(g):
            for j in range(g):
                block = mask[n][rows[i][0]:rows[i][-1] + 1, cols[j][0]:cols[j][-1] + 1]
                assert block.all() == cells[n, i, j] and block.any() == cells[n, i, j]  # constant on the cell
                area += block.numel() * int(cells[n, i, j])
        assert int(mask[n].sum()) == area
    assert cell_counts(torch.tensor([0.01, 0.99]), g, k_min=1, k_max=15).tolist() == [1, 15]


def test_no_swap_cases_and_complementary_masks():  # invariant 3
    xa, xb = _pair()
    for kwargs in ({"ratio": 0.0}, {"ratio": (0.2, 0.9), "p": 0.0}):
        sa, sb, mask = patch_swap(xa, xb, grid=4, generator=_gen(), **kwargs)
        assert torch.equal(sa, xa) and torch.equal(sb, xb) and not mask.any()
    _, _, mask = patch_swap(xa, xb, grid=4, ratio=0.5, generator=_gen())
    sa, sb = swap_with_mask(xa, xb, mask)
    ca, cb = swap_with_mask(xa, xb, ~mask)
    assert torch.equal(sa, cb) and torch.equal(sb, ca)  # M and 1−M give the same unordered pair


def test_p_swap_rate_and_ratio_range():
    xa, xb = torch.zeros(4000, 1, 4, 4), torch.ones(4000, 1, 4, 4)
    _, _, mask = patch_swap(xa, xb, grid=4, ratio=(0.25, 0.5), p=0.3, generator=_gen(1))
    frac = mask.float().mean((1, 2, 3))
    swapped = frac > 0
    assert abs(swapped.float().mean().item() - 0.3) < 0.03
    assert frac[swapped].min() >= 4 / 16 and frac[swapped].max() <= 8 / 16


def test_swap_commutes_with_normalisation():  # invariant 4
    xa, xb = _pair(dtype=torch.uint8)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    _, _, mask = patch_swap(xa, xb, grid=4, ratio=(0.0, 1.0), generator=_gen())
    sa, sb = swap_with_mask(xa, xb, mask)
    na, nb = swap_with_mask(normalize(xa, mean, std), normalize(xb, mean, std), mask)
    assert torch.equal(normalize(sa, mean, std), na) and torch.equal(normalize(sb, mean, std), nb)


def test_same_image_pair_is_unchanged():  # invariant 6, first half
    xa, _ = _pair()
    sa, sb, _ = patch_swap(xa, xa.clone(), grid=4, ratio=0.5, generator=_gen())
    assert torch.equal(sa, xa) and torch.equal(sb, xa)


def test_patch_swap_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        patch_swap(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5), 2, 0.5)


def test_every_variant_draws_the_same_swap_from_the_same_keys():
    kw = {"grid": 4, "ratio_low": 0.2, "ratio_high": 0.7, "p_swap": 0.6}
    draws = [o.masks(_gen(3), 12, slice(None), 10, 7, "cpu") for o in (IPSOptions(**kw), DenseIPSOptions(**kw))]
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    assert torch.equal(grid_swap_mask(12, 10, 7, 4, (0.2, 0.7), 0.6, _gen(3)), draws[0][0])
    assert not draws[0][0][~draws[0][1]].any() and draws[0][0][draws[0][1]].any()  # unswapped pairs: empty masks


TASK_DATA = {"classification": {"data": {"name": "cifar10"}, "model": {"name": "resnet8"}},
             "segmentation": {"data": {"name": "camvid"}, "model": {"name": "lraspp_mobilenet_v3_large"}},
             "detection": {"data": {"name": "pennfudan"}, "model": {"name": "fasterrcnn_mobilenet_v3_large_fpn"}}}


@pytest.mark.parametrize("task", ["classification", "segmentation", "detection"])
def test_swap_keys_are_flat_and_checked_in_every_task(task):
    for cls in (IPSOptions, DenseIPSOptions, DetIPSOptions):
        assert issubclass(cls, SwapOptions)

    def resolve(**options):
        return resolve_config({"task": task, **TASK_DATA[task], "method": {"name": "ips", **options}})

    method = resolve(grid=2, p_swap=0.5).method
    assert method["grid"] == 2 and method["p_swap"] == 0.5
    for bad in ({"p_swap": 1.5}, {"ratio_low": 0.8, "ratio_high": 0.2}, {"grid": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            resolve(**bad)
    if task != "classification":  # the dense variants keep the finer knobs of the draw fixed
        with pytest.raises(ConfigError, match=r"unknown config key 'method\.layout'"):
            resolve(layout="box")
