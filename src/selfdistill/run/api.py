"""``train()``: one run, or a run made of sequential stages (born-again generations), from a config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import RunConfig, save_yaml, to_dict
from ..engine.distributed import is_main_process
from ..engine.summary import RunSummary
from ..engine.trackers import require_trackers
from ..tasks import get_task
from .evaluation import score_ensemble
from .resolve import resolve_config
from .resume import check_run_dir
from .trainer import Trainer


def train(config: RunConfig | dict[str, Any] | str | Path, overrides: list[str] | None = None,
          resume: bool = False, log: Callable[[str], None] | None = None,
          plugins: list[str] | None = None) -> RunSummary:
    """Train one run from a config (path, dict or :class:`RunConfig`) and return its summary; ``plugins`` are
    added to the config's ``plugins`` (imported first, and recorded with the run).

    A method made of sequential stages (born-again generations) runs each stage as its own run directory inside
    the run's; finished stages are skipped on ``resume`` and the interrupted one continues where it stopped.
    """
    cfg = resolve_config(config, overrides, plugins)
    require_trackers(cfg.train.loggers)  # a missing tracker package fails before any folder or data is touched
    method_cls, opts = get_task(cfg.task).method_options(cfg.method)
    stages = method_cls.stages(opts, cfg)
    if not stages:
        return Trainer(cfg, resume=resume, log=log).fit()
    top = Path(cfg.out) / cfg.run_name()
    check_run_dir(top, cfg, resume)
    if is_main_process():  # the run directory is marked as one from the start: its stages are not runs of their own
        top.mkdir(parents=True, exist_ok=True)
        save_yaml(to_dict(cfg), top / "config.yaml")
    summaries = []
    for k, stage in enumerate(stages):
        done = Path(stage.out) / stage.run_name() / "summary.json"
        if done.is_file():
            summaries.append(RunSummary.load(done))
            continue
        if is_main_process():
            (log or print)(f"stage {k + 1}/{len(stages)}: {stage.run_name()}")
        summaries.append(Trainer(resolve_config(stage), resume=True, log=log).fit())
    summary = method_cls.finish_stages(opts, cfg, summaries, lambda ckpts: score_ensemble(ckpts, cfg))
    if is_main_process():
        summary.save(top / "summary.json")
    return summary
