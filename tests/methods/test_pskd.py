"""The teacher-free zoo: PS-KD, TF-KD, DLB, Zipf's LS and augmentation consistency.

Golden values on hand-built tensors, the spec's invariants, memories and caches across kill + resume, and a
short end-to-end run of each method.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from selfdistill import train
from selfdistill.data import Batch
from selfdistill.engine.checkpoint import load_checkpoint
from selfdistill.losses import kd_loss, min_ranks, zipf_targets
from selfdistill.methods import MethodContext, build_method
from selfdistill.methods.consistency import jsd
from selfdistill.methods.tfkd import virtual_targets
from selfdistill.methods.zipf import dense_votes
from selfdistill.run import resolve_config
from tests.helpers import Fixed, id_images, synthetic_config


def _method(name, epochs=4, num_train=8, **opts):
    spec = resolve_config({"method": {"name": name, **opts}}).method
    m = build_method(spec, MethodContext(3, num_train, epochs, 1, torch.device("cpu")))
    m.setup(None)
    return m


def _batch(ids, y, views=1):
    x = id_images(ids)
    return Batch(x, torch.tensor(y), torch.tensor(ids), [x] * views)


# ---------------------------------------------------------------------------------------------- PS-KD
def test_pskd_targets_memory_and_schedule():
    m = _method("pskd", epochs=4, alpha_T=0.8)
    table = torch.tensor([[math.log(3.0), 0.0, 0.0], [0.0, 0.0, 0.0]])
    student = Fixed(table)
    out1 = m.training_step(student, _batch([0, 1], [0, 2]), 1)
    # epoch 1: nothing stored yet → targets are the labels → loss = CE
    ce = F.cross_entropy(table, torch.tensor([0, 2]))
    assert float(out1.losses["pskd"].detach()) == pytest.approx(float(ce), abs=1e-6)
    torch.testing.assert_close(m.memory.table[:2], table.softmax(1))  # written after the read
    # epoch 2: α = 0.8·2/4 = 0.4 mixes the stored softmax into the one-hot label
    out2 = m.training_step(student, _batch([0, 1], [0, 2]), 2)
    p = table.softmax(1)
    target = 0.6 * F.one_hot(torch.tensor([0, 2]), 3).float() + 0.4 * p
    expected = -(target * F.log_softmax(table, 1)).sum(1).mean()
    assert out2.losses["pskd"].item() == pytest.approx(float(expected), abs=1e-6)
    assert m.alpha(4) == pytest.approx(0.8) and float(target.sum(1).sub(1).abs().max()) < 1e-6
    assert torch.all(m.memory.table[2:] == 0)  # rows not seen are not written


# ---------------------------------------------------------------------------------------------- TF-KD
def test_tfkd_virtual_targets_official_values_and_clean_form():
    y = torch.tensor([3])
    q = virtual_targets(y, 100, 0.99, 20.0, "prob_softmax")
    assert float(q[0, 3]) == pytest.approx(0.010502, abs=5e-7)
    assert float(q[0, 0]) == pytest.approx(0.009995, abs=5e-7)
    c = virtual_targets(y, 100, 0.99, 20.0, "logit_softmax")
    assert float(c[0, 3]) == pytest.approx(0.01574, abs=5e-6) and float(c[0, 0]) == pytest.approx(0.009942, abs=5e-7)
    one = virtual_targets(y, 100, 0.99, 1.0, "logit_softmax")  # τ = 1: exactly p^d
    assert float(one[0, 3]) == pytest.approx(0.99, abs=1e-6)
    for t in (q, c):
        assert float(t.sum()) == pytest.approx(1.0, abs=1e-6) and int(t.argmax()) == 3


def test_tfkd_reg_official_loss_by_hand():
    z = torch.tensor([[1.0, 0.0, -1.0]])
    m = _method("tfkd_reg", preset="official")
    out = m.training_step(Fixed(z), _batch([0], [0]), 1)
    q = F.softmax(torch.tensor([[0.99, 0.005, 0.005]]) / 20, 1)
    kl = (q * (q.log() - F.log_softmax(z, 1))).sum() / 3  # elementwise_mean over B·K = 3
    assert out.losses["reg"].item() == pytest.approx(0.1 * 100 * float(kl), rel=1e-5)
    assert out.losses["ce"].item() == pytest.approx(0.9 * float(F.cross_entropy(z, torch.tensor([0]))), rel=1e-6)


# ------------------------------------------------------------------------------------------------ DLB
def test_dlb_first_step_is_ce_then_previous_logits_are_the_target():
    m = _method("dlb", T=3.0, alpha=1.0)
    table = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    student = Fixed(table.clone())
    out1 = m.training_step(student, _batch([0, 1], [0, 1], views=2), 1)
    assert set(out1.losses) == {"ce"}
    saved = m.cache["logits"].clone()
    torch.testing.assert_close(saved, table[:2])
    with torch.no_grad():
        student.table += 0.3  # the "update"
        student.table[0, 2] += 1.0
    out2 = m.training_step(student, _batch([2, 3], [0, 2], views=2), 1)
    z_prev = student.table[:2]
    assert out2.losses["kd"].item() == pytest.approx(kd_loss(saved, z_prev, 3.0).item(), abs=1e-6)
    # CE covers 2B rows: the previous batch and the current one
    ce = F.cross_entropy(student.table.detach(), torch.tensor([0, 1, 0, 2]))
    assert out2.losses["ce"].item() == pytest.approx(float(ce), abs=1e-6)
    out2.losses["kd"].backward()
    assert student.table.grad[2:].abs().sum() == 0  # the KD target (cached) receives no gradient


def test_dlb_official_forwards_the_current_batch_first():
    """The official step: ``model(current)`` then ``model(previous second view)``, two forwards, so each batch is
    normalised by its own BatchNorm statistics and the running statistics are updated in that order."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3))
    reference = copy.deepcopy(net)
    g = torch.Generator().manual_seed(1)
    views = [[torch.randn(4, 3, 6, 6, generator=g) for _ in range(2)] for _ in range(2)]
    y = torch.tensor([0, 1, 2, 0])
    m = _method("dlb", preset="official")
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
    assert _method("dlb").opt.joint_forward is False and _method("dlb", preset="clean").opt.joint_forward


