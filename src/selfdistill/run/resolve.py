"""A run config, fully resolved: types checked (:mod:`selfdistill.config`), then the method's options and the
task's own section validated by the task."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig, config_data, parse_config
from ..plugins import import_plugins
from ..tasks import get_task


def resolve_config(source: RunConfig | dict[str, Any] | str | Path | None = None,
                   overrides: list[str] | None = None, plugins: list[str] | None = None) -> RunConfig:
    """Turn a YAML path, a dict or a :class:`RunConfig` plus ``key=value`` overrides into a validated config: every
    key and type, then the plug-ins imported (the config's ``plugins`` followed by ``plugins``, kept in the config),
    the method's options (its preset applied) and the task's section (its defaults filled in)."""
    cfg = parse_config(config_data(source, overrides))
    cfg.plugins = list(dict.fromkeys([*cfg.plugins, *(plugins or [])]))
    import_plugins(cfg.plugins)
    task = get_task(cfg.task)
    cfg.method = task.validate_method(cfg.method)
    options = task.options(cfg)
    cfg.task_options = dataclasses.asdict(options) if options is not None else {}
    return cfg


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_bf16_supported() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX-512 or newer); where it has none, bf16 autocast on the CPU
    runs on emulated kernels."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 either
        return False


def resolve_amp(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` (``None``: fp32). fp16 off CUDA falls back to bf16; bf16 on
    a CPU without oneDNN bf16 kernels trains, but warns: there it is many times slower than fp32."""
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    if dtype is torch.float16 and device.type != "cuda":
        warnings.warn("train.amp=fp16 needs CUDA; using bf16 autocast on CPU instead", stacklevel=2)
        dtype = torch.bfloat16
    if dtype is torch.bfloat16 and device.type == "cpu" and not cpu_bf16_supported():
        warnings.warn("train.amp=bf16 on a CPU without oneDNN bf16 kernels (no AVX-512): autocast runs emulated, "
                      "often many times slower than fp32; set train.amp=none here (the numbers change slightly, "
                      "so do not mix the two in one comparison)", stacklevel=2)
    return dtype
