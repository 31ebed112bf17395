"""DLB: the first step, the previous batch's logits as the target, the official forward order, the cache across kill
and resume, end to end."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from selfdistill.data import Batch
from selfdistill.losses import kd_loss
from tests.helpers import Fixed, assert_state_survives_kill_and_resume, id_batch, make_method, train_one_epoch

OFFICIAL = "https://github.com/Meta-knowledge-Lab/DLB/tree/8949a4621072cbd9d0d9d78bf8d9fba0f1814ed0"
"""The official code (``dlb.py``, ``train_one_epoch``) the forward order and the loss below were checked against."""


def test_dlb_first_step_is_ce_then_previous_logits_are_the_target():
    m = make_method("dlb", T=3.0, alpha=1.0)
    table = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    student = Fixed(table.clone())
    out1 = m.training_step(student, id_batch([0, 1], [0, 1], views=2), 1)
    assert set(out1.losses) == {"ce"}
    saved = m.cache["logits"].clone()
    torch.testing.assert_close(saved, table[:2])
    with torch.no_grad():
        student.table += 0.3  # the "update"
        student.table[0, 2] += 1.0
    out2 = m.training_step(student, id_batch([2, 3], [0, 2], views=2), 1)
    z_prev = student.table[:2]
    assert out2.losses["kd"].item() == pytest.approx(kd_loss(saved, z_prev, 3.0).item(), abs=1e-6)
    # CE covers 2B rows: the previous batch and the current one
    ce = F.cross_entropy(student.table.detach(), torch.tensor([0, 1, 0, 2]))
    assert out2.losses["ce"].item() == pytest.approx(float(ce), abs=1e-6)
    out2.losses["kd"].backward()
    assert student.table.grad[2:].abs().sum() == 0  # the KD target (cached) receives no gradient


def test_dlb_official_forwards_the_current_batch_first():
    """The official step (``train_one_epoch`` of :data:`OFFICIAL`): ``model(current)`` then ``model(previous
    second view)``, two forwards, so each batch is
    normalised by its own BatchNorm statistics and the running statistics are updated in that order."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3))
    reference = copy.deepcopy(net)
    g = torch.Generator().manual_seed(1)
    views = [[torch.randn(4, 3, 6, 6, generator=g) for _ in range(2)] for _ in range(2)]
    y = torch.tensor([0, 1, 2, 0])
    m = make_method("dlb", preset="official")
    assert not m.opt.joint_forward
    for step_views in views:
        out = m.training_step(net, Batch(step_views[0], y, torch.arange(4), step_views), 1)
    # the same two steps written out as the official loop does them
    z1 = reference(views[0][0])
    z_cur = reference(views[1][0])
    z_prev = reference(views[0][1])
    torch.testing.assert_close(net[1].running_mean, reference[1].running_mean, rtol=0, atol=0)
    torch.testing.assert_close(net[1].running_var, reference[1].running_var, rtol=0, atol=0)
    assert out.losses["kd"].item() == kd_loss(z1.detach(), z_prev, 3.0).item()
    assert out.losses["ce"].item() == F.cross_entropy(torch.cat([z_prev, z_cur]), torch.cat([y, y])).item()
    assert make_method("dlb").opt.joint_forward is False and make_method("dlb", preset="clean").opt.joint_forward


def test_dlb_loss_by_hand():
    """Step 1 caches image 0's logits [ln 3, 0, 0]; an update moves them to [0, 0, 0]; step 2's KD term is then
    α·T²·KL(σ_T([ln 3, 0, 0]) ‖ uniform) and its CE the mean over the previous and the current rows."""
    m = make_method("dlb", T=2.0, alpha=0.5)
    student = Fixed(torch.tensor([[math.log(3.0), 0.0, 0.0], [0.0, math.log(3.0), 0.0]]))
    first = m.training_step(student, id_batch([0], [0], views=2), 1)
    assert first.losses["ce"].item() == pytest.approx(math.log(5 / 3), rel=1e-6)  # σ = [3/5, 1/5, 1/5]
    with torch.no_grad():
        student.table[0] = 0.0
    out = m.training_step(student, id_batch([1], [1], views=2), 1)
    r = math.sqrt(3.0)
    p = [r / (r + 2), 1 / (r + 2), 1 / (r + 2)]  # σ_2([ln 3, 0, 0]) = ∝ [√3, 1, 1]
    assert out.losses["kd"].item() == pytest.approx(0.5 * 4 * sum(pi * math.log(3 * pi) for pi in p), rel=1e-5)
    assert out.losses["ce"].item() == pytest.approx((math.log(3.0) + math.log(5 / 3)) / 2, rel=1e-6)


def test_one_epoch_end_to_end(tmp_path):
    train_one_epoch(tmp_path, {"name": "dlb"})


def test_state_survives_kill_and_resume(tmp_path):
    assert_state_survives_kill_and_resume(tmp_path, "dlb", "cache")
