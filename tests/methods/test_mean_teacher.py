"""Supervised mean teacher: EMA updates, the ramp, no gradient to the teacher, end to end and resume."""

import copy
import math

import pytest
import torch

from selfdistill import train
from selfdistill.data import Batch
from selfdistill.engine.checkpoint import load_checkpoint
from selfdistill.methods import MethodContext, build_method
from selfdistill.run import resolve_config
from tests.helpers import Fixed, id_images, small_bn_net, synthetic_config

OFFICIAL = "https://github.com/CuriousAI/mean-teacher/tree/546348ff863c998c26be4339021425df973b4a36"
"""Mean Teacher's PyTorch code (``pytorch/main.py``: the EMA model forwarded in training mode; the EMA decay warmed
up as ``min(1 − 1/(global_step + 1), α)``, ``global_step`` counted from 1 at the first update, lines 189-193 and
289-290; ``mean_teacher/losses.py``: ``softmax_mse_loss`` summed ÷ K, then ÷ B by the caller, i.e. a mean over B·K)
the ``official`` preset's BatchNorm handling, EMA schedule and MSE form below were checked against. Not reproduced:
that code initialises the EMA model on its own (another random draw), where the library starts it as the student."""


def _method(model, **opts):
    spec = resolve_config({"method": {"name": "mean_teacher", **opts}}).method
    m = build_method(spec, MethodContext(3, 8, 10, 10, torch.device("cpu")))
    m.setup(model)
    return m


@pytest.mark.parametrize("consistency,expected", [
    ("mse_prob", 2.0 * 8 / 225),  # mean of (⅓ − ⅕)², (⅓ − ⅗)², (⅓ − ⅕)²
    ("kl", 2.0 * (2 / 5 * math.log(3 / 5) + 3 / 5 * math.log(9 / 5))),  # KL([⅕, ⅗, ⅕] ‖ ⅓ each), T = 1
])
def test_losses_by_hand_on_fixed_logits(consistency, expected):
    """The EMA teacher starts as the student: it reads the weak view (image 0, σ = [⅕, ⅗, ⅕]) and the student the
    second view (image 1, σ = ⅓ each); with no ramp the consistency weight is λ = 2. ``mse_prob`` is the mean
    over B·K of ``softmax_mse_loss`` in :data:`OFFICIAL`."""
    student = Fixed(torch.tensor([[0.0, math.log(3.0), 0.0], [0.0, 0.0, 0.0]]))
    m = _method(student, consistency=consistency, T=1.0, lam=2.0, ramp_fraction=0.0)
    batch = Batch(id_images([0]), torch.tensor([1]), torch.tensor([0]), [id_images([0]), id_images([1])])
    out = m.training_step(student, batch, 1)
    assert out.losses["ce"].item() == pytest.approx(math.log(3.0), rel=1e-6)
    assert out.losses["consistency"].item() == pytest.approx(expected, rel=1e-5)


def test_default_bn_handling_is_mean_teachers_own():
    """Mean Teacher's code (:data:`OFFICIAL`, ``ema_model.train()``) forwards the EMA teacher in train mode: it
    normalises by its own batch."""
    for spec in ({}, {"preset": "official"}, {"preset": "clean"}):
        assert resolve_config({"method": {"name": "mean_teacher", **spec}}).method["teacher_bn"] == "batch"


@pytest.mark.parametrize("teacher_bn", ["copy", "average", "batch"])
def test_teacher_bn_modes_give_the_target_and_keep_the_teacher_in_eval(teacher_bn):
    model = small_bn_net()
    x = torch.randn(4, 3, 6, 6) * 2 + 1
    model(x)
    m = _method(model, teacher_bn=teacher_bn, consistency="mse_prob", ramp_fraction=0.0)
    teacher = m.ema.module
    before = teacher.state_dict()["1.running_mean"].clone()
    with torch.no_grad():
        zs = model.train()(x)
        # the target: eval mode (running statistics), or the batch's own statistics for "batch"
        zt = copy.deepcopy(teacher).train(teacher_bn == "batch")(x)
    out = m.training_step(model, Batch(x, torch.tensor([0, 1, 2, 0]), torch.arange(4), [x, x]), 1)
    expected = torch.nn.functional.mse_loss(zs.softmax(1), zt.softmax(1))
    assert float(out.losses["consistency"].detach()) == pytest.approx(float(expected), rel=1e-5)
    assert not teacher.training
    moved = not torch.equal(teacher.state_dict()["1.running_mean"], before)
    assert moved == (teacher_bn == "batch")  # only a train-mode forward updates the teacher's own statistics


def test_ramp_and_no_gradient_to_the_teacher():
    model = small_bn_net()
    x = torch.randn(4, 3, 6, 6)
    model(x)
    m = _method(model, lam=2.0, ramp_fraction=0.5)  # ramp over 0.5 × 10 epochs × 10 steps = 50 steps
    assert m.weight() == pytest.approx(2.0 * math.exp(-5))
    batch = Batch(x, torch.tensor([0, 1, 2, 0]), torch.arange(4), [x, x.flip(3)])
    out = m.training_step(model, batch, 1)
    sum(out.losses.values()).backward()
    assert all(p.grad is None for p in m.ema.module.parameters())
    m.step = 25
    assert m.weight() == pytest.approx(2.0 * math.exp(-5 * 0.25))
    m.step = 80
    assert m.weight() == pytest.approx(2.0)


