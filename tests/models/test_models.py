"""The model zoo: every model builds and trains, parameter counts, small inputs, external models by name, name
suggestions."""

import pytest
import torch

from selfdistill.models import build_model, list_models
from selfdistill.registry import UnknownNameError

ZOO = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
       "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "wrn_28_10", "vgg8", "vgg11", "vgg13", "vgg16",
       "vgg19", "mobilenetv2", "shufflenetv1", "shufflenetv2", "resnet18_cifar", "resnet34_cifar",
       "resnet50_cifar", "preact_resnet18_cifar"]


def test_zoo_is_complete():
    assert sorted(ZOO) == list_models()


@pytest.mark.parametrize("name", ZOO)
def test_zoo_forward_and_backward(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_parameter_counts_match_the_literature():
    # ResNet-20 (0.27 M) and ResNet-56 (0.85 M) as in He et al. / RepDistiller tables (100 classes)
    count = lambda n: sum(p.numel() for p in build_model(n, 100).parameters()) / 1e6  # noqa: E731
    assert count("resnet20") == pytest.approx(0.278, abs=0.01)
    assert count("resnet56") == pytest.approx(0.861, abs=0.01)
    assert count("wrn_40_2") == pytest.approx(2.26, abs=0.03)
    assert count("resnet32x4") == pytest.approx(7.43, abs=0.05)


def test_single_channel_and_small_inputs():
    for name in ("resnet8", "vgg8", "mobilenetv2"):
        assert build_model(name, 10, in_chans=1)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_external_models_by_name():
    tv = build_model("torchvision:resnet18", 5)
    assert tv(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    tm = build_model("timm:resnet18", 5, in_chans=1)
    assert tm(torch.randn(2, 1, 32, 32)).shape == (2, 5)


def test_unknown_model_suggests():
    with pytest.raises(UnknownNameError, match="Did you mean 'resnet20'"):
        build_model("resnt20", 10)
