"""DINO: the loss against a straightforward re-computation, centring, EMA teacher, multi-crop, k-NN, end to end."""

import math

import pytest
import torch

from conftest import synthetic_config
from selfdistill import train
from selfdistill.batch import DataRequirements, MultiCrop
from selfdistill.config import DataConfig
from selfdistill.data import DataModule
from selfdistill.methods import MethodContext, build_method
from selfdistill.methods.dino import dino_loss, knn_accuracy
from selfdistill.models import build_model
from selfdistill.run import resolve_config


def _reference_loss(student, teacher, center, tau_s, tau_t):
    """Straightforward re-computation: explicit loops over crops, rows and classes."""
    total, pairs = 0.0, 0
    for i, t in enumerate(teacher):
        for j, s in enumerate(student):
            if i == j:
                continue  # the same view is never its own target
            row_sum = 0.0
            for b in range(t.shape[0]):
                tt = [(float(t[b, k]) - float(center[0, k])) / tau_t for k in range(t.shape[1])]
                mt = max(tt)
                pt = [math.exp(v - mt) for v in tt]
                zt = sum(pt)
                ss = [float(s[b, k]) / tau_s for k in range(s.shape[1])]
                ms = max(ss)
                lse = ms + math.log(sum(math.exp(v - ms) for v in ss))
                row_sum += -sum(p / zt * (v - lse) for p, v in zip(pt, ss, strict=True))
            total += row_sum / t.shape[0]
            pairs += 1
    return total / pairs, pairs


def test_loss_matches_reference_and_pair_count():
    g = torch.Generator().manual_seed(0)
    n_global, n_local = 2, 3
    student = [torch.randn(4, 6, generator=g) for _ in range(n_global + n_local)]
    teacher = [torch.randn(4, 6, generator=g) for _ in range(n_global)]
    center = torch.randn(1, 6, generator=g) * 0.1
    ref, pairs = _reference_loss(student, teacher, center, 0.1, 0.04)
    assert pairs == 2 * (2 + n_local) - 2
    assert float(dino_loss(student, teacher, center, 0.1, 0.04)) == pytest.approx(ref, rel=1e-5)
    shifted = dino_loss([s + torch.randn(4, 1, generator=g) for s in student],
                        [t + torch.randn(4, 1, generator=g) for t in teacher], center, 0.1, 0.04)
    assert float(shifted) == pytest.approx(ref, rel=1e-4)  # a constant per row changes nothing


def _dino(model, **opts):
    spec = resolve_config({"method": {"name": "dino", "out_dim": 16, "hidden_dim": 32, "bottleneck_dim": 8,
                                      **opts}}).method
    m = build_method(spec, MethodContext(10, 64, 2, 4, torch.device("cpu"), in_chans=3, image_size=16))
    m.setup(model)
    return m


def _batch(n_views=6, size=(16, 16, 16, 16, 8, 8)):
    from selfdistill.data import Batch

    g = torch.Generator().manual_seed(3)
    views = [torch.randn(4, 3, s, s, generator=g) for s in size[:n_views]]
    return Batch(views[0], torch.zeros(4, dtype=torch.long), torch.arange(4), views)


def test_centre_update_and_teacher_gets_no_gradient():
    torch.manual_seed(0)
    model = build_model("resnet8", 10, 3)
    m = _dino(model, n_local=2, center_momentum=0.9)
    batch = _batch(4, (16, 16, 8, 8))
    with torch.no_grad():
        m.teacher.module.train()  # the teacher runs with batch statistics, as in the official code
        m.teacher.module["backbone"](torch.cat(batch.views[:2]))
        t_out = m.teacher.module["head"](m.feats["teacher"])
    old = m.center.clone()
    out = m.training_step(model, batch, 2)
    out.losses["dino"].backward()
    assert all(p.grad is None for p in m.teacher.module.parameters())
    assert any(p.grad is not None for p in m.head.parameters())
    expected = 0.9 * old + 0.1 * t_out.float().mean(0, keepdim=True)
    torch.testing.assert_close(m.center, expected, atol=1e-5, rtol=1e-4)


