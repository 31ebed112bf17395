"""DINO: the loss against a straightforward re-computation, centring, EMA teacher, multi-crop, k-NN, end to end."""

import copy
import math
import re
import warnings

import pytest
import torch
import yaml

from selfdistill import train
from selfdistill.config import ConfigError, DataConfig
from selfdistill.data import DataModule
from selfdistill.engine.checkpoint import load_checkpoint, save_checkpoint
from selfdistill.methods import MethodContext, build_method
from selfdistill.methods.dino import TeacherCollapseWarning, dino_loss, knn_accuracy, teacher_instruments
from selfdistill.models import build_model
from selfdistill.run import resolve_config
from tests.helpers import synthetic_config

OFFICIAL = "https://github.com/facebookresearch/dino/tree/7c446df5b9f45747937fb0d72314eb9f7b66930a"
"""The official code (``main_dino.py``: ``DINOLoss``, the schedules, ``MultiCropWrapper`` and
``cancel_gradients_last_layer`` in ``utils.py``) the loss, the schedules and the head below were checked against."""


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
    """The loss against a loop written after ``DINOLoss.forward`` of :data:`OFFICIAL` (the teacher's own crop is no
    target), its pair count, and its invariance to a constant per row."""
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


def test_loss_by_hand_with_two_global_crops():
    """Two global crops, no local ones: each teacher crop teaches the other crop only (``DINOLoss`` of
    :data:`OFFICIAL`). Centred teacher outputs (τ_t = 1)
    [ln 3, 0] and [0, 0] give [¾, ¼] and [½, ½]; student outputs at τ_s = ½ give log σ = ln [¾, ¼] (crop 2) and
    ln [½, ½] (crop 1)."""
    center = torch.tensor([[1.0, 0.0]])
    teacher = [torch.tensor([[1.0 + math.log(3.0), 0.0]]), torch.tensor([[1.0, 0.0]])]
    student = [torch.zeros(1, 2), torch.tensor([[math.log(3.0) / 2, 0.0]])]
    pair_1_teaches_2 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    pair_2_teaches_1 = math.log(2.0)
    expected = (pair_1_teaches_2 + pair_2_teaches_1) / 2
    assert float(dino_loss(student, teacher, center, 0.5, 1.0)) == pytest.approx(expected, rel=1e-6)


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
    """``update_center`` of :data:`OFFICIAL`: ``c ← m·c + (1 − m)·mean(teacher outputs)``; the teacher, forwarded in
    training mode as there, gets no gradient."""
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


def test_last_layer_freeze():
    """``cancel_gradients_last_layer`` of :data:`OFFICIAL` drops the last layer's gradient while the 0-based epoch is
    below ``freeze_last_layer``: frozen in (1-based) epoch 1, trained from epoch 2."""
    torch.manual_seed(0)
    model = build_model("resnet8", 10, 3)
    m = _dino(model, freeze_last_layer=1)
    m.on_epoch_start(1)
    assert not m.head.last.parametrizations.weight.original1.requires_grad
    m.on_epoch_start(2)
    assert m.head.last.parametrizations.weight.original1.requires_grad


def test_teacher_update_uses_dinos_momentum_of_each_step():
    """The update after the 0-based step ``it`` is ``t ← m·t + (1 − m)·s`` with ``m = momentum_schedule[it]`` of
    :data:`OFFICIAL` (``main_dino.py``, ``utils.cosine_scheduler(0.996, 1, epochs, niter_per_ep)``): 0.996 at the
    first update, ``1 − 0.002·(1 + cos(π·7/8))`` (below 1) at the last of 2 × 4 steps."""
    torch.manual_seed(0)
    model = build_model("resnet8", 10, 3)
    m = _dino(model, momentum_teacher=0.996)
    official = [1 + 0.5 * (0.996 - 1) * (1 + math.cos(math.pi * it / 8)) for it in range(8)]
    name, s_param = next((n, p) for n, p in model.named_parameters() if p.ndim == 4)
    t_param = m.teacher.module["backbone"].get_parameter(name)
    for it in range(8):
        with torch.no_grad():
            s_param.add_(1.0)  # the student moves away from the teacher
        before = t_param.detach().clone()
        m.after_step(model)
        torch.testing.assert_close(t_param, official[it] * before + (1 - official[it]) * s_param.detach(),
                                   rtol=0, atol=1e-6)


