"""What a run needs to know about a task: its data module, model builder, method registry, evaluator, metrics and
its own config section. The run orchestration talks to a :class:`Task`, never to classification-, segmentation- or
detection-specific code; a new task is a subclass decorated with :func:`register_task` in a module of this package
(see docs/extending.md)."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from ..config import ConfigError, RunConfig, from_dict
from ..data.transforms import normalize
from ..engine.distributed import DistInfo
from ..methods.base import Method, method_options, validate_method_options
from ..registry import Registry, UnknownNameError, did_you_mean


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


class Normalized(nn.Module):
    """A trained network behind the normalisation its evaluation applied: it takes images as they are read, uint8
    in 0..255 (``selfdistill predict``'s form, normalised with evaluation's own arithmetic, so the outputs equal
    ``selfdistill eval``'s) or float in 0..1, ``(N, C, H, W)``, and returns the network's outputs."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    def normalize(self, x: Tensor) -> Tensor:
        """``x`` normalised as evaluation's batches are, in the contiguous memory format they have (convolutions
        in another layout round differently)."""
        if x.dtype == torch.uint8:
            return normalize(x, self.mean, self.std).contiguous()
        return ((x.float() - self.mean[:, None, None]) / self.std[:, None, None]).contiguous()

    def forward(self, x: Tensor) -> Any:
        return self.net(self.normalize(x))


class Task:
    """Base class of a task (registered with :func:`register_task`)."""

    name: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]] = ()
    """Metrics of the run summary (``last``, ``best_val``), the primary one first: the one place they are named."""
    train_metric: ClassVar[str] = ""
    """Name of the training accuracy logged as ``train_<name>`` (top-1 of images, accuracy of pixels)."""
    methods: ClassVar[Registry[type[Method]]]
    Options: ClassVar[type | None] = None
    """The dataclass of the task's own config section, written under the task's name (``segmentation: {...}``);
    ``None`` when the task has none."""

    @property
    def primary(self) -> str:
        """The metric that selects the best validation epoch and that the report compares."""
        return self.metrics[0]

    def options(self, cfg: RunConfig) -> Any:
        """The task's section of ``cfg``, validated (defaults where absent)."""
        if self.Options is None:
            if cfg.task_options:
                raise ConfigError(f"task '{self.name}' has no settings section of its own, got {cfg.task_options}")
            return None
        return from_dict(self.Options, cfg.task_options, self.name)

    def data_module(self, cfg: RunConfig, device: torch.device, rank: int, world: int,
                    memory_format: torch.memory_format) -> Any:
        """The data module (splits ``train``/``val``/``test``, ``train_loader``, ``eval_batches``, ``classes``)."""
        raise NotImplementedError

    def build_model(self, cfg: RunConfig, num_classes: int, in_chans: int) -> nn.Module:
        """The network of a run config (its ``model`` section, and what else of the run the task needs, e.g.
        detection's canvas size)."""
        raise NotImplementedError

    def model_names(self) -> list[str]:
        """The models this task builds by name (``selfdistill list models``)."""
        raise NotImplementedError

    def dataset_names(self) -> list[str]:
        """The datasets this task reads (``selfdistill list datasets``)."""
        raise NotImplementedError

    def known_model(self, name: str) -> bool:
        """Whether :meth:`build_model` builds ``name``: one of :meth:`model_names`, with or without
        ``torchvision:``."""
        return name.removeprefix("torchvision:") in self.model_names()

    def check_names(self, cfg: RunConfig) -> None:
        """Refuse a dataset or a model this task does not know, naming the key, before anything is read or built."""
        datasets = self.dataset_names()
        if cfg.data.name not in datasets:
            raise ConfigError(f"data.name: unknown {self.name} dataset '{cfg.data.name}'."
                              f"{did_you_mean(cfg.data.name, datasets)} Known: {', '.join(datasets)}")
        if not self.known_model(cfg.model.name):
            raise ConfigError(f"model.name: unknown {self.name} model '{cfg.model.name}'."
                              f"{did_you_mean(cfg.model.name, self.model_names())} Run `selfdistill list models` to "
                              "see them.")

    def inference_model(self, net: nn.Module, mean: list[float], std: list[float]) -> nn.Module:
        """``net`` taking images as they are read (:class:`Normalized`): what an exported model loads as."""
        return Normalized(net, mean, std)

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
        try:
            return validate_method_options(spec, self.methods)
        except UnknownNameError as e:  # name the key and say which task's methods were searched
            raise UnknownNameError(f"method.name: {e} (task: {self.name}, whose methods are "
                                   f"{', '.join(self.methods.names())})") from None

    def method_options(self, spec: dict[str, Any]) -> tuple[type[Method], Any]:
        """The method class and its options for a validated ``method:`` mapping."""
        return method_options(spec, self.methods)


TASKS: Registry[type[Task]] = Registry("task")


def register_task(name: str):
    """Class decorator: register a :class:`Task` subclass under ``name`` (the value of ``task:`` in a config)."""

    def deco(cls: type[Task]) -> type[Task]:
        cls.name = name
        return TASKS.register(name)(cls)

    return deco


def get_task(name: str) -> Task:
    """The task registered as ``name`` (``classification``, ``segmentation``, ``detection``)."""
    _discover()
    return TASKS.get(name)()


def list_tasks() -> list[str]:
    """Names of the registered tasks."""
    _discover()
    return TASKS.names()


def _discover() -> None:
    """Import every module and subpackage of this package once: a task registers itself where it is defined."""
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name != "base":
            importlib.import_module(f"{__package__}.{info.name}")
