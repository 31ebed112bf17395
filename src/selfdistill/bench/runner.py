"""Run the cartesian product of config values as separate, resumable runs in one output tree.

A grid file is YAML data::

    base: ../../configs/cifar10/resnet8_ce.yaml   # a run config, relative to the grid file (optional)
    config: {train: {epochs: 30}}                 # overrides merged onto it (optional)
    out: runs                                     # output tree, relative to the grid file
    grid:                                         # dotted key -> list of values; the product is run
      method: [{name: ce}, {name: ips, p_swap: 0.5}]
      seed: [0, 1, 2]

``grid`` may also be a list of such mappings: the union of their products runs, in order.

Finished runs (``summary.json``) are skipped, interrupted ones resume from their checkpoint, so a killed grid
loses at most the epoch in progress of the runs that were going. A stop signal (any run's ``train.stop_signals``) is
passed on to the runs in progress, which checkpoint after their step and exit; the grid then stops with
:class:`~selfdistill.run.TrainingStopped`, and the same command continues it.
"""

from __future__ import annotations

import copy
import itertools
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, load_yaml, parse_config, save_yaml, set_by_path, to_dict
from ..engine.preemption import EXIT_STOPPED, StopSignals, TrainingStopped, signal_name
from ..methods import describe_method
from ..run import resolve_config
from ..run.resume import saved_changes
from ..tasks import get_task


@dataclass
class RunSpec:
    """One point of the grid."""

    name: str
    config: dict[str, Any]
    run_dir: Path

    def changes(self) -> list[str]:
        """How the settings saved in a started run's folder differ from this point's (``key: old -> new``; none for a
        pending run): a run with any was started by another grid than this one. A partial run may go on for more
        epochs; a finished one trained exactly its saved number."""
        status = self.status
        if status == "pending":
            return []
        return saved_changes(self.run_dir, parse_config(self.config), finished=status == "done")

    @property
    def status(self) -> str:
        """``done``, ``partial`` (has a checkpoint) or ``pending``."""
        if (self.run_dir / "summary.json").is_file():
            return "done"
        return "partial" if self.run_dir.is_dir() and any(self.run_dir.rglob("last.pt")) else "pending"  # or a stage's


@dataclass
class Grid:
    """A loaded grid: its runs and output tree."""

    out: Path
    runs: list[RunSpec]


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


TEACHER_SOURCE = ("teacher", "teacher_model", "teacher_kwargs", "teacher_mean", "teacher_std")
"""Method options that say which teacher network is loaded (the report lists teachers in their own table)."""


def method_label(method: dict[str, Any], task: str = "classification") -> str:
    """``name`` plus the options that differ from the method's defaults (under ``task``), e.g. ``ips(p_swap=0.5)``,
    or from one of its presets when that names fewer, e.g. ``ips(preset=spec, T=1.0)``; on a tie the preset the
    run names wins, then the defaults. Runs with the same options thus get the same label however they were spelled
    (a preset plus overrides that add up to the defaults is plain ``ips``); when the defaults change, the label
    changes with them (docs/bench.md). The teacher's source and the generation index are left out: the report lists
    teachers separately."""
    registry = get_task(task).methods
    defaults = describe_method(method["name"], registry)["options"]
    presets = registry.get(method["name"]).PRESETS
    named = method.get("preset")
    order = [named] if named in presets else []
    order += [None, *sorted(p for p in presets if p != named)]

    def diff(preset: str | None) -> list[str]:
        base = {**defaults, **presets.get(preset, {})} if preset else defaults
        return [f"{k}={v}" for k, v in method.items()
                if k not in ("name", "preset", "generation", *TEACHER_SOURCE) and base.get(k) != v]

    preset = min(order, key=lambda p: len(diff(p)))  # the first of the shortest
    parts = ([f"preset={preset}"] if preset else []) + diff(preset)
    return f"{method['name']}({', '.join(parts)})" if parts else method["name"]


def _slug(text: str) -> str:
    keep = [c if c.isalnum() or c in "._=-" else "-" for c in text.replace(", ", "-")]
    return "".join(keep).strip("-").replace("--", "-")


def load_grid(path: str | Path, out: str | Path | None = None, plugins: list[str] | None = None) -> Grid:
    """Read a grid file and expand it into validated run specs; ``plugins`` are added to every run's config (its
    training process imports them)."""
    path = Path(path)
    spec = load_yaml(path)
    unknown = set(spec) - {"base", "config", "out", "grid"}
    if unknown:
        raise ConfigError(f"{path}: unknown grid keys {sorted(unknown)} (expected base, config, out, grid)")
    base: dict[str, Any] = load_yaml(path.parent / spec["base"]) if spec.get("base") else {}
    base = _deep_merge(base, spec.get("config") or {})
    grids = spec.get("grid") or {}
    grids = grids if isinstance(grids, list) else [grids]
    for axes in grids:
        if not isinstance(axes, dict) or not all(isinstance(v, list) and v for v in axes.values()):
            raise ConfigError(f"{path}: 'grid' must map dotted keys to non-empty lists of values (or be a list "
                              "of such mappings)")
    out_dir = Path(out) if out is not None else path.parent / spec.get("out", "runs")
    runs = []
    for axes in grids:
        runs += _expand(base, axes, out_dir, plugins)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: grid points map to the same run name; vary keys that appear in the name")
    return Grid(out_dir, runs)