def test_head_starts_as_the_official_one():
    """``DINOHead._init_weights`` of :data:`OFFICIAL`: the MLP's linear weights from ``trunc_normal_(std=.02)`` (its
    bounds ±2 are absolute), biases 0; the weight-normalised last layer's gain 1; BatchNorm only with ``use_bn``."""
    from selfdistill.methods.dino import DINOHead

    torch.manual_seed(0)
    for use_bn in (False, True):
        head = DINOHead(64, out_dim=32, hidden=512, bottleneck=16, use_bn=use_bn)
        linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
        assert [tuple(m.weight.shape) for m in linears] == [(512, 64), (512, 512), (16, 512)]
        for m in linears:
            assert m.weight.std().item() == pytest.approx(0.02, rel=0.05)  # PyTorch's default: 1/sqrt(3·fan_in)
            assert m.weight.mean().abs().item() < 0.002 and not m.bias.any()
        assert any(isinstance(m, torch.nn.BatchNorm1d) for m in head.mlp) == use_bn
        assert torch.equal(head.last.parametrizations.weight.original0, torch.ones(32, 1))
    old = DINOHead(64, out_dim=32, hidden=512, bottleneck=16, init="pytorch")  # the library before 2026-12-07
    assert old.mlp[0].weight.std().item() == pytest.approx(1 / math.sqrt(3 * 64), rel=0.05) and old.mlp[0].bias.any()


def test_teacher_update_moves_parameters_and_leaves_its_batchnorm_statistics_its_own():
    """The official update (``main_dino.py``) averages ``student.parameters()`` into the teacher's and nothing else:
    the teacher's BatchNorm statistics come from its own forwards, not from the student's, which see local crops."""
    torch.manual_seed(0)
    model = build_model("resnet8", 10, 3)
    m = _dino(model, n_local=2)
    batch = _batch(4, (16, 16, 8, 8))
    m.training_step(model, batch, 1)  # the student's and the teacher's forwards update their own statistics
    name = next(n for n, b in model.named_buffers() if n.endswith("running_mean"))
    student_stats = model.get_buffer(name)
    teacher_stats = m.teacher.module["backbone"].get_buffer(name)
    assert not torch.allclose(student_stats, teacher_stats)
    before = teacher_stats.clone()
    p_name, p = next((n, q) for n, q in model.named_parameters() if q.ndim == 4)
    with torch.no_grad():
        p.add_(1.0)
    t_param = m.teacher.module["backbone"].get_parameter(p_name)
    t_before = t_param.detach().clone()
    m.after_step(model)
    assert torch.equal(teacher_stats, before)
    assert not torch.equal(t_param, t_before)
    # teacher_bn: average (the library before 2026-12-07) moves them towards the student's like the weights
    torch.manual_seed(0)
    model = build_model("resnet8", 10, 3)
    m = _dino(model, n_local=2, teacher_bn="average", momentum_teacher=0.9)
    m.training_step(model, batch, 1)
    student_stats, teacher_stats = model.get_buffer(name), m.teacher.module["backbone"].get_buffer(name)
    expected = 0.9 * teacher_stats + 0.1 * student_stats
    m.after_step(model)
    torch.testing.assert_close(teacher_stats, expected)


@pytest.mark.parametrize("warmup", [1, 2, 30])
def test_teacher_temperature_warmup_is_dinos_linspace(warmup):
    """DINO's schedule (``DINOLoss.teacher_temp_schedule`` of :data:`OFFICIAL`): ``np.linspace(start, final, W)``
    for the 0-based epochs 0..W−1, then ``final``."""
    import numpy as np

    model = build_model("resnet8", 10, 3)
    m = _dino(model, teacher_temp=0.04, teacher_temp_final=0.07, teacher_temp_warmup_epochs=warmup)
    official = np.concatenate([np.linspace(0.04, 0.07, warmup), np.full(40, 0.07)])
    for epoch in range(1, 36):  # 1-based here, 0-based there
        assert m.teacher_temp(epoch) == pytest.approx(float(official[epoch - 1]), abs=1e-12), epoch
    if warmup == 2:
        assert m.teacher_temp(2) == pytest.approx(0.07)  # the final value in the W-th epoch


def test_agreement_reads_the_centred_teacher_on_the_same_global_crop():
    """At the first step the student and its teacher are the same network on the same global crops: every crop's
    argmax agrees. A centre that favours one prototype moves the teacher's argmax and the agreement drops."""
    torch.manual_seed(0)
    model = build_model("resnet8", 10, 3)
    m = _dino(model, n_local=2)
    batch = _batch(4, (16, 16, 8, 8))
    assert float(m.training_step(model, batch, 1).stats["student_teacher_agreement"]) == 1.0
    m.center.zero_()
    m.center[0, 0] = -100.0  # (g_t − c) peaks at prototype 0 for every crop
    agreement = float(m.training_step(model, batch, 1).stats["student_teacher_agreement"])
    assert agreement < 1.0


