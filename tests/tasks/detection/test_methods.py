"""Detection methods: matched-proposal distillation (golden values, matching, no gradient to the teacher box) and the
IPS swap of images with their boxes."""

import math

import pytest
import torch

from selfdistill.batch import Batch
from selfdistill.methods.base import MethodContext
from selfdistill.tasks.detection import (
    DetectionIPS,
    box_kl,
    build_detector,
    match_boxes,
    matched_box_kd,
    pool_boxes,
)
from selfdistill.tasks.detection.methods import DetIPSOptions


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
