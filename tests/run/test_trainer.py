"""Training runs end to end: what a run writes, exact resume and stop signals, refused run folders, NaN losses,
optimiser and schedule variants, real data, compilation, gradient norms of the terms, the training-fit pass."""

import csv
import json
import math
import signal
import statistics
from dataclasses import dataclass

import pytest
import torch

from selfdistill import evaluate, train
from selfdistill.cli import main
from selfdistill.config import save_yaml
from selfdistill.engine.checkpoint import load_checkpoint
from selfdistill.engine.optim import lr_factor
from selfdistill.methods import METHODS, Method, StepOutput, register_method
from selfdistill.methods.ce import CrossEntropy
from selfdistill.run import EXIT_STOPPED, NonFiniteLossError, RunExistsError, TrainingStopped, resolve_config
from tests.helpers import synthetic_config


def _run_dir(cfg):
    return f"{cfg['out']}/{cfg['name']}"


def test_synthetic_run_writes_everything(tmp_path):
    cfg = synthetic_config(tmp_path, data={"val_fraction": 0.25}, train={"epochs": 3})
    s = train(cfg)
    run = tmp_path / "runs" / "synthetic_resnet8_ce_s0"
    for name in ("config.yaml", "metrics.csv", "summary.json", "last.pt"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"train_loss", "train_loss_ce", "test_top1", "test_top5", "test_nll", "test_ece", "val_top1",
            "images_per_s", "lr"} <= set(rows[0])
    resolved = resolve_config(cfg)
    n = s.steps_per_epoch
    for r in rows:  # the rate and weight decay of each step, averaged over the epoch (cosine over 3 epochs)
        e = int(r["epoch"])
        applied = [0.1 * lr_factor(i, resolved.sched, n, 3) for i in range(n * (e - 1), n * e)]
        assert float(r["train_lr_applied"]) == pytest.approx(statistics.fmean(applied))
        assert float(r["train_weight_decay"]) == pytest.approx(resolved.optim.weight_decay)
    assert s.last["test_top1"] == pytest.approx(float(rows[-1]["test_top1"]))
    assert s.last["test_top1"] > 50  # 10 classes: chance is 10 %
    best = max(rows, key=lambda r: (float(r["val_top1"]), -int(r["epoch"])))
    assert s.best_val["epoch"] == int(best["epoch"])  # chosen on validation, reported on test
    assert s.best_val["test_top1"] == pytest.approx(float(best["test_top1"]))
    assert s.num_train + s.num_val == 512
    assert s.seconds_per_epoch == pytest.approx(statistics.median(float(r["train_time_s"]) for r in rows))
    assert json.loads((run / "summary.json").read_text())["env"]["torch"] == torch.__version__
    # the saved model evaluates to the logged last-epoch metrics
    ev = evaluate(run / "last.pt")
    assert ev["top1"] == pytest.approx(s.last["test_top1"]) and ev["nll"] == pytest.approx(s.last["test_nll"])


def _final_weights(cfg):
    ck = load_checkpoint(f"{_run_dir(cfg)}/last.pt")
    return ck["model"], ck["optimizer"]


class _Interrupt(Exception):
    pass


def _kill():
    raise _Interrupt  # a simulated kill: nothing after it runs


def _on_step(monkeypatch, n, action):
    """Make the CE method call ``action()`` at the start of its ``n``-th training step (counted from 1)."""
    calls = {"n": 0}
    original = CrossEntropy.training_step

    def step(self, model, batch, epoch):
        calls["n"] += 1
        if calls["n"] == n:
            action()
        return original(self, model, batch, epoch)

    monkeypatch.setattr(CrossEntropy, "training_step", step)


