"""KD, DKD, SLD, SLD-self and their teachers: golden values, spec invariants, gradients, end-to-end runs."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfdistill import train
from selfdistill.bench.report import write_report
from selfdistill.data import Batch
from selfdistill.losses import kd_loss, kl_rows
from selfdistill.methods import MethodContext, build_method
from selfdistill.methods.dkd import dkd_terms
from selfdistill.methods.sld import swap_logits
from selfdistill.methods.teacher import Teacher, TeacherError
from selfdistill.run import evaluate, resolve_config
from tests.helpers import Fixed, id_images, synthetic_config

CTX = MethodContext(3, 8, 4, 1, torch.device("cpu"), mean=(0.5,), std=(0.5,))


def _method(name, teacher_table=None, **opts):
    spec = resolve_config({"method": {"name": name, **opts}}).method
    m = build_method(spec, CTX)
    if teacher_table is not None:  # the unit tests inject a fixed teacher instead of loading a checkpoint
        m.teacher = Teacher(Fixed(teacher_table), torch.ones(1), torch.zeros(1))
    return m


def _batch(ids, y, views=1):
    x = id_images(ids)
    return Batch(x, torch.tensor(y), torch.arange(len(y)), [x] * views)


# ------------------------------------------------------------------------------------------------ KD
def test_kd_golden_value():
    # teacher [0, 0] → p = [½, ½]; student [ln 3, 0] → q = [¾, ¼]
    t, s = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    assert float(kd_loss(t, s, T=1.0)) == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    q = math.sqrt(3) / (math.sqrt(3) + 1)  # T = 2: softmax([ln 3 / 2, 0])
    expected = 4 * 0.5 * (math.log(0.5 / q) + math.log(0.5 / (1 - q)))
    assert float(kd_loss(t, s, T=2.0)) == pytest.approx(expected, abs=1e-6)


def test_kd_method_loss_and_no_gradient_to_the_teacher():
    table_t = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 0.0]])
    m = _method("kd", teacher_table=table_t, T=2.0)
    student = Fixed(torch.tensor([[math.log(3.0), 0.0, 0.0], [0.0, 0.0, 1.0]]))
    out = m.training_step(student, _batch([0, 1], [0, 1]), 1)
    zs = student.table.detach()
    ce = float(F.cross_entropy(zs, torch.tensor([0, 1])))
    assert float(out.losses["ce"].detach()) == pytest.approx(0.1 * ce, abs=1e-6)
    assert float(out.losses["kd"].detach()) == pytest.approx(0.9 * float(kd_loss(table_t, zs, 2.0)), abs=1e-6)
    sum(out.losses.values()).backward()
    assert m.teacher.model.table.grad is None and student.table.grad.abs().sum() > 0


def test_kd_invariants():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 7, generator=g)
    assert float(kd_loss(z, z, T=3.0)) == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(5, 7, generator=g)
    shifted = kd_loss(z + torch.randn(5, 1, generator=g), s + 4.0, T=3.0)
    assert float(shifted) == pytest.approx(float(kd_loss(z, s, T=3.0)), abs=1e-5)
    assert float(kd_loss(z, s, 3.0, "elementwise_mean")) == pytest.approx(float(kd_loss(z, s, 3.0)) / 7, rel=1e-6)


# ----------------------------------------------------------------------------------------------- DKD
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
    g = torch.Generator().manual_seed(1)
    zt, zs, y = torch.randn(16, 10, generator=g) * 3, torch.randn(16, 10, generator=g) * 3, torch.randint(0, 10, (16,))
    kd = kl_rows(F.softmax(zt / T, 1), F.log_softmax(zs / T, 1)) * T * T
    p_ty = F.softmax(zt / T, 1).gather(1, y[:, None])[:, 0]
    tckd, nckd = dkd_terms(zt, zs, y, T, math.inf)
    torch.testing.assert_close(tckd + (1 - p_ty) * nckd, kd, atol=1e-5, rtol=1e-5)
    tckd_o, nckd_o = dkd_terms(zt, zs, y, T, 1000.0)  # the official −1000 mask
    torch.testing.assert_close(tckd_o + (1 - p_ty) * nckd_o, kd, atol=1e-5, rtol=1e-5)


def test_dkd_warmup_is_linear_and_capped():
    table = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]])
    m = _method("dkd", teacher_table=table * 2, preset="clean", warmup=20)
    student = Fixed(table)
    nckd = [float(m.training_step(student, _batch([0, 1], [0, 2]), e).losses["nckd"].detach()) for e in (1, 10, 20, 40)]
    assert nckd[1] == pytest.approx(10 * nckd[0], rel=1e-5)
    assert nckd[2] == pytest.approx(20 * nckd[0], rel=1e-5) and nckd[3] == pytest.approx(nckd[2], rel=1e-6)


# ----------------------------------------------------------------------------------------------- SLD
def _random_logits(seed=0, b=64, k=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g), torch.randint(0, k, (b,), generator=g)


def _entropy(z, T):
    return -(F.softmax(z / T, 1) * F.log_softmax(z / T, 1)).sum(1)


def test_swap_logits_invariants():
    z, y = _random_logits()
    s = swap_logits(z, y)
    torch.testing.assert_close(s.sort(1).values, z.sort(1).values)  # a per-row permutation
    torch.testing.assert_close(s.logsumexp(1), z.logsumexp(1))
    assert torch.equal(s.argmax(1), y)
    correct = z.argmax(1) == y
    assert correct.any() and (~correct).any()
    assert torch.equal(s[correct], z[correct])
    changed = (s != z).sum(1)
    assert torch.all(changed[~correct] == 2) and torch.all(changed[correct] == 0)
    assert torch.equal(swap_logits(s, y), s)  # idempotent
    for T in (1.0, 3.0):  # entropy of σ_T unchanged
        torch.testing.assert_close(_entropy(s, T), _entropy(z, T))


def test_swap_logits_hand_example_ties_and_gradient():
    z = torch.tensor([[1.0, 3.0, 2.0], [2.0, 2.0, 0.0]], requires_grad=True)
    s = swap_logits(z, torch.tensor([2, 1]))
    # row 0: arg-max 1 ≠ label 2 → entries 1 and 2 exchange; row 1: tie, arg-max 0 with z_0 = z_1 → unchanged
    assert s.tolist() == [[1.0, 2.0, 3.0], [2.0, 2.0, 0.0]]
    (s * torch.tensor([[1.0, 10.0, 100.0], [0.0, 0.0, 0.0]])).sum().backward()
    assert z.grad[0].tolist() == [1.0, 100.0, 10.0]  # gradient flows through the copy, swapped back


def test_swap_kl_closed_form():
    z, y = _random_logits(2)
    for T in (1.0, 2.5):
        p = F.softmax(z / T, 1)
        m = z.argmax(1)
        pm, py = p.gather(1, m[:, None])[:, 0], p.gather(1, y[:, None])[:, 0]
        kl = kl_rows(F.softmax(swap_logits(z, y) / T, 1), F.log_softmax(z / T, 1))
        torch.testing.assert_close(kl, (pm - py) * (pm.log() - py.log()), atol=1e-6, rtol=1e-5)


def test_sld_reduces_to_hinton_kd():
    ts, ss = torch.tensor([[0.0, 2.0, 1.0], [1.0, 0.0, 3.0]]), torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 2.0]])
    batch = _batch([0, 1], [0, 2])
    sld = _method("sld", teacher_table=ts, swap_teacher=False, swap_student=False, temps=[4.0], two_views=False)
    kd = _method("kd", teacher_table=ts, T=4.0)
    a = sld.training_step(Fixed(ss), batch, 200).losses
    b = kd.training_step(Fixed(ss), batch, 200).losses
    assert float(sum(a.values()).detach()) == pytest.approx(float(sum(b.values()).detach()), abs=1e-6)


def test_sld_gamma_schedule_and_multi_temperature_sum():
    ts, ss = torch.tensor([[0.0, 2.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # K = 2
    batch = _batch([0, 1], [1, 0], views=2)
    m = _method("sld", teacher_table=ts, gamma=3)
    before, after = m.training_step(Fixed(ss), batch, 3).losses, m.training_step(Fixed(ss), batch, 4).losses
    assert "kd_self" not in before and after["kd_self"].item() > 0
    # both rows are wrong; the summed terms over T = 1..6 and two (here identical) views
    z, y = ss, torch.tensor([1, 0])
    expected = 0.9 * 2 * sum(float(kd_loss(swap_logits(z, y), z, T)) for T in range(1, 7))
    assert after["kd_self"].item() == pytest.approx(expected, rel=1e-5)
    assert after["kd_teacher"].item() == pytest.approx(
        0.9 * 2 * sum(float(kd_loss(swap_logits(ts, y), z, T)) for T in range(1, 7)), rel=1e-5)


@pytest.mark.parametrize("detach", [False, True])
def test_sld_pseudo_teacher_gradient(detach):
    ss = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 0.5]])
    batch = _batch([0, 1], [1, 1])
    m = _method("sld_self", gamma=0, detach_pseudo_teacher=detach, w_ce=0.0, two_views=False)
    student = Fixed(ss.clone())
    m.training_step(student, batch, 1).losses["kd_self"].backward()
    z = ss.clone().requires_grad_(True)
    target = swap_logits(z, torch.tensor([1, 1]))
    sum(kd_loss(target.detach(), z, T) for T in range(1, 7)).backward()  # gradient through the prediction only
    if detach:
        torch.testing.assert_close(student.table.grad, z.grad)
    else:
        assert not torch.allclose(student.table.grad, z.grad, atol=1e-4)


def test_sld_self_vanishes_on_correct_rows():
    ss = torch.tensor([[3.0, 0.0, 1.0]])
    out = _method("sld_self", gamma=0, two_views=False).training_step(Fixed(ss), _batch([0], [0]), 1)
    assert out.losses["kd_self"].item() == pytest.approx(0.0, abs=1e-5)


# ------------------------------------------------------------------------------------------- teachers
def test_teacher_renormalises_inputs():
    class Echo(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)

    s_mean, s_std, t_mean, t_std = torch.tensor([0.5]), torch.tensor([0.25]), torch.tensor([0.2]), torch.tensor([0.1])
    teacher = Teacher(Echo(), s_std / t_std, (s_mean - t_mean) / t_std)
    u = torch.rand(2, 1, 2, 2)  # raw pixels in [0, 1]
    torch.testing.assert_close(teacher((u - s_mean) / s_std), ((u - t_mean) / t_std).flatten(1))


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A small teacher trained by the library itself (2 epochs on synthetic data)."""
    tmp = tmp_path_factory.mktemp("teacher")
    train(synthetic_config(tmp, name="teacher", model={"name": "resnet14"}))
    return tmp / "runs" / "teacher" / "last.pt"