def test_teacher_momentum_schedule_and_last_layer_freeze():
    torch.manual_seed(0)
    model = build_model("resnet8", 10, 3)
    m = _dino(model, momentum_teacher=0.996, freeze_last_layer=1)
    m.on_epoch_start(1)
    assert not m.head.last.parametrizations.weight.original1.requires_grad
    m.on_epoch_start(2)
    assert m.head.last.parametrizations.weight.original1.requires_grad
    m.after_step(model)
    assert 0.996 <= m.teacher.decay < 0.997
    m.step = 7
    m.after_step(model)  # step 8 of 2 epochs × 4 steps: the end of the cosine
    assert m.teacher.decay == pytest.approx(1.0)


@pytest.mark.parametrize("warmup", [1, 2, 30])
def test_teacher_temperature_warmup_is_dinos_linspace(warmup):
    """DINO's schedule: ``np.linspace(start, final, W)`` for the 0-based epochs 0..W−1, then ``final``."""
    import numpy as np

    model = build_model("resnet8", 10, 3)
    m = _dino(model, teacher_temp=0.04, teacher_temp_final=0.07, teacher_temp_warmup_epochs=warmup)
    official = np.concatenate([np.linspace(0.04, 0.07, warmup), np.full(40, 0.07)])
    for epoch in range(1, 36):  # 1-based here, 0-based there
        assert m.teacher_temp(epoch) == pytest.approx(float(official[epoch - 1]), abs=1e-12), epoch
    if warmup == 2:
        assert m.teacher_temp(2) == pytest.approx(0.07)  # the final value in the W-th epoch


def test_multicrop_batches_and_same_resolution_batching():
    dm = DataModule(DataConfig(name="synthetic", synthetic_size=32, batch_size=8, num_classes=4, image_size=16))
    req = DataRequirements(multicrop=MultiCrop(2, 3, 16, 8))
    b = next(dm.train_loader(req, seed=0).iterate(1))
    assert [tuple(v.shape[-2:]) for v in b.views] == [(16, 16)] * 2 + [(8, 8)] * 3
    assert not torch.equal(b.views[0], b.views[1])
    torch.manual_seed(0)
    model = build_model("resnet8", 4, 3).eval()
    with torch.no_grad():
        joint = model(torch.cat(b.views[2:]))
        apart = torch.cat([model(v) for v in b.views[2:]])
    torch.testing.assert_close(joint, apart, atol=1e-5, rtol=1e-5)


def test_knn_hand_example():
    train_f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    train_y = torch.tensor([0, 0, 1])
    test_f = torch.tensor([[1.0, 0.05], [0.1, 1.0]])
    assert knn_accuracy(train_f, train_y, test_f, torch.tensor([0, 1]), 2, k=1) == 100.0
    assert knn_accuracy(train_f, train_y, test_f, torch.tensor([1, 1]), 2, k=1) == 50.0


def test_dino_on_digits_evaluates_knn_and_probe_without_labels(tmp_path):
    """End to end on the digits: k-NN and probe far above chance (10 %). Random-initialised features already reach
    about 90 % k-NN here, so this checks the self-supervised run and its evaluation (bank, labels, probe), not
    that 4 epochs of DINO improve the features."""
    cfg = synthetic_config(tmp_path, method={"name": "dino", "out_dim": 256, "hidden_dim": 256, "bottleneck_dim": 64,
                                             "global_size": 8, "local_size": 4, "n_local": 2},
                           data={"name": "digits", "batch_size": 64, "augment": {"crop_padding": 0}},
                           optim={"lr": 0.03}, train={"epochs": 4})
    cfg["data"].pop("synthetic_size")
    cfg["data"].pop("image_size")
    s = train(cfg)
    knn = s.extra_last
    assert not s.supervised
    assert knn["knn_teacher_test_top1"] > 60 and knn["knn_student_test_top1"] > 60  # chance is 10 %
    assert knn["probe_student_test_top1"] > 60
    assert math.isfinite(s.last["test_nll"])
    rows = (tmp_path / "runs").rglob("metrics.csv")
    assert "train_teacher_entropy" in next(rows).read_text().splitlines()[0]  # collapse monitors are logged
    from selfdistill.bench.report import write_report

    report = write_report(tmp_path / "runs", tmp_path / "report").read_text()
    assert "Self-supervised" in report and "knn_teacher_test_top1" in report
    assert "test top-1 (last)" not in report  # no supervised table for a self-supervised run
