"""Throughput of selfdistill against a bare PyTorch training loop, and of every method against CE.

Measured side by side in one process, rounds interleaved, medians reported:

(a) a hand-written loop: the same model, batch, SGD, and crop + flip + normalise on tensors;
(b) selfdistill's engine running CE (``Trainer`` steps: batch assembly, method, optimiser, bookkeeping);
(c) every method's step time, relative to CE and divided by its declared passes per step;
(d) the data pipeline alone (batch assembly), against what the model consumes.

Run from the repository root (CPU, the CIFAR-10 copy beside the repository)::

    python benchmarks/throughput/throughput.py --out benchmarks/throughput/report.md
    python benchmarks/throughput/throughput.py --device cuda --amp bf16 --channels-last [--compile] \
        --models resnet20 resnet56 resnet18_cifar --out benchmarks/throughput/report_gpu.md

Targets (from the issue): (b)/(a) ≥ 0.95; every method ≤ 1.10 × its multiplicity; data ≥ 5× the model's rate.
A miss is reported as a miss, with a profile of the slowest method's step.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from selfdistill import __version__
from selfdistill.data.transforms import crop_flip, normalize, sample_crop_flip
from selfdistill.methods import describe_method, list_methods
from selfdistill.run import Trainer, resolve_config, train

REPO = Path(__file__).resolve().parents[2]
CIFAR10 = REPO.parent / "shared" / "datasets" / "cifar10"
TEACHER_METHODS = {"kd", "dkd", "sld", "tfkd_self"}


def run_config(args: argparse.Namespace, model: str, method: dict, out: Path) -> dict:
    """A run config whose epoch 1 is ``args.steps`` steps and has no evaluation."""
    return {
        "seed": 0, "out": str(out), "name": f"{model}_{method['name']}",
        "data": {"name": "imagefolder", "root": str(args.data), "cache_dir": str(out / "cache"),
                 "train_subset": args.steps * args.batch, "batch_size": args.batch, "drop_last": True},
        "model": {"name": model, "channels_last": args.channels_last, "compile": args.compile},
        "method": method,
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "sched": {"name": "constant"},
        "train": {"epochs": 1000, "eval_every": 1000, "device": args.device, "amp": args.amp, "progress": False,
                  "tensorboard": False, "threads": args.threads},
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Engine:
    """selfdistill's trainer for one method, timed per epoch of ``steps`` steps (epoch 1 is the warm-up)."""

    def __init__(self, cfg: dict) -> None:
        self.t = Trainer(resolve_config(cfg), log=lambda m: None)
        self.t._setup()
        self.epoch = 0

    def images_per_s(self) -> float:
        """Anchors per second over one epoch (also records the seconds per optimiser step)."""
        self.epoch += 1
        sync(self.t.cfg.train.device)
        row = self.t._train_epoch(self.epoch, 0, {}, 0.0)
        self.step_s = row["train_time_s"] / self.t.steps_per_epoch
        return row["images_per_s"]

    def step_time(self) -> float:
        """Seconds per optimiser step over one epoch."""
        self.images_per_s()
        return self.step_s


