"""Label smoothing: the smoothed targets and the loss by hand, end to end under bf16, channels-last and an EMA."""

import math

import pytest
import torch

from selfdistill import evaluate, train
from selfdistill.methods.label_smoothing import smoothed_targets
from tests.helpers import Fixed, id_batch, make_method, synthetic_config


def test_label_smoothing_golden_and_invariants():
    y = torch.tensor([1])
    q = smoothed_targets(y, 4, 0.2, "uniform_all")
    assert torch.allclose(q, torch.tensor([[0.05, 0.85, 0.05, 0.05]]))
    q2 = smoothed_targets(y, 4, 0.2, "uniform_nontarget")
    assert torch.allclose(q2, torch.tensor([[0.2 / 3, 0.8, 0.2 / 3, 0.2 / 3]]))
    # ε = 0 is one-hot; uniform_all with ε equals uniform_nontarget with ε(K−1)/K
    assert torch.equal(smoothed_targets(y, 4, 0.0), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    assert torch.allclose(smoothed_targets(y, 4, 0.2, "uniform_all"),
                          smoothed_targets(y, 4, 0.2 * 3 / 4, "uniform_nontarget"))
    assert torch.allclose(q.sum(1), torch.ones(1))
    with pytest.raises(ValueError):
        smoothed_targets(y, 4, 0.1, "bogus")


@pytest.mark.parametrize("form,expected", [
    ("uniform_all", 0.2 * math.log(5) + 0.8 * math.log(5 / 3)),  # targets [0.1, 0.8, 0.1]
    ("uniform_nontarget", 0.3 * math.log(5) + 0.7 * math.log(5 / 3)),  # targets [0.15, 0.7, 0.15]
])
def test_label_smoothing_loss_by_hand(form, expected):
    # ε = 0.3, label 1, σ([0, ln 3, 0]) = [1/5, 3/5, 1/5]: H(q, σ) = (q_0 + q_2)·ln 5 + q_1·ln(5/3)
    m = make_method("label_smoothing", epsilon=0.3, ls_form=form)
    out = m.training_step(Fixed(torch.tensor([[0.0, math.log(3.0), 0.0]])), id_batch([0], [1]), 1)
    assert out.losses["ls"].item() == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_amp_channels_last_and_ema(tmp_path):
    cfg = synthetic_config(tmp_path, method={"name": "label_smoothing", "epsilon": 0.1},
                           model={"channels_last": True}, train={"amp": "bf16", "ema_decay": 0.9})
    s = train(cfg)
    assert s.ema_last is not None and s.last["test_top1"] > 20
    run = tmp_path / "runs" / "synthetic_resnet8_label_smoothing_s0"
    ema = evaluate(run / "last.pt", ema=True)
    assert ema["top1"] == pytest.approx(s.ema_last["top1"], abs=1.0)  # bf16 eval in training, fp32 here
