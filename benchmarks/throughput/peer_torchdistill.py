"""Training-step throughput of selfdistill beside torchdistill, in one process, on the same tensors.

Two steps are timed, each in both libraries:

- ``kd``: Hinton KD, a ResNet-20 student and a frozen ResNet-56 teacher (``selfdistill.models``, the same weights on
  both sides), T = 4, loss 0.1·CE + 0.9·T²·KL (batchmean), SGD (momentum 0.9, weight decay 5e-4) with a per-step
  LR scheduler;
- ``ce``: the same student under plain cross-entropy, so that loop overhead and the cost of distillation are told
  apart.

selfdistill's side is the function its trainer calls once per step (``Trainer._step``: the method's training step,
the optimiser, the scheduler, the per-step bookkeeping), on a trainer built from a run config with method ``kd`` or
``ce``. torchdistill's side is a ``DistillationBox`` (``kd``) or ``TrainingBox`` (``ce``) built from a config dict
as its examples build them (``KDLoss``, ``CrossEntropyLoss`` in a ``WeightedSumLoss``), driven per batch as its
example ``train_one_epoch`` drives it: ``forward_process``, ``post_forward_process`` (backward, optimiser step,
zero-grad, scheduler step), then the loss read back and checked. Both sides get the same ready batches (the first
epoch of selfdistill's loader, augmented and normalised once): data loading is outside the comparison.

The libraries alternate (selfdistill, torchdistill, selfdistill, ...) for ``--rounds`` rounds of ``--steps`` steps
after ``--warmup`` discarded steps each; the report gives images/s (medians), the ratio ours/peer per round (median
and range) and a per-phase breakdown of both steps (wall-clock between hooks: student and teacher forwards, the
start of the backward pass, the optimiser step). Run from the repository root::

    python benchmarks/throughput/peer_torchdistill.py --out benchmarks/throughput/report_peer.md

Needs the ``bench`` extra (``pip install -e .[bench]``: torchdistill).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from selfdistill import __version__
from selfdistill.batch import Batch
from selfdistill.engine.summary import cpu_name
from selfdistill.models import build_model
from selfdistill.run import Trainer, resolve_config

STUDENT, TEACHER = "resnet20", "resnet56"
T, W_CE = 4.0, 0.1  # KD: w_ce·CE + (1 − w_ce)·T²·KL, torchdistill's alpha = w_ce
OPTIM = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
PHASES = ("before forwards", "student forward", "teacher forward", "loss, until backward", "backward",
          "optimiser step", "after step")
PHASE_NOTE = {
    "loss, until backward": "between the last forward and the gradient reaching the logits: the loss, selfdistill's "
                            "finite-loss check and zero-grad, the loss's own backward",
    "after step": "after the optimiser step: the scheduler, then selfdistill's per-step metrics (training accuracy, "
                  "loss terms) or torchdistill's zero-grad, loss read-back and metric logger",
}


def quiet_torchdistill() -> None:
    """torchdistill logs its set-up at INFO; keep the report's output to the measurement."""
    from torchdistill.common.constant import def_logger

    def_logger.setLevel(logging.WARNING)


# ----------------------------------------------------------------------------------------------------- selfdistill
def our_config(args: argparse.Namespace, method: str, teacher: Path, out: Path) -> dict[str, Any]:
    """The run config of selfdistill's side: ``args.steps`` batches of CIFAR-10-sized images, no evaluation."""
    spec: dict[str, Any] = {"name": method}
    if method == "kd":
        spec.update(teacher=str(teacher), teacher_model=TEACHER, T=T, w_ce=W_CE, w_kd=1 - W_CE)
    n = max(args.steps, args.warmup) * args.batch
    data: dict[str, Any] = ({"name": "synthetic", "image_size": 32, "num_classes": 10, "synthetic_size": n}
                            if args.data is None else
                            {"name": "imagefolder", "root": str(args.data), "cache_dir": str(out / "cache"),
                             "train_subset": n})
    return {
        "seed": 0, "out": str(out), "name": f"peer_{method}",
        "data": {**data, "batch_size": args.batch, "drop_last": True},
        "model": {"name": STUDENT, "channels_last": args.channels_last},
        "method": spec,
        "optim": {"name": "sgd", **OPTIM},
        "sched": {"name": "constant"},
        "train": {"epochs": 1000, "eval_every": 1000, "device": "cpu", "amp": "none", "progress": False,
                  "tensorboard": False, "threads": args.threads},
    }