@pytest.mark.parametrize("every_steps", [0, 3])
def test_resume_is_exact(tmp_path, monkeypatch, every_steps):
    small = {"synthetic_size": 128}  # 4 steps per epoch
    base = synthetic_config(tmp_path / "a", train={"epochs": 3, "checkpoint_every_steps": every_steps}, data=small,
                            model={"name": "wrn_16_1", "kwargs": {"drop": 0.3}}, name="resume")  # dropout: global RNG
    train(base)
    ref_model, ref_opt = _final_weights(base)

    cut = synthetic_config(tmp_path / "b", train={"epochs": 3, "checkpoint_every_steps": every_steps}, data=small,
                           model={"name": "wrn_16_1", "kwargs": {"drop": 0.3}}, name="resume")
    with monkeypatch.context() as m:
        _on_step(m, 10, _kill)  # 4 steps per epoch: dies inside epoch 3 (after a mid-epoch checkpoint if any)
        with pytest.raises(_Interrupt):
            train(cut)
    ck = load_checkpoint(f"{_run_dir(cut)}/last.pt")
    assert (ck["epoch"], ck["step_in_epoch"]) == ((3, 1) if every_steps else (2, 0))
    with pytest.raises(RunExistsError, match="--resume"):
        train(cut)
    s = train(cut, resume=True)
    got_model, got_opt = _final_weights(cut)
    for k in ref_model:
        assert torch.equal(ref_model[k], got_model[k]), k
    assert torch.equal(ref_opt["state"][0]["momentum_buffer"], got_opt["state"][0]["momentum_buffer"])
    with open(f"{_run_dir(cut)}/metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert s.epochs == 3


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # the defaults of train.stop_signals


@pytest.mark.parametrize("stop_step", [6, 8])
def test_a_stop_signal_checkpoints_after_the_step_and_the_resumed_run_is_exact(tmp_path, monkeypatch, stop_step):
    """SIGUSR1 during step 6 (epoch 2, step 2 of 4) or step 8 (the epoch's last: saved with every step done, the
    resumed run evaluates it): training finishes the step, checkpoints, restores the signal handlers and raises;
    resumed, it ends with the weights and logs of an uninterrupted run."""

    def cfg(root):
        return synthetic_config(root, train={"epochs": 3}, data={"synthetic_size": 128}, name="stop",
                                model={"name": "wrn_16_1", "kwargs": {"drop": 0.3}})  # dropout: global RNG

    train(cfg(tmp_path / "a"))
    ref_model, ref_opt = _final_weights(cfg(tmp_path / "a"))
    cut = cfg(tmp_path / "b")
    before = [signal.getsignal(s) for s in STOP_SIGNALS]
    with monkeypatch.context() as m:
        _on_step(m, stop_step, lambda: signal.raise_signal(signal.SIGUSR1))
        with pytest.raises(TrainingStopped, match=rf"stopped by signal {int(signal.SIGUSR1)} \(SIGUSR1\) at epoch 2 "
                                                  rf"step {stop_step - 4}; continue with --resume") as stopped:
            train(cut)
    assert stopped.value.signum == signal.SIGUSR1
    assert [signal.getsignal(s) for s in STOP_SIGNALS] == before
    ck = load_checkpoint(f"{_run_dir(cut)}/last.pt")
    assert (ck["epoch"], ck["step_in_epoch"]) == (2, stop_step - 4) and ck["epoch_time"] > 0
    train(cut, resume=True)
    got_model, got_opt = _final_weights(cut)
    for k in ref_model:
        assert torch.equal(ref_model[k], got_model[k]), k
    assert torch.equal(ref_opt["state"][0]["momentum_buffer"], got_opt["state"][0]["momentum_buffer"])
    timing = ("train_time_s", "images_per_s")
    rows = {}
    for name, c in (("ref", cfg(tmp_path / "a")), ("cut", cut)):
        with open(f"{_run_dir(c)}/metrics.csv") as fh:
            rows[name] = list(csv.DictReader(fh))
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows["cut"]] == [
        {k: v for k, v in r.items() if k not in timing} for r in rows["ref"]]
    # the stopped epoch's time and images continue from the checkpoint (step 8: every one of them was before it)
    assert float(rows["cut"][1]["train_time_s"]) >= ck["epoch_time"] and float(rows["cut"][1]["images_per_s"]) > 0


def test_the_cli_exits_75_on_a_stop_signal_and_catches_only_the_configured_ones(tmp_path, monkeypatch, capsys):
    cfg = synthetic_config(tmp_path, name="cli", data={"synthetic_size": 64},
                           train={"epochs": 1, "stop_signals": ["SIGTERM"]})
    save_yaml(cfg, tmp_path / "cli.yaml")
    before = [signal.getsignal(s) for s in STOP_SIGNALS]
    during = []

    def stop():
        during.extend(signal.getsignal(s) for s in STOP_SIGNALS)
        signal.raise_signal(signal.SIGTERM)

    _on_step(monkeypatch, 1, stop)
    assert main(["train", "--config", str(tmp_path / "cli.yaml")]) == EXIT_STOPPED == 75
    assert (f"stopped by signal {int(signal.SIGTERM)} (SIGTERM) at epoch 1 step 1; continue with --resume"
            in capsys.readouterr().out)
    assert during[0] != before[0] and during[1] == before[1]  # SIGUSR1 is not in this run's stop_signals
    assert [signal.getsignal(s) for s in STOP_SIGNALS] == before
    assert load_checkpoint(tmp_path / "runs" / "cli" / "last.pt")["step_in_epoch"] == 1


@dataclass
class _NaNOptions:
    at_step: int = 3


@pytest.fixture
def nan_method():
    @register_method("test_nan_after")
    class NaNAfter(Method):
        """Cross-entropy that turns NaN at a given step (test helper)."""

        Options = _NaNOptions

        def setup(self, model):
            self.calls = 0

        def training_step(self, model, batch, epoch):
            self.calls += 1
            logits = model(batch.x)
            ce = torch.nn.functional.cross_entropy(logits, batch.y)
            bad = ce * float("nan") if self.calls >= self.opt.at_step else ce
            return StepOutput({"ce": ce, "weird": bad - ce.detach()}, logits, batch.y)

    yield "test_nan_after"
    METHODS._items.pop("test_nan_after")


def test_nan_loss_stops_with_the_step_and_term(tmp_path, nan_method):
    cfg = synthetic_config(tmp_path, method={"name": nan_method, "at_step": 18}, name="nan")
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 2 \(global step 18\): term 'weird'.*last good "
                                                 r"checkpoint is .*last\.pt"):
        train(cfg)
    ck = load_checkpoint(tmp_path / "runs" / "nan" / "last.pt")
    assert ck["epoch"] == 1 and torch.isfinite(torch.cat([v.flatten().float() for v in ck["model"].values()])).all()


