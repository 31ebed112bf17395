"""Augmentation consistency: the symmetric KL, one-way MSE and JSD forms by hand and their invariants, end to end."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfdistill.data import Batch
from selfdistill.losses import kd_loss
from selfdistill.methods import MethodContext, build_method
from selfdistill.methods.consistency import jsd
from selfdistill.models import build_model
from selfdistill.run import resolve_config
from tests.helpers import Fixed, id_batch, id_images, make_method, train_one_epoch

OFFICIAL = "https://github.com/winycg/Self-KD-Lib/tree/ede3062d1193626da2bc8a1ceba535d84fb0a08c"
"""The DDGSD code the ``official`` preset reproduces (``methods/ddsgd.py`` lines 12-24, ``DistillKL`` in ``utils.py``
lines 101-112, ``main.py`` lines 235 and 312-313): each view's KL towards the other, detached, batch mean × T² at
T = 4; the CE averaged over both views and halved (``ce_scale: 0.5``); and 5e-4·(mean f¹ − mean f²)² on the pooled
features (the classifier's input, ``embedding=True``), each mean over all rows and channels (``feat_weight``)."""


def test_consistency_identical_views_give_zero_and_the_target_gets_no_gradient():
    m = make_method("consistency")
    table = torch.tensor([[1.0, 0.0, 2.0]])
    student = Fixed(table.clone())
    out = m.training_step(student, id_batch([0], [2], views=2), 1)
    assert out.losses["consistency"].item() == pytest.approx(0.0, abs=1e-6)
    z1 = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    z2 = torch.tensor([[0.0, 2.0, 0.0]], requires_grad=True)
    a = kd_loss(z2.detach(), z1, 4.0) + kd_loss(z1.detach(), z2, 4.0)
    b = kd_loss(z1.detach(), z2, 4.0) + kd_loss(z2.detach(), z1, 4.0)
    assert a.item() == pytest.approx(b.item())  # symmetric in view order


def test_symmetric_kl_loss_by_hand():
    """Two views with σ = [¼, ¾] and [½, ½] (label 1, T = 1): each teaches the other, KL(p‖q) + KL(q‖p) = ¼·ln 3,
    the two KL terms of DDGSD in :data:`OFFICIAL`."""
    m = make_method("consistency", T=1.0, lam=0.5)
    student = Fixed(torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]))
    batch = Batch(id_images([0]), torch.tensor([1]), torch.tensor([0]), [id_images([0]), id_images([1])])
    out = m.training_step(student, batch, 1)
    assert out.losses["ce"].item() == pytest.approx((math.log(4 / 3) + math.log(2.0)) / 2, rel=1e-6)
    assert out.losses["consistency"].item() == pytest.approx(0.5 * math.log(3.0) / 4, rel=1e-5)


def test_jsd_bounds():
    g = torch.Generator().manual_seed(2)
    z = [torch.randn(8, 5, generator=g) for _ in range(3)]
    v = float(jsd(z))
    assert 0 <= v <= math.log(3)
    assert float(jsd([z[0]] * 3)) == pytest.approx(0.0, abs=1e-6)
    sharp = [torch.eye(3)[i:i + 1] * 100 for i in range(3)]  # three disjoint one-hots reach log n
    assert float(jsd(sharp)) == pytest.approx(math.log(3), abs=1e-4)


def test_consistency_mse_form_by_hand():
    m = make_method("consistency", form="one_way", divergence="mse")
    table = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    student = Fixed(table)
    x = id_images([0])
    batch = Batch(x, torch.tensor([2]), torch.tensor([0]), [x, id_images([1])])
    out = m.training_step(student, batch, 1)
    expected = F.mse_loss(table[1].softmax(0), table[0].softmax(0))
    assert float(out.losses["consistency"].detach()) == pytest.approx(float(expected), abs=1e-7)


def _setup(model: nn.Module, **opts):
    spec = resolve_config({"method": {"name": "consistency", **opts}}).method
    m = build_method(spec, MethodContext(3, 8, 1, 1, torch.device("cpu")))
    m.setup(model)
    return m


def test_official_preset_by_hand():
    """The classifier reads the 4 pixels of a 2×2 image; zero weights give logits 0 (CE = ln 3 on each view, no KL).
    CE halved: ½·ln 3. Feature term: pixels all 1 against all 3, 5e-4·(1 − 3)² = 2e-3."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    nn.init.zeros_(model[1].weight)
    nn.init.zeros_(model[1].bias)
    m = _setup(model, preset="official")
    views = [torch.ones(2, 1, 2, 2), torch.full((2, 1, 2, 2), 3.0)]
    out = m.training_step(model, Batch(views[0], torch.tensor([0, 2]), torch.arange(2), views), 1)
    expected = {"ce": 0.5 * math.log(3), "consistency": 0.0, "feat": 2e-3}
    assert {k: float(v.detach()) for k, v in out.losses.items()} == pytest.approx(expected, rel=1e-6, abs=1e-7)


def _ddgsd_reference(logit, features, targets, T=4.0):
    """``DDGSD`` of :data:`OFFICIAL` (``ddsgd.py`` lines 16-22 with ``DistillKL``), re-implemented from reading it,
    on the logits and pooled features of the two views concatenated; its ``loss_div`` split into the KL and the
    feature parts."""
    b = len(logit) // 2

    def distill_kl(y_s, y_t):
        return F.kl_div(F.log_softmax(y_s / T, 1), F.softmax(y_t / T, 1), reduction="batchmean") * T**2

    loss_cls = F.cross_entropy(logit, torch.cat([targets, targets])) / 2
    loss_kl = distill_kl(logit[:b], logit[b:].detach()) + distill_kl(logit[b:], logit[:b].detach())
    loss_feat = 5e-4 * (features[:b].mean() - features[b:].mean()) ** 2
    return {"ce": loss_cls, "consistency": loss_kl, "feat": loss_feat}


def test_official_preset_matches_ddgsd():
    torch.manual_seed(0)
    model = build_model("resnet8", 3, 3)
    m = _setup(model, preset="official")
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(4, 3, 16, 16, generator=g), 4 * torch.randn(4, 3, 16, 16, generator=g) + 2]
    y = torch.tensor([0, 1, 2, 0])
    model.eval()  # the same outputs in the step and below
    out = m.training_step(model, Batch(views[0], y, torch.arange(4), views), 1)
    feats = {}
    model.fc.register_forward_pre_hook(lambda _m, args: feats.update(f=args[0]))
    logit = model(torch.cat(views))
    reference = {k: float(v.detach()) for k, v in _ddgsd_reference(logit, feats["f"], y).items()}
    assert {k: float(v.detach()) for k, v in out.losses.items()} == pytest.approx(reference, rel=1e-5)
    assert reference["feat"] > 1e-6


@pytest.mark.parametrize("options", [{}, {"preset": "augmix"}, {"preset": "weak_strong"}, {"preset": "official"}],
                         ids=["defaults", "augmix", "weak_strong", "official"])
def test_one_epoch_end_to_end(tmp_path, options):
    train_one_epoch(tmp_path, {"name": "consistency", **options})