class Ours:
    """selfdistill's trainer for one method; :meth:`run` calls the trainer's per-step function on given batches."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.t = Trainer(resolve_config(cfg), log=lambda m: None)
        self.t._setup()
        self.t.method.on_epoch_start(1)
        self.t.train_model.train()
        self.zero = torch.zeros((), dtype=torch.float64, device=self.t.device)
        self.step = 0

    def run(self, batches: list[Batch]) -> None:
        """One optimiser step per batch, with the epoch accumulators ``Trainer._train_epoch`` starts from."""
        acc = {k: self.zero.clone() for k in ("n", "correct", "steps", "images")}
        for b in batches:
            self.t._step(b, 1, self.step, acc, self.zero)
            self.step += 1

    def parts(self) -> tuple[nn.Module, nn.Module | None, torch.optim.Optimizer]:
        """The student, the teacher network (or None) and the optimiser, for the phase hooks."""
        teacher = getattr(self.t.method, "teacher", None)
        return self.t.model, None if teacher is None else teacher.model, self.t.optimizer


# ---------------------------------------------------------------------------------------------------- torchdistill
def peer_config(method: str) -> dict[str, Any]:
    """torchdistill's train config, written as its sample configs write theirs (no data loader: the batches come
    from the caller; no wrapper: CPU)."""
    model_cfg = {"forward_proc": "forward_batch_only", "adaptations": None, "sequential": [], "frozen_modules": []}
    if method == "kd":
        term = {"criterion": {"key": "KDLoss", "kwargs": {
            "student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
            "teacher_module_io": "output", "temperature": T, "alpha": W_CE, "reduction": "batchmean"}},
            "weight": 1.0}
        models = {"teacher": {**model_cfg, "requires_grad": False}, "student": {**model_cfg, "requires_grad": True}}
    else:
        term = {"criterion": {"key": "CrossEntropyLoss", "kwargs": {"reduction": "mean"}},
                "criterion_wrapper": {"key": "SimpleLossWrapper", "kwargs": {
                    "input": {"is_from_teacher": False, "module_path": ".", "io": "output"},
                    "target": {"uses_label": True}}},
                "weight": 1.0}
        models = {"model": {**model_cfg, "requires_grad": True}}
    return {
        "num_epochs": 1,
        **models,
        "optimizer": {"key": "SGD", "kwargs": dict(OPTIM)},
        # selfdistill steps a LambdaLR every step; the same scheduler here, stepped every step by torchdistill
        "scheduler": {"key": "LambdaLR", "kwargs": {"lr_lambda": lambda step: 1.0}, "scheduling_step": 1},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {method: term}}},
    }


class Peer:
    """A torchdistill box for one method, driven per batch as torchdistill's example ``train_one_epoch`` drives it."""

    def __init__(self, method: str, student_state: dict[str, Tensor], teacher: Path, channels_last: bool) -> None:
        from torchdistill.common.main_util import load_ckpt
        from torchdistill.core.distillation import get_distillation_box
        from torchdistill.core.training import get_training_box
        from torchdistill.misc.log import MetricLogger, SmoothedValue

        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.device = torch.device("cpu")
        student = build_model(STUDENT, 10, 3)
        student.load_state_dict(student_state)
        student = student.to(self.device, memory_format=fmt)
        if method == "kd":
            net = build_model(TEACHER, 10, 3)
            load_ckpt(str(teacher), model=net, strict=True)  # as its examples load a teacher (``src_ckpt``)
            # torchdistill leaves the teacher's mode to the caller; selfdistill's teacher runs in eval mode
            net = net.to(self.device).eval()
            self.box = get_distillation_box(net, student, {}, peer_config(method), self.device, None, False, 1)
            self.student, self.teacher = self.box.student_model, self.box.teacher_model
        else:
            self.box = get_training_box(student, {}, peer_config(method), self.device, None, False, 1)
            self.student, self.teacher = self.box.model, None
        self.box.pre_epoch_process(epoch=0)
        self.logger = MetricLogger(delimiter="  ")
        self.logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value}"))

    def run(self, batches: list[Batch]) -> None:
        """The body of torchdistill's ``train_one_epoch`` for each batch."""
        for b in batches:
            sample_batch, targets = b.x.to(self.device), b.y.to(self.device)
            loss = self.box.forward_process(sample_batch, targets, {})
            self.box.post_forward_process(loss=loss)
            self.logger.update(loss=loss.item(), lr=self.box.optimizer.param_groups[0]["lr"])
            if torch.isnan(loss) or torch.isinf(loss):
                raise ValueError(f"the training loop was broken due to loss = {loss}")

    def parts(self) -> tuple[nn.Module, nn.Module | None, torch.optim.Optimizer]:
        """The student, the teacher (or None) and the optimiser, for the phase hooks."""
        return self.student, self.teacher, self.box.optimizer