@pytest.mark.parametrize("optim,sched", [({"name": "adamw", "lr": 1e-3, "weight_decay": 0.05,
                                           "wd_exclude_norm_bias": True, "grad_clip": 1.0},
                                          {"name": "onecycle"}),
                                         ({"nesterov": True}, {"name": "multistep", "milestones": [1],
                                                               "warmup_epochs": 0.5})])
def test_optimiser_and_schedule_variants_train(tmp_path, optim, sched):
    s = train(synthetic_config(tmp_path, optim=optim, sched=sched))
    assert s.last["test_top1"] > 20


def test_digits_end_to_end(tmp_path):
    cfg = synthetic_config(tmp_path, data={"name": "digits", "batch_size": 64, "augment": {"crop_padding": 1,
                                                                                         "hflip": False}},
                           train={"epochs": 4})
    s = train(cfg)
    assert s.last["test_top1"] > 80


@pytest.mark.slow
def test_cifar10_imagefolder_subset(tmp_path_factory, cifar10_root, cifar10_cache):
    cache = cifar10_cache
    out = tmp_path_factory.mktemp("runs")
    cfg = {"out": str(out), "data": {"name": "imagefolder", "root": str(cifar10_root), "train_subset": 1000,
                                     "val_fraction": 0.02, "batch_size": 100, "cache_dir": str(cache)},
           "model": {"name": "resnet8"}, "optim": {"lr": 0.1}, "sched": {"name": "cosine"},
           "train": {"epochs": 2, "device": "cpu", "progress": False}}
    s = train(cfg)
    assert s.num_train == 1000 and s.num_val == 1000 and s.num_test == 10000
    assert 15 < s.last["test_top1"] < 100  # above chance (10 %) after 2 short epochs
    assert len(list(cache.glob("imagefolder-*.pt"))) == 2


def test_compiled_training_runs_on_cpu(tmp_path):
    """``model.compile`` trains under TorchInductor on CPU (the first compile takes tens of seconds)."""
    s = train(synthetic_config(tmp_path, model={"name": "resnet8", "compile": True},
                               data={"synthetic_size": 64, "drop_last": True}, train={"epochs": 1}))
    assert math.isfinite(s.last["test_nll"])


def test_term_gradient_norms_are_logged_and_change_nothing(tmp_path):
    small = {"synthetic_size": 128}  # 4 steps per epoch
    plain = synthetic_config(tmp_path / "a", data=small, method={"name": "ips"}, name="r")
    measured = synthetic_config(tmp_path / "b", data=small, method={"name": "ips"}, name="r",
                                train={"grad_norm_every": 3})
    train(plain)
    train(measured)
    ref, _ = _final_weights(plain)
    got, _ = _final_weights(measured)
    assert all(torch.equal(ref[k], got[k]) for k in ref)  # measuring does not touch the update
    with open(f"{_run_dir(measured)}/metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    # global steps 0 and 3 (epoch 1) and 6 (epoch 2) are measured
    for r in rows:
        assert float(r["train_gradnorm_ce"]) > 0 and float(r["train_gradnorm_kd"]) > 0
        assert float(r["train_logit_norm"]) > 0 and 0 < float(r["train_entropy"]) < math.log(10)
        assert float(r["train_logit_norm_t"]) >= 0 and 0 <= float(r["train_teacher_wrong"]) <= 1
    with open(f"{_run_dir(plain)}/metrics.csv") as fh:
        assert "train_gradnorm_ce" not in next(csv.DictReader(fh))


def test_eval_train_scores_the_final_model_on_its_clean_training_images_and_the_report_tabulates_it(tmp_path):
    from selfdistill.bench import write_report

    data = {"synthetic_size": 96, "val_fraction": 0.25}
    fits = []
    for seed in (0, 1):
        cfg = synthetic_config(tmp_path, name=f"s{seed}", seed=seed, data=data, train={"epochs": 1, "eval_train": True})
        s = train(cfg, log=lambda _: None)
        again = evaluate(f"{_run_dir(cfg)}/last.pt", split="train")  # the same clean pass, from the checkpoint
        assert set(s.train_fit) == {"top1", "top5", "nll", "ece"}
        assert s.train_fit["top1"] == pytest.approx(again["top1"]) and s.train_fit["nll"] == pytest.approx(
            again["nll"], rel=1e-4)
        with open(f"{_run_dir(cfg)}/summary.json") as fh:
            assert json.load(fh)["train_fit"] == s.train_fit
        fits.append(s.train_fit["top1"])
    plain = train(synthetic_config(tmp_path, name="plain", data=data, train={"epochs": 1}), log=lambda _: None)
    assert plain.train_fit == {}
    report = write_report(tmp_path / "runs", tmp_path / "report").read_text()
    mean = statistics.fmean(fits)
    assert "Training fit" in report and f"| `ce` | 2 | {mean:.2f} ± " in report  # the run without it is left out
