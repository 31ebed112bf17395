"""Metrics: top-k, ECE (bins, golden values), NLL and their accumulator."""

import math

import torch

from selfdistill.engine.metrics import MetricAccumulator, ece_bins, expected_calibration_error, topk_correct


def test_topk_golden():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [2.0, 1.0, 0.0]])
    y = torch.tensor([0, 2, 1, 2])
    assert int(topk_correct(logits, y, 1)) == 1  # only row 0
    assert int(topk_correct(logits, y, 2)) == 3  # rows 0, 1, 2
    assert int(topk_correct(logits, y, 5)) == 4  # k capped at 3 classes: everything


def test_ece_golden_hand_computed():
    # confidences 0.9 (correct), 0.9 (wrong), 0.6 (correct), 0.3 → with 3 classes conf ≥ 1/3; use probs directly
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]],
                         dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1])
    count, conf_sum, correct = ece_bins(probs, y, n_bins=15)
    # 0.9 → bin ceil(13.5)-1 = 13; 0.6 → bin 8; 0.7 → bin ceil(10.5)-1 = 10
    assert count[13] == 2 and count[8] == 1 and count[10] == 1 and count.sum() == 4
    # bin 13: acc 0.5, conf 0.9 → |.| = 0.4, weight 2/4; bin 8: acc 1, conf .6 → .4, w 1/4; bin 10: acc 1, conf .7 → .3
    expected = 0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.3
    ece = float((correct - conf_sum).abs().sum() / count.sum())
    assert math.isclose(ece, expected, rel_tol=1e-12)


def test_ece_bin_edges_are_right_closed():
    probs = torch.tensor([[1 / 15 * 2, 1 - 2 / 15]])  # max conf 13/15 exactly → bin 12 (12/15, 13/15]
    count, _, _ = ece_bins(probs, torch.tensor([1]), 15)
    assert count[12] == 1


def test_perfectly_calibrated_and_overconfident():
    logits = torch.tensor([[10.0, -10.0]] * 4)
    assert expected_calibration_error(logits, torch.tensor([0, 0, 0, 0])) < 1e-6
    assert abs(expected_calibration_error(logits, torch.tensor([1, 1, 1, 1])) - 1.0) < 1e-6


def test_accumulator_matches_direct_and_is_additive():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=g)
    y = torch.randint(0, 7, (50,), generator=g)
    whole = MetricAccumulator()
    whole.update(logits, y)
    parts = MetricAccumulator()
    for chunk_l, chunk_y in zip(logits.split(13), y.split(13), strict=True):
        parts.update(chunk_l, chunk_y)
    a, b = whole.compute(), parts.compute()
    for k in a:
        assert math.isclose(a[k], b[k], rel_tol=1e-12, abs_tol=1e-12)
    nll = torch.nn.functional.cross_entropy(logits.double(), y).item()
    assert math.isclose(a["nll"], nll, rel_tol=1e-12)
    assert math.isclose(a["top1"], 100 * (logits.argmax(1) == y).double().mean().item())
    assert math.isclose(a["ece"], 100 * expected_calibration_error(logits, y), rel_tol=1e-9)


def test_nll_golden():
    acc = MetricAccumulator()
    acc.update(torch.log(torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)), torch.tensor([1]))
    assert math.isclose(acc.compute()["nll"], math.log(4), rel_tol=1e-12)
