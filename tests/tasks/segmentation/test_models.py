"""Segmentation models: logit maps of the input size; a backbone initialised from a classification run."""

from __future__ import annotations

import pytest
import torch

from selfdistill.engine.checkpoint import CheckpointError
from selfdistill.tasks.segmentation import (
    build_segmentation_model,
    init_backbone,
)


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