# -------------------------------------------------------------------------------------------------------- timing
def images_per_s(side: Ours | Peer, batches: list[Batch]) -> float:
    """Images per second of one pass over ``batches``."""
    t0 = time.perf_counter()
    side.run(batches)
    return sum(len(b) for b in batches) / (time.perf_counter() - t0)


class PhaseTimer:
    """Wall-clock per phase of each step, from hooks on the student and teacher forwards, on the gradient of the
    student's logits (the start of the backward pass through the network) and on the optimiser step."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, optimizer: torch.optim.Optimizer) -> None:
        self.marks: dict[str, float] = {}
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.steps = 0
        self.handles: list[Any] = []
        for name, module in (("student", student), ("teacher", teacher)):
            if module is not None:
                self.handles.append(module.register_forward_pre_hook(self._mark(f"{name}_start")))
                self.handles.append(module.register_forward_hook(self._forward_end(name)))
        self.handles.append(optimizer.register_step_pre_hook(self._mark("opt_start")))
        self.handles.append(optimizer.register_step_post_hook(self._mark("opt_end")))

    def _mark(self, key: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            self.marks[key] = time.perf_counter()
        return hook

    def _forward_end(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, out: Tensor) -> None:
            self.marks[f"{name}_end"] = time.perf_counter()
            if name == "student" and out.requires_grad:
                out.register_hook(lambda g: self._mark("backward_start")())
        return hook

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Time the phases of the step run inside the block."""
        self.marks = {"start": time.perf_counter()}
        yield
        m, end = self.marks, time.perf_counter()
        starts = [m[k] for k in ("student_start", "teacher_start") if k in m]
        ends = [m[k] for k in ("student_end", "teacher_end") if k in m]
        spans = {"student forward": m["student_end"] - m["student_start"],
                 "teacher forward": m["teacher_end"] - m["teacher_start"] if "teacher_start" in m else 0.0}
        gap = (max(ends) - min(starts)) - sum(spans.values())  # between two forwards
        parts = {"before forwards": min(starts) - m["start"], **spans,
                 "loss, until backward": m["backward_start"] - max(ends) + gap,
                 "backward": m["opt_start"] - m["backward_start"],
                 "optimiser step": m["opt_end"] - m["opt_start"],
                 "after step": end - m["opt_end"]}
        for k, v in parts.items():
            self.totals[k] += v
        self.steps += 1

    def close(self) -> dict[str, float]:
        """Remove the hooks; milliseconds per step by phase."""
        for h in self.handles:
            h.remove()
        return {k: 1000 * v / max(self.steps, 1) for k, v in self.totals.items()}


def phase_profiles(sides: dict[str, Ours | Peer], batches: list[Batch]) -> dict[str, dict[str, float]]:
    """Milliseconds per step by phase of each side over ``batches`` (a pass of its own after the timed rounds, the
    sides alternating step by step)."""
    timers = {name: PhaseTimer(*side.parts()) for name, side in sides.items()}
    for b in batches:
        for name, side in sides.items():
            with timers[name].step():
                side.run([b])
    return {name: timer.close() for name, timer in timers.items()}


def spread(values: list[float]) -> str:
    """``median [min–max]``."""
    return f"{statistics.median(values):.3f} [{min(values):.3f}–{max(values):.3f}]"


