"""The one training loop shared by every method."""

from __future__ import annotations

import contextlib
import json
import math
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..config import ConfigError, RunConfig, from_dict, resolve_config, save_yaml, to_dict
from ..methods import MethodContext
from ..tasks import get_task
from .checkpoint import (
    CheckpointError,
    load_run_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from .distributed import (
    DistInfo,
    all_reduce_sum,
    init_distributed,
    is_main_process,
    sync_batchnorm,
    unwrap,
    wrap_ddp,
)
from .logging import TensorBoardLog, progress_bar, write_csv
from .optim import ModelEMA, build_optimizer, build_scheduler
from .state import load_frozen_model

CHECKPOINT = "last.pt"
# keys that may differ between a run's saved config and the one it is resumed with
RESUMABLE_CHANGES = ("train.epochs", "train.progress", "train.log_every", "train.tensorboard", "train.threads",
                     "train.grad_norm_every", "data.root", "data.cache_dir", "data.num_workers", "data.download", "out")


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; training stopped before the optimiser step."""


class RunExistsError(FileExistsError):
    """The run directory already holds a checkpoint and ``resume`` was not asked for."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("kwargs",):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def git_sha() -> str | None:
    """The library checkout's commit, if it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Trainer:
    """Trains ``cfg`` into ``cfg.out/<run name>``; :meth:`fit` returns the run summary."""

    def __init__(self, cfg: RunConfig, resume: bool = False, log: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.resume = resume
        self.run_dir = Path(cfg.out) / cfg.run_name()
        self.task = get_task(cfg.task)
        self.dist = DistInfo()
        self._log = log if log is not None else (lambda msg: print(msg, flush=True))

    def log(self, msg: str) -> None:
        """Print on the main rank."""
        if self.dist.is_main:
            self._log(msg)

    # ------------------------------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        cfg = self.cfg
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.device = resolve_device(cfg.train.device)
        self.dist = init_distributed(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.amp]
        if self.amp_dtype is torch.float16 and self.device.type != "cuda":
            warnings.warn("train.amp=fp16 needs CUDA; using bf16 autocast on CPU instead", stacklevel=2)
            self.amp_dtype = torch.bfloat16
        seed_everything(cfg.seed)
        fmt = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
        self.data = self.task.data_module(cfg.data, self.device, self.dist.rank, self.dist.world, fmt)
        self.model: nn.Module = self.task.build_model(to_dict(cfg), self.data.num_classes, self.data.in_chans
                                                      ).to(self.device, memory_format=fmt)
        method_cls, method_opts = self.task.method_options(cfg.method)
        self.cost = method_cls.cost(method_opts)
        self.loader = self.data.train_loader(method_cls.data_requirements(method_opts), cfg.seed)
        self.steps_per_epoch = len(self.loader)
        ctx = MethodContext(self.data.num_classes, len(self.data.train), cfg.train.epochs, self.steps_per_epoch,
                            self.device, self.dist.rank, self.dist.world, tuple(self.data.mean.tolist()),
                            tuple(self.data.std.tolist()), self.data.in_chans, self.data.image_size,
                            cfg.data.dense.ignore_index, cfg.model.sync_bn)
        self.method = method_cls(method_opts, ctx)
        self.method.setup(self.model)
        # trained modules outside the network (auxiliary heads) get the network's BatchNorm synchronisation
        self.extra = [sync_batchnorm(m.to(self.device), self.dist, self.device, cfg.model.sync_bn)
                      for m in self.method.trainable_modules()]
        self.train_model = wrap_ddp(self.model, self.dist, self.device, cfg.model.sync_bn)
        self.model = unwrap(self.train_model)
        if cfg.model.compile:
            self.train_model = torch.compile(self.train_model)
        self.optimizer = build_optimizer([self.model, *self.extra], cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.sched, cfg.optim.lr, self.steps_per_epoch,
                                         cfg.train.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        self.ema = ModelEMA(self.model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None

    # ---------------------------------------------------------------------------------------- checkpoint
    def _state(self, epoch: int, step_in_epoch: int, acc: dict[str, torch.Tensor], train_time: float
               ) -> dict[str, Any]:
        return {
            "format": 1,
            "config": to_dict(self.cfg),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "extra": [m.state_dict() for m in self.extra],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": None if self.ema is None else self.ema.module.state_dict(),
            "method": self.method.state_dict(),
            "rng": rng_state(),
            "history": self.history,
            "reliability": self.reliability,
            "epoch_acc": {k: v.detach().cpu() for k, v in acc.items()},
            "train_time": train_time,
            "classes": self.data.classes,
            "in_chans": self.data.in_chans,
            "mean": self.data.mean.tolist(),
            "std": self.data.std.tolist(),
        }

    def _save(self, epoch: int, step_in_epoch: int, acc: dict[str, torch.Tensor], train_time: float) -> None:
        if self.dist.is_main:
            save_checkpoint(self._state(epoch, step_in_epoch, acc, train_time), self.run_dir / CHECKPOINT)

    def _check_resume_config(self, saved: dict[str, Any]) -> None:
        old, new = _flatten(saved), _flatten(to_dict(self.cfg))
        # a key the saved run did not have yet (added to the library since) is no change at its default value
        method_cls, _ = self.task.method_options(self.cfg.method)
        defaults = {**_flatten(to_dict(RunConfig())),
                    **{f"method.{k}": v for k, v in to_dict(from_dict(method_cls.Options, {})).items()}}
        diff = sorted(k for k in set(old) | set(new)
                      if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES)
                      and not (k not in old and k in defaults and new.get(k) == defaults[k]))
        if diff:
            shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6])
            raise ConfigError(f"cannot resume {self.run_dir}: the config differs from the saved run ({shown}). "
                              "Resume with the same settings or start a new run (another name or --out).")

    def _restore(self, ck: dict[str, Any]) -> tuple[int, int, dict[str, torch.Tensor]]:
        self._check_resume_config(ck["config"])
        self.model.load_state_dict(ck["model"])
        for m, s in zip(self.extra, ck["extra"], strict=True):
            m.load_state_dict(s)
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        if self.ema is not None and ck["ema"] is not None:
            self.ema.module.load_state_dict(ck["ema"])
        self.method.load_state_dict(ck["method"])
        set_rng_state(ck["rng"])
        self.history = list(ck["history"])
        self.reliability = ck["reliability"]
        self.global_step = ck["global_step"]
        self.train_time = ck["train_time"]
        acc = {k: v.to(self.device) for k, v in ck["epoch_acc"].items()}
        return ck["epoch"], ck["step_in_epoch"], acc

    # ----------------------------------------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self, model: nn.Module, split) -> Any:
        """The task's evaluator (e.g. top-1/top-5/NLL/ECE sums, a confusion matrix) of ``model`` on ``split``,
        reduced over ranks."""
        was_training = model.training
        model.eval()
        acc = self.task.evaluator(self.data, self.device)
        for x, y in self.data.eval_batches(split):
            with self._autocast():
                acc.update(model(x), y)
        acc.reduce(self.dist)
        model.train(was_training)
        return acc

    def _evaluate_teachers(self) -> dict[str, dict[str, dict[str, float]]]:
        """Measure and log every frozen teacher of the method on the test (and validation) split."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for name, model in self.method.teachers().items():
            res = {"test": self.evaluate(model, self.data.test).compute()}
            if self.data.val is not None:
                res["val"] = self.evaluate(model, self.data.val).compute()
            self.log(f"{name}: test " + ", ".join(f"{m} {res['test'][m]:.3f}" for m in self.task.metrics))
            out[name] = res
        return out

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------------------------------------ fit
    def fit(self) -> dict[str, Any]:
        """Train (or resume) to ``train.epochs`` and write the summary."""
        self._setup()
        cfg = self.cfg
        ckpt_path = self.run_dir / CHECKPOINT
        self.history: list[dict[str, float]] = []
        self.extra_keys: set[str] = set()
        self.reliability: dict[str, list[float]] | None = None
        self.global_step = 0
        self.train_time = 0.0
        start_epoch, start_step, acc = 1, 0, {}
        if ckpt_path.is_file():
            if not self.resume:
                raise RunExistsError(f"{self.run_dir} already holds a run (checkpoint {ckpt_path}). Pass --resume "
                                     "to continue it, or choose another run name or --out.")
            done_epoch, step_in_epoch, acc = self._restore(load_run_checkpoint(ckpt_path, self.device))
            start_epoch, start_step = (done_epoch + 1, 0) if step_in_epoch == 0 else (done_epoch, step_in_epoch)
            self.log(f"resuming {self.run_dir} at epoch {start_epoch}, step {start_step}")
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_yaml(to_dict(cfg), self.run_dir / "config.yaml")
        self.teacher_metrics = self._evaluate_teachers()
        tb = TensorBoardLog(self.run_dir / "tb", cfg.train.tensorboard and self.dist.is_main)
        self.log(f"run {self.run_dir}: {cfg.method['name']} on {cfg.data.name} ({len(self.data.train)} train"
                 f"{f', {len(self.data.val)} val' if self.data.val is not None else ''}, {len(self.data.test)} test)"
                 f", {cfg.model.name}, {cfg.train.epochs} epochs × {self.steps_per_epoch} steps, device "
                 f"{self.device}")
        try:
            for epoch in range(start_epoch, cfg.train.epochs + 1):
                row = self._train_epoch(epoch, start_step if epoch == start_epoch else 0, acc)
                acc = {}
                # first the checkpoint: the logs below are derived from its history
                self._save(epoch, 0, {}, self.train_time)
                if self.dist.is_main:
                    write_csv(self.history, self.run_dir / "metrics.csv")
                tb.scalars(row, epoch)
        finally:
            tb.close()
        summary = self._summary()
        if self.dist.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def _train_epoch(self, epoch: int, start_step: int, acc: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.cfg
        self.method.on_epoch_start(epoch)
        self.train_model.train()
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        acc = dict(acc) or {"n": zero.clone(), "correct": zero.clone(), "steps": zero.clone()}
        bar = progress_bar(self.steps_per_epoch, start_step, f"epoch {epoch}/{cfg.train.epochs}", cfg.train.progress,
                           self.dist.is_main)
        t0 = time.perf_counter()
        images = 0
        for step, batch in enumerate(self.loader.iterate(epoch, start_step), start=start_step):
            with self._autocast():
                out = self.method.training_step(self.train_model, batch, epoch)
            total = sum(out.losses.values())
            self._check_finite(out.losses, total, epoch, step)
            if cfg.train.grad_norm_every and self.global_step % cfg.train.grad_norm_every == 0:
                for k, v in {**self._grad_norms(out.losses), "steps": 1.0}.items():
                    acc[f"gradnorm_{k}"] = acc.get(f"gradnorm_{k}", zero) + v
            self.optimizer.zero_grad(set_to_none=True)
            # DDP averages gradients over ranks; a rank whose share of an uneven (last) batch differs from
            # global/world is weighted by it, so the update equals one process on the global batch
            share = len(batch) * self.dist.world / batch.global_size if self.dist.enabled else 1.0
            self.scaler.scale(total * share).backward()
            if self.dist.enabled and self.extra:  # method heads live outside DDP: average their gradients
                for p in (p for m in self.extra for p in m.parameters() if p.grad is not None):
                    p.grad.div_(self.dist.world)
                    torch.distributed.all_reduce(p.grad)
            if cfg.optim.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                         cfg.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.method.after_step(self.model)
            if self.ema is not None:
                self.ema.update(self.model)
            self.global_step += 1
            images += len(batch) * self.dist.world
            with torch.no_grad():
                if out.logits is not None:  # a self-supervised method has no training accuracy
                    hits, counted = self.task.train_hits(out.logits.detach().float(), out.targets)
                    acc["n"] += counted
                    acc["correct"] += hits
                    for k, v in self.task.train_stats(out.logits.detach().float(), out.targets).items():
                        acc[k] = acc.get(k, zero) + v
                acc["steps"] += 1
                for k, v in {**{f"loss_{k}": v for k, v in out.losses.items()}, "loss": total,
                             **out.stats}.items():
                    acc[k] = acc.get(k, zero) + v.detach().double()
            if self.dist.is_main and (step + 1) % cfg.train.log_every == 0:
                bar.set_postfix(loss=f"{float(acc['loss'] / acc['steps']):.3f}",
                                acc=f"{100 * float(acc['correct'] / acc['n']):.1f}%",
                                img_s=f"{images / (time.perf_counter() - t0):.0f}")
            bar.update(1)
            if cfg.train.checkpoint_every_steps and self.global_step % cfg.train.checkpoint_every_steps == 0 \
                    and step + 1 < self.steps_per_epoch:
                # mid-epoch: ``epoch`` is in progress and ``step + 1`` is the next step to run
                self._save(epoch, step + 1, acc, self.train_time + time.perf_counter() - t0)
        bar.close()
        train_s = time.perf_counter() - t0
        self.train_time += train_s
        row = self._epoch_row(epoch, acc, train_s, images)
        self.history.append(row)
        self.log(self._format_row(row))
        return row

    def _grad_norms(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The gradient norm of each loss term on the network's weights (this rank's shard), without touching
        ``.grad``: what each term asks of the shared weights."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        norms = {}
        for name, term in losses.items():
            if not term.requires_grad:
                continue
            grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
            norms[name] = torch.sqrt(sum(g.double().pow(2).sum() for g in grads if g is not None))
        return norms

    def _check_finite(self, losses: dict[str, torch.Tensor], total: torch.Tensor, epoch: int, step: int) -> None:
        if bool(torch.isfinite(total)):
            return
        bad = next((k for k, v in losses.items() if not bool(torch.isfinite(v).all())), "total")
        value = float(losses.get(bad, total).detach())
        ckpt = self.run_dir / CHECKPOINT
        where = f"the last good checkpoint is {ckpt}" if ckpt.is_file() else "no checkpoint was written yet"
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch}, step {step + 1} (global step {self.global_step + 1}): term '{bad}' "
            f"= {value}. Training stopped before the update; {where}. Lower optim.lr, set optim.grad_clip, or use "
            "train.amp=none, then continue with --resume.")

    def _epoch_row(self, epoch: int, acc: dict[str, torch.Tensor], train_s: float, images: int) -> dict[str, float]:
        keys = sorted(acc)
        summed = all_reduce_sum(torch.stack([acc[k] for k in keys]), self.dist)  # sums over ranks
        acc = dict(zip(keys, summed, strict=True))
        steps = max(float(acc["steps"]), 1.0)
        row: dict[str, float] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
        for k, v in acc.items():
            if k.startswith("gradnorm_") and k != "gradnorm_steps":  # means over the measured steps
                row[f"train_{k}"] = float(v) / float(acc["gradnorm_steps"])
            elif k not in ("n", "correct", "steps", "gradnorm_steps"):
                row[f"train_{k}"] = float(v) / steps
        row[f"train_{self.task.train_metric}"] = (100 * float(acc["correct"]) / float(acc["n"]) if float(acc["n"]) > 0
                                                  else math.nan)
        if epoch % self.cfg.train.eval_every == 0 or epoch == self.cfg.train.epochs:
            test = self.evaluate(self.model, self.data.test)
            self.reliability = test.reliability()
            row.update({f"test_{k}": v for k, v in test.compute().items() if k != "n"})
            if self.data.val is not None:
                row.update({f"val_{k}": v for k, v in self.evaluate(self.model, self.data.val).compute().items()
                            if k != "n"})
            extra = {**({"ema": self.ema.module} if self.ema is not None else {}), **self.method.eval_models()}
            for name, model in extra.items():
                row.update({f"{name}_test_{k}": v for k, v in self.evaluate(model, self.data.test).compute().items()
                            if k != "n"})
            extra_metrics = self.method.extra_metrics(self.model, self.data, epoch == self.cfg.train.epochs)
            self.extra_keys.update(extra_metrics)
            row.update(extra_metrics)
        row["train_time_s"] = train_s
        row["images_per_s"] = images / train_s if train_s > 0 else float("nan")
        return row

    def _format_row(self, r: dict[str, float]) -> str:
        main, *others = self.task.metrics
        parts = [f"epoch {int(r['epoch'])}/{self.cfg.train.epochs}", f"loss {r['train_loss']:.4f}",
                 f"train {self.task.train_metric} {r[f'train_{self.task.train_metric}']:.2f}%"]
        if f"test_{main}" in r:
            parts.append(f"test {main} {r[f'test_{main}']:.2f} ("
                         + ", ".join(f"{m} {r[f'test_{m}']:.3g}" for m in others) + ")")
        if f"val_{main}" in r:
            parts.append(f"val {main} {r[f'val_{main}']:.2f}")
        parts.append(f"{r['train_time_s']:.1f}s {r['images_per_s']:.0f} img/s")
        return " | ".join(parts)

    def _summary(self) -> dict[str, Any]:
        metrics, main = self.task.metrics, self.task.primary
        evaluated = [r for r in self.history if f"test_{main}" in r]
        last = evaluated[-1] if evaluated else {}
        best = None
        with_val = [r for r in evaluated if f"val_{main}" in r]
        if with_val:
            b = max(with_val, key=lambda r: (r[f"val_{main}"], -r["epoch"]))  # earliest epoch among ties
            best = {"epoch": int(b["epoch"]), **{f"val_{m}": b[f"val_{m}"] for m in metrics},
                    **{f"test_{m}": b[f"test_{m}"] for m in metrics}}
        times = [r["train_time_s"] for r in self.history]
        return {
            "run": str(self.run_dir),
            "task": self.task.name,
            "metrics": list(metrics),
            "method": self.cfg.method["name"],
            "model": self.cfg.model.name,
            "dataset": self.cfg.data.name,
            "seed": self.cfg.seed,
            "epochs": len(self.history),
            "last": {f"test_{m}": last.get(f"test_{m}", math.nan) for m in metrics},
            "last_per_class": {k[5:]: v for k, v in last.items()
                               if k.startswith("test_") and k[5:] not in metrics},  # e.g. per-class IoU
            "best_val": best,
            "ema_last": {m: last[f"ema_test_{m}"] for m in metrics} if f"ema_test_{main}" in last else None,
            "supervised": type(self.method).supervised,
            "extra_last": {k: last[k] for k in sorted(self.extra_keys) if k in last},
            "eval_models_last": {name: {m: last[f"{name}_test_{m}"] for m in metrics}
                                 for name in self.method.eval_models() if f"{name}_test_{main}" in last},
            "last_test_reliability": self.reliability,
            # medians: an epoch slowed by a pause of the machine or by other work on it does not count
            "seconds_per_epoch": statistics.median(times) if times else math.nan,
            "images_per_s": statistics.median(r["images_per_s"] for r in self.history) if self.history
            else math.nan,
            "passes_per_step": self.cost,
            "teachers": self.teacher_metrics,
            "steps_per_epoch": self.steps_per_epoch,
            "num_params": sum(p.numel() for p in self.model.parameters()),
            "num_train": len(self.data.train),
            "num_val": 0 if self.data.val is None else len(self.data.val),
            "num_test": len(self.data.test),
            "config": to_dict(self.cfg),
            "env": {"selfdistill": __version__, "git_sha": git_sha(), "torch": torch.__version__,
                    "python": sys.version.split()[0], "platform": platform.platform(), "device": str(self.device),
                    "device_name": (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                                    else platform.processor() or platform.machine()),
                    "world_size": self.dist.world},
        }


