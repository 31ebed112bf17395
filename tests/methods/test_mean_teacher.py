"""Supervised mean teacher: EMA updates, the ramp, no gradient to the teacher, end to end and resume."""

import copy
import math

import pytest
import torch

from selfdistill import train
from selfdistill.data import Batch
from selfdistill.engine.checkpoint import load_checkpoint
from selfdistill.engine.optim import ModelEMA
from selfdistill.methods import MethodContext, build_method
from selfdistill.run import resolve_config
from tests.helpers import synthetic_config


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.LazyLinear(3))


def _method(model, **opts):
    spec = resolve_config({"method": {"name": "mean_teacher", **opts}}).method
    m = build_method(spec, MethodContext(3, 8, 10, 10, torch.device("cpu")))
    m.setup(model)
    return m


def test_ema_extremes_and_copied_bn_buffers():
    model = _model()
    model(torch.randn(4, 3, 6, 6))
    for decay, same_as_student in ((0.0, True), (1.0, False)):
        ema = ModelEMA(model, decay, buffers="copy")
        before = {k: v.clone() for k, v in ema.module.state_dict().items()}
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        model.train()(torch.randn(4, 3, 6, 6) * 3)  # moves the BN running statistics
        ema.update(model)
        for k, v in ema.module.state_dict().items():
            if "running" in k or "num_batches" in k:
                assert torch.equal(v, model.state_dict()[k]), k  # buffers are copied, whatever the decay
            elif same_as_student:
                assert torch.equal(v, model.state_dict()[k]), k
            else:
                assert torch.equal(v, before[k]), k


def test_averaged_and_own_bn_buffers():
    model = _model()
    model(torch.randn(4, 3, 6, 6))
    avg, own = ModelEMA(model, 0.75, buffers="average"), ModelEMA(model, 0.75, buffers="own")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()(torch.randn(4, 3, 6, 6) * 3)  # moves the BN running statistics
    avg.update(model)
    own.update(model)
    bn = "1.running_var"
    torch.testing.assert_close(avg.module.state_dict()[bn], 0.75 * start[bn] + 0.25 * model.state_dict()[bn])
    assert torch.equal(own.module.state_dict()[bn], start[bn])  # left to the EMA model's own forwards
    assert torch.equal(own.module.state_dict()["1.num_batches_tracked"], start["1.num_batches_tracked"])


def test_default_bn_handling_is_mean_teachers_own():
    """Mean Teacher's code forwards the EMA teacher in train mode: it normalises by its own batch."""
    for spec in ({}, {"preset": "official"}, {"preset": "clean"}):
        assert resolve_config({"method": {"name": "mean_teacher", **spec}}).method["teacher_bn"] == "batch"


@pytest.mark.parametrize("teacher_bn", ["copy", "average", "batch"])
def test_teacher_bn_modes_give_the_target_and_keep_the_teacher_in_eval(teacher_bn):
    model = _model()
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
    model = _model()
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
    model = _model()
    model(torch.randn(2, 3, 6, 6))
    m = _method(model, ema_schedule="cosine", ema_decay=0.996)
    m.after_step(model)
    assert 0.996 <= m.ema.decay < 0.9961
    m.step = 99
    m.after_step(model)
    assert m.ema.decay == pytest.approx(1.0)


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
    model = _model()
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
