"""Hinton KD: the loss by hand, its invariants, no gradient to the teacher, end to end with a trained teacher."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfdistill.losses import kd_loss
from tests.helpers import Fixed, id_batch, make_method, train_with_teacher

OFFICIAL = "https://github.com/megvii-research/mdistiller/tree/a08d46f10d6102bd6e3f258ca5ac880b020ea259"
"""The code whose CIFAR KD values the defaults below follow (``mdistiller/distillers/KD.py``: T²·KL batch mean;
``mdistiller/engine/cfg.py``: CE weight 0.1, KD weight 0.9)."""


def test_kd_golden_value():
    # teacher [0, 0] → p = [½, ½]; student [ln 3, 0] → q = [¾, ¼]
    t, s = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    assert float(kd_loss(t, s, T=1.0)) == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    q = math.sqrt(3) / (math.sqrt(3) + 1)  # T = 2: softmax([ln 3 / 2, 0])
    expected = 4 * 0.5 * (math.log(0.5 / q) + math.log(0.5 / (1 - q)))
    assert float(kd_loss(t, s, T=2.0)) == pytest.approx(expected, abs=1e-6)


def test_kd_method_loss_and_no_gradient_to_the_teacher():
    """The defaults' weights 0.1·CE + 0.9·KD_T of :data:`OFFICIAL`'s CIFAR configuration; the teacher gets no
    gradient."""
    table_t = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 0.0]])
    m = make_method("kd", teacher=table_t, T=2.0)
    student = Fixed(torch.tensor([[math.log(3.0), 0.0, 0.0], [0.0, 0.0, 1.0]]))
    out = m.training_step(student, id_batch([0, 1], [0, 1]), 1)
    zs = student.table.detach()
    ce = float(F.cross_entropy(zs, torch.tensor([0, 1])))
    assert float(out.losses["ce"].detach()) == pytest.approx(0.1 * ce, abs=1e-6)
    assert float(out.losses["kd"].detach()) == pytest.approx(0.9 * float(kd_loss(table_t, zs, 2.0)), abs=1e-6)
    sum(out.losses.values()).backward()
    assert m.teacher.model.table.grad is None and student.table.grad.abs().sum() > 0


def test_kd_invariants():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 7, generator=g)
    assert float(kd_loss(z, z, T=3.0)) == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(5, 7, generator=g)
    shifted = kd_loss(z + torch.randn(5, 1, generator=g), s + 4.0, T=3.0)
    assert float(shifted) == pytest.approx(float(kd_loss(z, s, T=3.0)), abs=1e-5)
    assert float(kd_loss(z, s, 3.0, "elementwise_mean")) == pytest.approx(float(kd_loss(z, s, 3.0)) / 7, rel=1e-6)


@pytest.mark.parametrize("method", [{"name": "kd"}], ids=["kd"])
def test_end_to_end_with_a_trained_teacher(tmp_path, teacher_ckpt, method):
    train_with_teacher(tmp_path, teacher_ckpt, method)
