"""Hinton KD trained by torchdistill under this benchmark's protocol, into run folders ``selfdistill report`` reads.

Every setting comes from the saved ``config.yaml`` of a committed selfdistill KD run (default:
``runs/kd_resnet20_s0``): the data split and augmentation, the student (ResNet-20) and its initialisation seed, the
teacher checkpoint, T and the loss weights, the optimiser, the per-step schedule, the epochs, the precision
(autocast) and the memory format. What differs is the training loop: a torchdistill ``DistillationBox``, built from a
train config dict as torchdistill's examples build one (``KDLoss`` in a ``WeightedSumLoss``, SGD, a per-step
``LambdaLR``), driven per batch as its example ``train_one_epoch`` drives it (``forward_process``, then
``post_forward_process``: backward, optimiser step, zero-grad, scheduler step).

The batches come from selfdistill's data module, not from a torchdistill dataset config: it is the one way to get
the same images in the same order. The split (a class-balanced validation hold-out, then a class-balanced training
subset, both seeded) and the augmentation (crop with padding and flip, done in batches on uint8 tensors, then
normalisation by the training images' statistics) are selfdistill's; torchdistill's dataset config would rebuild
them with torchvision's PIL transforms, another random stream and another decode and resize. With the same seed the
student starts from the weights selfdistill's run starts from and sees the same augmented batches in the same order.

Evaluation (test and validation every ``train.eval_every`` epochs, the training images at the end) uses
selfdistill's evaluation loop on the student, so the columns of ``metrics.csv`` and the keys of ``summary.json``
are those of selfdistill's runs; the run's ``config.yaml`` is the source run's with ``method.library:
torchdistill`` added, which makes its report label ``kd(library=torchdistill)``.

Run from the repository root (each seed is one run, about as long as selfdistill's KD run)::

    python benchmarks/tinyimagenet100_cpu/peer_torchdistill_kd.py --seeds 0 1

Needs the ``bench`` extra (``pip install -e .[bench]``: torchdistill).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from selfdistill.config import ConfigError, RunConfig, save_yaml, to_dict
from selfdistill.engine.checkpoint import load_checkpoint, save_checkpoint, seed_everything
from selfdistill.engine.logging import write_csv
from selfdistill.engine.optim import lr_multiplier
from selfdistill.engine.summary import RunSummary, metric_results, run_environment
from selfdistill.run import resolve_config
from selfdistill.run.evaluation import evaluate_split, without_count
from selfdistill.run.resolve import apply_runtime
from selfdistill.run.trainer import eval_input
from selfdistill.tasks import get_task

HERE = Path(__file__).resolve().parent
SOURCE_RUN = HERE / "runs" / "kd_resnet20_s0" / "config.yaml"
LIBRARY = "torchdistill"
STUDENT_LOGITS = "student_logits"
"""Key under which the student's forward process leaves its logits in the batch's supplementary dict."""


# ------------------------------------------------------------------------------------------ torchdistill pieces
def register_forward_procs() -> None:
    """Two forward processes, registered through torchdistill's own registry: the model's output cast to fp32 (as
    selfdistill's teacher returns its logits, and as every selfdistill loss casts them under autocast), and the
    same for the student, which also leaves its detached logits in the supplementary dict (for the training
    accuracy and logit statistics that selfdistill's runs log)."""
    from torchdistill.core.interfaces.registry import register_forward_proc_func

    def forward_batch_only_fp32(model: nn.Module, sample_batch: Tensor, targets: Any = None,
                                supp_dict: dict | None = None, **kwargs: Any) -> Tensor:
        return model(sample_batch).float()

    def forward_batch_only_fp32_kept(model: nn.Module, sample_batch: Tensor, targets: Any = None,
                                     supp_dict: dict | None = None, **kwargs: Any) -> Tensor:
        out = model(sample_batch).float()
        if supp_dict is not None:
            supp_dict[STUDENT_LOGITS] = out.detach()
        return out

    register_forward_proc_func(forward_batch_only_fp32)
    register_forward_proc_func(forward_batch_only_fp32_kept)


def train_config(cfg: RunConfig, steps_per_epoch: int) -> dict[str, Any]:
    """The DistillationBox's train config (no data loaders: the batches come from selfdistill's data module)."""
    m = cfg.method
    model = {"adaptations": None, "sequential": [], "frozen_modules": []}
    optimizer: dict[str, Any] = {"key": "SGD", "kwargs": {"lr": cfg.optim.lr, "momentum": cfg.optim.momentum,
                                                          "weight_decay": cfg.optim.weight_decay,
                                                          "nesterov": cfg.optim.nesterov}}
    if cfg.optim.grad_clip > 0:
        optimizer["max_grad_norm"] = cfg.optim.grad_clip
    # torchdistill's KDLoss: alpha·CE + beta·T²·KL(batchmean), selfdistill's w_ce·CE + w_kd·KD_T
    kd = {"key": "KDLoss", "kwargs": {
        "student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
        "teacher_module_io": "output", "temperature": m["T"], "alpha": m["w_ce"], "beta": m["w_kd"],
        "reduction": m["kl_reduction"]}}
    multiplier = lr_multiplier(cfg.sched, cfg.optim.lr, steps_per_epoch, cfg.train.epochs)  # selfdistill's schedule
    return {
        "num_epochs": cfg.train.epochs,
        "teacher": {**model, "forward_proc": "forward_batch_only_fp32", "requires_grad": False},
        "student": {**model, "forward_proc": "forward_batch_only_fp32_kept", "requires_grad": True},
        "optimizer": optimizer,
        "scheduler": {"key": "LambdaLR", "kwargs": {"lr_lambda": multiplier},
                      "scheduling_step": 1},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {"criterion": kd, "weight": 1.0}}}},
    }


