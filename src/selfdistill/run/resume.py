"""What a resumed run may change: its config must be the saved run's, except for where it runs and how long."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig, from_dict, parse_config, to_dict

# keys that may differ between a run's saved config and the one it is resumed with
RESUMABLE_CHANGES = ("train.epochs", "train.progress", "train.log_every", "train.tensorboard", "train.threads",
                     "train.grad_norm_every", "train.stop_signals", "data.root", "data.cache_dir", "data.num_workers",
                     "data.download", "out")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("kwargs",):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_config(saved: dict[str, Any], cfg: RunConfig, method_cls: type, run_dir: Path) -> None:
    """Refuse to resume ``run_dir`` with a config that differs from the saved one, beyond :data:`RESUMABLE_CHANGES`;
    a key the saved run did not have yet (added to the library since) is no change at its default value."""
    with warnings.catch_warnings():  # keys since moved are read in their new place, as a new run reads them
        warnings.simplefilter("ignore", DeprecationWarning)
        old = _flatten(to_dict(parse_config(saved)))
    new = _flatten(to_dict(cfg))
    defaults = {**_flatten(to_dict(RunConfig())),
                **{f"method.{k}": v for k, v in to_dict(from_dict(method_cls.Options, {})).items()}}
    diff = sorted(k for k in set(old) | set(new)
                  if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES)
                  and not (k not in old and k in defaults and new.get(k) == defaults[k]))
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6])
        raise ConfigError(f"cannot resume {run_dir}: the config differs from the saved run ({shown}). Resume with "
                          "the same settings or start a new run (another name or --out).")
