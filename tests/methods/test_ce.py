"""Plain cross-entropy and its two-view control ce_2x: the losses by hand, the views seen, end to end."""

import math

import pytest
import torch

from selfdistill import train
from selfdistill.data import Batch
from tests.helpers import Fixed, id_batch, make_method, synthetic_config, train_one_epoch


def test_ce_loss_by_hand():
    # σ([0, ln 3, 0]) = [1/5, 3/5, 1/5] with label 1; σ([0, 0, 0]) = ⅓ each with label 2
    student = Fixed(torch.tensor([[0.0, math.log(3.0), 0.0], [0.0, 0.0, 0.0]]))
    out = make_method("ce").training_step(student, id_batch([0, 1], [1, 2]), 1)
    assert set(out.losses) == {"ce"}
    assert out.losses["ce"].item() == pytest.approx((math.log(5 / 3) + math.log(3.0)) / 2, rel=1e-6)
    assert torch.equal(out.logits, student.table[:2]) and torch.equal(out.targets, torch.tensor([1, 2]))


def test_one_epoch_end_to_end(tmp_path):
    assert train_one_epoch(tmp_path, {"name": "ce"}).passes_per_step == 1.0


def test_ce_2x_sees_two_views_per_image(tmp_path):
    m = make_method("ce_2x")
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x.shape[0])
            return torch.zeros(x.shape[0], 3, requires_grad=True)

    x1, x2 = torch.zeros(4, 3, 2, 2), torch.ones(4, 3, 2, 2)
    out = m.training_step(Spy(), Batch(x1, torch.tensor([0, 1, 2, 0]), torch.arange(4), [x1, x2]), 1)
    assert seen == [8] and out.logits.shape == (4, 3)
    assert float(out.losses["ce"].detach()) == pytest.approx(math.log(3))
    s = train(synthetic_config(tmp_path, method={"name": "ce_2x"}, train={"epochs": 1}))
    assert s.passes_per_step == 2.0
