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
the ``official`` preset reproduces. Its ranking score (line 73) adds the weak head's normalised probabilities to the
student's *log*-probabilities (``s_i`` and ``s_t`` are reassigned to ``log_softmax`` at lines 53-54), so the order
is not that of the probabilities (``rank_by: log_prob``), and it ranks all classes, the label included, before the
label is dropped (lines 76-87, ``rank_scope: all``). The library's default ranks by the probabilities among the
non-target classes; the tests below check both."""


def test_target_weights_have_batch_mean_one():
    """``p_t = s_y² + 1 − mean(s_y²)`` as in ``USKDLoss`` of :data:`OFFICIAL` (hard labels)."""
    s_y = torch.tensor([0.9, 0.5, 0.1, 0.3])
    p = uskd_target_weights(s_y)
    assert float(p.mean()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(p, s_y**2 + 1 - (s_y**2).mean())


def test_nontarget_targets_sum_to_one_and_follow_the_combined_score():
    """The library's default ranking score (probabilities, non-target classes only)."""
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


def test_the_four_rankings_by_hand():
    """K = 3, label 0. Student s = (0.5, 0.4, 0.1); weak head (0.5, 0.075, 0.425), whose part ``sw_c/(1 − sw_y)`` is
    (1, 0.15, 0.85). Probabilities: s_c/(1 − s_y) = (1, 0.8, 0.2), scores (2, 0.95, 1.05): class 2 before class 1.
    Log-probabilities: ln s_c/(1 − ln 0.5) = (−0.409, −0.541, −1.360), scores (0.591, −0.391, −0.510): class 1 before
    class 2. The label is first either way, so ranking all classes gives the non-targets ranks 2, 3 (q ∝ 1/2, 1/3)
    and ranking the non-targets alone 1, 2 (q ∝ 1, 1/2)."""
    z, w, y = torch.tensor([[0.5, 0.4, 0.1]]).log(), torch.tensor([[0.5, 0.075, 0.425]]).log(), torch.tensor([0])
    expected = {("prob", "nontarget"): [1 / 3, 2 / 3], ("prob", "all"): [2 / 5, 3 / 5],
                ("log_prob", "nontarget"): [2 / 3, 1 / 3], ("log_prob", "all"): [3 / 5, 2 / 5]}
    for (rank_by, scope), q in expected.items():
        got = uskd_nontarget_targets(z, w, y, rank_by, scope)[0]
        torch.testing.assert_close(got, torch.tensor([0.0, *q]), msg=f"{rank_by}, {scope}")
    m = _method(preset="official")[1]
    assert (m.opt.rank_by, m.opt.rank_scope) == ("log_prob", "all")


def _uskd_reference(logit_s, w_fc, label, alpha=0.1, beta=0.1, mu=0.1):
    """``USKDLoss.forward`` of :data:`OFFICIAL` (lines 41-93, hard labels), re-implemented from reading it."""
    n, c = logit_s.shape
    label = label.view(n, 1)
    s_t = F.softmax(logit_s, 1).gather(1, label)
    p_t = (s_t**2 + 1 - (s_t**2).mean(0, True)).detach()
    s_i = F.log_softmax(logit_s, 1)  # the probabilities are replaced by log-probabilities from here on
    s_t = s_i.gather(1, label)
    loss_t = -(p_t * s_t).sum(1).mean()
    smooth = torch.zeros_like(logit_s).scatter_(1, label, 0.9) + 0.1 / c
    loss_weak = -(mu * smooth * F.log_softmax(w_fc, 1)).sum(1).mean()
    w_i = F.softmax(w_fc, 1)
    score = w_i / (1 - w_i.gather(1, label) + 1e-6) + s_i / (1 - s_t + 1e-6)
    zipf = 1 / (score.argsort(1, descending=True).argsort(1) + 1).float()  # 1/place over all classes
    keep = torch.ones_like(logit_s).scatter_(1, label, 0).bool()
    nz = zipf[keep].view(n, -1)
    nz = nz / nz.sum(1, keepdim=True)
    loss_non = -(nz * F.log_softmax(logit_s[keep].view(n, -1), 1)).sum(1).mean()
    return alpha * loss_t + beta * loss_non + loss_weak


def test_official_preset_matches_the_official_loss():
    model, m = _method(10, preset="official")
    x = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    y = torch.arange(16) % 10
    model.eval()  # the same logits in the step and below
    out = m.training_step(model, Batch(x, y, torch.arange(16), [x]), 1)
    z = model(x).detach()
    w = m.weak(torch.flatten(F.adaptive_avg_pool2d(m.taps.features[m.tap], 1), 1)).detach()
    ours = sum(float(out.losses[k].detach()) for k in ("target", "nontarget", "weak"))
    assert ours == pytest.approx(float(_uskd_reference(z, w, y)), rel=1e-5)
    default = uskd_nontarget_targets(z, w, y)  # the library's default ranking is another
    assert not torch.allclose(default, uskd_nontarget_targets(z, w, y, "log_prob", "all"))


def _method(classes=4, **opts):
    torch.manual_seed(0)
    model = build_model("resnet8", classes, 3)
    spec = resolve_config({"method": {"name": "uskd", **opts}}).method
    m = build_method(spec, MethodContext(classes, 8, 1, 1, torch.device("cpu"), in_chans=3, image_size=16))
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
