"""TF-KD: the virtual teacher's targets (official and clean), both losses by hand, end to end."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfdistill.methods.tfkd import virtual_targets
from tests.helpers import Fixed, id_batch, make_method, train_one_epoch, train_with_teacher

OFFICIAL = "https://github.com/yuanli2333/Teacher-free-Knowledge-Distillation/tree/d000ab378a409535a5f5f645b473e05e27529a02"
"""The official code the ``official`` values below were checked against (``my_loss_function.py``, the ResNet-18
CIFAR-100 ``params.json`` files)."""


def test_tfkd_virtual_targets_official_values_and_clean_form():
    """The official target is ``softmax(p^d / τ)`` of the probability vector (``loss_kd_regularization`` of
    :data:`OFFICIAL`, τ = ``reg_temperature`` 20): with K = 100, ``e^{0.99/20} / (e^{0.99/20} + 99·e^{0.01/99/20})``
    = 0.010502 on the label."""
    y = torch.tensor([3])
    q = virtual_targets(y, 100, 0.99, 20.0, "prob_softmax")
    assert float(q[0, 3]) == pytest.approx(0.010502, abs=5e-7)
    assert float(q[0, 0]) == pytest.approx(0.009995, abs=5e-7)
    c = virtual_targets(y, 100, 0.99, 20.0, "logit_softmax")
    assert float(c[0, 3]) == pytest.approx(0.01574, abs=5e-6) and float(c[0, 0]) == pytest.approx(0.009942, abs=5e-7)
    one = virtual_targets(y, 100, 0.99, 1.0, "logit_softmax")  # τ = 1: exactly p^d
    assert float(one[0, 3]) == pytest.approx(0.99, abs=1e-6)
    for t in (q, c):
        assert float(t.sum()) == pytest.approx(1.0, abs=1e-6) and int(t.argmax()) == 3


def test_tfkd_reg_official_loss_by_hand():
    """``loss_kd_regularization`` of :data:`OFFICIAL` with its ResNet-18 parameters (``reg_alpha`` 0.1, multiplier
    100, ``nn.KLDivLoss()`` averaging over B·K) on one row of 3 classes."""
    z = torch.tensor([[1.0, 0.0, -1.0]])
    m = make_method("tfkd_reg", preset="official")
    out = m.training_step(Fixed(z), id_batch([0], [0]), 1)
    q = F.softmax(torch.tensor([[0.99, 0.005, 0.005]]) / 20, 1)
    kl = (q * (q.log() - F.log_softmax(z, 1))).sum() / 3  # elementwise_mean over B·K = 3
    assert out.losses["reg"].item() == pytest.approx(0.1 * 100 * float(kl), rel=1e-5)
    assert out.losses["ce"].item() == pytest.approx(0.9 * float(F.cross_entropy(z, torch.tensor([0]))), rel=1e-6)


def test_tfkd_self_official_loss_by_hand():
    """``loss_kd_self`` of :data:`OFFICIAL` with its ResNet-18 parameters (α = 0.95, T = 6, multiplier 50,
    ``nn.KLDivLoss()`` averaging over B·K) on one row of 3 classes: a uniform teacher, a student whose logits at
    T = 6 are [ln 3, 0, 0]."""
    m = make_method("tfkd_self", teacher=torch.zeros(1, 3), preset="official")
    out = m.training_step(Fixed(torch.tensor([[6 * math.log(3.0), 0.0, 0.0]])), id_batch([0], [0]), 1)
    # σ_6(student) = [3/5, 1/5, 1/5]: KL(uniform ‖ it) = ⅓·ln(5/9) + ⅔·ln(5/3) = ⅓·ln(125/81); ÷ 3 × 6² × 50 × 0.95
    assert out.losses["kd"].item() == pytest.approx(190 * math.log(125 / 81), rel=1e-5)
    # σ(student)_0 = 3⁶ / (3⁶ + 2)
    assert out.losses["ce"].item() == pytest.approx(0.05 * math.log(731 / 729), abs=1e-7)


@pytest.mark.parametrize("preset", ["official", "clean"])
def test_one_epoch_end_to_end(tmp_path, preset):
    train_one_epoch(tmp_path, {"name": "tfkd_reg", "preset": preset})


@pytest.mark.parametrize("method", [{"name": "tfkd_self", "preset": "official"}], ids=["tfkd_self-official"])
def test_end_to_end_with_a_trained_teacher(tmp_path, teacher_ckpt, method):
    train_with_teacher(tmp_path, teacher_ckpt, method)
