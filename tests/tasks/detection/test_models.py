"""Detectors: the positives they return are assigned to their boxes, for each detector family."""

import pytest
import torch

from selfdistill.tasks.detection import (
    build_detector,
)


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