def train(config: RunConfig | dict[str, Any] | str | Path, overrides: list[str] | None = None,
          resume: bool = False, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train one run from a config (path, dict or :class:`RunConfig`) and return its summary.

    A method made of sequential stages (born-again generations) runs each stage as its own run directory inside
    the run's; finished stages are skipped on ``resume`` and the interrupted one continues where it stopped.
    """
    cfg = resolve_config(config, overrides)
    method_cls, opts = get_task(cfg.task).method_options(cfg.method)
    stages = method_cls.stages(opts, cfg)
    if not stages:
        return Trainer(cfg, resume=resume, log=log).fit()
    top = Path(cfg.out) / cfg.run_name()
    if top.is_dir() and any(top.iterdir()) and not resume:
        raise RunExistsError(f"{top} already holds a run. Pass --resume to continue it, or choose another run "
                             "name or --out.")
    if is_main_process():  # the run directory is marked as one from the start: its stages are not runs of their own
        top.mkdir(parents=True, exist_ok=True)
        save_yaml(to_dict(cfg), top / "config.yaml")
    summaries = []
    for k, stage in enumerate(stages):
        done = Path(stage.out) / stage.run_name() / "summary.json"
        if done.is_file():
            summaries.append(json.loads(done.read_text()))
            continue
        if is_main_process():
            (log or print)(f"stage {k + 1}/{len(stages)}: {stage.run_name()}")
        summaries.append(Trainer(stage, resume=True, log=log).fit())
    summary = method_cls.finish_stages(opts, cfg, summaries)
    if is_main_process():
        (top / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@torch.no_grad()
def evaluate(checkpoint: str | Path, overrides: list[str] | None = None, split: str = "test",
             ema: bool = False) -> dict[str, float]:
    """Evaluate a checkpoint's model (or its EMA copy) on a split of its dataset (``data.*`` overrides allowed).

    Under ``torchrun`` each rank evaluates its shard and every rank returns the metrics of the whole split."""
    ck = load_run_checkpoint(checkpoint)
    cfg = resolve_config(ck["config"], overrides)
    task = get_task(cfg.task)
    device = resolve_device(cfg.train.device)
    dist = init_distributed(device.type)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    fmt = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    data = task.data_module(cfg.data, device, dist.rank, dist.world, fmt)
    if data.classes != ck["classes"]:
        raise CheckpointError(f"the data's classes ({len(data.classes)}) differ from the checkpoint's "
                              f"({len(ck['classes'])}); evaluate on data with the same class folders")
    model = load_frozen_model(ck, device, ema=ema).to(memory_format=fmt)
    target = {"test": data.test, "val": data.val, "train": data.train}[split]
    if target is None:
        raise ConfigError("the run has no validation split (data.val_fraction=0)")
    acc = task.evaluator(data, device)
    for x, y in data.eval_batches(target):
        acc.update(model(x), y)
    acc.reduce(dist)
    return acc.compute()
