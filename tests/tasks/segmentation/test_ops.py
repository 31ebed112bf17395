"""Segmentation ops: class presence and partners sharing a class, the joint image and label swap, the dense losses
(golden values, invariants, no gradient to the teacher), the confusion-matrix metrics, the CamVid reader on the real
data."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfdistill.losses import kl_rows
from selfdistill.tasks.segmentation import (
    ConfusionMatrix,
    class_presence,
    class_region_loss,
    draw_partners,
    load_segmentation_folder,
    pixel_agree_loss,
    swap_pair,
)

IGNORE = 255


def _maps():
    y = torch.zeros(3, 8, 8, dtype=torch.long)
    y[0, :4] = 1  # 32 px of class 1
    y[1, :, :2] = 2  # 16 px of class 2
    y[1, 4:, 4:] = 1  # 16 px of class 1
    y[2, 0, 0] = IGNORE
    return y


def test_class_presence_counts_pixels_and_skips_background_and_ignore():
    p = class_presence(_maps(), 3, min_pixels=16, ignore_index=IGNORE)
    assert p.tolist() == [[False, True, False], [False, True, True], [False, False, False]]
    assert class_presence(_maps(), 3, min_pixels=17).tolist()[1] == [False, False, False]
    assert class_presence(_maps(), 3, min_pixels=16, exclude_background=False)[2, 0]


def test_partners_share_a_present_class():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (40, 6, 6), generator=g)
    labels[::3] = 0  # some images hold background only
    presence = class_presence(labels, 5, min_pixels=3)
    anchors = torch.arange(40)
    partners = draw_partners(anchors, presence, g)
    for a, b in zip(anchors.tolist(), partners.tolist(), strict=True):
        if presence[a].any():
            assert (presence[a] & presence[b]).any()
    assert partners.min() >= 0 and partners.max() < 40


def test_swap_conserves_pixels_and_labels_and_moves_them_together():
    g = torch.Generator().manual_seed(1)
    xa, xb = torch.rand(4, 3, 16, 16, generator=g), torch.rand(4, 3, 16, 16, generator=g)
    ya, yb = torch.randint(0, 4, (4, 16, 16), generator=g), torch.randint(0, 4, (4, 16, 16), generator=g)
    ya[0, 0, 0] = IGNORE
    xa_s, xb_s, ya_s, yb_s, mask = swap_pair(xa, xb, ya, yb, 4, (0.2, 0.8), g)
    torch.testing.assert_close(xa_s + xb_s, xa + xb)
    assert torch.equal(torch.sort(torch.stack([ya_s, yb_s]), 0).values, torch.sort(torch.stack([ya, yb]), 0).values)
    m = mask[:, 0]
    assert torch.equal(ya_s[m], yb[m]) and torch.equal(ya_s[~m], ya[~m])  # labels follow their pixels
    assert torch.equal(xa_s.permute(0, 2, 3, 1)[m], xb.permute(0, 2, 3, 1)[m])


def test_pixel_agree_golden_and_invariants():
    # one image pair, 2 classes, 1×2 pixels: pixel 0 labelled 0 on both sides (in Ω), pixel 1 disagrees
    za = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])  # p_a(0) = σ([2, 0])
    zb = torch.tensor([[[[0.0, 0.0]], [[0.0, 1.0]]]])  # p_b(0) = ½
    ya = torch.tensor([[[0, 1]]])
    yb = torch.tensor([[[0, 0]]])
    loss, count = pixel_agree_loss(za, zb, ya, yb, T=1.0)
    assert int(count) == 1
    p = torch.softmax(torch.tensor([2.0, 0.0]), 0)  # a is more confident in class 0: a teaches b
    expected = float((p * (p.log() - math.log(0.5))).sum())
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    # Ω holds only same-label pixels; identical logits give 0; an empty Ω gives 0
    same, _ = pixel_agree_loss(za, za.clone(), ya, yb, T=4.0)
    assert float(same) == pytest.approx(0.0, abs=1e-5)
    empty, n = pixel_agree_loss(za, zb, ya, torch.tensor([[[1, 0]]]), T=4.0)
    assert int(n) == 0 and float(empty) == 0.0
    ignored, n = pixel_agree_loss(za, zb, torch.full_like(ya, IGNORE), torch.full_like(yb, IGNORE))
    assert int(n) == 0 and float(ignored) == 0.0


def test_pixel_agree_teacher_gets_no_gradient():
    za = torch.tensor([[[[3.0]], [[0.0]]]], requires_grad=True)
    zb = torch.tensor([[[[0.0]], [[0.0]]]], requires_grad=True)
    y = torch.tensor([[[0]]])
    pixel_agree_loss(za, zb, y, y, T=2.0)[0].backward()
    assert float(za.grad.abs().sum()) == 0 and float(zb.grad.abs().sum()) > 0


def test_class_region_golden_and_identical_pair():
    za = torch.zeros(1, 2, 2, 2)
    za[0, 0] = 2.0  # every pixel of a predicts class 0 with σ([2, 0])
    zb = torch.zeros(1, 2, 2, 2)  # b is uniform
    y = torch.zeros(1, 2, 2, dtype=torch.long)
    loss = class_region_loss(za, zb, y, y, T=1.0, min_pixels=4)
    p = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    expected = float(kl_rows(p[None], torch.log(torch.tensor([[0.5, 0.5]]))))
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert float(class_region_loss(za, za, y, y, T=4.0, min_pixels=4)) == pytest.approx(0.0, abs=1e-5)
    assert float(class_region_loss(za, zb, y, y, min_pixels=5)) == 0.0  # the region is too small


def test_confusion_matrix_metrics_by_hand():
    cm = ConfusionMatrix(3, ignore_index=IGNORE)
    labels = torch.tensor([[[0, 0, 1, IGNORE]]])
    pred = torch.tensor([[[0, 1, 1, 2]]])
    cm.update(F.one_hot(pred, 3).permute(0, 3, 1, 2).float(), labels)
    out = cm.compute()
    # class 0: tp 1, union 2 → 50 %; class 1: tp 1, union 2 → 50 %; class 2: absent from labels and predictions
    assert out["iou_0"] == pytest.approx(50.0) and out["iou_1"] == pytest.approx(50.0) and math.isnan(out["iou_2"])
    assert out["miou"] == pytest.approx(50.0) and out["pixel_acc"] == pytest.approx(100 * 2 / 3)


def test_camvid_loader_on_the_real_data(camvid_root):
    images, labels, names = load_segmentation_folder(camvid_root, "val", size=(90, 120))
    assert images.shape == (101, 3, 90, 120) and images.dtype == torch.uint8
    assert labels.shape == (101, 90, 120) and len(names) == 101
    values = set(labels.unique().tolist())
    assert values <= set(range(11)) | {IGNORE} and IGNORE in values and 3 in values  # void → ignore; road present
    presence = class_presence(labels, 11, min_pixels=64, exclude_background=False)
    assert presence[:, 3].float().mean() > 0.9  # nearly every street scene shows road