class Bare:
    """The hand-written loop: model, SGD, tensor augmentation; nothing else."""

    def __init__(self, engine: Engine, args: argparse.Namespace) -> None:
        t = engine.t
        torch.manual_seed(0)
        from selfdistill.models import build_model

        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        self.model = build_model(t.cfg.model.name, t.data.num_classes, t.data.in_chans).to(t.device, memory_format=fmt)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        self.images, self.labels = t.data.train.images, t.data.train.labels.to(t.device)
        self.mean, self.std, self.fmt = t.data.mean, t.data.std, fmt
        self.args, self.device = args, t.device
        self.amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
        self.gen = torch.Generator().manual_seed(0)

    def images_per_s(self) -> float:
        n, b = len(self.labels), self.args.batch
        perm = torch.randperm(n, generator=self.gen)
        sync(str(self.device))
        t0 = time.perf_counter()
        for s in range(n // b):
            idx = perm[s * b:(s + 1) * b].to(self.device)
            x = crop_flip(self.images[idx], 4, sample_crop_flip(b, 4, True, self.gen))
            x = normalize(x, self.mean, self.std).contiguous(memory_format=self.fmt)
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                loss = F.cross_entropy(self.model(x).float(), self.labels[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        sync(str(self.device))
        return (n // b) * b / (time.perf_counter() - t0)


def data_rate(engine: Engine) -> float:
    """Images/s of batch assembly alone (the engine's loader, CE's requirements)."""
    sync(engine.t.cfg.train.device)
    t0 = time.perf_counter()
    n = sum(len(b) for b in engine.t.loader.iterate(engine.epoch + 1))
    sync(engine.t.cfg.train.device)
    return n / (time.perf_counter() - t0)


def profile_step(engine: Engine, top: int = 12) -> str:
    """The slowest operators of one epoch of a method (torch.profiler, self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if engine.t.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        engine.images_per_s()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    p.add_argument("--method-models", nargs="+", default=["resnet20", "resnet56"],
                   help="models on which every method is timed")
    p.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=8, help="steps per timed epoch")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data", type=Path, default=CIFAR10, help="CIFAR-10 ImageFolder tree (default: ../shared beside "
                   "the repository)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/throughput/report.md"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods or [m for m in list_methods() if m not in ("ce", "dino")] + ["dino"]
    work = Path(tempfile.mkdtemp(prefix="sd_throughput_"))
    lines = ["# Throughput", "", f"Generated by `python {' '.join(sys.argv)}` (selfdistill {__version__}, torch "
             f"{torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
             f"device {args.device}"
             f"{' ' + torch.cuda.get_device_name() if args.device.startswith('cuda') else ''}).",
             f"Batch {args.batch}, {args.steps} steps per timed epoch, median of {args.rounds} rounds after a warm-up "
             f"epoch; amp {args.amp}, channels-last {args.channels_last}, compile {args.compile}.", ""]
    misses: list[str] = []
    lines += ["## Engine overhead and data pipeline", "",
              "| model | bare loop img/s (a) | selfdistill CE img/s (b) | (b)/(a) | data img/s | data / model |",
              "|---|---|---|---|---|---|"]
    for model in args.models:
        eng = Engine(run_config(args, model, {"name": "ce"}, work))
        bare = Bare(eng, args)
        eng.images_per_s()
        bare.images_per_s()  # warm-ups
        a, b = [], []
        for _ in range(args.rounds):
            a.append(bare.images_per_s())
            b.append(eng.images_per_s())
        ra, rb = statistics.median(a), statistics.median(b)
        dr = statistics.median(data_rate(eng) for _ in range(args.rounds))
        ok = rb / ra >= 0.95 and dr / rb >= 5
        if not ok:
            misses.append(f"{model}: engine/bare {rb / ra:.3f}, data/model {dr / rb:.1f}")
        lines.append(f"| {model} | {ra:.0f} | {rb:.0f} | {rb / ra:.3f}{'' if rb / ra >= 0.95 else ' (miss)'} | "
                     f"{dr:.0f} | {dr / rb:.1f}{'' if dr / rb >= 5 else ' (miss)'} |")
    teacher_dir = work / "teacher"
    lines += ["", "## Methods", "",
              "Step time relative to CE (CE and the method timed alternately, median of the per-round ratios),",
              "divided by the method's declared trained passes per step (target ≤ 1.10; no-grad forwards such as",
              "teachers and partners are not counted as passes, so they show here).", "",
              "| model | method | s/step | step time × CE | passes/step | ratio / passes |",
              "|---|---|---|---|---|---|"]
    worst: tuple[float, Engine | None, str] = (0.0, None, "")
    for model in args.method_models:
        teacher = None
        if TEACHER_METHODS & set(methods):
            cfg = run_config(args, model, {"name": "ce"}, teacher_dir)
            cfg["train"]["epochs"], cfg["name"] = 1, f"teacher_{model}"
            train(cfg, log=lambda m: None)
            teacher = str(teacher_dir / f"teacher_{model}" / "last.pt")
        ce = Engine(run_config(args, model, {"name": "ce"}, work))  # timed in turn with every method
        ce.images_per_s()
        for name in methods:
            spec: dict = {"name": name}
            if name in TEACHER_METHODS:
                spec["teacher"] = teacher
            if name == "ban":
                spec["generation"] = 1
                spec["teacher"] = teacher
            eng = Engine(run_config(args, model, spec, work))
            eng.images_per_s()
            steps, ratios = [], []
            for _ in range(args.rounds):  # CE and the method alternate, so drifts in machine speed cancel
                ce_step = ce.step_time()
                steps.append(eng.step_time())
                ratios.append(steps[-1] / ce_step)
            step, rel = statistics.median(steps), statistics.median(ratios)
            passes = eng.t.cost
            ratio = rel / passes
            if ratio > 1.10:
                misses.append(f"{model} {name}: {ratio:.2f} × its multiplicity")
            if ratio > worst[0]:
                worst = (ratio, eng, f"{model} {name}")
            doc = describe_method(name)["doc"].split(":")[0]
            lines.append(f"| {model} | `{name}` ({doc}) | {step:.3f} | {rel:.2f} | {passes:g} | {ratio:.2f}"
                         f"{'' if ratio <= 1.10 else ' (miss)'} |")
    lines += ["", "## Misses", ""]
    lines += [f"- {m}" for m in misses] or ["None."]
    if worst[1] is not None and worst[0] > 1.10:
        lines += ["", f"Profile of one epoch of the slowest method relative to its multiplicity ({worst[2]}):", "",
                  "```", profile_step(worst[1]), "```"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
