import math

import pytest
import torch

from selfdistill import train
from selfdistill.data import Batch
from selfdistill.methods import MethodContext, build_method
from selfdistill.models import build_model
from selfdistill.run import resolve_config
from tests.helpers import Fixed, synthetic_config

OFFICIAL = "https://github.com/alinlab/cs-kd/tree/b447f250405932501cb28db0dc09eadeab526b80"
"""The official code (``train.py``: ``KDLoss``, the partner batch forwarded on its own under ``no_grad``) the
``official`` preset's loss and partner forward below were checked against."""


def _method(**opts):
    spec = resolve_config({"method": {"name": "cskd", **opts}}).method
    return build_method(spec, MethodContext(3, 30, 1, 1, torch.device("cpu")))


def _batch(ids_a, ids_p, y):
    xa = torch.tensor(ids_a, dtype=torch.float32)[:, None, None, None].expand(-1, 1, 2, 2)
    xp = torch.tensor(ids_p, dtype=torch.float32)[:, None, None, None].expand(-1, 1, 2, 2)
    b = Batch(xa, torch.tensor(y), torch.arange(len(y)), [xa])
    b.partner = Batch(xp, torch.tensor(y), torch.arange(len(y)), [xp])
    return b


@pytest.mark.parametrize("preset", ["official", "clean"])
def test_golden_loss_and_gradients(preset):
    """``KDLoss`` of :data:`OFFICIAL`: λ·T²·KL(σ_T(partner) ‖ σ_T(anchor)) averaged over the anchors, the partner side
    detached, plus CE on the anchors."""
    # anchor logits [0, ln 3] (p = [1/4, 3/4]), partner logits [0, 0] (p = [1/2, 1/2]), label 1, T = 1
    model = Fixed(torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]))
    out = _method(preset=preset, T=1.0, lambda_cls=2.0).training_step(model, _batch([0], [1], [1]), 1)
    assert out.losses["ce"].item() == pytest.approx(-math.log(0.75), rel=1e-6)
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert out.losses["cls"].item() == pytest.approx(2.0 * kl, rel=1e-5)
    sum(out.losses.values()).backward()
    assert torch.count_nonzero(model.table.grad[1]) == 0  # no gradient through the partner prediction
    assert torch.count_nonzero(model.table.grad[0]) == 2


def _self_pair(train: bool):
    """A ResNet-8 and a batch whose partners are copies of its anchors."""
    torch.manual_seed(0)
    model = build_model("resnet8", 3).train(train)
    x = torch.randn(4, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0])
    b = Batch(x, y, torch.arange(4), [x])
    b.partner = Batch(x.clone(), y, torch.arange(4), [x])
    return model, b


def test_presets_and_self_pair():
    assert _method(preset="official").opt.partner_forward == "separate_no_grad"
    assert _method(preset="clean").opt.partner_forward == "joint_detached"
    model, b = _self_pair(train=False)
    assert _method(preset="clean").training_step(model, b, 1).losses["cls"].item() == pytest.approx(0, abs=1e-6)


def test_official_partner_forward_uses_its_own_batch_statistics():
    """:data:`OFFICIAL` forwards the partner batch on its own under ``no_grad``: its BatchNorm statistics are its own
    batch's, unlike the clean form's joint forward."""
    model, b = _self_pair(train=True)
    x, y = b.x, b.y
    # identical anchor and partner batches see identical BN statistics in both forms: KL 0
    assert _method(preset="official").training_step(model, b, 1).losses["cls"].item() == pytest.approx(0, abs=1e-5)
    b.partner = Batch(torch.cat([x[:2], torch.randn(2, 3, 16, 16)]), y, torch.arange(4), [x])
    joint = _method(preset="clean").training_step(model, b, 1).losses["cls"].item()
    separate = _method(preset="official").training_step(model, b, 1).losses["cls"].item()
    assert joint != pytest.approx(separate, rel=1e-3)  # BN statistics differ between the two forms


def test_cskd_trains_end_to_end(tmp_path):
    s = train(synthetic_config(tmp_path, method={"name": "cskd"}, train={"epochs": 2}))
    assert s.last["test_top1"] > 30 and s.passes_per_step == 1.0
