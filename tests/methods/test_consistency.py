"""Augmentation consistency: the symmetric KL, one-way MSE and JSD forms by hand and their invariants, end to end."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfdistill.data import Batch
from selfdistill.losses import kd_loss
from selfdistill.methods.consistency import jsd
from tests.helpers import Fixed, id_batch, id_images, make_method, train_one_epoch

OFFICIAL = "https://github.com/winycg/Self-KD-Lib/tree/ede3062d1193626da2bc8a1ceba535d84fb0a08c"
"""The DDGSD code the ``official`` preset follows (``methods/ddsgd.py``, ``DistillKL`` in ``utils.py``): each view's
KL towards the other, detached, batch mean × T² at T = 4, as below. That code also halves the mean CE over both
views and adds 5e-4·(mean f¹ − mean f²)², which the library does not."""


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


@pytest.mark.parametrize("options", [{}, {"preset": "augmix"}, {"preset": "weak_strong"}],
                         ids=["defaults", "augmix", "weak_strong"])
def test_one_epoch_end_to_end(tmp_path, options):
    train_one_epoch(tmp_path, {"name": "consistency", **options})
