"""Which run folder a config may write into: a folder holds one experiment, continued only with its own settings
(except for where it runs and how long)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig, from_dict, load_yaml, parse_config, to_dict
from ..tasks import get_task

CHECKPOINT = "last.pt"

# keys that may differ between a run's saved config and the one it is resumed with: where and how long it runs,
# what it logs and evaluates, and the preset's name (a resolved config holds every option the preset filled in,
# and those are compared)
RESUMABLE_CHANGES = ("plugins", "train.epochs", "train.eval_train", "train.progress", "train.log_every",
                     "train.tensorboard", "train.loggers", "train.tracker_project", "train.threads",
                     "train.grad_norm_every", "train.stop_signals", "data.root", "data.cache_dir", "data.num_workers",
                     "data.download", "method.preset", "out", "name")


class RunExistsError(FileExistsError):
    """The run folder already holds a run: one with other settings, or this one's without ``resume``."""


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("kwargs",):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(saved: dict[str, Any], cfg: RunConfig, finished: bool = False) -> list[str]:
    """``key: old -> new`` for each key whose value differs between a run's saved config and ``cfg``, leaving out
    :data:`RESUMABLE_CHANGES` and keys the saved run did not have yet (added to the library since) at their
    default value. For a ``finished`` run ``train.epochs`` counts too: it trained exactly the saved number."""
    with warnings.catch_warnings():  # keys since moved are read in their new place, as a new run reads them
        warnings.simplefilter("ignore", DeprecationWarning)
        old = _flatten(to_dict(parse_config(saved)))
    new = _flatten(to_dict(cfg))
    task = get_task(cfg.task)
    method_cls = task.method_options(cfg.method)[0]
    defaults = {**_flatten(to_dict(RunConfig())),
                **{f"method.{k}": v for k, v in to_dict(from_dict(method_cls.Options, {})).items()}}
    if task.Options is not None:
        defaults.update(_flatten(to_dict(from_dict(task.Options, {})), f"{cfg.task}."))
    diff = sorted(k for k in set(old) | set(new)
                  if old.get(k) != new.get(k) and (not k.startswith(RESUMABLE_CHANGES)
                                                   or (finished and k == "train.epochs"))
                  and not (k not in old and k in defaults and new.get(k) == defaults[k]))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff]


def _shown(changes: list[str]) -> str:
    more = f"; and {len(changes) - 6} more" if len(changes) > 6 else ""
    return "; ".join(changes[:6]) + more


def _resume_refused(run_dir: Path, changes: list[str]) -> ConfigError:
    return ConfigError(f"cannot resume {run_dir}: the config differs from the saved run ({_shown(changes)}). Resume "
                       "with the same settings, or start a new run (another name or --out).")


def check_resume_config(saved: dict[str, Any], cfg: RunConfig, run_dir: Path) -> None:
    """Refuse to resume ``run_dir`` with a config that differs from the saved one (:func:`config_changes`)."""
    changes = config_changes(saved, cfg)
    if changes:
        raise _resume_refused(run_dir, changes)


def saved_changes(run_dir: Path, cfg: RunConfig, finished: bool = False) -> list[str]:
    """:func:`config_changes` between the ``config.yaml`` saved in ``run_dir`` and ``cfg`` (none without one)."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return []
    try:
        return config_changes(load_yaml(saved), cfg, finished)
    except ConfigError as exc:  # written by a version whose keys this one does not read
        return [f"its config.yaml is not a config of this version: {exc}"]


def check_run_dir(run_dir: Path, cfg: RunConfig, resume: bool) -> None:
    """Before anything is read or built, refuse ``run_dir`` when its ``config.yaml`` is another experiment's
    (:func:`config_changes`; with ``resume`` as without), or when it holds a started run (a checkpoint, a stage's
    included) and ``resume`` is not asked for."""
    changes = saved_changes(run_dir, cfg)
    if changes and resume:
        raise _resume_refused(run_dir, changes)
    if changes:
        raise RunExistsError(f"{run_dir} holds a run with other settings ({_shown(changes)}). Give this run another "
                             f"--out or name, or delete {run_dir} to replace that run.")
    if not resume and run_dir.is_dir() and any(run_dir.rglob(CHECKPOINT)):
        raise RunExistsError(f"{run_dir} already holds a run (a checkpoint {CHECKPOINT}). Pass --resume to continue "
                             "it, or choose another run name or --out.")
