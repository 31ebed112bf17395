"""Evaluation: the one loop that scores a model on a data split (used by training, ``selfdistill eval`` and the
born-again ensembles), and rebuilding a model from a run's checkpoint."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ConfigError, RunConfig, parse_config
from ..engine.checkpoint import CheckpointError, load_run_checkpoint
from ..engine.distributed import DistInfo, init_distributed
from ..plugins import import_plugins
from ..tasks import Evaluator, Task, get_task
from .resolve import resolve_config, resolve_device


def without_count(metrics: dict[str, float]) -> dict[str, float]:
    """An evaluator's metrics without its sample count ``n``: the values a run reports."""
    return {k: v for k, v in metrics.items() if k != "n"}


@torch.no_grad()
def evaluate_split(model: nn.Module, data: Any, split: Any, task: Task, device: torch.device,
                   dist: DistInfo | None = None, amp_dtype: torch.dtype | None = None) -> Evaluator:
    """The task's evaluator of ``model`` on ``split`` of ``data`` (this rank's shard, then reduced over ranks), in
    eval mode (restored afterwards), under autocast when ``amp_dtype`` is set."""
    was_training = model.training
    model.eval()
    acc = task.evaluator(data, device)
    autocast: Callable[[], Any] = (contextlib.nullcontext if amp_dtype is None
                                   else lambda: torch.autocast(device.type, dtype=amp_dtype))
    for x, y in data.eval_batches(split):
        with autocast():
            acc.update(model(x), y)
    acc.reduce(dist or DistInfo())
    model.train(was_training)
    return acc


def load_run_model(checkpoint: str | Path | dict[str, Any], device: torch.device | str = "cpu",
                   ema: bool = False) -> nn.Module:
    """Rebuild a run's model from its checkpoint (a path or a loaded checkpoint), frozen: eval mode, no gradients."""
    ck = checkpoint if isinstance(checkpoint, dict) else load_run_checkpoint(checkpoint, device)
    cfg = parse_config(ck["config"])
    import_plugins(cfg.plugins)  # the run's model may be a plug-in's
    cfg.model.init_backbone = None  # the weights come next
    model = get_task(cfg.task).build_model(cfg, len(ck["classes"]), ck["in_chans"])
    weights = ck["ema"] if ema else ck["model"]
    if weights is None:
        raise CheckpointError("the checkpoint holds no EMA model (its run had train.ema_decay = 0)")
    model.load_state_dict(weights)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class MeanSoftmax(nn.Module):
    """An ensemble of classifiers: the log of their mean softmax (what a classifier's evaluator scores as logits)."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x: Tensor) -> Tensor:
        probs = torch.stack([m(x).float().softmax(1) for m in self.members]).mean(0)
        return probs.clamp_min(1e-12).log()


def score_ensemble(checkpoints: list[Path], cfg: RunConfig) -> dict[str, float]:
    """Test (and validation) metrics, ``<split>_<metric>``, of the mean-softmax ensemble of the checkpoints' models
    on ``cfg``'s data (classification)."""
    task, device = get_task(cfg.task), resolve_device(cfg.train.device)
    data = task.data_module(cfg, device, 0, 1, torch.contiguous_format)
    ensemble = MeanSoftmax([load_run_model(p, device) for p in checkpoints])
    splits = {"test": data.test, **({"val": data.val} if data.val is not None else {})}
    return {f"{name}_{m}": v for name, split in splits.items()
            for m, v in without_count(evaluate_split(ensemble, data, split, task, device).compute()).items()}


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
    data = task.data_module(cfg, device, dist.rank, dist.world, fmt)
    if data.classes != ck["classes"]:
        raise CheckpointError(f"the data's classes ({len(data.classes)}) differ from the checkpoint's "
                              f"({len(ck['classes'])}); evaluate on data with the same class folders")
    model = load_run_model(ck, device, ema=ema).to(memory_format=fmt)
    target = {"test": data.test, "val": data.val, "train": data.train}[split]
    if target is None:
        raise ConfigError("the run has no validation split (data.val_fraction=0)")
    return evaluate_split(model, data, target, task, device, dist).compute()
