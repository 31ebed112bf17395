"""The lightly DINO peer (benchmarks/dino_small/peer_lightly.py): lightly's loss equals ours, the schedules and
parts it configures, and a one-epoch run whose folder the report reads beside ours."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
import yaml

pytest.importorskip("lightly")

from selfdistill import train
from selfdistill.bench.report import load_runs
from selfdistill.config import ConfigError
from selfdistill.engine.distributed import update_center
from selfdistill.engine.optim import cosine_to_one
from selfdistill.engine.summary import RunSummary
from selfdistill.methods import MethodContext
from selfdistill.methods.dino import DINO, DINOOptions, dino_loss
from selfdistill.run import resolve_config
from tests.helpers import REPO, synthetic_config

SCRIPT = REPO / "benchmarks" / "dino_small" / "peer_lightly.py"


@pytest.fixture(scope="module")
def peer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("peer_lightly", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _options(**kw) -> DINOOptions:
    return DINOOptions(**kw)


@pytest.mark.parametrize("n_local", [0, 4])
@pytest.mark.parametrize("scale", [None, 3.0])
def test_lightly_loss_and_centre_equal_ours(peer, n_local, scale):
    """Same teacher/student outputs, centre and temperatures: the same loss and updated centre (the teacher's crops
    are the first student crops in both, a crop is never its own target, and the centre is read before its update
    in both). Outputs in [−1, 1] (the head's range: cosines, with ``norm_last_layer``): equal to 1e-6; unbounded
    outputs (a loss near 70): equal to float32 rounding, 1e-6 relative."""
    g = torch.Generator().manual_seed(0)
    k, b = 64, 8
    opts = _options(out_dim=k, student_temp=0.1, teacher_temp=0.04, teacher_temp_final=0.04, center_momentum=0.9,
                    n_local=n_local)

    def outputs(n: int) -> list[torch.Tensor]:
        if scale is None:
            return [torch.rand(b, k, generator=g) * 2 - 1 for _ in range(n)]
        return [torch.randn(b, k, generator=g) * scale for _ in range(n)]

    student, teacher = outputs(2 + n_local), outputs(2)
    center = (torch.rand(1, k, generator=g) * 2 - 1) * 0.5
    criterion = peer.lightly_loss(opts)
    criterion.center.copy_(center.reshape(1, 1, k))
    ours = float(dino_loss(student, teacher, center.clone(), opts.student_temp, opts.teacher_temp))
    theirs = float(criterion(teacher, student, epoch=0))
    assert abs(ours - theirs) < (1e-6 if scale is None else 1e-6 * abs(ours))
    ours_center = center.clone()
    update_center(ours_center, torch.cat(teacher), opts.center_momentum)
    torch.testing.assert_close(criterion.center.reshape(1, k), ours_center, rtol=1e-6, atol=1e-7)


def test_at_the_benchmarks_size_both_losses_are_the_formula_up_to_float32_rounding(peer):
    """4,096 prototypes, batch 128, 2 + 4 crops, outputs in [−1, 1]: lightly's loss in float64 is the float64 value
    of our formula (to 1e-6); in float32 (as the peer runs it) its one ``einsum`` reduction over batch × prototypes
    rounds to about 2e-4 of a loss near 15 (1e-5 relative), ours, reduced per row, to about 1e-6."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    k, b = 4096, 128
    opts = _options(out_dim=k, n_local=4)
    student = [torch.rand(b, k, generator=g) * 2 - 1 for _ in range(6)]
    teacher = [torch.rand(b, k, generator=g) * 2 - 1 for _ in range(2)]
    center = (torch.rand(1, k, generator=g) * 2 - 1) * 0.5
    targets = [F.softmax((t.double() - center.double()) / 0.04, -1) for t in teacher]
    logs = [F.log_softmax(s.double() / 0.1, -1) for s in student]
    exact = float(torch.stack([-(p * logs[j]).sum(-1).mean() for i, p in enumerate(targets) for j in range(6)
                               if j != i]).mean())
    criterion = peer.lightly_loss(opts)
    criterion.center.copy_(center.reshape(1, 1, k))
    as_run = float(criterion(teacher, student, epoch=0))
    criterion64 = peer.lightly_loss(opts).double()
    criterion64.center.copy_(center.reshape(1, 1, k).double())
    in_float64 = float(criterion64([t.double() for t in teacher], [s.double() for s in student], epoch=0))
    ours = float(dino_loss(student, teacher, center, 0.1, 0.04))
    assert abs(in_float64 - exact) < 1e-6
    assert abs(ours - exact) < 1e-5 and abs(as_run - exact) < 1e-3


@pytest.mark.parametrize("warmup", [0, 1, 2, 30])
def test_teacher_temperature_schedule_is_ours(peer, warmup):
    """lightly's warm-up indexed by the 0-based epoch is ours (DINO's ``linspace``) in every 1-based epoch."""
    opts = _options(out_dim=8, teacher_temp=0.04, teacher_temp_final=0.07, teacher_temp_warmup_epochs=warmup)
    ours = DINO(opts, MethodContext(10, 64, 40, 4, torch.device("cpu")))
    criterion = peer.lightly_loss(opts)
    for epoch in range(1, 36):
        assert peer.teacher_temp(criterion, epoch) == pytest.approx(ours.teacher_temp(epoch), abs=1e-7), epoch


def test_momentum_schedule_differs_from_ours_only_by_its_denominator():
    """The documented difference: lightly's ``cosine_schedule`` runs over ``steps − 1`` (1 at the last step),
    ours (the official one) over ``steps``."""
    from lightly.utils.scheduler import cosine_schedule

    total = 12
    for step in range(total):
        theirs = cosine_schedule(step, total, 0.99, 1.0)
        assert theirs == pytest.approx(cosine_to_one(0.99, step, total - 1), abs=1e-12)
    assert cosine_schedule(total - 1, total, 0.99, 1.0) == 1.0 > cosine_to_one(0.99, total - 1, total)


def test_transform_views_sizes_and_the_same_jitter_on_every_view(peer):
    """Our crop counts, sizes and scales; colour jitter 0.4 on every view (lightly's second global view ignores
    ``cj_strength``), no hue, blur or solarisation."""
    opts = _options(n_local=3, global_size=16, local_size=8, global_scale=[0.4, 1.0], local_scale=[0.1, 0.4])
    t = peer.lightly_transform(opts, 0.4, [0.5] * 3, [0.25] * 3)
    from PIL import Image

    views = t(Image.new("RGB", (16, 16), (120, 60, 30)))
    assert [tuple(v.shape) for v in views] == [(3, 16, 16)] * 2 + [(3, 8, 8)] * 3
    for i, view in enumerate(t.transforms):
        steps = view.transform.transforms
        crop = next(s for s in steps if type(s).__name__ == "RandomResizedCrop")
        assert tuple(crop.scale) == ((0.4, 1.0) if i < 2 else (0.1, 0.4))
        jitter = next(s for s in steps if type(s).__name__ == "RandomApply").transforms[0]
        assert tuple(jitter.brightness) == pytest.approx((0.6, 1.4)) and tuple(jitter.saturation) == pytest.approx(
            (0.6, 1.4))
        assert jitter.hue is None or tuple(jitter.hue) == (0.0, 0.0)
        blur = next(s for s in steps if type(s).__name__ == "GaussianBlur")
        solarize = next(s for s in steps if type(s).__name__ == "RandomSolarization")
        assert blur.prob == 0.0 and solarize.prob == 0.0


def test_heads_follow_our_options_and_the_teacher_starts_as_a_frozen_copy(peer):
    opts = _options(out_dim=32, hidden_dim=16, bottleneck_dim=8, use_bn_in_head=True, norm_last_layer=True)
    student, teacher = peer.lightly_heads(24, opts)
    for (name, a), b in zip(student.state_dict().items(), teacher.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in teacher.parameters())
    assert student(torch.randn(4, 24)).shape == (4, 32)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in student.modules()) == 2
    assert not student.last_layer.weight_g.requires_grad  # norm_last_layer: the gain stays 1


