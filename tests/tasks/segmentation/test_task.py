"""Segmentation inside the engine: joint augmentation, class-presence pairing, dense-IPS training step, models,
end-to-end training / resume / evaluation on real CamVid images, and the report."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from selfdistill.batch import Batch
from selfdistill.config import ConfigError, DataConfig
from selfdistill.data import DataError
from selfdistill.engine.checkpoint import CheckpointError
from selfdistill.methods import MethodContext
from selfdistill.run import resolve_config
from selfdistill.tasks.segmentation import (
    DenseIPS,
    PresencePairSampler,
    SegDataModule,
    border_pixels,
    build_segmentation_model,
    class_presence,
    init_backbone,
    pixel_cross_entropy,
    sample_scale_crop_flip,
    scale_crop_flip,
)
from selfdistill.tasks.segmentation.config import SegmentationConfig
from selfdistill.tasks.segmentation.methods import DenseIPSOptions
from selfdistill.tasks.segmentation.ops import pixel_kd_loss

IGNORE = 255
def _params(n: int, scale: float = 1.0, top: float = 0.0, left: float = 0.0, flip: bool = False) -> torch.Tensor:
    return torch.tensor([[scale, top, left, float(flip)]] * n, dtype=torch.float64)


# ------------------------------------------------------------------------------------ joint augmentation
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


# ------------------------------------------------------------------------------------------- pairing
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


# -------------------------------------------------------------------------------------------- losses
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


# -------------------------------------------------------------------------------------------- models
def test_segmentation_models_return_logit_maps_of_the_input_size():
    model = build_segmentation_model("torchvision:lraspp_mobilenet_v3_large", 4).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 48, 64))
    assert out.shape == (1, 4, 48, 64)
    with pytest.raises(ValueError, match="Did you mean"):
        build_segmentation_model("lraspp_mobilenet_v3_larg", 4)


def test_init_backbone_copies_a_classification_run(tmp_path):
    import torchvision

    cls = torchvision.models.mobilenet_v3_large(num_classes=10)
    ck = {"config": {"model": {"name": "torchvision:mobilenet_v3_large"}}, "model": cls.state_dict()}
    torch.save(ck, tmp_path / "last.pt")
    seg = build_segmentation_model("lraspp_mobilenet_v3_large", 4)
    n = init_backbone(seg, "lraspp_mobilenet_v3_large", tmp_path / "last.pt")
    assert n == len(seg.net.backbone.state_dict())
    assert torch.equal(seg.net.backbone.state_dict()["0.0.weight"], cls.state_dict()["features.0.0.weight"])
    ck["config"]["model"]["name"] = "torchvision:resnet18"
    torch.save(ck, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="mobilenet_v3_large"):
        init_backbone(seg, "lraspp_mobilenet_v3_large", tmp_path / "other.pt")


# ----------------------------------------------------------------------------------------- end to end
def _config(tmp_path, root, method: dict, epochs: int = 1) -> dict:
    return {
        "task": "segmentation", "seed": 0, "out": str(tmp_path / "runs"),
        "data": {"name": "camvid", "root": str(root), "batch_size": 4, "eval_batch_size": 16, "train_subset": 8},
        "segmentation": {"size": [36, 48], "crop": [32, 32], "min_pixels": 16, "test_split": "val"},
        "model": {"name": "lraspp_mobilenet_v3_large"}, "method": method,
        "optim": {"lr": 0.01}, "sched": {"name": "constant"},
        "train": {"epochs": epochs, "device": "cpu", "progress": False, "tensorboard": False},
    }


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


def test_segmentation_methods_are_per_task():
    seg = {"task": "segmentation", "data": {"name": "camvid"}, "model": {"name": "lraspp_mobilenet_v3_large"}}
    cfg = resolve_config({**seg, "method": {"name": "ips"}})
    assert cfg.method["dense_kd"] == "pixel_agree" and "partner_source" not in cfg.method
    with pytest.raises(KeyError, match="unknown method 'kd'"):
        resolve_config({**seg, "method": {"name": "kd"}})
    with pytest.raises(ConfigError, match="dense_kdd"):
        resolve_config({**seg, "method": {"name": "ips", "dense_kdd": "context"}})


@pytest.mark.parametrize("method", [{"name": "ce"}, {"name": "ips", "dense_kd": "context", "grid": 4}])
def test_segmentation_trains_resumes_and_evaluates_on_camvid(tmp_path, camvid_root, method):
    from selfdistill import evaluate, train
    from selfdistill.bench.report import write_report

    full = train(_config(tmp_path / "full", camvid_root, method, epochs=2))
    assert full.task == "segmentation" and full.metrics == ["miou", "pixel_acc"]
    assert 0 <= full.last["test_miou"] <= 100 and "iou_Road" in full.last_per_class
    assert full.best_val["epoch"] in (1, 2)
    # one epoch, then resumed to two: the same history as the uninterrupted run
    train(_config(tmp_path / "split", camvid_root, method, epochs=1))
    resumed = train(_config(tmp_path / "split", camvid_root, method, epochs=2), resume=True)
    assert resumed.last == full.last
    ck = tmp_path / "full" / "runs" / f"camvid_lraspp_mobilenet_v3_large_{method['name']}_s0" / "last.pt"
    assert evaluate(ck)["miou"] == pytest.approx(full.last["test_miou"], abs=1e-9)
    report = write_report(tmp_path / "full" / "runs", tmp_path / "report").read_text()
    assert "mIoU % (last)" in report and "Road" in report
    rows = json.loads((ck.parent / "summary.json").read_text())["last_per_class"]
    assert len(rows) == 11