def compare(method: str, args: argparse.Namespace, work: Path, teacher: Path) -> dict[str, Any]:
    """Build both sides of ``method``, warm them up, time them in alternating rounds and profile their phases."""
    ours = Ours(our_config(args, method, teacher, work))
    peer = Peer(method, ours.t.model.state_dict(), teacher, args.channels_last)
    batches = list(ours.t.loader.iterate(1))  # the same tensors for both sides
    timed, warm = batches[:args.steps], batches[:args.warmup]
    ours.run(warm)
    peer.run(warm)
    a, b = [], []
    for _ in range(args.rounds):
        a.append(images_per_s(ours, timed))
        b.append(images_per_s(peer, timed))
    return {"ours": a, "peer": b, "ratio": [x / y for x, y in zip(a, b, strict=True)],
            "phases": phase_profiles({"ours": ours, "peer": peer}, timed)}


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> list[str]:
    """The markdown report."""
    import torchdistill

    lines = ["# Throughput: selfdistill beside torchdistill", "",
             f"Generated by `python {' '.join(sys.argv)}` (selfdistill {__version__}, torchdistill "
             f"{torchdistill.__version__}, torch {torch.__version__}, {cpu_name()}, {torch.get_num_threads()} "
             "threads, device cpu).",
             f"Batch {args.batch} of 3×32×32 images ({'synthetic' if args.data is None else args.data}), fp32, "
             f"channels-last {args.channels_last} (the student and its inputs on both sides), {args.rounds} rounds of "
             f"{args.steps} steps per library after {args.warmup} warm-up steps, the libraries alternating. Student "
             f"{STUDENT}, teacher {TEACHER} (the same weights on both sides, eval mode), T = {T:g}, "
             f"{W_CE:g}·CE + {1 - W_CE:g}·T²·KL, SGD (lr {OPTIM['lr']}, momentum {OPTIM['momentum']}, "
             f"weight decay {OPTIM['weight_decay']}) with a per-step LambdaLR on both sides.", "",
             "## Images per second", "",
             "Medians over rounds; ours/peer is the median of the per-round ratios, with their range.", "",
             "| step | selfdistill img/s | torchdistill img/s | ours/peer | rounds (ours/peer) |",
             "|---|---|---|---|---|"]
    for method, r in results.items():
        lines.append(f"| `{method}` | {statistics.median(r['ours']):.0f} | {statistics.median(r['peer']):.0f} | "
                     f"{spread(r['ratio'])} | {', '.join(f'{x:.3f}' for x in r['ratio'])} |")
    if {"kd", "ce"} <= set(results):
        lines += ["", "Cost of distillation in each library: its KD step time over its CE step time (medians).", "",
                  "| library | KD step / CE step |", "|---|---|"]
        for side, name in (("ours", "selfdistill"), ("peer", "torchdistill")):
            ratio = statistics.median(results["ce"][side]) / statistics.median(results["kd"][side])
            lines.append(f"| {name} | {ratio:.3f} |")
    lines += ["", "## Where the time goes", "",
              "Milliseconds per step by phase (wall-clock between hooks, one pass over the timed batches after the "
              "rounds, the libraries alternating step by step; the hooks add a little to each step)."]
    lines += [f"*{k}*: {v}." for k, v in PHASE_NOTE.items()]
    for method, r in results.items():
        ours, peer = r["phases"]["ours"], r["phases"]["peer"]
        lines += ["", f"### `{method}`", "", "| phase | selfdistill ms | torchdistill ms | difference ms |",
                  "|---|---|---|---|"]
        for k in PHASES:
            lines.append(f"| {k} | {ours[k]:.2f} | {peer[k]:.2f} | {ours[k] - peer[k]:+.2f} |")
        lines.append(f"| total | {sum(ours.values()):.2f} | {sum(peer.values()):.2f} | "
                     f"{sum(ours.values()) - sum(peer.values()):+.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=["kd", "ce"], choices=["kd", "ce"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=8, help="timed steps per round and library")
    p.add_argument("--warmup", type=int, default=3, help="discarded steps per library before the rounds")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--data", type=Path, default=None, help="a CIFAR-10 ImageFolder tree (default: synthetic "
                   "32×32 images; the pixel values do not change the step's cost)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/throughput/report_peer.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_torchdistill()
    work = Path(tempfile.mkdtemp(prefix="sd_peer_"))
    torch.manual_seed(0)
    teacher = work / "teacher_resnet56.pt"  # a plain state dict both libraries load
    torch.save(build_model(TEACHER, 10, 3).state_dict(), teacher)
    results = {m: compare(m, args, work, teacher) for m in args.methods}
    lines = report(args, results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