def test_bn_in_head_normalises_over_every_crop_in_one_pass():
    """``use_bn_in_head``: BatchNorm in the student's and the teacher's head; the student's head runs once on the
    features of all crops (``MultiCropWrapper`` of :data:`OFFICIAL`), so its BN statistics cover global and local
    crops."""
    torch.manual_seed(0)
    model = build_model("resnet8", 10, 3)
    m = _dino(model, n_local=2, use_bn_in_head=True)
    assert sum(isinstance(x, torch.nn.BatchNorm1d) for x in m.head.modules()) == 2
    assert sum(isinstance(x, torch.nn.BatchNorm1d) for x in m.teacher.module["head"].modules()) == 2
    batch = _batch(4, (16, 16, 8, 8))
    calls = []
    m.head.register_forward_hook(lambda _m, args, _out: calls.append(args[0].shape[0]))
    out = m.training_step(model, batch, 2)
    assert calls == [16]  # 4 crops × 4 images
    out.losses["dino"].backward()
    assert all(x.weight.grad is not None for x in m.head.modules() if isinstance(x, torch.nn.BatchNorm1d))


def test_small_preset_resolves_and_explicit_keys_override_it():
    spec = resolve_config({"method": {"name": "dino", "preset": "small", "out_dim": 1024}}).method
    assert spec["use_bn_in_head"] and spec["momentum_teacher"] == 0.99 and spec["out_dim"] == 1024
    assert spec["global_scale"] == [0.4, 1.0] and spec["local_scale"] == [0.1, 0.4]


def test_controls_score_the_network_at_initialisation_and_the_pixels():
    """The controls use the network as it was at set-up (not the trained one) and the standardised pixels, with the
    same k-NN (every evaluation) and probe (the last); they are scored once and kept in the method's state."""
    from selfdistill.methods.dino import linear_probe_accuracy

    dm = DataModule(DataConfig(name="synthetic", synthetic_size=96, batch_size=16, num_classes=4, image_size=16,
                               val_fraction=0.25))
    torch.manual_seed(0)
    model = build_model("resnet8", 4, 3)
    init = copy.deepcopy(model).eval()
    m = _dino(model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.0)  # "training" that destroys the features: the controls must not see it

    feats = {}
    [x for x in init.modules() if isinstance(x, torch.nn.Linear)][-1].register_forward_pre_hook(
        lambda _m, args: feats.__setitem__("f", args[0]))

    def init_features(split):
        with torch.no_grad():
            init(dm._prepare(split.images))
        return feats["f"]

    def pixels(split):
        return dm._prepare(split.images).flatten(1)

    expected = {}
    for who, fn in (("init", init_features), ("pixels", pixels)):
        f_train, y_train = fn(dm.train), dm.train.labels
        for name, split in (("test", dm.test), ("val", dm.val)):
            expected[f"knn_{who}_{name}_top1"] = knn_accuracy(f_train, y_train, fn(split), split.labels, 10)
            expected[f"probe_{who}_{name}_top1"] = linear_probe_accuracy(f_train, y_train, fn(split), split.labels,
                                                                         10)
    first = m.extra_metrics(model, dm, final=False)
    assert {k: v for k, v in first.items() if "init" in k or "pixels" in k} == pytest.approx(
        {k: v for k, v in expected.items() if k.startswith("knn_")})
    assert first["knn_student_test_top1"] != first["knn_init_test_top1"]  # the zeroed student scores otherwise
    assert m.state_dict()["init"] is None and m.state_dict()["controls"] == pytest.approx(expected)
    with pytest.warns(UserWarning, match="features have not learnt"):  # the zeroed student is below its controls
        last = m.extra_metrics(model, dm, final=True)
    assert {k: v for k, v in last.items() if "init" in k or "pixels" in k} == pytest.approx(expected)


K = 64
"""Teacher dimensions of the collapse tests (log K = 4.16 nats)."""