# ----------------------------------------------------------------------------------------------- Zipf
def test_min_ranks_match_a_reference():
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


def test_dense_votes_sum_to_positions():
    fc = torch.nn.Linear(4, 3)
    votes = dense_votes(torch.randn(2, 4, 5, 6), fc)
    assert votes.shape == (2, 3) and torch.all(votes.sum(1) == 30)


# ---------------------------------------------------------------------------------------- consistency
def test_consistency_identical_views_give_zero_and_the_target_gets_no_gradient():
    m = _method("consistency")
    table = torch.tensor([[1.0, 0.0, 2.0]])
    student = Fixed(table.clone())
    out = m.training_step(student, _batch([0], [2], views=2), 1)
    assert out.losses["consistency"].item() == pytest.approx(0.0, abs=1e-6)
    z1 = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    z2 = torch.tensor([[0.0, 2.0, 0.0]], requires_grad=True)
    a = kd_loss(z2.detach(), z1, 4.0) + kd_loss(z1.detach(), z2, 4.0)
    b = kd_loss(z1.detach(), z2, 4.0) + kd_loss(z2.detach(), z1, 4.0)
    assert a.item() == pytest.approx(b.item())  # symmetric in view order


def test_jsd_bounds():
    g = torch.Generator().manual_seed(2)
    z = [torch.randn(8, 5, generator=g) for _ in range(3)]
    v = float(jsd(z))
    assert 0 <= v <= math.log(3)
    assert float(jsd([z[0]] * 3)) == pytest.approx(0.0, abs=1e-6)
    sharp = [torch.eye(3)[i:i + 1] * 100 for i in range(3)]  # three disjoint one-hots reach log n
    assert float(jsd(sharp)) == pytest.approx(math.log(3), abs=1e-4)


# ------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("method", [
    {"name": "pskd"}, {"name": "tfkd_reg", "preset": "official"}, {"name": "tfkd_reg", "preset": "clean"},
    {"name": "dlb"}, {"name": "zipf"}, {"name": "zipf", "score": "logits"}, {"name": "consistency"},
    {"name": "consistency", "preset": "augmix"}, {"name": "consistency", "preset": "weak_strong"},
])
def test_one_epoch_end_to_end(tmp_path, method):
    summary = train(synthetic_config(tmp_path, method=method, train={"epochs": 1}))
    assert summary.epochs == 1 and math.isfinite(summary.last["test_nll"])


@pytest.mark.parametrize("method,key", [("pskd", "memory"), ("dlb", "cache")])
def test_state_survives_kill_and_resume(tmp_path, method, key):
    """Interrupt after epoch 1, resume, and end with exactly the state of an uninterrupted run."""
    class Stop(Exception):
        pass

    def stop(msg):
        if msg.startswith("epoch 2/2"):
            raise Stop

    cfg = synthetic_config(tmp_path / "a", name="r", method={"name": method}, data={"synthetic_size": 128})
    with pytest.raises(Stop):
        train(cfg, log=stop)
    train(cfg, resume=True, log=lambda m: None)
    ref_cfg = synthetic_config(tmp_path / "b", name="r", method={"name": method}, data={"synthetic_size": 128})
    train(ref_cfg, log=lambda m: None)
    a = load_checkpoint(tmp_path / "a" / "runs" / "r" / "last.pt")["method"][key]
    b = load_checkpoint(tmp_path / "b" / "runs" / "r" / "last.pt")["method"][key]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_consistency_mse_form_by_hand():
    m = _method("consistency", form="one_way", divergence="mse")
    table = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    student = Fixed(table)
    x = id_images([0])
    batch = Batch(x, torch.tensor([2]), torch.tensor([0]), [x, id_images([1])])
    out = m.training_step(student, batch, 1)
    expected = F.mse_loss(table[1].softmax(0), table[0].softmax(0))
    assert float(out.losses["consistency"].detach()) == pytest.approx(float(expected), abs=1e-7)
