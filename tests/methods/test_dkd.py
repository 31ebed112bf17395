"""DKD: the decoupled terms by hand, their exact decomposition of KD, the warm-up, end to end."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfdistill.losses import kl_rows
from selfdistill.methods.dkd import dkd_terms
from tests.helpers import Fixed, id_batch, make_method, train_with_teacher

OFFICIAL = "https://github.com/megvii-research/mdistiller/tree/a08d46f10d6102bd6e3f258ca5ac880b020ea259"
"""The official code (``mdistiller/distillers/DKD.py``: the −1000 mask after ÷T, T²/B, the warm-up by the 1-based
epoch) the ``official`` mask and the warm-up below were checked against."""


def test_dkd_golden_values():
    zt = torch.tensor([[math.log(2.0), 0.0, 0.0]] * 2)  # p_t = [½, ¼, ¼]
    zs = torch.zeros(2, 3)  # p_s = ⅓ each
    tckd, nckd = dkd_terms(zt, zs, torch.tensor([0, 1]), T=1.0, nckd_mask=math.inf)
    # row 0 (y = 0): b_t = [½, ½], b_s = [⅓, ⅔]; the non-target distributions are both uniform
    assert float(tckd[0]) == pytest.approx(0.5 * math.log(1.5) + 0.5 * math.log(0.75), abs=1e-6)
    assert float(nckd[0]) == pytest.approx(0.0, abs=1e-6)
    # row 1 (y = 1): b_t = [¼, ¾]; non-target p̂_t = [⅔, ⅓] over classes {0, 2}, p̂_s = [½, ½]
    assert float(tckd[1]) == pytest.approx(0.25 * math.log(0.75) + 0.75 * math.log(1.125), abs=1e-6)
    assert float(nckd[1]) == pytest.approx(2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3), abs=1e-6)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_decomposes_kd_exactly(T):
    """KD = TCKD + (1 − p_t,y)·NCKD per row, with true masking and with the −1000 subtracted after ÷T by
    ``dkd_loss`` of :data:`OFFICIAL` (the ``official`` ``nckd_mask``)."""
    g = torch.Generator().manual_seed(1)
    zt, zs, y = torch.randn(16, 10, generator=g) * 3, torch.randn(16, 10, generator=g) * 3, torch.randint(0, 10, (16,))
    kd = kl_rows(F.softmax(zt / T, 1), F.log_softmax(zs / T, 1)) * T * T
    p_ty = F.softmax(zt / T, 1).gather(1, y[:, None])[:, 0]
    tckd, nckd = dkd_terms(zt, zs, y, T, math.inf)
    torch.testing.assert_close(tckd + (1 - p_ty) * nckd, kd, atol=1e-5, rtol=1e-5)
    tckd_o, nckd_o = dkd_terms(zt, zs, y, T, 1000.0)  # the official −1000 mask
    torch.testing.assert_close(tckd_o + (1 - p_ty) * nckd_o, kd, atol=1e-5, rtol=1e-5)


def test_dkd_warmup_is_linear_and_capped():
    """``min(epoch / warmup, 1)`` with the 1-based epoch, as ``DKD.forward_train`` of :data:`OFFICIAL`."""
    table = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]])
    m = make_method("dkd", teacher=table * 2, preset="clean", warmup=20)
    student = Fixed(table)
    batch = id_batch([0, 1], [0, 2])
    nckd = [float(m.training_step(student, batch, e).losses["nckd"].detach()) for e in (1, 10, 20, 40)]
    assert nckd[1] == pytest.approx(10 * nckd[0], rel=1e-5)
    assert nckd[2] == pytest.approx(20 * nckd[0], rel=1e-5) and nckd[3] == pytest.approx(nckd[2], rel=1e-6)


@pytest.mark.parametrize("method", [{"name": "dkd", "preset": "clean", "warmup": 1}], ids=["dkd-clean"])
def test_end_to_end_with_a_trained_teacher(tmp_path, teacher_ckpt, method):
    train_with_teacher(tmp_path, teacher_ckpt, method)
