"""Optional experiment trackers (``train.loggers``): Weights & Biases and MLflow, each behind its pip extra and
imported only when a run asks for it. A tracker run gets the resolved config once and the per-epoch scalars of
``metrics.csv`` with the epoch as step."""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from typing import Any

from ..config import ConfigError
from .logging import ScalarLog


def require_trackers(names: Sequence[str]) -> None:
    """Raise a one-line :class:`ConfigError` for the first tracker of ``names`` whose package is not installed."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"train.loggers: {name} is not installed; pip install 'selfdistill[{name}]'") from exc


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys (an empty mapping stays a value)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, f"{key}.") if isinstance(v, dict) and v else {key: v})
    return out


class WandbLog(ScalarLog):
    """A Weights & Biases run in ``project`` named ``run``, holding ``config``. W&B's own environment is respected
    (``WANDB_MODE=offline`` writes the run to ``WANDB_DIR`` for a later ``wandb sync``)."""

    def __init__(self, project: str, run: str, config: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(project=project, name=run, config=config)

    def _write(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self, finished: bool = True) -> None:
        """Finish the run (exit code 1 when training stopped early)."""
        self.run.finish(exit_code=0 if finished else 1)


class MlflowLog(ScalarLog):
    """An MLflow run named ``run`` in experiment ``project`` (created if missing) of the tracking URI MLflow
    resolves (``MLFLOW_TRACKING_URI``), with ``config`` as dotted params."""

    def __init__(self, project: str, run: str, config: dict[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        experiment = self.client.get_experiment_by_name(project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(project)
        self.run_id = self.client.create_run(experiment_id, run_name=run).info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in flatten(config).items()])

    def _write(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self, finished: bool = True) -> None:
        """Mark the run ``FINISHED`` (``KILLED`` when training stopped early)."""
        self.client.set_terminated(self.run_id, "FINISHED" if finished else "KILLED")


TRACKERS: dict[str, type[WandbLog | MlflowLog]] = {"wandb": WandbLog, "mlflow": MlflowLog}


def open_tracker(name: str, project: str, run: str, config: dict[str, Any]) -> ScalarLog:
    """Start tracker ``name`` (a key of :data:`TRACKERS`) for run ``run`` of ``project``, logging ``config``."""
    return TRACKERS[name](project, run, config)