@pytest.mark.parametrize("method", [
    {"name": "kd"}, {"name": "dkd", "preset": "clean", "warmup": 1}, {"name": "sld", "gamma": 1},
    {"name": "sld_self", "gamma": 1}, {"name": "tfkd_self", "preset": "official"},
])
def test_end_to_end_with_a_trained_teacher(tmp_path, teacher_ckpt, method):
    if method["name"] != "sld_self":
        method = {**method, "teacher": str(teacher_ckpt)}
    summary = train(synthetic_config(tmp_path, method=method))
    assert summary.epochs == 2 and math.isfinite(summary.last["test_top1"])
    if method["name"] != "sld_self":
        measured = summary.teachers["teacher"]["test"]["top1"]
        assert measured == pytest.approx(evaluate(teacher_ckpt)["top1"], abs=1e-9)
        report = write_report(tmp_path / "runs", tmp_path / "report").read_text()
        assert "Teachers, measured at the start" in report and f"| {measured:.2f} |" in report
    else:
        assert summary.teachers == {}


def test_teacher_errors_are_clear(tmp_path, teacher_ckpt):
    cfg = synthetic_config(tmp_path, method={"name": "kd", "teacher": str(teacher_ckpt)}, data={"num_classes": 4})
    with pytest.raises(TeacherError, match="predicts 10 classes, this run's data has 4"):
        train(cfg)
    plain = tmp_path / "weights.pt"
    torch.save(torch.load(teacher_ckpt, weights_only=True)["model"], plain)
    with pytest.raises(TeacherError, match=r"plain state dict: set method\.teacher_model"):
        train(synthetic_config(tmp_path, method={"name": "kd", "teacher": str(plain)}))
    with pytest.raises(TeacherError, match="do not fit a 'resnet8'"):
        train(synthetic_config(tmp_path, method={"name": "kd", "teacher": str(plain), "teacher_model": "resnet8"}))
    with pytest.raises(TeacherError, match="needs a teacher"):
        train(synthetic_config(tmp_path, method={"name": "kd"}))
    # a plain state dict with the right architecture works
    summary = train(synthetic_config(tmp_path, name="plain", train={"epochs": 1},
                                     method={"name": "kd", "teacher": str(plain), "teacher_model": "resnet14"}))
    assert summary.teachers["teacher"]["test"]["top1"] == pytest.approx(evaluate(teacher_ckpt)["top1"])
