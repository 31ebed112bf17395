"""A run config, fully resolved: types checked (:mod:`selfdistill.config`), then the method's options and the
task's own section validated by the task."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig, config_data, parse_config
from ..tasks import get_task


def resolve_config(source: RunConfig | dict[str, Any] | str | Path | None = None,
                   overrides: list[str] | None = None) -> RunConfig:
    """Turn a YAML path, a dict or a :class:`RunConfig` plus ``key=value`` overrides into a validated config: every
    key and type, the method's options (its preset applied) and the task's section (its defaults filled in)."""
    cfg = parse_config(config_data(source, overrides))
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