def _teacher_outputs(kind: str, rows: int) -> torch.Tensor:
    """Synthetic centred, sharpened teacher distributions (``rows`` × :data:`K`) of one step: ``u``niform (flat
    logits), ``o``ne-hot (every image on the same two dimensions), ``h``ealthy (each image mostly on its own
    dimension), ``w``ide (healthy, each image a tenth on its own dimension: entropy about 0.8·log K) or ``s``harp
    (each image one-hot on its own dimension)."""
    noise = torch.randn(rows, K, generator=torch.Generator().manual_seed(0))
    own = torch.nn.functional.one_hot(torch.arange(rows) % K, K).float()
    two = torch.zeros(K)
    two[:2] = torch.tensor([12.0, 11.0])
    logits = {"u": 0.1 * noise, "o": noise + two, "h": noise + 6.0 * own, "w": noise + 2.5 * own,
              "s": 30.0 * own}[kind]
    return logits.softmax(-1)


def _monitor(m, kinds: str, first: int = 1, rows: int = K) -> tuple[dict[int, list[str]], dict[str, float]]:
    """Feed one epoch per letter of ``kinds`` (see :func:`_teacher_outputs`), three steps of ``rows`` teacher rows
    each, through the instruments, and the epoch's means to ``on_epoch_end`` as the trainer does. Returns the collapse
    warnings by epoch (epochs with one) and the last epoch's columns."""
    fired: dict[int, list[str]] = {}
    columns: dict[str, float] = {}
    for epoch, kind in enumerate(kinds, start=first):
        steps = [teacher_instruments(_teacher_outputs(kind, rows)) for _ in range(3)]
        m.collapse.rows = max(m.collapse.rows, rows)  # as training_step records it
        means = {"train_teacher_entropy": sum(float(h) for h, _ in steps) / 3,
                 "train_kl_teacher_uniform": sum(float(kl) for _, kl in steps) / 3}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            columns = m.on_epoch_end(epoch, means)
        messages = [str(w.message) for w in caught if issubclass(w.category, TeacherCollapseWarning)]
        if messages:
            fired[epoch] = messages
    return fired, columns


@pytest.fixture
def dino_k():
    """A factory of DINOs with :data:`K` dimensions and patience 3 unless told otherwise."""
    model = build_model("resnet8", 10, 3)
    return lambda **opts: _dino(model, **{"out_dim": K, "collapse_patience": 3, **opts})


@pytest.mark.parametrize(("kind", "mode", "words"), [("u", "uniform", "near-uniform"),
                                                     ("o", "onehot", "on a few dimensions")])
def test_collapse_warns_after_exactly_patience_epochs_once(dino_k, kind, mode, words):
    """Six epochs in one mode: one warning, at the end of epoch 3 (the patience), naming the mode; the columns count
    the epochs in each mode."""
    fired, columns = _monitor(dino_k(), kind * 6)
    assert list(fired) == [3] and len(fired[3]) == 1
    assert words in fired[3][0] and "for 3 epochs (1–3)" in fired[3][0]
    assert columns == {"collapse_uniform_epochs": 0.0, "collapse_onehot_epochs": 0.0, f"collapse_{mode}_epochs": 6.0}


@pytest.mark.parametrize(("kinds", "rows"), [("hhhhhh", K), ("wwwwww", K), ("ssssss", K), ("ssssss", 6)])
def test_healthy_teachers_never_warn(dino_k, kinds, rows):
    """Per-image targets on their own dimensions, sharp, wide or one-hot, are no collapse. One-hot targets of 6
    images use 6 of the 64 dimensions, under √64, and pass because 6 rows can use no more (√min(K, n))."""
    assert _monitor(dino_k(), kinds, rows=rows) == ({}, {"collapse_uniform_epochs": 0.0,
                                                         "collapse_onehot_epochs": 0.0})


def test_collapse_thresholds_at_their_boundaries(dino_k):
    """Uniform from ``collapse_uniform_fraction``·log K of per-image entropy on; one-hot when the batch mean's
    entropy log K − KL falls under ½·log min(K, n)."""
    c, log_k = dino_k(collapse_uniform_fraction=0.8).collapse, math.log(K)
    assert c.mode(0.8 * log_k + 1e-6, 0.0) == "uniform" and c.mode(0.8 * log_k - 1e-6, 0.0) is None
    assert c.mode(0.0, 0.5 * log_k + 1e-6) == "onehot" and c.mode(0.0, 0.5 * log_k - 1e-6) is None
    c.rows = 16
    edge = log_k - 0.5 * math.log(16)
    assert c.mode(0.0, edge + 1e-6) == "onehot" and c.mode(0.0, edge - 1e-6) is None


def test_collapse_warns_again_after_recovery_and_counts_modes_apart(dino_k):
    """Once per episode: a healthy epoch ends it, a new one warns again after the patience; a switch of mode starts
    the other mode's count."""
    fired, columns = _monitor(dino_k(), "uuuuuhuuu" + "uuooo")
    assert list(fired) == [3, 9, 14]
    assert ["near-uniform" in fired[e][0] for e in (3, 9)] == [True, True]
    assert "on a few dimensions" in fired[14][0]
    assert columns == {"collapse_uniform_epochs": 10.0, "collapse_onehot_epochs": 3.0}


