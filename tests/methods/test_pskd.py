"""PS-KD: the targets, the memory and the α schedule by hand, the memory across kill and resume, end to end."""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import Fixed, assert_state_survives_kill_and_resume, id_batch, make_method, train_one_epoch

OFFICIAL = "https://github.com/lgcnsai/PS-KD-Pytorch/tree/9aa0828d099f2faed16bbac258e4153902a55021"
"""The official code (``main.py``: α_t = α_T·(epoch + 1)/E for the 0-based epoch, the memory filled with one-hot
labels in the first epoch; ``loss/pskd_loss.py``) the schedule and the targets below were checked against."""


def test_pskd_targets_memory_and_schedule():
    """As in :data:`OFFICIAL`: epoch 1's targets are the labels (the memory starts one-hot), the memory then holds
    each image's last softmax, and α_e = α_T·e/E for the 1-based epoch e."""
    m = make_method("pskd", epochs=4, alpha_T=0.8)
    table = torch.tensor([[math.log(3.0), 0.0, 0.0], [0.0, 0.0, 0.0]])
    student = Fixed(table)
    out1 = m.training_step(student, id_batch([0, 1], [0, 2]), 1)
    # epoch 1: nothing stored yet → targets are the labels → loss = CE
    ce = F.cross_entropy(table, torch.tensor([0, 2]))
    assert float(out1.losses["pskd"].detach()) == pytest.approx(float(ce), abs=1e-6)
    torch.testing.assert_close(m.memory.table[:2], table.softmax(1))  # written after the read
    # epoch 2: α = 0.8·2/4 = 0.4 mixes the stored softmax into the one-hot label
    out2 = m.training_step(student, id_batch([0, 1], [0, 2]), 2)
    p = table.softmax(1)
    target = 0.6 * F.one_hot(torch.tensor([0, 2]), 3).float() + 0.4 * p
    expected = -(target * F.log_softmax(table, 1)).sum(1).mean()
    assert out2.losses["pskd"].item() == pytest.approx(float(expected), abs=1e-6)
    assert m.alpha(4) == pytest.approx(0.8) and float(target.sum(1).sub(1).abs().max()) < 1e-6
    assert torch.all(m.memory.table[2:] == 0)  # rows not seen are not written


def test_one_epoch_end_to_end(tmp_path):
    train_one_epoch(tmp_path, {"name": "pskd"})


def test_state_survives_kill_and_resume(tmp_path):
    assert_state_survives_kill_and_resume(tmp_path, "pskd", "memory")
