"""The one training loop shared by every method and task: it wires the task's data and model, the method's
losses and the engine's utilities together (in the spirit of timm's ``train.py``)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError, RunConfig, save_yaml, to_dict
from ..engine.checkpoint import load_run_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from ..engine.distributed import DistInfo, all_reduce_sum, init_distributed, sync_batchnorm, unwrap, wrap_ddp
from ..engine.logging import ScalarLog, TensorBoardLog, format_epoch, progress_bar, write_csv
from ..engine.optim import ModelEMA, build_optimizer, build_scheduler, non_finite_error, term_grad_norms
from ..engine.preemption import StopSignals, TrainingStopped, signal_name
from ..engine.summary import RunSummary, metric_results, run_environment
from ..engine.trackers import open_tracker
from ..methods import MethodContext
from ..tasks import get_task
from .evaluation import evaluate_split, without_count
from .resolve import apply_runtime, resolve_amp
from .resume import CHECKPOINT, check_resume_config, check_run_dir

COUNTERS = ("n", "correct", "steps", "gradnorm_steps", "images")  # epoch accumulators not logged as means


def eval_input(data: Any) -> dict[str, Any]:
    """What an exported model needs to read image files as evaluation does: ``input_size``, the ``[H, W]`` of the
    test images, and ``streamed``, whether they are read from files (resized and centre-cropped) rather than held
    decoded in memory."""
    images = getattr(data.test, "images", None)
    if images is not None:
        return {"input_size": list(images.shape[-2:]), "streamed": False}
    return {"input_size": [data.image_size] * 2, "streamed": True}


class Trainer:
    """Trains ``cfg`` into ``cfg.out/<run name>``; :meth:`fit` returns the run summary."""

    def __init__(self, cfg: RunConfig, resume: bool = False, log: Callable[[str], None] | None = None) -> None:
        self.cfg, self.resume = cfg, resume
        self.run_dir = Path(cfg.out) / cfg.run_name()
        self.task = get_task(cfg.task)
        self.dist = DistInfo()
        self._log = log if log is not None else (lambda msg: print(msg, flush=True))
        self.stop = StopSignals(cfg.train.stop_signals)

    def log(self, msg: str) -> None:
        """Print on the main rank."""
        if self.dist.is_main:
            self._log(msg)

    def _setup(self) -> None:
        cfg = self.cfg
        self.device = apply_runtime(cfg)
        self.dist = init_distributed(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.amp_dtype = resolve_amp(cfg.train.amp, self.device)
        seed_everything(cfg.seed)
        fmt = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
        self.data = self.task.data_module(cfg, self.device, self.dist.rank, self.dist.world, fmt)
        try:
            model = self.task.build_model(cfg, self.data.num_classes, self.data.in_chans)
        except (TypeError, ValueError) as exc:  # settings the model's constructor refuses (kwargs, channels)
            raise ConfigError(f"model: cannot build '{cfg.model.name}' (model.kwargs {cfg.model.kwargs}) for "
                              f"{self.data.num_classes} classes, {self.data.in_chans} channels: {exc}") from exc
        self.model: nn.Module = model.to(self.device, memory_format=fmt)
        method_cls, method_opts = self.task.method_options(cfg.method)
        self.cost = method_cls.cost(method_opts)
        self.loader = self.data.train_loader(method_cls.data_requirements(method_opts), cfg.seed)
        self.steps_per_epoch = len(self.loader)
        ctx = MethodContext(self.data.num_classes, len(self.data.train), cfg.train.epochs, self.steps_per_epoch,
                            self.device, self.dist.rank, self.dist.world, tuple(self.data.mean.tolist()),
                            tuple(self.data.std.tolist()), self.data.in_chans, self.data.image_size,
                            getattr(self.data, "ignore_index", 255), cfg.model.sync_bn)
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
        self.history: list[dict[str, float]] = []
        self.extra_keys: set[str] = set()
        self.reliability: dict[str, list[float]] | None = None
        self.global_step, self.train_time = 0, 0.0

    # checkpoint: every piece of state the next step depends on
    STATE = ("model", "optimizer", "scheduler", "scaler")

    def _rank_sums(self, acc: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The epoch accumulators summed over ranks (a new dict; ``acc`` is left as it is)."""
        keys = sorted(acc)
        if not keys:
            return {}
        return dict(zip(keys, all_reduce_sum(torch.stack([acc[k] for k in keys]), self.dist), strict=True))

    def _save(self, epoch: int, step_in_epoch: int, acc: dict[str, torch.Tensor], epoch_time: float) -> None:
        """Checkpoint after ``step_in_epoch`` steps of ``epoch`` (0: the epoch is done); ``acc`` and ``epoch_time``
        are the epoch's accumulators and training seconds so far. Called on every rank (the accumulators are
        summed over them); rank 0 writes."""
        acc = self._rank_sums(acc)
        if not self.dist.is_main:
            return
        state = {k: getattr(self, k).state_dict() for k in self.STATE}
        state.update(format=1, config=to_dict(self.cfg), epoch=epoch, step_in_epoch=step_in_epoch,
                     global_step=self.global_step, extra=[m.state_dict() for m in self.extra],
                     ema=None if self.ema is None else self.ema.module.state_dict(), method=self.method.state_dict(),
                     rng=rng_state(), history=self.history, reliability=self.reliability,
                     extra_keys=sorted(self.extra_keys),
                     epoch_acc={k: v.detach().cpu() for k, v in acc.items()}, epoch_time=epoch_time,
                     train_time=self.train_time + epoch_time,
                     classes=self.data.classes, in_chans=self.data.in_chans, mean=self.data.mean.tolist(),
                     std=self.data.std.tolist(), **eval_input(self.data))
        save_checkpoint(state, self.run_dir / CHECKPOINT)

    def _restore(self, ck: dict[str, Any]) -> tuple[int, int, dict[str, torch.Tensor], float]:
        """Load a checkpoint; returns its epoch, step in that epoch, the epoch's accumulators (this rank's share:
        the sums over every rank on rank 0, zeros elsewhere) and the epoch's training seconds so far."""
        check_resume_config(ck["config"], self.cfg, self.run_dir)
        for k in self.STATE:
            getattr(self, k).load_state_dict(ck[k])
        for m, s in zip(self.extra, ck["extra"], strict=True):
            m.load_state_dict(s)
        if self.ema is not None and ck["ema"] is not None:
            self.ema.module.load_state_dict(ck["ema"])
        self.method.load_state_dict(ck["method"])
        set_rng_state(ck["rng"])
        self.history, self.reliability = list(ck["history"]), ck["reliability"]
        self.extra_keys = set(ck.get("extra_keys", ()))  # absent from checkpoints written before it was kept
        epoch_time = ck.get("epoch_time", 0.0)  # absent from checkpoints written before it was kept
        self.global_step, self.train_time = ck["global_step"], ck["train_time"] - epoch_time
        acc = {k: (v if self.dist.is_main else torch.zeros_like(v)).to(self.device) for k, v in ck["epoch_acc"].items()}
        return ck["epoch"], ck["step_in_epoch"], acc, epoch_time

    def _evaluate(self, model: nn.Module, split: Any) -> Any:
        return evaluate_split(model, self.data, split, self.task, self.device, self.dist, self.amp_dtype)

    def _evaluate_teachers(self) -> dict[str, dict[str, dict[str, float]]]:
        """Measure and log every frozen teacher of the method on the test (and validation) split."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for name, model in self.method.teachers().items():
            res = {"test": self._evaluate(model, self.data.test).compute()}
            if self.data.val is not None:
                res["val"] = self._evaluate(model, self.data.val).compute()
            self.log(f"{name}: test " + ", ".join(f"{m} {res['test'][m]:.3f}" for m in self.task.metrics))
            out[name] = res
        return out

    def fit(self) -> RunSummary:
        """Train (or resume) to ``train.epochs`` and write the summary. A signal of ``train.stop_signals`` ends
        training after the step in progress, with a checkpoint and :class:`TrainingStopped`."""
        with self.stop:
            return self._fit()

    def _fit(self) -> RunSummary:
        check_run_dir(self.run_dir, self.cfg, self.resume)
        self._setup()
        cfg, ckpt_path = self.cfg, self.run_dir / CHECKPOINT
        start_epoch, start_step, acc, epoch_time = 1, 0, {}, 0.0
        if ckpt_path.is_file():
            done_epoch, step_in_epoch, acc, epoch_time = self._restore(load_run_checkpoint(ckpt_path, self.device))
            start_epoch, start_step = (done_epoch + 1, 0) if step_in_epoch == 0 else (done_epoch, step_in_epoch)
            self.log(f"resuming {self.run_dir} at epoch {start_epoch}, step {start_step}")
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_yaml(to_dict(cfg), self.run_dir / "config.yaml")
        self.teacher_metrics = self._evaluate_teachers()
        val = f", {len(self.data.val)} val" if self.data.val is not None else ""
        self.log(f"run {self.run_dir}: {cfg.method['name']} on {cfg.data.name} ({len(self.data.train)} train{val}, "
                 f"{len(self.data.test)} test), {cfg.model.name}, {cfg.train.epochs} epochs × {self.steps_per_epoch} "
                 f"steps, device {self.device}")
        with contextlib.ExitStack() as stack:  # every log is closed, also when training stops early
            logs = [stack.enter_context(log) for log in self._scalar_logs()]
            for epoch in range(start_epoch, cfg.train.epochs + 1):
                row = self._train_epoch(epoch, start_step if epoch == start_epoch else 0, acc, epoch_time)
                acc, epoch_time = {}, 0.0
                self._save(epoch, 0, {}, 0.0)  # first the checkpoint: the logs derive from its history
                if self.dist.is_main:
                    write_csv(self.history, self.run_dir / "metrics.csv")
                for log in logs:
                    log.scalars(row, epoch)
        fit = self._evaluate(self.model, self.data.train).compute() if cfg.train.eval_train else {}
        summary = self._summary(without_count(fit))
        if self.dist.is_main:
            summary.save(self.run_dir / "summary.json")
        return summary

    def _scalar_logs(self) -> Iterator[ScalarLog]:
        """The main rank's per-epoch scalar logs, opened one by one: TensorBoard (``train.tensorboard``) and the
        trackers of ``train.loggers``, which first get the epochs a resumed run has already done."""
        if not self.dist.is_main:
            return
        train = self.cfg.train
        if train.tensorboard:
            yield TensorBoardLog(self.run_dir / "tb")
        project = train.tracker_project or Path(self.cfg.out).resolve().name
        for name in train.loggers:
            tracker = open_tracker(name, project, self.cfg.run_name(), to_dict(self.cfg))
            for row in self.history:
                tracker.scalars(row, int(row["epoch"]))
            yield tracker

    def _train_epoch(self, epoch: int, start_step: int, acc: dict[str, torch.Tensor],
                     epoch_time: float) -> dict[str, float]:
        """Train ``epoch`` from ``start_step`` on, continuing the accumulators and training seconds of its first
        ``start_step`` steps (a resumed epoch); returns its row of the history."""
        cfg = self.cfg
        self.method.on_epoch_start(epoch)
        self.train_model.train()
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        acc = {**{k: zero.clone() for k in ("n", "correct", "steps", "images")}, **acc}
        bar = progress_bar(self.steps_per_epoch, start_step, f"epoch {epoch}/{cfg.train.epochs}", cfg.train.progress,
                           self.dist.is_main)
        t0 = time.perf_counter() - epoch_time
        for step, batch in enumerate(self.loader.iterate(epoch, start_step), start=start_step):
            self._step(batch, epoch, step, acc, zero)
            if self.dist.is_main and (step + 1) % cfg.train.log_every == 0:
                bar.set_postfix(loss=f"{float(acc['loss'] / acc['steps']):.3f}",
                                acc=f"{100 * float(acc['correct'] / acc['n']):.1f}%",
                                img_s=f"{float(acc['images']) * self.dist.world / (time.perf_counter() - t0):.0f}")
            bar.update(1)
            signum = self.stop.agreed(self.dist, self.device)
            every = cfg.train.checkpoint_every_steps
            if signum or (every and self.global_step % every == 0 and step + 1 < self.steps_per_epoch):
                # mid-epoch: ``epoch`` is in progress and ``step + 1`` is the next step to run (a stop after the
                # epoch's last step saves the epoch with every step done: the resumed run evaluates it)
                self._save(epoch, step + 1, acc, time.perf_counter() - t0)
            if signum:
                bar.close()
                msg = (f"stopped by signal {signal_name(signum)} at epoch {epoch} step {step + 1}; continue with "
                       "--resume")
                self.log(msg)
                raise TrainingStopped(msg, signum)
        bar.close()
        train_s = time.perf_counter() - t0
        self.train_time += train_s
        row = self._epoch_row(epoch, acc, train_s)
        self.history.append(row)
        self.log(format_epoch(row, cfg.train.epochs, self.task.metrics, self.task.train_metric))
        return row

    def _step(self, batch: Any, epoch: int, step: int, acc: dict[str, torch.Tensor], zero: torch.Tensor) -> None:
        """One optimiser step; its losses, training accuracy and diagnostics are added to ``acc``."""
        cfg = self.cfg
        with contextlib.nullcontext() if self.amp_dtype is None else torch.autocast(self.device.type,
                                                                                     dtype=self.amp_dtype):
            out = self.method.training_step(self.train_model, batch, epoch)
        total = sum(out.losses.values())
        if not bool(torch.isfinite(total)):
            ckpt = self.run_dir / CHECKPOINT
            raise non_finite_error(out.losses, total, f"epoch {epoch}, step {step + 1} (global step "
                                   f"{self.global_step + 1})", ckpt if ckpt.is_file() else None)
        if cfg.train.grad_norm_every and self.global_step % cfg.train.grad_norm_every == 0:
            params = [p for p in self.model.parameters() if p.requires_grad]
            for k, v in {**term_grad_norms(out.losses, params), "steps": 1.0}.items():
                acc[f"gradnorm_{k}"] = acc.get(f"gradnorm_{k}", zero) + v
        self.optimizer.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks; a rank whose share of an uneven (last) batch differs from global/world
        # is weighted by it, so the update equals one process on the global batch
        share = len(batch) * self.dist.world / batch.global_size if self.dist.enabled else 1.0
        self.scaler.scale(total * share).backward()
        if self.dist.enabled and self.extra:  # method heads live outside DDP: average their gradients
            for p in (p for m in self.extra for p in m.parameters() if p.grad is not None):
                p.grad.div_(self.dist.world)
                torch.distributed.all_reduce(p.grad)
        if cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], cfg.optim.grad_clip)
        group = self.optimizer.param_groups[0]  # the decayed parameters: the step's learning rate and weight decay
        applied = {"lr_applied": group["lr"], "weight_decay": group.get("weight_decay", 0.0)}
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.method.after_step(self.model)
        if self.ema is not None:
            self.ema.update(self.model)
        self.global_step += 1
        with torch.no_grad():
            if out.logits is not None:  # a self-supervised method has no training accuracy
                logits = out.logits.detach().float()
                hits, counted = self.task.train_hits(logits, out.targets)
                acc["n"] += counted
                acc["correct"] += hits
                for k, v in self.task.train_stats(logits, out.targets).items():
                    acc[k] = acc.get(k, zero) + v
            acc["steps"] += 1
            acc["images"] += len(batch)
            for k, v in {**{f"loss_{k}": v for k, v in out.losses.items()}, "loss": total, **out.stats}.items():
                acc[k] = acc.get(k, zero) + v.detach().double()
            for k, v in applied.items():
                acc[k] = acc.get(k, zero) + v

    def _epoch_row(self, epoch: int, acc: dict[str, torch.Tensor], train_s: float) -> dict[str, float]:
        acc = self._rank_sums(acc)
        steps = max(float(acc["steps"]), 1.0)
        row: dict[str, float] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
        for k, v in acc.items():
            if k not in COUNTERS:  # means per step (gradient norms: per measured step)
                row[f"train_{k}"] = float(v) / (float(acc["gradnorm_steps"]) if k.startswith("gradnorm_") else steps)
        metric, n = f"train_{self.task.train_metric}", float(acc["n"])
        row[metric] = 100 * float(acc["correct"]) / n if n > 0 else math.nan
        epoch_end = self.method.on_epoch_end(epoch, dict(row))
        self.extra_keys.update(epoch_end)
        row.update(epoch_end)
        if epoch % self.cfg.train.eval_every == 0 or epoch == self.cfg.train.epochs:
            test = self._evaluate(self.model, self.data.test)
            self.reliability = test.reliability()
            row.update({f"test_{k}": v for k, v in test.compute().items() if k != "n"})
            if self.data.val is not None:
                row.update({f"val_{k}": v for k, v in self._evaluate(self.model, self.data.val).compute().items()
                            if k != "n"})
            extra = {**({"ema": self.ema.module} if self.ema is not None else {}), **self.method.eval_models()}
            for name, model in extra.items():
                row.update({f"{name}_test_{k}": v for k, v in self._evaluate(model, self.data.test).compute().items()
                            if k != "n"})
            extra_metrics = self.method.extra_metrics(self.model, self.data, epoch == self.cfg.train.epochs)
            self.extra_keys.update(extra_metrics)
            row.update(extra_metrics)
        row["train_time_s"] = train_s
        row["images_per_s"] = float(acc["images"]) / train_s if train_s > 0 else float("nan")
        return row

    def _summary(self, train_fit: dict[str, float]) -> RunSummary:
        metrics = self.task.metrics
        results, last = metric_results(self.history, metrics)
        return RunSummary(
            run=str(self.run_dir), task=self.task.name, metrics=list(metrics), method=self.cfg.method["name"],
            model=self.cfg.model.name, dataset=self.cfg.data.name, seed=self.cfg.seed, **results,
            supervised=type(self.method).supervised,
            extra_last={k: last[k] for k in sorted(self.extra_keys) if k in last},
            eval_models_last={name: {m: last[f"{name}_test_{m}"] for m in metrics}
                              for name in self.method.eval_models() if f"{name}_test_{metrics[0]}" in last},
            last_test_reliability=self.reliability, train_fit=train_fit, passes_per_step=self.cost,
            teachers=self.teacher_metrics,
            steps_per_epoch=self.steps_per_epoch, num_params=sum(p.numel() for p in self.model.parameters()),
            num_train=len(self.data.train), num_val=0 if self.data.val is None else len(self.data.val),
            num_test=len(self.data.test), config=to_dict(self.cfg), env=run_environment(self.device, self.dist.world))