def test_cosine_decay_schedule_reaches_one():
    model = small_bn_net()
    model(torch.randn(2, 3, 6, 6))
    m = _method(model, ema_schedule="cosine", ema_decay=0.996)
    m.after_step(model)
    assert 0.996 <= m.ema.decay < 0.9961
    m.step = 99
    m.after_step(model)
    assert m.ema.decay == pytest.approx(1.0)


def test_warmup_decay_by_hand():
    """One weight, 0 at the start; the student moves to 1, 4, 2, 0. Decays min(1 − 1/(n + 1), 0.7): ½, ⅔, 0.7, 0.7.
    EMA: ½; ⅔·½ + ⅓·4 = 5/3 (the mean of 0, 1, 4); 0.7·5/3 + 0.3·2 = 53/30; 0.7·53/30 = 371/300."""
    student = Fixed(torch.zeros(1, 1))
    m = _method(student, preset="official", ema_decay=0.7)
    decays, logged, values = [], [], []
    for w in (1.0, 4.0, 2.0, 0.0):
        student.table.data.fill_(w)
        logged.append(m.decay_at(m.step))  # what the step's training_step logs as ema_decay
        m.after_step(student)
        decays.append(m.ema.decay)
        values.append(float(m.ema.module.table))
    assert decays == pytest.approx([1 / 2, 2 / 3, 0.7, 0.7]) and logged == decays
    assert values == pytest.approx([1 / 2, 5 / 3, 53 / 30, 371 / 300])


def test_official_preset_matches_update_ema_variables():
    """``update_ema_variables`` of :data:`OFFICIAL` (``main.py`` lines 189-193, called after ``global_step += 1``),
    re-implemented, against the ``official`` preset over 40 random steps (α = 0.95 is reached at step 19)."""
    torch.manual_seed(0)
    model = small_bn_net()
    model(torch.randn(2, 3, 6, 6))
    m = _method(model, preset="official", ema_decay=0.95)
    reference = copy.deepcopy(model)
    for global_step in range(1, 41):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        m.after_step(model)
        alpha = min(1 - 1 / (global_step + 1), 0.95)
        with torch.no_grad():
            for ema_param, param in zip(reference.parameters(), model.parameters(), strict=True):
                ema_param.mul_(alpha).add_(param, alpha=1 - alpha)
    for (name, ours), theirs in zip(m.ema.module.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, msg=name)


def test_end_to_end_reports_the_teacher_and_resumes_exactly(tmp_path):
    class Stop(Exception):
        pass

    def stop(msg):
        if msg.startswith("epoch 2/2"):
            raise Stop

    cfg = synthetic_config(tmp_path / "a", name="mt", method={"name": "mean_teacher", "ema_decay": 0.9})
    with pytest.raises(Stop):
        train(cfg, log=stop)
    s = train(cfg, resume=True, log=lambda m: None)
    assert math.isfinite(s.eval_models_last["teacher"]["top1"])
    ref = train(synthetic_config(tmp_path / "b", name="mt", method={"name": "mean_teacher", "ema_decay": 0.9}),
                log=lambda m: None)
    a = load_checkpoint(tmp_path / "a" / "runs" / "mt" / "last.pt")["method"]
    b = load_checkpoint(tmp_path / "b" / "runs" / "mt" / "last.pt")["method"]
    assert a["step"] == b["step"] and all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    assert ref.eval_models_last == s.eval_models_last


def test_sharpened_centred_target_and_centre_update():
    model = small_bn_net()
    x = torch.randn(4, 3, 6, 6)
    model(x)
    m = _method(model, teacher_temp=0.5, T=1.0, ramp_fraction=0.0, center_momentum=0.9, teacher_bn="copy")
    batch = Batch(x, torch.tensor([0, 1, 2, 0]), torch.arange(4), [x, x])
    with torch.no_grad():
        zt = m.ema.module(x).float()
        zs = model(x).float()
    out = m.training_step(model, batch, 1)
    target = torch.softmax(zt / 0.5, 1)  # the centre starts at 0
    expected = (target * (target.log() - torch.log_softmax(zs, 1))).sum(1).mean()
    assert float(out.losses["consistency"].detach()) == pytest.approx(float(expected), rel=1e-4)
    torch.testing.assert_close(m.center, 0.1 * zt.mean(0, keepdim=True))


@pytest.mark.parametrize("schedule", ["warmup", "cosine", "constant"])
def test_the_logged_decay_is_the_one_the_steps_update_uses(schedule):
    model = small_bn_net()
    x = torch.randn(4, 3, 6, 6)
    model(x)
    m = _method(model, ema_schedule=schedule, ema_decay=0.9)
    batch = Batch(x, torch.tensor([0, 1, 2, 0]), torch.arange(4), [x, x.flip(3)])
    for _ in range(3):
        logged = float(m.training_step(model, batch, 1).stats["ema_decay"])
        m.after_step(model)
        assert logged == pytest.approx(m.ema.decay)
    assert logged == pytest.approx({"warmup": 3 / 4, "cosine": 1 - 0.05 * (1 + math.cos(math.pi * 3 / 100)),
                                    "constant": 0.9}[schedule])
