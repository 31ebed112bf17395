"""Detection in the engine: data (canvases, flip, COCO format), detectors' positives, matched-proposal
distillation (golden values and invariants), the COCO evaluator, the IPS swap, and short end-to-end runs on real
Penn-Fudan images."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from selfdistill import train
from selfdistill.batch import Batch
from selfdistill.bench.report import write_report
from selfdistill.config import ConfigError, DataConfig
from selfdistill.data.sources import DataError
from selfdistill.methods.base import MethodContext
from selfdistill.run import evaluate, resolve_config
from selfdistill.tasks.detection import (
    CocoEvaluator,
    DetDataModule,
    DetectionIPS,
    box_kl,
    build_detector,
    hflip_boxes,
    hflip_valid,
    load_canvases,
    match_boxes,
    matched_box_kd,
    pool_boxes,
)
from selfdistill.tasks.detection.config import DetectionConfig
from selfdistill.tasks.detection.methods import DetIPSOptions


# ------------------------------------------------------------------------------------------------------ data
def _pf_config(root: Path, **kw) -> DataConfig:
    return DataConfig(name="pennfudan", root=str(root), batch_size=2, eval_batch_size=4, **kw)


SMALL = DetectionConfig(size=96)


@pytest.fixture(scope="module")
def pennfudan_small(pennfudan_root):
    return DetDataModule(_pf_config(pennfudan_root, train_subset=12, val_fraction=0.25), SMALL)


def test_canvases_keep_the_aspect_and_scale_the_boxes(pennfudan_small, pennfudan_root):
    d = pennfudan_small
    assert len(d.train) == 9 and len(d.val) == 3 and len(d.test) == 50 and d.classes == ["person"]
    for split in (d.train, d.test):
        assert (split.sizes.max(1).values == 96).all()  # the longer side fills the canvas
        for i in range(len(split)):
            h, w = split.sizes[i].tolist()
            assert not split.images[i, :, h:, :].any() and not split.images[i, :, :, w:].any()  # padding is zero
            b = split.boxes[i]
            assert (b[:, 2] <= w).all() and (b[:, 3] <= h).all() and (b[:, :2] >= 0).all()
            assert (split.labels[i] == 1).all()
    # the first training image's first box is the annotation scaled by 96 / its longer side
    path = pennfudan_root / "PNGImages" / "FudanPed00001.png"
    with Image.open(path) as im:
        scale = 96 / max(im.size)
    one = load_canvases([(path, torch.tensor([[159.0, 181.0, 302.0, 431.0], [0, 0, 0.5, 0.5]]),
                          torch.tensor([1, 1]))], 96, min_box=1.0)
    assert torch.allclose(one.boxes[0], torch.tensor([[159.0, 181.0, 302.0, 431.0]]) * scale)  # tiny box dropped
    # normalised padding stays exactly zero
    x = d.prepare(d.train.images[:2], d.train.sizes[:2])
    h, w = d.train.sizes[0].tolist()
    assert not x[0, :, h:, :].any() and not x[0, :, :, w:].any()


@pytest.mark.parametrize("seed", range(4))
def test_flip_mirrors_images_and_boxes_together(seed):
    g = torch.Generator().manual_seed(seed)
    n, side = 3, 20
    sizes = torch.randint(5, side + 1, (n, 2), generator=g)
    images = torch.zeros(n, 2, side, side)
    for i, (h, w) in enumerate(sizes.tolist()):
        images[i, :, :h, :w] = torch.rand(2, h, w, generator=g) + 1
    flip = torch.tensor([True, False, True])
    out = hflip_valid(images, sizes, flip)
    assert torch.equal(hflip_valid(out, sizes, flip), images)  # an involution
    assert torch.equal(out[1], images[1])
    for i in (0, 2):
        h, w = sizes[i].tolist()
        assert torch.equal(out[i, :, :h, :w], images[i, :, :h, :w].flip(-1))  # mirrored inside the valid width
        assert not out[i, :, :, w:].any()  # padding stays on the right
        box = torch.tensor([[1.0, 0.0, 3.0, float(h)]])
        fb = hflip_boxes(box, w)
        x1, x2 = int(fb[0, 0]), int(fb[0, 2])
        assert torch.equal(out[i, :, :h, x1:x2], images[i, :, :h, 1:3].flip(-1))  # the box's pixels moved with it
    assert torch.equal(hflip_boxes(hflip_boxes(box, 7), 7), box)


def _coco_folder(tmp_path, crowd: bool = True):
    (tmp_path / "annotations").mkdir()
    for split, names in (("train", ["a", "b", "c"]), ("val", ["d"])):
        (tmp_path / split).mkdir()
        images, anns = [], []
        for i, n in enumerate(names):
            Image.new("RGB", (40, 20), (i * 40, 0, 0)).save(tmp_path / split / f"{n}.png")
            images.append({"id": 10 + i, "file_name": f"{n}.png", "width": 40, "height": 20})
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "bbox": [2, 2, 10, 8], "category_id": 7,
                         "iscrowd": 0})
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "bbox": [20, 4, 12, 12], "category_id": 3,
                         "iscrowd": int(crowd and i == 0)})
        cats = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return tmp_path


def test_coco_format_maps_categories_in_id_order_and_leaves_crowds_out(tmp_path):
    root = _coco_folder(tmp_path)
    cfg = DataConfig(name="coco", root=str(root), batch_size=2)
    d = DetDataModule(cfg, DetectionConfig(size=40, test_split="val"))
    assert d.classes == ["cat", "dog"] and len(d.train) == 3 and len(d.test) == 1
    assert d.train.labels[0].tolist() == [2]  # the crowd cat of image a is left out
    assert d.train.labels[1].tolist() == [2, 1] and d.train.boxes[1].tolist() == [[2, 2, 12, 10], [20, 4, 32, 16]]
    assert d.presence.tolist() == [[False, True], [True, True], [True, True]]
    with pytest.raises(DataError, match=r"instances_nope\.json"):
        DetDataModule(cfg, DetectionConfig(size=40, test_split="nope"))


def test_dataset_errors_say_what_to_do(tmp_path, pennfudan_root):
    with pytest.raises(DataError, match=r"data\.root is required"):
        DetDataModule(DataConfig(name="pennfudan"))
    with pytest.raises(DataError, match=r"unknown detection dataset 'penfudan'.*pennfudan"):
        DetDataModule(DataConfig(name="penfudan", root=str(tmp_path)))
    with pytest.raises(DataError, match="'train' and 'test'"):
        DetDataModule(_pf_config(pennfudan_root), DetectionConfig(size=96, test_split="val"))
    with pytest.raises(DataError, match="both name a validation split"):
        DetDataModule(_pf_config(pennfudan_root, val_fraction=0.2), DetectionConfig(size=96, val_split="test"))
    with pytest.raises(DataError, match="train_subset=500 exceeds the 120"):
        DetDataModule(_pf_config(pennfudan_root, train_subset=500), SMALL)


# --------------------------------------------------------------------------------------------- distillation
def test_pool_boxes_golden_values():
    ln3 = math.log(3.0)
    logits = torch.tensor([[0.0, ln3], [0.0, 0.0], [0.0, -ln3]])
    gt = torch.tensor([0, 0, 1])
    q, p1, has = pool_boxes(logits, gt, 3, 1.0, "softmax")
    assert torch.allclose(q[0], torch.tensor([0.375, 0.625]))  # mean of (.25, .75) and (.5, .5)
    assert torch.allclose(q[1], torch.tensor([0.75, 0.25])) and has.tolist() == [True, True, False]
    assert torch.equal(q, p1)
    qT, _, _ = pool_boxes(logits, gt, 3, 2.0, "softmax")  # temperature softens: row 1 = softmax((0, -ln3/2))
    assert torch.allclose(qT[1], torch.tensor([math.sqrt(3), 1.0]) / (1 + math.sqrt(3)))
    # sigmoid heads drop the background column; bernoulli = per-class sigmoids, sigmoid_softmax = softmax over K
    z = torch.tensor([[5.0, 0.0, ln3]])
    qb, _, _ = pool_boxes(z, torch.tensor([0]), 1, 1.0, "bernoulli")
    assert torch.allclose(qb, torch.tensor([[0.5, 0.75]]))
    qs, _, _ = pool_boxes(z, torch.tensor([0]), 1, 1.0, "sigmoid_softmax")
    assert torch.allclose(qs, torch.tensor([[0.25, 0.75]]))
    # max_iou: each box takes its positive of highest IoU (ties averaged)
    qm, _, has = pool_boxes(logits, gt, 3, 1.0, "softmax", iou=torch.tensor([0.6, 0.9, 0.7]))
    assert torch.allclose(qm[0], torch.tensor([0.5, 0.5])) and torch.allclose(qm[1], torch.tensor([0.75, 0.25]))
    qt, _, _ = pool_boxes(logits, gt, 3, 1.0, "softmax", iou=torch.tensor([0.8, 0.8, 0.7]))
    assert torch.allclose(qt[0], torch.tensor([0.375, 0.625])) and has.tolist() == [True, True, False]


def test_box_kl_golden_values_and_zero_on_equal_rows():
    t, s = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.25, 0.75]])
    assert torch.allclose(box_kl(t, s, "softmax"), torch.tensor([0.5 * math.log(2) + 0.5 * math.log(2 / 3)]))
    tb, sb = torch.tensor([[0.5]]), torch.tensor([[0.25]])
    assert torch.allclose(box_kl(tb, sb, "bernoulli"), torch.tensor([0.5 * math.log(2) + 0.5 * math.log(2 / 3)]))
    assert torch.allclose(box_kl(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.0]]), "bernoulli"),
                          torch.zeros(1))
    g = torch.Generator().manual_seed(0)
    p = torch.rand(5, 4, generator=g)
    assert torch.allclose(box_kl(p.softmax(1), p.softmax(1), "softmax"), torch.zeros(5), atol=1e-7)
    assert (box_kl(p.softmax(1), p.flip(1).softmax(1), "softmax") > 0).all()


@pytest.mark.parametrize("seed", range(5))
def test_matching_pairs_same_class_boxes_one_to_one(seed):
    g = torch.Generator().manual_seed(seed)
    la, lb = torch.randint(1, 4, (6,), generator=g), torch.randint(1, 4, (4,), generator=g)
    ia, ib = match_boxes(la, lb, g)
    assert torch.equal(la[ia], lb[ib])  # matched pairs are always of the same class
    assert len(set(ia.tolist())) == len(ia) and len(set(ib.tolist())) == len(ib)  # one-to-one
    expected = sum(min(int((la == c).sum()), int((lb == c).sum())) for c in range(1, 4))
    assert len(ia) == expected


def test_matched_box_kd_teacher_is_the_more_confident_box_and_gets_no_gradient():
    logits = torch.tensor([[0.0, 2.0], [0.0, 0.5], [1.0, 0.0]], requires_grad=True)
    q, p1, _ = pool_boxes(logits, torch.arange(3), 3, 2.0, "softmax")
    labels = torch.tensor([1, 1, 1])
    loss, first_teaches = matched_box_kd(q, p1, labels, torch.tensor([1]), torch.tensor([0]), 2.0, "softmax")
    assert float(first_teaches) == 0.0  # box 0 is more confident in class 1: it teaches box 1
    expected = 4 * box_kl(q[0:1].detach(), q[1:2], "softmax")
    assert torch.allclose(loss, expected[0])
    loss.backward()
    assert torch.equal(logits.grad[0], torch.zeros(2)) and logits.grad[1].abs().sum() > 0
    # normalised like the classification loss: box 1 (the student) has 3 positives, the loss averages over 64 terms
    scaled, _ = matched_box_kd(q, p1, labels, torch.tensor([1]), torch.tensor([0]), 2.0, "softmax",
                               positives=torch.tensor([2, 3, 1]), terms=64)
    assert torch.allclose(scaled, expected[0] * 3 / 64)
    assert not logits.grad[2].any()  # unmatched boxes take no part
    zero, _ = matched_box_kd(q, p1, labels, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                             2.0, "softmax")
    assert float(zero.detach()) == 0.0


# ----------------------------------------------------------------------------------------------- evaluator
def test_coco_evaluator_scores_perfect_shifted_and_missing_detections():
    gt = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0]]), "labels": torch.tensor([1]), "image_id": torch.tensor(0)},
          {"boxes": torch.tensor([[0.0, 0.0, 30.0, 20.0]]), "labels": torch.tensor([2]), "image_id": torch.tensor(1)}]
    perfect = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.tensor([0.9])} for t in gt]
    ev = CocoEvaluator(["a", "b"])
    ev.update(perfect, gt)
    m = ev.compute()
    assert m["map"] == pytest.approx(100) and m["ap50"] == pytest.approx(100) and m["ap_b"] == pytest.approx(100)
    # IoU 0.6 with the ground truth: a hit at 0.5, a miss at 0.75
    shifted = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 34.0]]), "labels": torch.tensor([1]),
                "scores": torch.tensor([0.9])}]
    ev = CocoEvaluator(["a", "b"])
    ev.update(shifted, gt[:1])
    m = ev.compute()
    assert m["ap50"] == pytest.approx(100) and m["ap75"] == 0.0 and m["n"] == 1
    empty = CocoEvaluator(["a", "b"])
    empty.update([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                   "scores": torch.zeros(0)}], gt[:1])
    assert empty.compute()["map"] == 0.0


# ------------------------------------------------------------------------------------------------ detectors
@pytest.mark.parametrize("name", ["fasterrcnn_resnet18_fpn", "retinanet_resnet18_fpn", "fcos_resnet18_fpn"])
def test_detectors_return_positives_assigned_to_their_boxes(name):
    torch.manual_seed(0)
    model = build_detector(name, 2, 64).train()
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 60.0], [30.0, 10.0, 60.0, 50.0]]),
                "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[10.0, 8.0, 50.0, 56.0]]), "labels": torch.tensor([2])}]
    seen = {}
    if name.startswith("fasterrcnn"):  # the box classifier's rows: the RoIs its loss averages over
        model.net.roi_heads.box_predictor.register_forward_hook(lambda m, i, o: seen.update(rois=o[0].shape[0]))
    out = model(torch.randn(2, 3, 64, 64), targets)
    assert out["softmax"] == name.startswith("fasterrcnn")
    assert out["logits"].shape == (len(out["gt"]), 3)
    assert set(out["gt"].tolist()) <= {0, 1, 2} and all(torch.isfinite(v) for v in out["losses"].values())
    assert out["iou"].shape == out["gt"].shape and (out["iou"] <= 1 + 1e-6).all()
    # the classification loss's normaliser: every sampled RoI (Faster R-CNN), or the foreground anchors
    assert out["cls_terms"] == (seen["rois"] if out["softmax"] else len(out["gt"]))
    if not name.startswith("fcos"):  # foreground means IoU >= 0.5 with the assigned box (FCOS assigns points)
        assert (out["iou"] >= 0.5).all()
    if out["softmax"]:  # Faster R-CNN adds every box to its proposals: each box has a positive of IoU 1
        assert set(out["gt"][out["iou"] > 1 - 1e-6].tolist()) == {0, 1, 2}
    model.eval()
    det = model(torch.randn(2, 3, 64, 64))
    assert len(det) == 2 and {"boxes", "scores", "labels"} <= set(det[0])
    with pytest.raises(ValueError, match="unknown detection model"):
        build_detector("fasterrcnn_resnet81_fpn", 2, 64)


# ---------------------------------------------------------------------------------------------------- IPS
def _pair_batch(xa, xb, ta, tb, seed=3):
    b = Batch(xb, tb, torch.arange(len(tb)))
    a = Batch(xa, ta, torch.arange(len(ta)), partner=b, seed=seed, global_size=len(ta))
    return a


def _ips(**kw) -> DetectionIPS:
    return DetectionIPS(DetIPSOptions(**kw), MethodContext(1, 10, 1, 1, torch.device("cpu")))


def _targets(boxes, size=(64, 64)):
    return [{"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4),
             "labels": torch.ones(len(b), dtype=torch.long), "size": torch.tensor(size)} for b in boxes]


@pytest.mark.parametrize("policy", ["object_preserving", "background_only", "free"])
def test_ips_swap_conserves_pixels_and_moves_boxes_with_their_cells(policy):
    g = torch.Generator().manual_seed(1)
    xa, xb = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    ta = _targets([[[4, 4, 20, 40]], [[30, 30, 60, 62], [2, 2, 12, 12]]])
    tb = _targets([[[40, 10, 60, 30]], [[8, 40, 28, 60]]])
    ips = _ips(box_policy=policy, ratio_low=0.5, ratio_high=0.5)
    sa, sb, ta2, tb2, mask = ips.swap(_pair_batch(xa, xb, ta, tb))
    assert torch.equal(sa + sb, xa + xb) and mask.any()  # conservation over each pair
    assert torch.equal(torch.where(mask, xb, xa), sa)
    for i in range(2):
        if policy != "free":  # no box is cut or dropped
            assert len(ta2[i]["boxes"]) + len(tb2[i]["boxes"]) == len(ta[i]["boxes"]) + len(tb[i]["boxes"])
        for t in (ta2[i], tb2[i]):
            for x1, y1, x2, y2 in t["boxes"].long().tolist():
                region = mask[i, 0, y1:y2, x1:x2]
                assert policy == "free" or bool(region.all()) or not bool(region.any())
    # the same step seed gives the same swap (resume), another seed another one
    again = ips.swap(_pair_batch(xa, xb, ta, tb))
    assert torch.equal(again[4], mask)
    assert not torch.equal(ips.swap(_pair_batch(xa, xb, ta, tb, seed=4))[4], mask)


def test_ips_swap_of_a_rank_slice_equals_those_rows_of_the_global_batch():
    g = torch.Generator().manual_seed(2)
    xa, xb = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    ta = _targets([[[4, 4, 20, 40]], [[30, 30, 60, 62]]])
    tb = _targets([[[40, 10, 60, 30]], [[8, 40, 28, 60]]])
    ips = _ips(box_policy="free")
    whole = ips.swap(_pair_batch(xa, xb, ta, tb))
    second = _pair_batch(xa[1:], xb[1:], ta[1:], tb[1:])
    second.global_size, second.rows = 2, slice(1, 2)  # rank 1 of 2
    part = ips.swap(second)
    assert torch.equal(part[0], whole[0][1:]) and torch.equal(part[4], whole[4][1:])
    assert torch.equal(part[2][0]["boxes"], whole[2][1]["boxes"])


@pytest.mark.parametrize("pool", ["mean", "max_iou"])
def test_ips_on_an_identical_pair_has_zero_distillation(pool):
    # RetinaNet assigns anchors deterministically, so the one box gets the same pooled distribution twice
    torch.manual_seed(0)
    model = build_detector("retinanet_resnet18_fpn", 1, 64).train()
    x = torch.randn(2, 3, 64, 64)
    t = _targets([[[4, 4, 40, 60]], [[10, 8, 50, 56]]])
    ips = DetectionIPS(DetIPSOptions(pool=pool), MethodContext(1, 10, 1, 1, torch.device("cpu")))
    out = ips.training_step(model, _pair_batch(x, x.clone(), t, [dict(u) for u in t]), 1)
    assert float(out.stats["matched_boxes"]) == 1.0
    assert float(out.losses["kd"].detach()) == pytest.approx(0.0, abs=1e-6)
    assert {"classification", "bbox_regression", "kd"} == set(out.losses)


# ------------------------------------------------------------------------------------------- end to end
def _e2e_config(tmp_path, root, method, model="fasterrcnn_mobilenet_v3_large_fpn"):
    return {"task": "detection", "seed": 0, "out": str(tmp_path),
            "data": {"name": "pennfudan", "root": str(root), "batch_size": 2, "eval_batch_size": 8,
                     "train_subset": 6, "val_fraction": 0.34}, "detection": {"size": 96, "test_count": 50},
            "model": {"name": model, "kwargs": {"box_batch_size_per_image": 32}},
            "method": method, "optim": {"name": "sgd", "lr": 0.01},
            "train": {"epochs": 2, "device": "cpu", "tensorboard": False, "progress": False}}


@pytest.mark.slow
@pytest.mark.parametrize("method", [{"name": "ce"}, {"name": "ips", "box_policy": "free"}])
def test_detection_trains_resumes_exactly_and_evaluates(tmp_path, pennfudan_root, method):
    cfg = _e2e_config(tmp_path / "full", pennfudan_root, method)
    full = train(cfg, log=lambda _: None)
    assert full.task == "detection" and full.metrics == ["map", "ap50", "ap75"]
    assert 0.0 <= full.last["test_map"] <= 100.0 and "ap_person" in full.last_per_class
    short = _e2e_config(tmp_path / "split", pennfudan_root, method)
    short["train"]["epochs"] = 1
    train(short, log=lambda _: None)
    resumed = train(_e2e_config(tmp_path / "split", pennfudan_root, method), resume=True, log=lambda _: None)
    assert resumed.last == full.last  # 1 epoch + resume = 2 epochs uninterrupted
    run = tmp_path / "full" / resolve_config(cfg).run_name()
    again = evaluate(run / "last.pt")
    assert again["map"] == pytest.approx(full.last["test_map"])
    report = write_report(tmp_path / "full", tmp_path / "report")
    assert "mAP %" in report.read_text()
    with (tmp_path / "report" / "runs.csv").open() as fh:
        row = next(csv.DictReader(fh))
    assert float(row["test_map_last"]) == pytest.approx(full.last["test_map"])


def test_detection_config_errors_name_the_task(tmp_path):
    with pytest.raises(KeyError, match=r"unknown method 'cskd'.*task: detection, whose methods are ce, ips"):
        train(_e2e_config(tmp_path, tmp_path, {"name": "cskd"}), log=lambda _: None)
    with pytest.raises(ConfigError, match="sigmoid_kd"):
        train(_e2e_config(tmp_path, tmp_path, {"name": "ips", "sigmoid_kd": "nope"}), log=lambda _: None)
