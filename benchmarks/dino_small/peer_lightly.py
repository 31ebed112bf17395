"""DINO built from lightly's components, trained and scored under selfdistill's protocol (issue 45, the peer).

Benchmark-only: it needs the ``bench`` extra (``lightly``). It reads a selfdistill DINO run config (``--config`` a
run YAML, or a grid file with ``--run`` naming one of its points, e.g. ``benchmarks/dino_small/screen.yaml``) and
trains the same recipe with lightly's parts where DINO has them:

- lightly: the projection head (``DINOProjectionHead``, student and teacher), the loss with its centre
  (``DINOLoss``, teacher-temperature warm-up by epoch), the teacher helpers (``deactivate_requires_grad``,
  ``update_momentum``, ``cosine_schedule`` for the momentum, stepped per optimiser step), the multi-crop
  augmentation (``DINOTransform`` on PIL images) and the head's ``cancel_last_layer_gradients``;
- selfdistill, so that only the DINO parts differ: the data module (same images, same class-balanced
  train/validation/test split, same per-epoch image order from the same sampler and seed), the network
  (``model.name``, initialised from the same seed, its pooled features: the input of its last linear layer), the
  optimiser and LR schedule (``build_optimizer``/``build_scheduler``: same parameter groups), autocast
  (``train.amp``), and the whole evaluation: every epoch ``DINO.extra_metrics`` (k-NN of student and teacher, the
  controls at initialisation and of the pixels, the linear probes at the end), the classifier evaluation, and the
  run folder (``config.yaml``, ``metrics.csv``, ``summary.json``) in the format ``selfdistill report`` reads.

The run's config records ``method.peer: lightly``, so the report labels it ``dino(peer=lightly)`` (or e.g.
``dino(preset=small, peer=lightly)``) beside the selfdistill run of the same recipe, in the same (dataset, model)
group.

Settings taken from the config, as lightly expresses them:

======================================  ===============================================================================
selfdistill (``method.*`` unless said)   lightly
======================================  ===============================================================================
out_dim, hidden_dim, bottleneck_dim      ``DINOProjectionHead(output_dim, hidden_dim, bottleneck_dim)``, 3 layers
use_bn_in_head, norm_last_layer          ``batch_norm``, ``norm_last_layer``
freeze_last_layer (epochs)               ``freeze_last_layer`` + ``cancel_last_layer_gradients(epoch − 1)`` (0-based)
student_temp, center_momentum            ``DINOLoss(student_temp, center_momentum)``
teacher_temp → teacher_temp_final        ``DINOLoss(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)``,
over teacher_temp_warmup_epochs          called with the 0-based epoch: the same ``linspace`` schedule
momentum_teacher (cosine to 1)           ``cosine_schedule(step, steps, momentum_teacher, 1)`` per optimiser step
n_local, global/local size and scale     ``DINOTransform(global_crop_size/scale, local_crop_size/scale, n_local_views)``
colour jitter 0.4 (p 0.8), gray p 0.2    ``cj_prob 0.8``, ``cj_strength 0.5``, ``cj_bright/contrast/sat 0.8`` (× 0.5
                                         = 0.4 on every view, see below), ``cj_hue 0``, ``random_gray_scale 0.2``,
                                         ``gaussian_blur (0, 0, 0)``, ``solarization_prob 0``, flip p 0.5; the
                                         data's mean and std (``--photometric lightly``: lightly's own defaults)
data.*, model.*, optim.*, sched.*,       selfdistill's code, unchanged
train.epochs/amp/eval_every/eval_train
======================================  ===============================================================================

What lightly cannot express, or does otherwise (the peer keeps lightly's way):

- ``n_global`` must be 2 (``DINOTransform`` makes two global views); other values are refused.
- Head: the hidden layers start from a truncated normal of std 0.02 on both sides (the official initialisation);
  with BatchNorm lightly's have no bias (selfdistill: a bias before each BatchNorm, which it cancels). The teacher's
  head starts as a copy of the student's (as the official code and selfdistill; lightly's own examples build a
  second, independently initialised head). While the last layer is frozen lightly drops the gradients of its
  gain and its direction (as the official code); selfdistill freezes the direction only, which differs where
  the gain trains (``norm_last_layer: false``).
- Teacher momentum: lightly's ``cosine_schedule`` divides by ``steps − 1`` and reaches 1 at the last step;
  selfdistill (and the official code) divide by ``steps`` and stay below 1. The update itself is the same
  ``t ← m·t + (1 − m)·s`` after each optimiser step.
- Crops: torchvision's ``RandomResizedCrop`` on PIL images (integer boxes, 10 tries, then a centre crop; bicubic
  with antialiasing) instead of selfdistill's batched bilinear ``grid_sample`` (fractional boxes clamped to the
  image); ``ColorJitter`` applies brightness, contrast and saturation in a random order on 8-bit images, selfdistill
  in a fixed order on floats. lightly's second global view ignores ``cj_strength`` (it keeps the default 0.5),
  hence strength 0.5 with doubled factors, which gives every view the same jitter.
- The loss: ``DINOLoss`` on float32 outputs with autocast off (as selfdistill's ``dino_loss``). On the same outputs,
  centre and temperatures it is selfdistill's loss: the same pairs (teacher crop i against every student crop
  j ≠ i, the teacher's crops being the first student crops), the centre read before its update and updated with
  the mean over both global crops. Run in float64 it is the float64 value of selfdistill's formula (to 1e-8); in
  float32 its one ``einsum`` reduction over batch × prototypes rounds more (about 2e-4 of a loss near 15 at 4,096
  prototypes and batch 128; selfdistill's per-row reduction about 1e-6), see ``tests/test_peer_lightly.py``.
- No per-epoch collapse warning (the instruments are logged: teacher entropy, KL to uniform, centre norm,
  student-teacher agreement, temperature, momentum).

Run from the repository root, e.g. (the grid point names are ``selfdistill bench --list``'s)::

    python benchmarks/dino_small/peer_lightly.py --config benchmarks/dino_small/screen.yaml \\
        --run dino-preset=small_resnet8_lr=0.015_weight_decay=0.0001_s0
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightly
import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms import DINOTransform
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import to_pil_image

from selfdistill.bench.runner import load_grid
from selfdistill.config import ConfigError, RunConfig, load_yaml, save_yaml, to_dict
from selfdistill.data.samplers import SAMPLERS, global_batch
from selfdistill.data.splits import Split
from selfdistill.engine.checkpoint import seed_everything
from selfdistill.engine.logging import format_epoch, write_csv
from selfdistill.engine.optim import build_optimizer, build_scheduler, term_grad_norms
from selfdistill.engine.summary import RunSummary, metric_results, run_environment
from selfdistill.methods import MethodContext
from selfdistill.methods.dino import DINO, DINOOptions, teacher_instruments
from selfdistill.models.features import last_linear
from selfdistill.run import resolve_config
from selfdistill.run.evaluation import evaluate_split, without_count
from selfdistill.run.resolve import apply_runtime, resolve_amp
from selfdistill.tasks import get_task

PEER = "lightly"
DEFAULT_OUT = Path(__file__).resolve().parent / "runs_lightly"
LIGHTLY_JITTER_STRENGTH = 0.5
"""``DINOTransform``'s second global view always uses this colour-jitter strength; the factors are scaled to it."""


