"""What the engine needs to know about a task: its data module, model builder, method registry, evaluator and
metrics. The trainer talks to a :class:`Task`, never to classification- or segmentation-specific code."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from ..config import DataConfig
from ..engine.distributed import DistInfo
from ..registry import Registry, UnknownNameError


class Evaluator(Protocol):
    """Accumulates a split's metrics on each rank; :meth:`reduce` combines the ranks before :meth:`compute`."""

    def update(self, output: Any, target: Any) -> None:
        """Add a batch of model outputs and targets."""

    def reduce(self, dist: DistInfo) -> None:
        """Combine the ranks' accumulations (every rank ends with the whole split's)."""

    def compute(self) -> dict[str, float]:
        """The metrics (``n`` included) from the sums."""

    def reliability(self) -> dict[str, list[float]] | None:
        """Reliability-diagram bins, where the task has them."""


class Task:
    """Base class of a task (registered in :data:`TASKS`)."""

    name: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]] = ()
    """Metrics of the run summary (``last``, ``best_val``), the primary one first."""
    train_metric: ClassVar[str] = ""
    """Name of the training accuracy logged as ``train_<name>`` (top-1 of images, accuracy of pixels)."""
    methods: ClassVar[Registry]

    @property
    def primary(self) -> str:
        """The metric that selects the best validation epoch and that the report compares."""
        return self.metrics[0]

    def data_module(self, cfg: DataConfig, device: torch.device, rank: int, world: int,
                    memory_format: torch.memory_format) -> Any:
        """The data module (splits ``train``/``val``/``test``, ``train_loader``, ``eval_batches``, ``classes``)."""
        raise NotImplementedError

    def build_model(self, run_cfg: dict[str, Any], num_classes: int, in_chans: int) -> nn.Module:
        """The network for a run config mapping (its ``model`` section, and what else of the run the task needs,
        e.g. detection's canvas size)."""
        raise NotImplementedError

    def model_names(self) -> list[str]:
        """The models this task builds by name (``selfdistill list models``)."""
        raise NotImplementedError

    def dataset_names(self) -> list[str]:
        """The datasets this task reads (``selfdistill list datasets``)."""
        raise NotImplementedError

    def evaluator(self, data: Any, device: torch.device) -> Evaluator:
        """An empty evaluator for ``data``'s splits."""
        raise NotImplementedError

    def train_hits(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor | int]:
        """(correct, counted) for the training accuracy of one step."""
        raise NotImplementedError

    def train_stats(self, logits: Tensor, targets: Any) -> dict[str, Tensor]:
        """Diagnostics of one step's training outputs (means over its rows), averaged per epoch and logged as
        ``train_<name>``; none by default."""
        return {}

    def validate_method(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The ``method:`` mapping checked against this task's methods and fully resolved."""
        from ..methods.base import validate_method_options

        try:
            return validate_method_options(spec, self.methods)
        except UnknownNameError as e:  # say which task's methods were searched
            raise UnknownNameError(f"{e} (task: {self.name}, whose methods are {', '.join(self.methods.names())})"
                                   ) from None

    def method_options(self, spec: dict[str, Any]) -> tuple[type, Any]:
        """The method class and its options for a validated ``method:`` mapping."""
        from ..methods.base import method_options

        return method_options(spec, self.methods)


TASKS: Registry[type[Task]] = Registry("task")


def get_task(name: str) -> Task:
    """The task registered as ``name`` (``classification``, ``segmentation``, ``detection``)."""
    _register()
    return TASKS.get(name)()


def list_tasks() -> list[str]:
    """Names of the registered tasks."""
    _register()
    return TASKS.names()


def _register() -> None:
    from . import classification, detection, segmentation  # noqa: F401  (registration)
