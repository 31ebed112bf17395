"""Taking a trained model out: the inference network's weights as safetensors beside a JSON record of how to
rebuild and feed it (:func:`export_model`), and loading them back as a module that takes images as they are read
(:func:`load_model`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError, ModelConfig, RunConfig, from_dict, parse_config
from ..engine.checkpoint import CheckpointError, load_run_checkpoint
from ..plugins import import_plugins
from ..tasks import get_task
from ..version import __version__
from .evaluation import load_run_model

RECORD_FORMAT = 1


def record_path(weights: str | Path) -> Path:
    """The JSON record beside an exported weights file (``model.safetensors`` → ``model.json``)."""
    return Path(weights).with_suffix(".json")


def export_model(checkpoint: str | Path, out: str | Path, ema: bool = False) -> Path:
    """Write a run's inference network (its EMA copy with ``ema``) to ``out`` as safetensors: the network's weights
    only, no auxiliary heads, optimiser or method state. Beside it, :func:`record_path` holds the architecture and
    its kwargs, the classes, the normalisation, the evaluation input size, the task, the plug-ins and the library
    version. Returns the record's path."""
    from safetensors.torch import save_model

    out = Path(out)
    if out.suffix == ".json":
        raise ConfigError(f"--out names the weights file (e.g. {out.with_suffix('.safetensors')}); the JSON record "
                          "is written beside it")
    ck = load_run_checkpoint(checkpoint)
    cfg = parse_config(ck["config"])
    model = load_run_model(ck, "cpu", ema=ema)
    streamed = ck.get("streamed")
    record: dict[str, Any] = {
        "format": RECORD_FORMAT, "library_version": __version__, "task": cfg.task,
        "model": {"name": cfg.model.name, "kwargs": cfg.model.kwargs}, "task_options": cfg.task_options,
        "num_classes": len(ck["classes"]), "classes": ck["classes"], "in_chans": ck["in_chans"],
        "mean": ck["mean"], "std": ck["std"], "input_size": ck.get("input_size"),
        "resize": None if streamed is None else ("center_crop" if streamed else "stretch"),
        "plugins": cfg.plugins, "weights": out.name,
        "source": {"checkpoint": str(checkpoint), "ema": ema, "epoch": ck["epoch"]},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out))  # shared tensors are stored once, every tensor contiguous
    path = record_path(out)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def load_model(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """An exported model (:func:`export_model`) in eval mode, without gradients, normalisation inside: it takes
    ``(N, C, H, W)`` images as uint8 in 0..255 (the form ``selfdistill predict`` feeds it; its outputs then equal
    ``selfdistill eval``'s on the same images) or as float in 0..1. Its ``record`` attribute is the JSON record
    (``classes``, ``input_size``, ...)."""
    from safetensors.torch import load_model as load_weights

    path = Path(path)
    meta = record_path(path)
    for needed in (path, meta):
        if not needed.is_file():
            raise CheckpointError(f"{needed} not found: load_model takes the weights file written by `selfdistill "
                                  "export`, with its JSON record beside it")
    record = json.loads(meta.read_text())
    if record.get("format") != RECORD_FORMAT:
        raise CheckpointError(f"{meta} is not a selfdistill export record (format {record.get('format')!r})")
    import_plugins(record["plugins"])
    task = get_task(record["task"])
    cfg = RunConfig(task=record["task"], model=from_dict(ModelConfig, record["model"], "model"),
                    task_options=record["task_options"])
    net = task.build_model(cfg, record["num_classes"], record["in_chans"])
    load_weights(net, str(path), strict=True, device=str(device))
    model = task.inference_model(net, record["mean"], record["std"]).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.record = record
    return model
