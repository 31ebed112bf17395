import math

import torch

from selfdistill.losses import cross_entropy, kd_loss, kl_div, soft_cross_entropy


def test_cross_entropy_golden():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    assert math.isclose(cross_entropy(logits, torch.tensor([1])).item(), -math.log(0.75), rel_tol=1e-6)
    assert math.isclose(cross_entropy(logits, torch.tensor([0])).item(), math.log(4.0), rel_tol=1e-6)


def test_kd_golden_two_classes():
    # teacher logits [0, ln 3] at T=1 → p = [1/4, 3/4]; student [0, 0] → q = [1/2, 1/2]
    t = torch.tensor([[0.0, math.log(3.0)]])
    s = torch.zeros(1, 2)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert math.isclose(kd_loss(t, s, T=1.0).item(), expected, rel_tol=1e-6)
    # at T=2 the logits halve: p = softmax([0, ln3/2]) = [1/(1+√3), √3/(1+√3)], × T² = 4
    p1 = 1 / (1 + math.sqrt(3))
    exp2 = 4 * (p1 * math.log(p1 / 0.5) + (1 - p1) * math.log((1 - p1) / 0.5))
    assert math.isclose(kd_loss(t, s, T=2.0).item(), exp2, rel_tol=1e-5)  # fp32 arithmetic


def test_kl_reductions_and_zero_probabilities():
    p = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])  # zeros must give 0·log 0 = 0
    log_q = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]]))
    rows = torch.tensor([math.log(2.0), 0.5 * math.log(2) + 0.5 * math.log(2)])
    assert math.isclose(kl_div(p, log_q, "sum").item(), rows.sum().item(), rel_tol=1e-6)
    assert math.isclose(kl_div(p, log_q, "batchmean").item(), rows.sum().item() / 2, rel_tol=1e-6)
    assert math.isclose(kl_div(p, log_q, "elementwise_mean").item(), rows.sum().item() / 6, rel_tol=1e-6)


def test_kd_invariants():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    assert kd_loss(a, b).item() > 0
    assert abs(kd_loss(a, a.clone()).item()) < 1e-6
    assert abs(kd_loss(a, a + 3.0).item()) < 1e-5  # softmax is shift-invariant


def test_losses_are_fp32_under_autocast():
    x = torch.randn(4, 3, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cross_entropy(x, torch.tensor([0, 1, 2, 0])).dtype == torch.float32
        assert kd_loss(x, x).dtype == torch.float32


def test_soft_ce_with_one_hot_is_ce():
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(6, 4, generator=g), torch.randint(0, 4, (6,), generator=g)
    onehot = torch.nn.functional.one_hot(y, 4).float()
    assert torch.allclose(soft_cross_entropy(z, onehot), cross_entropy(z, y))
