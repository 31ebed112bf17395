"""USKD: the customised soft labels' invariants, a hand-computed target term, the weak head, end to end."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfdistill import train
from selfdistill.data import Batch
from selfdistill.methods import MethodContext, build_method
from selfdistill.methods.uskd import uskd_nontarget_targets, uskd_target_weights
from selfdistill.models import build_model
from selfdistill.run import resolve_config
from tests.helpers import synthetic_config

OFFICIAL = "https://github.com/yzd-v/cls_KD/tree/1e5d48f36957ee460d39d7ebc592c6cc7f8f3d66"
"""The official code (``mmcls/models/dis_losses/uskd.py``, CIFAR-100 config ``res18_sd_cifar.py``: α = β = μ = 0.1)
the target weights and the CIFAR weights below were checked against. It ranks the non-target classes with the
student's log-probabilities (``s_i`` is reassigned to ``log_softmax`` before the rank), where the library uses
the probabilities; the ranking test below checks the library's form."""


def test_target_weights_have_batch_mean_one():
    """``p_t = s_y² + 1 − mean(s_y²)`` as in ``USKDLoss`` of :data:`OFFICIAL` (hard labels)."""
    s_y = torch.tensor([0.9, 0.5, 0.1, 0.3])
    p = uskd_target_weights(s_y)
    assert float(p.mean()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(p, s_y**2 + 1 - (s_y**2).mean())


def test_nontarget_targets_sum_to_one_and_follow_the_combined_score():
    """The library's ranking score (probabilities; :data:`OFFICIAL` uses the student's log-probabilities there)."""
    g = torch.Generator().manual_seed(0)
    z, w, y = torch.randn(16, 7, generator=g), torch.randn(16, 7, generator=g), torch.randint(0, 7, (16,), generator=g)
    q = uskd_nontarget_targets(z, w, y)
    torch.testing.assert_close(q.sum(1), torch.ones(16))
    assert torch.all(q.gather(1, y[:, None]) == 0)
    s, sw = z.softmax(1), w.softmax(1)
    score = sw / (1 - sw.gather(1, y[:, None])) + s / (1 - s.gather(1, y[:, None]))
    order = score.masked_fill(F.one_hot(y, 7).bool(), -1e9).argsort(1, descending=True)[:, :6]
    assert torch.all(q.gather(1, order).diff(dim=1) <= 1e-7)
    # hand example: non-targets ranked 1, 2, 3 → q ∝ 1, 1/2, 1/3
    q1 = uskd_nontarget_targets(torch.tensor([[0.0, 3.0, 2.0, 1.0]]), torch.zeros(1, 4), torch.tensor([0]))
    torch.testing.assert_close(q1[0, 1:], torch.tensor([1, 1 / 2, 1 / 3]) / (11 / 6))


def _method():
    torch.manual_seed(0)
    model = build_model("resnet8", 4, 3)
    spec = resolve_config({"method": {"name": "uskd"}}).method
    m = build_method(spec, MethodContext(4, 8, 1, 1, torch.device("cpu"), in_chans=3, image_size=16))
    m.setup(model)
    return model, m


def test_target_term_by_hand_and_weak_head_leaves_logits_alone():
    model, m = _method()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    model.eval()
    before = model(x).detach()
    out = m.training_step(model, Batch(x, y, torch.arange(4), [x]), 1)
    torch.testing.assert_close(model(x), before)  # the weak head reads a tap and changes nothing
    s_y = before.softmax(1).gather(1, y[:, None])[:, 0]
    expected = -((s_y**2 + 1 - (s_y**2).mean()) * s_y.log()).mean()
    assert float(out.losses["target"].detach()) == pytest.approx(0.1 * float(expected), rel=1e-5)
    assert m.tap == "layer2"


def test_end_to_end(tmp_path):
    s = train(synthetic_config(tmp_path, method={"name": "uskd"}, train={"epochs": 1}))
    assert math.isfinite(s.last["test_nll"])
