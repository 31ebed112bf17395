"""A run config, fully resolved: types checked (:mod:`selfdistill.config`), then the method's options and the
task's own section validated by the task."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, RunConfig, config_data, parse_config
from ..plugins import import_plugins
from ..registry import UnknownNameError
from ..tasks import get_task


def resolve_config(source: RunConfig | dict[str, Any] | str | Path | None = None,
                   overrides: list[str] | None = None, plugins: list[str] | None = None) -> RunConfig:
    """Turn a YAML path, a dict or a :class:`RunConfig` plus ``key=value`` overrides into a validated config: every
    key and type, then the plug-ins imported (the config's ``plugins`` followed by ``plugins``, kept in the config),
    the method's options (its preset applied) and the task's section (its defaults filled in)."""
    cfg = parse_config(config_data(source, overrides))
    cfg.plugins = list(dict.fromkeys([*cfg.plugins, *(plugins or [])]))
    import_plugins(cfg.plugins)
    try:
        task = get_task(cfg.task)
    except UnknownNameError as e:
        raise UnknownNameError(f"task: {e}") from None
    cfg.method = task.validate_method(cfg.method)
    options = task.options(cfg)
    cfg.task_options = dataclasses.asdict(options) if options is not None else {}
    task.check_names(cfg)
    parse_device(cfg.train.device)
    return cfg


DEVICE_TYPES = ("cpu", "cuda", "mps")


def parse_device(name: str) -> torch.device | None:
    """The device ``train.device`` names (``None`` for ``auto``); anything but ``auto``, ``cpu``, ``cuda``,
    ``cuda:N`` or ``mps`` is a :class:`ConfigError`."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ConfigError(f"train.device: expected auto, cpu, cuda, cuda:N or mps, got {name!r}")
    return device


def apply_runtime(cfg: RunConfig) -> torch.device:
    """What a run sets in torch before it builds anything: the thread count (``train.threads``), deterministic
    algorithms (``train.deterministic``); returns the run's device (:func:`resolve_device`)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return resolve_device(cfg.train.device)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; a device this machine does not have is a :class:`ConfigError`
    (raised before any data is read)."""
    device = parse_device(name)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    count = {"cpu": 1, "cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
             "mps": int(torch.backends.mps.is_available())}[device.type]
    if (device.index or 0) >= count:
        raise ConfigError(f"train.device: this machine has {count} {device.type} device(s), {name!r} is not one of "
                          "them; set train.device=auto or cpu")
    return device


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