def test_collapse_patience_zero_is_off_and_options_are_checked(dino_k):
    assert _monitor(dino_k(collapse_patience=0), "uuuuuoooo") == ({}, {})
    for bad in ({"collapse_patience": -1}, {"collapse_uniform_fraction": 0.5}, {"collapse_uniform_fraction": 1.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            resolve_config({"method": {"name": "dino", **bad}})


def _named_settings(message: str) -> dict[str, str]:
    """The ``method.<key>=<value>`` settings a message names."""
    return dict(re.findall(r"method\.(\w+)=([^ ;)]+)", message))


def test_collapse_messages_name_the_settings_to_change_as_a_user_writes_them(dino_k):
    """The uniform message lowers the temperatures and names BN in the head, a smaller head and the small preset
    (those not already set); the one-hot message a faster centre, higher temperatures and a lower learning rate.
    Every ``method.<key>=<value>`` named resolves as a config override."""
    uniform = _monitor(dino_k(), "uuu")[0][3][0]
    assert _named_settings(uniform) == {"teacher_temp": "0.02", "teacher_temp_final": "0.02",
                                        "use_bn_in_head": "true", "out_dim": "16", "preset": "small"}
    onehot = _monitor(dino_k(), "ooo")[0][3][0]
    assert _named_settings(onehot) == {"center_momentum": "0.8", "teacher_temp": "0.08", "teacher_temp_final": "0.08"}
    assert "optim.lr" in onehot
    for key, value in {**_named_settings(uniform), **_named_settings(onehot)}.items():
        resolve_config({"method": {"name": "dino", key: yaml.safe_load(value)}})
    small = _monitor(dino_k(preset="small"), "uuu")[0][3][0]
    assert set(_named_settings(small)) == {"teacher_temp", "teacher_temp_final", "out_dim"}


def test_collapse_counters_survive_resume_mid_episode(dino_k, tmp_path):
    """Two uniform epochs, a checkpoint, a new method loaded from it: the third uniform epoch warns (a fresh count
    would wait for the fifth); resumed after the warning, the episode does not warn again."""
    m = dino_k()
    assert _monitor(m, "uu") == ({}, {"collapse_uniform_epochs": 2.0, "collapse_onehot_epochs": 0.0})
    save_checkpoint({"method": m.state_dict()}, tmp_path / "a.pt")
    resumed = dino_k()
    resumed.load_state_dict(load_checkpoint(tmp_path / "a.pt")["method"])
    fired, columns = _monitor(resumed, "uuu", first=3)
    assert list(fired) == [3] and columns["collapse_uniform_epochs"] == 5.0
    save_checkpoint({"method": resumed.state_dict()}, tmp_path / "b.pt")
    again = dino_k()
    again.load_state_dict(load_checkpoint(tmp_path / "b.pt")["method"])
    assert _monitor(again, "uu", first=6)[0] == {}
    assert list(_monitor(dino_k(), "uuu", first=3)[0]) == [5]  # without the counters: epochs 3–5


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
    assert knn["knn_pixels_test_top1"] > 60 and knn["probe_init_test_top1"] > 60  # the controls, in the summary
    assert math.isfinite(s.last["test_nll"])
    header = next((tmp_path / "runs").rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert {"train_teacher_entropy", "train_kl_teacher_uniform", "train_center_norm", "train_student_teacher_agreement",
            "train_teacher_momentum", "train_lr_applied", "train_weight_decay", "knn_init_test_top1",
            "collapse_uniform_epochs", "collapse_onehot_epochs"} <= set(header)
    assert 0 <= knn["collapse_uniform_epochs"] <= 4 and 0 <= knn["collapse_onehot_epochs"] <= 4  # in the summary
    # a run stopped after its last checkpoint and before its summary writes the same summary when resumed
    summary_json = next((tmp_path / "runs").rglob("summary.json"))
    summary_json.unlink()
    assert train(cfg, resume=True).extra_last == knn
    from selfdistill.bench.report import write_report

    report = write_report(tmp_path / "runs", tmp_path / "report").read_text()
    assert "Self-supervised" in report and "knn_teacher_test_top1" in report
    assert "knn_init_test_top1" in report and "probe_pixels_test_top1" in report
    assert "test top-1 (last)" not in report  # no supervised table for a self-supervised run