def test_load_config_follows_a_grid_point_and_refuses_others(peer, tmp_path):
    screen = REPO / "benchmarks" / "dino_small" / "screen.yaml"
    name = "dino-preset=small_resnet8_lr=0.015_weight_decay=0.0001_s0"
    cfg = peer.load_config(screen, name, ["seed=3"])
    assert cfg.method["use_bn_in_head"] and cfg.method["momentum_teacher"] == 0.99 and cfg.optim.lr == 0.015
    assert cfg.seed == 3
    assert peer.run_name(cfg, name) == "dino-preset=small_resnet8_lr=0.015_weight_decay=0.0001_lightly_s3"
    with pytest.raises(ConfigError, match="name one of its DINO points"):
        peer.load_config(screen)
    plain = tmp_path / "ce.yaml"
    plain.write_text(yaml.safe_dump(synthetic_config(tmp_path)))
    with pytest.raises(ConfigError, match="classification DINO run"):
        peer.load_config(plain)
    with pytest.raises(ConfigError, match="two global crops"):
        peer.load_config(plain, overrides=["method.name=dino", "method.n_global=3"])


def _tiny(tmp_path: Path) -> dict:
    return synthetic_config(
        tmp_path, method={"name": "dino", "out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 16, "global_size": 16,
                          "local_size": 8, "n_local": 2, "use_bn_in_head": True},
        data={"synthetic_size": 64, "batch_size": 16, "num_classes": 4, "val_fraction": 0.25, "eval_batch_size": 64},
        optim={"lr": 0.03, "weight_decay": 1e-4}, train={"epochs": 1, "threads": 1, "grad_norm_every": 2})