def check_protocol(cfg: RunConfig) -> None:
    """Refuse the settings this driver does not reproduce in torchdistill."""
    m, why = cfg.method, []
    if m["name"] != "kd":
        why.append(f"method.name is {m['name']!r}, not 'kd'")
    else:
        if m["kl_reduction"] != "batchmean":
            why.append("method.kl_reduction other than batchmean (torchdistill's KDLoss takes KLDivLoss reductions)")
        if m["teacher_mode"] != "eval" or m["teacher_ema"] or m["teacher_mean"] or m["teacher_std"]:
            why.append("a teacher in train mode, its EMA weights or its own normalisation")
    if cfg.optim.name != "sgd" or cfg.optim.wd_exclude_norm_bias:
        why.append("an optimiser other than SGD with weight decay on every parameter")
    if cfg.sched.name == "onecycle":
        why.append("sched.name onecycle")
    if cfg.train.amp == "fp16" or cfg.train.ema_decay > 0 or cfg.model.compile or cfg.task != "classification":
        why.append("fp16 (a gradient scaler), a model EMA, torch.compile or a task other than classification")
    if why:
        raise ConfigError("peer_torchdistill_kd.py does not reproduce: " + "; ".join(why))


def load_teacher(path: Path, teacher_model: str, num_classes: int, in_chans: int, mean: Tensor,
                 std: Tensor) -> tuple[nn.Module, str]:
    """The frozen teacher, loaded by torchdistill's ``load_ckpt`` (as its examples load ``src_ckpt``): a selfdistill
    run checkpoint (its ``model`` weights; architecture and input statistics from the checkpoint, which must match
    the student's data) or a plain state dict of ``teacher_model``; returns it and, for a plain state dict, the
    architecture's name (``""`` for a run checkpoint, as selfdistill records it)."""
    from torchdistill.common.main_util import load_ckpt

    from selfdistill.models import build_model

    ck = load_checkpoint(path)
    if isinstance(ck, dict) and "config" in ck and "model" in ck:
        name, kwargs, recorded = ck["config"]["model"]["name"], ck["config"]["model"]["kwargs"], ""
        if len(ck["classes"]) != num_classes:
            raise ConfigError(f"the teacher {path} predicts {len(ck['classes'])} classes, the data has {num_classes}")
        t_mean, t_std = torch.tensor(ck["mean"]), torch.tensor(ck["std"])
        if not (torch.allclose(t_mean, mean.cpu()) and torch.allclose(t_std, std.cpu())):
            raise ConfigError(f"the teacher {path} was trained with input statistics {ck['mean']}, {ck['std']}, the "
                              f"student's data has {mean.tolist()}, {std.tolist()}: this driver feeds both the same "
                              "normalised images")
    else:
        name, kwargs, recorded = teacher_model, {}, teacher_model
    teacher = build_model(name, num_classes, in_chans, **kwargs)
    load_ckpt(str(path), model=teacher, strict=True)
    # torchdistill leaves the teacher's mode to the caller; selfdistill's teacher runs in eval mode
    return teacher.eval(), recorded


