"""Feature taps: read-only hooks on named modules, their shapes, removal and name suggestions; the classifier."""

import pytest
import torch

from selfdistill.models import FeatureTaps, build_model, feature_names
from selfdistill.models.features import last_linear


def test_feature_taps_do_not_change_the_output():
    torch.manual_seed(0)
    model = build_model("resnet20", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    plain = model(x)
    assert "layer2" in feature_names(model)
    taps = FeatureTaps(model, ["layer1", "layer2", "layer3"])
    tapped = model(x)
    assert torch.equal(plain, tapped)
    assert taps.features["layer1"].shape == (2, 16, 32, 32)
    assert taps.features["layer3"].shape == (2, 64, 8, 8)
    taps.remove()
    taps.features.clear()
    model(x)
    assert taps.features == {}
    with pytest.raises(KeyError, match="Did you mean 'layer1'"):
        FeatureTaps(model, ["layer_1"])


def test_last_linear_is_the_classifier():
    model = build_model("resnet8", 10)
    assert last_linear(model) is model.fc
    with pytest.raises(ValueError, match="no linear layer"):
        last_linear(torch.nn.Conv2d(3, 3, 1))
