"""Zipf's label smoothing: min ranks, the Zipf targets' invariants, dense votes, the loss by hand, end to end."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfdistill.losses import min_ranks, zipf_targets
from selfdistill.methods.zipf import dense_votes
from tests.helpers import Fixed, id_batch, make_method, train_one_epoch

OFFICIAL = "https://github.com/megvii-research/zipfls/tree/108e27aaf81aee0dc6dcd965ed6389f2ea06ba10"
"""The official code (``pytorch_zipfls/losses.py``: ``gen_pdf`` ranks with ``rankdata(-scores, method='min')`` over
all classes, dense votes by ``scatter_add``; ``kl_loss`` against the log-softmax of the non-target logits) the
ranks, votes and loss below were checked against. With ``--mask`` (``do_mask``, lines 137-143) ``kl_loss`` averages
over the correctly classified rows only (``mask_mean: correct``, in the ``official`` preset)."""


def test_min_ranks_match_a_reference():
    """``rankdata(-s, method='min')``, the ranking of ``gen_pdf`` in :data:`OFFICIAL`."""
    s = torch.tensor([[3.0, 1.0, 3.0, 0.0, 1.0]])
    assert min_ranks(s).tolist() == [[1, 3, 1, 5, 3]]
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 4, (20, 7), generator=g).float()
    ref = [[1 + sum(int(r[i, j] > r[i, c]) for j in range(7)) for c in range(7)] for i in range(20)]
    assert min_ranks(r).tolist() == ref


def test_zipf_targets_invariants():
    g = torch.Generator().manual_seed(1)
    s, y = torch.randn(16, 6, generator=g), torch.randint(0, 6, (16,), generator=g)
    q = zipf_targets(s, y)
    torch.testing.assert_close(q.sum(1), torch.ones(16))
    assert torch.all(q.gather(1, y[:, None]) == 0)
    order = s.masked_fill(F.one_hot(y, 6).bool(), -1e9).argsort(1, descending=True)[:, :5]
    assert torch.all(q.gather(1, order).diff(dim=1) <= 1e-7)  # non-increasing in rank
    tied = zipf_targets(torch.tensor([[5.0, 1.0, 1.0, 0.0]]), torch.tensor([0]))
    assert float(tied[0, 1]) == float(tied[0, 2])
    flat = zipf_targets(s, y, power=0.0)
    torch.testing.assert_close(flat.sum(1), torch.ones(16))
    assert torch.allclose(flat.masked_select(flat > 0), torch.full((16 * 5,), 0.2))
    # rank scope "all" when the label is top-1: ranks start at 2 → q ∝ 1/2, 1/3, ...
    q_all = zipf_targets(torch.tensor([[9.0, 3.0, 2.0]]), torch.tensor([0]))
    torch.testing.assert_close(q_all[0, 1:], torch.tensor([1 / 2, 1 / 3]) / (1 / 2 + 1 / 3))


def test_zipf_loss_by_hand():
    """Ranked by the logits over all classes: row 0 (label 0 first) ranks the non-targets 2nd and 3rd, so
    q ∝ [½, ⅓] = [3/5, 2/5]; row 1 (label 0 last) ranks them 1st and 2nd, q ∝ [1, ½] = [2/3, 1/3]. Both rows'
    non-target logits are [1, 0] after the label is dropped (its softmax [e, 1]/(e + 1)). The targets and the KL are
    those of ``gen_pdf`` and ``kl_loss`` in :data:`OFFICIAL`."""
    student = Fixed(torch.tensor([[2.0, 1.0, 0.0], [0.0, 2.0, 1.0]]))
    out = make_method("zipf", score="logits", lam=0.5).training_step(student, id_batch([0, 1], [0, 0]), 1)
    e = math.e
    p = [e / (e + 1), 1 / (e + 1)]

    def kl(q):
        return sum(qi * math.log(qi / pi) for qi, pi in zip(q, p, strict=True))

    assert out.losses["zipf"].item() == pytest.approx(0.5 * (kl([3 / 5, 2 / 5]) + kl([2 / 3, 1 / 3])) / 2, rel=1e-5)
    ce = (math.log(1 + math.exp(-1) + math.exp(-2)) + math.log(1 + math.exp(2) + math.exp(1))) / 2
    assert out.losses["ce"].item() == pytest.approx(ce, rel=1e-6)


def test_mask_correct_means_by_hand():
    """Row 0 (label 0, top-1) is correct, row 1 (label 0, logit 0 of 2) is not: only row 0's KL counts, over the
    batch of 2 (``batch``) or over the one correct row (``correct``, the official preset)."""
    e = math.e
    p = [e / (e + 1), 1 / (e + 1)]
    kl0 = sum(qi * math.log(qi / pi) for qi, pi in zip([3 / 5, 2 / 5], p, strict=True))
    student = Fixed(torch.tensor([[2.0, 1.0, 0.0], [0.0, 2.0, 1.0]]))
    for opts, expected in (({}, kl0 / 2), ({"preset": "official"}, kl0)):
        m = make_method("zipf", score="logits", lam=0.5, mask_correct=True, **opts)
        out = m.training_step(student, id_batch([0, 1], [0, 0]), 1)
        assert out.losses["zipf"].item() == pytest.approx(0.5 * expected, rel=1e-5), opts
    wrong = make_method("zipf", preset="official", score="logits", mask_correct=True)
    assert wrong.training_step(student, id_batch([1], [0]), 1).losses["zipf"].item() == 0.0


def _kl_loss_reference(output, label, do_mask):
    """``gen_pdf`` (hard ``min`` ranks of the logits over all classes, 1/rank, the label dropped, renormalised) and
    ``kl_loss`` of :data:`OFFICIAL` (``losses.py`` lines 130-147, 225-292), re-implemented from reading them."""
    n, c = output.shape
    rank = 1 + (output[:, None, :] > output[:, :, None]).sum(2)  # rankdata(-output, method="min")
    keep = torch.ones_like(output).scatter_(1, label[:, None], 0).bool()
    pdf = (1 / rank.float())[keep].view(n, c - 1)
    pdf = pdf / pdf.sum(1, keepdim=True)
    res = F.log_softmax(output[keep].view(n, c - 1), 1)
    loss = F.kl_div(res, pdf, reduction="none").sum(1)
    if not do_mask:
        return loss.mean()
    loss_mask = output.argmax(1) == label
    return (loss * loss_mask).sum() / loss_mask.sum() if loss_mask.any() else loss.mean() * 0


@pytest.mark.parametrize("mask", [False, True])
def test_official_preset_matches_kl_loss(mask):
    g = torch.Generator().manual_seed(3)
    table = torch.randn(16, 6, generator=g) * 2
    y = torch.randint(0, 6, (16,), generator=g)
    assert 0 < int((table.argmax(1) == y).sum()) < 16
    m = make_method("zipf", preset="official", score="logits", lam=1.0, mask_correct=mask)
    out = m.training_step(Fixed(table), id_batch(list(range(16)), y.tolist()), 1)
    assert out.losses["zipf"].item() == pytest.approx(float(_kl_loss_reference(table, y, mask)), rel=1e-5)


def test_dense_votes_sum_to_positions():
    """Per class, the positions whose arg-max it is (the ``scatter_add`` votes of ``gen_pdf`` in :data:`OFFICIAL`)."""
    fc = torch.nn.Linear(4, 3)
    votes = dense_votes(torch.randn(2, 4, 5, 6), fc)
    assert votes.shape == (2, 3) and torch.all(votes.sum(1) == 30)


@pytest.mark.parametrize("score", ["dense", "logits"])
def test_one_epoch_end_to_end(tmp_path, score):
    train_one_epoch(tmp_path, {"name": "zipf", "score": score})