def _expand(base: dict[str, Any], axes: dict[str, list[Any]], out_dir: Path,
            plugins: list[str] | None = None) -> list[RunSpec]:
    """The validated runs of one cartesian product."""
    runs = []
    for values in itertools.product(*axes.values()):
        cfg = copy.deepcopy(base)
        for key, value in zip(axes, values, strict=True):
            set_by_path(cfg, key, copy.deepcopy(value))
        resolved = resolve_config(cfg, plugins=plugins)  # validates every point before anything runs
        parts = [_slug(method_label(resolved.method, resolved.task)), _slug(resolved.model.name)]
        parts += [_slug(f"{k.split('.')[-1]}={v}") for k, v in zip(axes, values, strict=True)
                  if k not in ("method", "model.name", "seed") and not k.startswith("method.")]
        parts.append(f"s{resolved.seed}")
        resolved.name = "_".join(parts)
        resolved.out = str(out_dir)
        runs.append(RunSpec(resolved.name, to_dict(resolved), out_dir / resolved.name))
    return runs


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(path: Path) -> bool:
    """Create ``path`` holding this PID; False when another live process holds it (a stale lock is taken over)."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and _pid_alive(holder):
                return False
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


class _Children:
    """The training processes a grid is running. A stop signal is passed on to each of them, and no new one starts
    after it (:attr:`signum`, 0 until then)."""

    def __init__(self) -> None:
        self.signum = 0
        self._lock = threading.RLock()  # re-entrant: a second signal can interrupt the handler of the first
        self._running: set[subprocess.Popen] = set()

    def run(self, cmd: list[str], **kwargs: Any) -> int | None:
        """``subprocess.run(cmd, **kwargs).returncode``; ``None`` (nothing started) once stopping."""
        with self._lock:
            if self.signum:
                return None
            proc = subprocess.Popen(cmd, **kwargs)
            self._running.add(proc)
        try:
            return proc.wait()
        finally:
            with self._lock:
                self._running.discard(proc)

    def stop(self, signum: int) -> None:
        """Pass ``signum`` on to every running child; start no other (a signal handler: runs in the main thread)."""
        with self._lock:
            self.signum = signum
            for proc in self._running:
                proc.send_signal(signum)


def _execute(run: RunSpec, threads: int, log_dir: Path, children: _Children) -> int | None:
    """Train one run in a subprocess; ``None`` when another bench process is running it, or the grid is stopping."""
    lock = log_dir / f"{run.name}.lock"
    if not acquire_lock(lock):
        return None
    try:
        return _train_subprocess(run, threads, log_dir, children)
    finally:
        lock.unlink(missing_ok=True)


def _train_subprocess(run: RunSpec, threads: int, log_dir: Path, children: _Children) -> int | None:
    cfg_path = log_dir / f"{run.name}.yaml"
    save_yaml(run.config, cfg_path)
    cmd = [sys.executable, "-m", "selfdistill", "train", "--config", str(cfg_path), "--resume",
           "--set", f"train.threads={threads}", "--set", "train.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with (log_dir / f"{run.name}.log").open("a") as log:
        return children.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM when the bench process dies, so a killed grid leaves no run
    training on behind its released lock (the run resumes from its checkpoint next time)."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def check_started(grid: Grid) -> None:
    """Refuse a grid whose started runs (finished, or with a checkpoint) were trained with other settings than the
    grid now gives them (its base config or a grid value edited since): a finished one would be skipped and
    reported under settings it never ran, a partial one refused at its resume after the others had run."""
    stale = [f"{r.run_dir} ({'; '.join(changes[:3])}{'; ...' if len(changes) > 3 else ''})"
             for r in grid.runs if (changes := r.changes())]
    if stale:
        raise ConfigError(f"{len(stale)} started run(s) of this grid were trained with other settings than it now "
                          f"gives them: {', '.join(stale)}. Delete those run folders to train them again with the "
                          "grid's settings, or give the grid another 'out' (--out) to keep them.")


def run_grid(grid: Grid, jobs: int = 1, log=print) -> list[str]:
    """Run every unfinished point, ``jobs`` at a time (torch threads split between them); returns the names of
    runs that failed.

    A signal of any run's ``train.stop_signals`` is passed on to the runs in progress; once they have checkpointed
    and exited, :class:`TrainingStopped` is raised (unless every run is done by then)."""
    check_started(grid)
    todo = [r for r in grid.runs if r.status != "done"]
    log(f"{len(grid.runs)} runs, {len(grid.runs) - len(todo)} already done, {len(todo)} to run, {jobs} at a time")
    log_dir = grid.out / "_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failed: list[str] = []
    children = _Children()

    def one(run: RunSpec) -> None:
        if children.signum:
            return
        log(f"start {run.name} ({run.status})")
        rc = _execute(run, threads, log_dir, children)
        if rc is None:
            if not children.signum:
                log(f"skip  {run.name}: another bench process is running it")
        elif rc == EXIT_STOPPED or (children.signum and rc == -children.signum):  # killed by it before its handler
            log(f"stopped {run.name}: resumable")
        elif rc:
            log(f"FAILED {run.name} (exit {rc}, see {log_dir / run.name}.log)")
            failed.append(run.name)
        else:
            log(f"done  {run.name}")

    stop_signals = sorted({name for run in grid.runs for name in run.config["train"]["stop_signals"]})
    with StopSignals(stop_signals, on_signal=children.stop), ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, todo))
    left = [r.name for r in todo if r.status != "done"]
    if children.signum and left:
        msg = (f"stopped by signal {signal_name(children.signum)} with {len(left)} runs unfinished; run the same "
               "bench again to continue")
        log(msg)
        raise TrainingStopped(msg, children.signum)
    return failed