# ------------------------------------------------------------------------------------------------------ the run
def run_config(args: argparse.Namespace, seed: int) -> RunConfig:
    """The source run's resolved config for ``seed`` with this invocation's overrides."""
    overrides = [f"seed={seed}", *args.set]
    if args.teacher is not None:
        overrides.append(f"method.teacher={args.teacher}")
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    cfg = resolve_config(args.config, overrides)
    cfg.out = str(args.out)
    cfg.name = f"kd-library={LIBRARY}_{cfg.model.name}_s{seed}"
    return cfg


def train_one(cfg: RunConfig, teacher_model: str, limit: int, log: Callable[[str], None]) -> RunSummary:
    """Train one seed with torchdistill and write its run folder; returns its summary."""
    import torchdistill
    from torchdistill.core.distillation import get_distillation_box

    check_protocol(cfg)
    task = get_task(cfg.task)
    run_dir = Path(cfg.out) / cfg.run_name()
    run_dir.mkdir(parents=True, exist_ok=True)
    device = apply_runtime(cfg)
    amp = {"none": None, "bf16": torch.bfloat16}[cfg.train.amp]
    autocast: Callable[[], Any] = (contextlib.nullcontext if amp is None
                                   else lambda: torch.autocast(device.type, dtype=amp))
    # the order of selfdistill's Trainer set-up, so that the seed gives the same initial student and batches
    seed_everything(cfg.seed)
    fmt = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    data = task.data_module(cfg, device, 0, 1, fmt)
    student = task.build_model(cfg, data.num_classes, data.in_chans).to(device, memory_format=fmt)
    method_cls, method_opts = task.method_options(cfg.method)
    loader = data.train_loader(method_cls.data_requirements(method_opts), cfg.seed)
    steps = min(len(loader), limit) if limit else len(loader)
    teacher, teacher_name = load_teacher(Path(cfg.method["teacher"]), cfg.method["teacher_model"] or teacher_model,
                                         data.num_classes, data.in_chans, data.mean, data.std)
    teacher = teacher.to(device)
    box = get_distillation_box(teacher, student, {}, train_config(cfg, steps), device, None, False, 1)

    def evaluate(model: nn.Module, split: Any) -> Any:
        return evaluate_split(model, data, split, task, device, None, amp)

    splits = {"test": data.test, **({"val": data.val} if data.val is not None else {})}
    teachers = {"teacher": {k: evaluate(teacher, s).compute() for k, s in splits.items()}}  # as selfdistill logs it
    saved = to_dict(cfg)
    saved["method"]["library"] = LIBRARY
    saved["method"]["teacher_model"] = cfg.method["teacher_model"] or teacher_name
    saved["train"]["grad_norm_every"] = 0  # torchdistill's total loss only: no per-term gradient norms
    save_yaml(saved, run_dir / "config.yaml")
    log(f"run {run_dir}: kd by torchdistill {torchdistill.__version__}, {cfg.train.epochs} epochs × {steps} steps, "
        f"teacher test top1 {teachers['teacher']['test']['top1']:.2f}")
    history: list[dict[str, float]] = []
    reliability = None
    for epoch in range(1, cfg.train.epochs + 1):
        box.pre_epoch_process(epoch=epoch)
        sums: dict[str, float] = {"loss": 0.0, "hits": 0.0, "n": 0.0, "images": 0.0}
        t0 = time.perf_counter()
        for step, batch in enumerate(loader.iterate(epoch)):
            if step >= steps:
                break
            supp: dict[str, Tensor] = {}
            with autocast():
                loss = box.forward_process(batch.x, batch.y, supp)
            box.post_forward_process(loss=loss)
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"non-finite loss {value} at epoch {epoch}, step {step + 1}")
            logits = supp[STUDENT_LOGITS]
            hits, counted = task.train_hits(logits, batch.y)
            sums["loss"] += value
            sums["hits"] += float(hits)
            sums["n"] += float(counted)
            sums["images"] += len(batch)
            for k, v in task.train_stats(logits, batch.y).items():
                sums[k] = sums.get(k, 0.0) + float(v)
        train_s = time.perf_counter() - t0
        box.post_epoch_process()
        row: dict[str, float] = {"epoch": epoch, "lr": box.optimizer.param_groups[0]["lr"]}
        row.update({f"train_{k}": v / steps for k, v in sorted(sums.items()) if k not in ("hits", "n", "images")})
        row[f"train_{task.train_metric}"] = 100 * sums["hits"] / sums["n"]
        if epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs:
            test = evaluate(student, data.test)
            reliability = test.reliability()
            row.update({f"test_{k}": v for k, v in without_count(test.compute()).items()})
            if data.val is not None:
                row.update({f"val_{k}": v for k, v in without_count(evaluate(student, data.val).compute()).items()})
        row["train_time_s"] = train_s
        row["images_per_s"] = sums["images"] / train_s
        history.append(row)
        write_csv(history, run_dir / "metrics.csv")
        log(f"epoch {epoch}/{cfg.train.epochs}: loss {row['train_loss']:.3f}, train top1 {row['train_top1']:.2f}"
            + (f", test top1 {row['test_top1']:.2f}" if "test_top1" in row else "") + f", {train_s:.1f} s")
    save_checkpoint({"format": 1, "config": saved, "model": student.state_dict(), "ema": None,
                     "epoch": cfg.train.epochs, "classes": data.classes, "in_chans": data.in_chans,
                     "mean": data.mean.tolist(), "std": data.std.tolist(), **eval_input(data)}, run_dir / "last.pt")
    fit = without_count(evaluate(student, data.train).compute()) if cfg.train.eval_train else {}
    results, _ = metric_results(history, task.metrics)
    summary = RunSummary(
        run=str(run_dir), task=task.name, metrics=list(task.metrics), method="kd", model=cfg.model.name,
        dataset=cfg.data.name, seed=cfg.seed, **results, supervised=True, last_test_reliability=reliability,
        train_fit=fit, passes_per_step=method_cls.cost(method_opts), teachers=teachers, steps_per_epoch=steps,
        num_params=sum(p.numel() for p in student.parameters()), num_train=len(data.train),
        num_val=0 if data.val is None else len(data.val), num_test=len(data.test), config=saved,
        env=run_environment(device, 1),
        cost_note=f"trained by torchdistill {torchdistill.__version__} (DistillationBox, KDLoss) on selfdistill's data")
    summary.save(run_dir / "summary.json")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=SOURCE_RUN, help="the selfdistill KD run whose settings to "
                   "reproduce (its saved config.yaml)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--teacher", default=None, help="teacher checkpoint (default: the config's method.teacher)")
    p.add_argument("--teacher-model", default="resnet56", help="architecture of a plain state-dict teacher")
    p.add_argument("--out", type=Path, default=HERE / "runs_peer")
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs (smoke tests)")
    p.add_argument("--limit", type=int, default=0, help="at most this many steps per epoch (smoke tests; 0: all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the source run's config (repeatable), e.g. --set data.root=/data")
    args = p.parse_args(argv)
    from torchdistill.common.constant import def_logger

    def_logger.setLevel(logging.WARNING)
    register_forward_procs()
    for seed in args.seeds:
        s = train_one(run_config(args, seed), args.teacher_model, args.limit, lambda m: print(m, flush=True))
        print(f"{s.run}: last test top1 {s.last['test_top1']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