@pytest.mark.filterwarnings("ignore:dino. the student's k-NN")  # one epoch on 48 images: no learning expected
def test_one_epoch_run_folder_beside_ours(peer, tmp_path):
    """One tiny epoch: ``config.yaml``, ``metrics.csv`` and ``summary.json`` in our format with finite values; the
    same split and network at initialisation as our run of the config (its controls, scored by the same code, are
    equal), and the report's label and group put the two side by side."""
    cfg = _tiny(tmp_path)
    path = tmp_path / "dino.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "runs"
    assert peer.main(["--config", str(path), "--out", str(out), "--epochs", "1", "--seed", "0"]) == 0
    run = out / "synthetic_resnet8_dino_lightly_s0"
    assert {p.name for p in run.iterdir()} == {"config.yaml", "metrics.csv", "summary.json"}
    assert yaml.safe_load((run / "config.yaml").read_text())["method"]["peer"] == "lightly"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 1
    for key in ("train_loss_dino", "train_teacher_entropy", "train_center_norm", "train_teacher_momentum",
                "knn_student_val_top1", "knn_teacher_test_top1", "probe_student_test_top1", "knn_init_val_top1"):
        assert math.isfinite(float(rows[0][key])), key
    s = RunSummary.load(run / "summary.json")
    assert not s.supervised and s.method == "dino" and s.epochs == 1 and s.steps_per_epoch == 3
    assert len(s.extra_last) == 16 and all(math.isfinite(v) for v in s.extra_last.values())
    assert all(math.isfinite(v) for v in s.last.values()) and s.env["lightly"]

    ours = train(resolve_config(cfg))
    assert (s.num_train, s.num_val, s.num_test) == (ours.num_train, ours.num_val, ours.num_test)
    controls = [k for k in ours.extra_last if k.startswith(("knn_init", "knn_pixels"))]
    assert {k: s.extra_last[k] for k in controls} == {k: ours.extra_last[k] for k in controls}
    runs = {r.label: r for r in load_runs(out)}
    assert len(runs) == 2 and len({r.group for r in runs.values()}) == 1
    label = next(lb for lb in runs if "peer" in lb)
    assert label.startswith("dino(") and label.endswith(", peer=lightly)")
    assert label.replace(", peer=lightly", "") in runs  # our run's label, the same recipe