# ------------------------------------------------------------------------------------------------------ config
def load_config(path: str | Path, run: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """The DINO run config of a run YAML, or of the grid point ``run`` of a grid file, with ``key=value``
    overrides; refuses anything but a classification DINO run with two global crops."""
    path = Path(path)
    if "grid" in load_yaml(path):
        points = {r.name: r.config for r in load_grid(path).runs}
        if run not in points:
            dino = [n for n, c in points.items() if c["method"]["name"] == "dino"]
            raise ConfigError(f"{path} is a grid: name one of its DINO points with --run: {', '.join(dino)}")
        cfg = resolve_config(points[run], overrides)
    else:
        if run is not None:
            raise ConfigError(f"--run names a point of a grid file; {path} is a run config")
        cfg = resolve_config(path, overrides)
    if cfg.task != "classification" or cfg.method["name"] != "dino":
        raise ConfigError(f"{path}: the peer trains a classification DINO run, got task {cfg.task}, method "
                          f"{cfg.method['name']}")
    if cfg.method["n_global"] != 2:
        raise ConfigError(f"method.n_global={cfg.method['n_global']}: lightly's DINOTransform makes two global crops")
    return cfg


def run_name(cfg: RunConfig, grid_point: str | None) -> str:
    """``<grid point or dataset_model_dino>_lightly_s<seed>``: beside (never on) the selfdistill run's name."""
    stem = grid_point or cfg.name or f"{cfg.data.name}_{cfg.model.name}_dino"
    stem = re.sub(r"_s\d+$", "", stem).replace(":", "-").replace("/", "-")
    return f"{stem}_{PEER}_s{cfg.seed}"


# ------------------------------------------------------------------------------------------------------ parts
def lightly_transform(opts: DINOOptions, jitter: float, mean: list[float], std: list[float],
                      photometric: str = "ours") -> DINOTransform:
    """lightly's multi-crop transform with our crop sizes, scales and view counts; ``photometric='ours'`` sets its
    colour jitter, grayscale, blur and solarisation to selfdistill's multi-crop, ``'lightly'`` keeps its defaults."""
    colour: dict[str, Any] = {}
    if photometric == "ours":
        factor = jitter / LIGHTLY_JITTER_STRENGTH
        colour = {"cj_prob": 0.8, "cj_strength": LIGHTLY_JITTER_STRENGTH, "cj_bright": factor,
                  "cj_contrast": factor, "cj_sat": factor, "cj_hue": 0.0, "random_gray_scale": 0.2,
                  "gaussian_blur": (0.0, 0.0, 0.0), "solarization_prob": 0.0}
    elif photometric != "lightly":
        raise ValueError(f"photometric: 'ours' or 'lightly', got {photometric!r}")
    return DINOTransform(global_crop_size=opts.global_size, global_crop_scale=tuple(opts.global_scale),
                         local_crop_size=opts.local_size, local_crop_scale=tuple(opts.local_scale),
                         n_local_views=opts.n_local, hf_prob=0.5, normalize={"mean": mean, "std": std}, **colour)


def lightly_heads(in_dim: int, opts: DINOOptions) -> tuple[DINOProjectionHead, DINOProjectionHead]:
    """The student's head and the teacher's, a frozen copy of it."""
    def head() -> DINOProjectionHead:
        with warnings.catch_warnings():  # lightly builds it with the deprecated torch.nn.utils.weight_norm
            warnings.simplefilter("ignore", FutureWarning)
            return DINOProjectionHead(input_dim=in_dim, hidden_dim=opts.hidden_dim, bottleneck_dim=opts.bottleneck_dim,
                                      output_dim=opts.out_dim, batch_norm=opts.use_bn_in_head,
                                      freeze_last_layer=opts.freeze_last_layer, norm_last_layer=opts.norm_last_layer)

    student = head()
    teacher = head()
    teacher.load_state_dict(student.state_dict())
    deactivate_requires_grad(teacher)
    return student, teacher


def lightly_loss(opts: DINOOptions) -> DINOLoss:
    """``DINOLoss`` with our temperatures, warm-up (epochs) and centre momentum."""
    return DINOLoss(output_dim=opts.out_dim, warmup_teacher_temp=opts.teacher_temp,
                    teacher_temp=opts.teacher_temp_final, warmup_teacher_temp_epochs=opts.teacher_temp_warmup_epochs,
                    student_temp=opts.student_temp, center_momentum=opts.center_momentum)


def teacher_temp(loss: DINOLoss, epoch: int) -> float:
    """The τ_t that ``loss`` uses in 1-based ``epoch`` (its warm-up is indexed by the 0-based epoch)."""
    e = epoch - 1
    return float(loss.teacher_temp_schedule[e]) if e < loss.warmup_teacher_temp_epochs else loss.teacher_temp


class MultiCropViews(Dataset):
    """A split's uint8 images as PIL images through a multi-view transform: ``(views, label)``."""

    def __init__(self, split: Split, transform: DINOTransform) -> None:
        self.images = split.images.cpu()
        self.labels = split.labels.cpu()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[list[Tensor], Tensor]:
        return self.transform(to_pil_image(self.images[i])), self.labels[i]


def instruments(t_out: Tensor, center: Tensor, tau_t: float, student_global: Tensor) -> dict[str, Tensor]:
    """The collapse monitors selfdistill's DINO logs, from the teacher's outputs and the centre before its update."""
    p = F.softmax((t_out - center) / tau_t, -1)
    entropy, kl_uniform = teacher_instruments(p)
    return {"teacher_entropy": entropy, "kl_teacher_uniform": kl_uniform, "center_norm": center.norm(),
            "student_teacher_agreement": (student_global.argmax(-1) == p.argmax(-1)).float().mean()}


# ------------------------------------------------------------------------------------------------------ run
class PeerRun:
    """One lightly DINO run under selfdistill's protocol, written to ``out/name``."""

    def __init__(self, cfg: RunConfig, name: str, limit: int | None = None, photometric: str = "ours",
                 workers: int = 0, log: Any = None) -> None:
        self.cfg, self.limit, self.photometric, self.workers = cfg, limit, photometric, workers
        self.cfg.name = name
        self.run_dir = Path(cfg.out) / name
        self.log = log if log is not None else (lambda msg: print(msg, flush=True))
        self.task = get_task(cfg.task)

    def record(self) -> dict[str, Any]:
        """The config as written: the recipe plus ``method.peer`` (and the peer's own options where set)."""
        data = to_dict(self.cfg)
        data["method"] = {**data["method"], "peer": PEER,
                          **({"photometric": self.photometric} if self.photometric != "ours" else {}),
                          **({"limit": self.limit} if self.limit else {})}
        return data

    def setup(self) -> None:
        """Data, network, evaluator, lightly's parts, optimiser and schedule, in the order the trainer builds them
        (so the network's initialisation is the selfdistill run's)."""
        cfg = self.cfg
        self.device = apply_runtime(cfg)
        self.amp = resolve_amp(cfg.train.amp, self.device)
        seed_everything(cfg.seed)
        self.fmt = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
        self.data = self.task.data_module(cfg, self.device, 0, 1, self.fmt)
        if not self.data.in_memory:
            raise ConfigError("the peer (like selfdistill's DINO evaluation) needs the images in memory "
                              "(data.in_memory)")
        if self.limit:
            for split in ("train", "val", "test"):
                s = getattr(self.data, split)
                if s is not None:
                    setattr(self.data, split, s.subset(torch.arange(min(self.limit, len(s)))))
        self.model = self.task.build_model(cfg, self.data.num_classes, self.data.in_chans).to(
            self.device, memory_format=self.fmt)
        _, self.opts = self.task.method_options(cfg.method)
        req = DINO.data_requirements(self.opts)
        self.sampler = SAMPLERS[req.sampler](self.data.train.labels, global_batch(cfg.data.batch_size,
                                                                                  req.batch_scale, 1),
                                             cfg.data.drop_last, cfg.seed)
        self.steps_per_epoch = len(self.sampler)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        ctx = MethodContext(self.data.num_classes, len(self.data.train), cfg.train.epochs, self.steps_per_epoch,
                            self.device, 0, 1, tuple(self.data.mean.tolist()), tuple(self.data.std.tolist()),
                            self.data.in_chans, self.data.image_size)
        # selfdistill's DINO as the evaluator: its set-up freezes the classifier, copies the network at
        # initialisation for the controls and hooks the pooled features of student, teacher and that copy
        self.evaluator = DINO(self.opts, ctx)
        self.evaluator.setup(self.model)
        fc = last_linear(self.model)
        self.head, teacher_head = lightly_heads(fc.in_features, self.opts)
        self.head.to(self.device)
        self.teacher = self.evaluator.teacher.module  # {"backbone": the set-up copy of the network, "head"}
        self.teacher["head"] = teacher_head.to(self.device)
        deactivate_requires_grad(self.teacher)
        self.evaluator.head = self.head  # the evaluator reads only the backbones; its own head is dropped
        self.criterion = lightly_loss(self.opts).to(self.device)
        self.transform = lightly_transform(self.opts, req.multicrop.jitter, self.data.mean.tolist(),
                                           self.data.std.tolist(), self.photometric)
        self.optimizer = build_optimizer([self.model, self.head], cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.sched, cfg.optim.lr, self.steps_per_epoch,
                                         cfg.train.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp is torch.float16)
        self.views = MultiCropViews(self.data.train, self.transform)
        self.history: list[dict[str, float]] = []
        self.extra_keys: set[str] = set()
        self.reliability: dict[str, list[float]] | None = None
        self.step = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        return (contextlib.nullcontext() if self.amp is None
                else torch.autocast(self.device.type, dtype=self.amp))

    def batches(self, epoch: int) -> Iterator[list[Tensor]]:
        """The epoch's multi-crop views, batched in the selfdistill run's image order."""
        plan = [b.anchor.tolist() for b in self.sampler.epoch(epoch)]
        loader = DataLoader(self.views, batch_sampler=plan, num_workers=self.workers)
        for views, _labels in loader:
            yield [v.to(self.device, non_blocking=True).contiguous(memory_format=self.fmt) for v in views]

    def train_step(self, views: list[Tensor], epoch: int, acc: dict[str, Tensor]) -> None:
        """One optimiser step, in the order of selfdistill's trainer and DINO."""
        feats = self.evaluator.feats
        ng = 2
        with self.autocast():
            self.model(torch.cat(views[:ng]))
            f = [feats["student"]]
            if len(views) > ng:
                self.model(torch.cat(views[ng:]))
                f.append(feats["student"])
            student = list(self.head(torch.cat(f)).chunk(len(views)))  # one head pass: its BN sees every crop
            with torch.no_grad():
                self.teacher.train()  # batch statistics, as selfdistill's and the official teacher
                self.teacher["backbone"](torch.cat(views[:ng]))
                t_out = self.teacher["head"](feats["teacher"]).float()
        tau_t = teacher_temp(self.criterion, epoch)
        momentum = cosine_schedule(self.step, self.total_steps, self.opts.momentum_teacher, 1.0)
        with torch.no_grad():
            stats = instruments(t_out, self.criterion.center.reshape(1, -1), tau_t, torch.cat(student[:ng]).float())
        with torch.autocast(self.device.type, enabled=False):
            loss = self.criterion(list(t_out.chunk(ng)), [s.float() for s in student], epoch=epoch - 1)
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"non-finite DINO loss at epoch {epoch}, step {self.step + 1}")
        every = self.cfg.train.grad_norm_every
        if every and self.step % every == 0:
            params = [p for p in self.model.parameters() if p.requires_grad]
            for k, v in {**term_grad_norms({"dino": loss}, params), "steps": 1.0}.items():
                acc[f"gradnorm_{k}"] = acc.get(f"gradnorm_{k}", torch.zeros((), dtype=torch.float64)) + v
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.head.cancel_last_layer_gradients(epoch - 1)  # lightly counts epochs from 0
        if self.cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                     self.cfg.optim.grad_clip)
        group = self.optimizer.param_groups[0]
        applied = {"lr_applied": group["lr"], "weight_decay": group.get("weight_decay", 0.0)}
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        update_momentum(self.model, self.teacher["backbone"], momentum)
        update_momentum(self.head, self.teacher["head"], momentum)
        self.step += 1
        values = {"loss_dino": loss, "loss": loss, **stats, "teacher_temp": tau_t, "teacher_momentum": momentum,
                  **applied}
        for k, v in values.items():
            acc[k] = acc.get(k, torch.zeros((), dtype=torch.float64)) + float(v.detach() if torch.is_tensor(v) else v)
        acc["steps"] += 1
        acc["images"] += views[0].shape[0]

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train ``epoch`` and evaluate as selfdistill's trainer does; returns its row of ``metrics.csv``."""
        self.model.train()
        self.head.train()
        acc = {"steps": torch.zeros((), dtype=torch.float64), "images": torch.zeros((), dtype=torch.float64)}
        t0 = time.perf_counter()
        for views in self.batches(epoch):
            self.train_step(views, epoch, acc)
        train_s = time.perf_counter() - t0
        steps = max(float(acc["steps"]), 1.0)
        row: dict[str, float] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
        for k, v in acc.items():
            if k not in ("steps", "images", "gradnorm_steps"):
                row[f"train_{k}"] = float(v) / (float(acc["gradnorm_steps"]) if k.startswith("gradnorm_") else steps)
        row[f"train_{self.task.train_metric}"] = math.nan  # no trained classifier
        last = epoch == self.cfg.train.epochs
        if epoch % self.cfg.train.eval_every == 0 or last:
            test = evaluate_split(self.model, self.data, self.data.test, self.task, self.device, None, self.amp)
            self.reliability = test.reliability()
            row.update({f"test_{k}": v for k, v in without_count(test.compute()).items()})
            if self.data.val is not None:
                val = evaluate_split(self.model, self.data, self.data.val, self.task, self.device, None, self.amp)
                row.update({f"val_{k}": v for k, v in without_count(val.compute()).items()})
            extra = self.evaluator.extra_metrics(self.model, self.data, last)
            self.extra_keys.update(extra)
            row.update(extra)
        row["train_time_s"] = train_s
        row["images_per_s"] = float(acc["images"]) / train_s if train_s > 0 else math.nan
        return row

    def fit(self) -> RunSummary:
        """Train every epoch, writing ``metrics.csv`` after each, then ``summary.json``."""
        if (self.run_dir / "summary.json").exists() or (self.run_dir / "metrics.csv").exists():
            raise ConfigError(f"{self.run_dir} already holds a run: choose another --out or --name")
        self.setup()
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(self.record(), self.run_dir / "config.yaml")
        self.log(f"run {self.run_dir}: dino (lightly {lightly.__version__}) on {cfg.data.name} "
                 f"({len(self.data.train)} train, {0 if self.data.val is None else len(self.data.val)} val, "
                 f"{len(self.data.test)} test), {cfg.model.name}, {cfg.train.epochs} epochs × "
                 f"{self.steps_per_epoch} steps, device {self.device}")
        for epoch in range(1, cfg.train.epochs + 1):
            row = self.train_epoch(epoch)
            self.history.append(row)
            write_csv(self.history, self.run_dir / "metrics.csv")
            self.log(format_epoch(row, cfg.train.epochs, self.task.metrics, self.task.train_metric))
        fit = (without_count(evaluate_split(self.model, self.data, self.data.train, self.task, self.device, None,
                                            self.amp).compute()) if cfg.train.eval_train else {})
        summary = self.summary(fit)
        summary.save(self.run_dir / "summary.json")
        return summary

    def summary(self, train_fit: dict[str, float]) -> RunSummary:
        """The run's summary, as selfdistill's trainer writes it (``env`` adds lightly's version)."""
        metrics = self.task.metrics
        results, last = metric_results(self.history, metrics)
        return RunSummary(
            run=str(self.run_dir), task=self.task.name, metrics=list(metrics), method="dino",
            model=self.cfg.model.name, dataset=self.cfg.data.name, seed=self.cfg.seed, **results, supervised=False,
            extra_last={k: last[k] for k in sorted(self.extra_keys) if k in last}, eval_models_last={},
            last_test_reliability=self.reliability, train_fit=train_fit, passes_per_step=DINO.cost(self.opts),
            teachers={}, steps_per_epoch=self.steps_per_epoch,
            num_params=sum(p.numel() for p in self.model.parameters()), num_train=len(self.data.train),
            num_val=0 if self.data.val is None else len(self.data.val), num_test=len(self.data.test),
            config=self.record(), env={**run_environment(self.device, 1), "lightly": lightly.__version__},
            cost_note="peer: DINO from lightly's head, loss, teacher helpers and multi-crop transform")


def main(argv: list[str] | None = None) -> int:
    """Command line: train one peer run; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="a selfdistill DINO run config, or a grid file (with --run)")
    p.add_argument("--run", help="the grid point to follow, by its run name (a grid --config only)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.add_argument("--seed", type=int, help="seed (initialisation, data order, augmentation)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="parent folder of the run folder (default: %(default)s)")
    p.add_argument("--name", help="run folder name (default: <grid point>_lightly_s<seed>)")
    p.add_argument("--limit", type=int, help="smoke tests: at most this many images per split (recorded in "
                                             "method.limit: such a run is no benchmark)")
    p.add_argument("--photometric", choices=("ours", "lightly"), default="ours",
                   help="colour/blur/solarisation of the crops: selfdistill's (default) or lightly's DINO defaults")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for the PIL transforms")
    args = p.parse_args(argv)
    overrides = [*args.set, *([f"train.epochs={args.epochs}"] if args.epochs is not None else []),
                 *([f"seed={args.seed}"] if args.seed is not None else []), f"out={args.out}"]
    try:
        cfg = load_config(args.config, args.run, overrides)
        PeerRun(cfg, args.name or run_name(cfg, args.run), args.limit, args.photometric, args.workers).fit()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
