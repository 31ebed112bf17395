"""SLD and SLD-self: the logit swap's invariants and hand example, the multi-temperature loss, the pseudo-teacher's
gradient, end to end."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfdistill import train
from selfdistill.losses import kd_loss, kl_rows
from selfdistill.methods.sld import swap_logits
from tests.helpers import Fixed, id_batch, make_method, synthetic_config, train_with_teacher

OFFICIAL = "https://github.com/StephenEkaputra/Swapped-Logit-Distillation/tree/f035edeaad2e036192f0f5b2573ec363f7e56788"
"""The official code (``mdistiller/distillers/SLD.py``: ``swap``, the student's swapped logits as a second target
with its gradient kept, T = 1..6, ``epoch > gamma`` for the 1-based epoch, weights 0.1/0.9) the swap, the
pseudo-teacher's gradient and the schedule below were checked against."""


def _random_logits(seed=0, b=64, k=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g), torch.randint(0, k, (b,), generator=g)


def _entropy(z, T):
    return -(F.softmax(z / T, 1) * F.log_softmax(z / T, 1)).sum(1)


def test_swap_logits_invariants():
    z, y = _random_logits()
    s = swap_logits(z, y)
    torch.testing.assert_close(s.sort(1).values, z.sort(1).values)  # a per-row permutation
    torch.testing.assert_close(s.logsumexp(1), z.logsumexp(1))
    assert torch.equal(s.argmax(1), y)
    correct = z.argmax(1) == y
    assert correct.any() and (~correct).any()
    assert torch.equal(s[correct], z[correct])
    changed = (s != z).sum(1)
    assert torch.all(changed[~correct] == 2) and torch.all(changed[correct] == 0)
    assert torch.equal(swap_logits(s, y), s)  # idempotent
    for T in (1.0, 3.0):  # entropy of σ_T unchanged
        torch.testing.assert_close(_entropy(s, T), _entropy(z, T))


def test_swap_logits_hand_example_ties_and_gradient():
    """``swap`` of :data:`OFFICIAL`: a row whose arg-max is not the label exchanges those two entries."""
    z = torch.tensor([[1.0, 3.0, 2.0], [2.0, 2.0, 0.0]], requires_grad=True)
    s = swap_logits(z, torch.tensor([2, 1]))
    # row 0: arg-max 1 ≠ label 2 → entries 1 and 2 exchange; row 1: tie, arg-max 0 with z_0 = z_1 → unchanged
    assert s.tolist() == [[1.0, 2.0, 3.0], [2.0, 2.0, 0.0]]
    (s * torch.tensor([[1.0, 10.0, 100.0], [0.0, 0.0, 0.0]])).sum().backward()
    assert z.grad[0].tolist() == [1.0, 100.0, 10.0]  # gradient flows through the copy, swapped back


def test_swap_kl_closed_form():
    z, y = _random_logits(2)
    for T in (1.0, 2.5):
        p = F.softmax(z / T, 1)
        m = z.argmax(1)
        pm, py = p.gather(1, m[:, None])[:, 0], p.gather(1, y[:, None])[:, 0]
        kl = kl_rows(F.softmax(swap_logits(z, y) / T, 1), F.log_softmax(z / T, 1))
        torch.testing.assert_close(kl, (pm - py) * (pm.log() - py.log()), atol=1e-6, rtol=1e-5)


def test_sld_reduces_to_hinton_kd():
    ts, ss = torch.tensor([[0.0, 2.0, 1.0], [1.0, 0.0, 3.0]]), torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 2.0]])
    batch = id_batch([0, 1], [0, 2])
    sld = make_method("sld", teacher=ts, swap_teacher=False, swap_student=False, temps=[4.0], two_views=False)
    kd = make_method("kd", teacher=ts, T=4.0)
    a = sld.training_step(Fixed(ss), batch, 200).losses
    b = kd.training_step(Fixed(ss), batch, 200).losses
    assert float(sum(a.values()).detach()) == pytest.approx(float(sum(b.values()).detach()), abs=1e-6)


def test_sld_gamma_schedule_and_multi_temperature_sum():
    """:data:`OFFICIAL`: the student's swapped logits teach it from ``epoch > gamma`` on (1-based epoch), each term
    summed over T = 1..6 and both views, weight 0.9."""
    ts, ss = torch.tensor([[0.0, 2.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # K = 2
    batch = id_batch([0, 1], [1, 0], views=2)
    m = make_method("sld", teacher=ts, gamma=3)
    before, after = m.training_step(Fixed(ss), batch, 3).losses, m.training_step(Fixed(ss), batch, 4).losses
    assert "kd_self" not in before and after["kd_self"].item() > 0
    # both rows are wrong; the summed terms over T = 1..6 and two (here identical) views
    z, y = ss, torch.tensor([1, 0])
    expected = 0.9 * 2 * sum(float(kd_loss(swap_logits(z, y), z, T)) for T in range(1, 7))
    assert after["kd_self"].item() == pytest.approx(expected, rel=1e-5)
    assert after["kd_teacher"].item() == pytest.approx(
        0.9 * 2 * sum(float(kd_loss(swap_logits(ts, y), z, T)) for T in range(1, 7)), rel=1e-5)


@pytest.mark.parametrize("detach", [False, True])
def test_sld_pseudo_teacher_gradient(detach):
    """:data:`OFFICIAL` keeps the gradient through the student's swapped logits (``detach_pseudo_teacher: false``, the
    ``official`` preset); the clean form detaches them."""
    ss = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 0.5]])
    batch = id_batch([0, 1], [1, 1])
    m = make_method("sld_self", gamma=0, detach_pseudo_teacher=detach, w_ce=0.0, two_views=False)
    student = Fixed(ss.clone())
    m.training_step(student, batch, 1).losses["kd_self"].backward()
    z = ss.clone().requires_grad_(True)
    target = swap_logits(z, torch.tensor([1, 1]))
    sum(kd_loss(target.detach(), z, T) for T in range(1, 7)).backward()  # gradient through the prediction only
    if detach:
        torch.testing.assert_close(student.table.grad, z.grad)
    else:
        assert not torch.allclose(student.table.grad, z.grad, atol=1e-4)


def test_sld_self_vanishes_on_correct_rows():
    ss = torch.tensor([[3.0, 0.0, 1.0]])
    out = make_method("sld_self", gamma=0, two_views=False).training_step(Fixed(ss), id_batch([0], [0]), 1)
    assert out.losses["kd_self"].item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("method", [{"name": "sld", "gamma": 1}], ids=["sld"])
def test_end_to_end_with_a_trained_teacher(tmp_path, teacher_ckpt, method):
    train_with_teacher(tmp_path, teacher_ckpt, method)


def test_sld_self_trains_end_to_end_without_a_teacher(tmp_path):
    summary = train(synthetic_config(tmp_path, method={"name": "sld_self", "gamma": 1}))
    assert summary.epochs == 2 and math.isfinite(summary.last["test_top1"]) and summary.teachers == {}
