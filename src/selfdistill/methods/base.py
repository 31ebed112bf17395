"""The method interface: a registered class that turns a batch into named losses.

The engine builds the data pipeline from :attr:`Method.requirements`, sums the returned losses, logs each
term and every ``stats`` entry (averaged per epoch), checkpoints :meth:`Method.state_dict`, and optimises
:meth:`Method.trainable_modules` along with the model. It never looks at a method's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..batch import Batch, DataRequirements
from ..config import ConfigError, from_dict, options_table
from ..engine.distributed import DistInfo, sync_batchnorm
from ..engine.summary import RunSummary
from ..registry import Registry


@dataclass
class NoOptions:
    """A method without options."""


@dataclass
class StepOutput:
    """What a training step returns.

    ``losses`` are already weighted and are summed by the engine; ``logits``/``targets`` feed the training
    accuracy; ``stats`` are scalar diagnostics averaged over the epoch (e.g. the fraction of pairs where the
    anchor teaches).
    """

    losses: dict[str, Tensor]
    logits: Tensor | None
    targets: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class MethodContext:
    """Facts about the run that a method may need at set-up."""

    num_classes: int
    num_train: int
    epochs: int
    steps_per_epoch: int
    device: torch.device
    rank: int = 0
    world: int = 1
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    """The student's input normalisation (per channel), for teachers trained with other statistics."""
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    in_chans: int = 3
    """Input channels."""
    image_size: int = 32
    """Training image side (for probing feature shapes)."""
    ignore_index: int = 255
    """Label of unlabelled pixels (segmentation)."""
    sync_bn: bool = False
    """``model.sync_bn``: a method's own modules that normalise by batch statistics (EMA teachers run in train
    mode) should use :meth:`sync_batchnorm` too."""

    def sync_batchnorm(self, module: nn.Module) -> nn.Module:
        """``module`` with BatchNorm synchronised like the network's (a no-op unless ``sync_bn``)."""
        return sync_batchnorm(module, DistInfo(self.rank, self.world), self.device, self.sync_bn)


class Method:
    """Base class. Subclasses set ``Options`` (a dataclass), ``requirements`` and override
    :meth:`training_step`; the hooks default to no-ops."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    """Named option sets (e.g. ``official``/``clean``), selected with ``method.preset``."""
    requirements: ClassVar[DataRequirements] = DataRequirements()
    supervised: ClassVar[bool] = True
    """False for self-supervised methods: their runs are compared by their ``extra_metrics`` (k-NN, probes)."""
    passes_per_step: ClassVar[float] = 1.0
    """Trained forward+backward passes per optimiser step, in units of the configured batch B (cost)."""

    def __init__(self, options: Any, ctx: MethodContext) -> None:
        self.opt = options
        self.ctx = ctx

    @classmethod
    def data_requirements(cls, options: Any) -> DataRequirements:
        """The data this method needs under ``options`` (default: the class's ``requirements``)."""
        return cls.requirements

    @classmethod
    def cost(cls, options: Any) -> float:
        """Trained forward+backward passes per step under ``options``, in units of B (default ``passes_per_step``)."""
        return cls.passes_per_step

    @classmethod
    def stages(cls, options: Any, cfg: Any) -> list[Any] | None:
        """Sequential runs this run consists of (e.g. generations), as run configs; ``None``: a single run."""
        return None

    @classmethod
    def finish_stages(cls, options: Any, cfg: Any, summaries: list[RunSummary],
                      score: Callable[[list[Path]], dict[str, float]]) -> RunSummary:
        """The run's summary from its stages' summaries (called after the last stage); ``score`` gives the metrics
        of the mean-softmax ensemble of some stages' checkpoints."""
        return summaries[-1]

    def setup(self, model: nn.Module) -> None:
        """Called once after the model is built (create heads, teachers, memories here)."""

    def teachers(self) -> dict[str, nn.Module]:
        """Frozen models the engine evaluates and logs at the start of the run (teacher accuracy)."""
        return {}

    def eval_models(self) -> dict[str, nn.Module]:
        """Extra models the engine evaluates with the student at every evaluation (e.g. an EMA teacher); their
        metrics are logged as ``<name>_test_*``."""
        return {}

    def extra_metrics(self, model: nn.Module, data: Any, final: bool) -> dict[str, float]:
        """Method-specific evaluation at every evaluation epoch (e.g. k-NN accuracy of self-supervised features);
        ``final`` is true at the last epoch. Keys are logged as given."""
        return {}

    def trainable_modules(self) -> list[nn.Module]:
        """Extra modules optimised with the model but not part of the exported model (auxiliary heads)."""
        return []

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each epoch (1-based)."""

    def on_epoch_end(self, epoch: int, train: dict[str, float]) -> dict[str, float]:
        """Called after each epoch's training steps, on every rank, with the epoch's training means over all ranks
        (``train_<loss or stat>``: the row's columns so far); returns columns to add to the row, logged as given and
        kept in the summary's ``extra_last`` (e.g. a count of epochs in a failure state)."""
        return {}

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        """Compute the named losses of one step."""
        raise NotImplementedError

    def after_step(self, model: nn.Module) -> None:
        """Called after each optimiser step (EMA updates, caches)."""

    def state_dict(self) -> dict[str, Any]:
        """Method state to checkpoint (memories, caches)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str, registry: Registry[type[Method]] = METHODS):
    """Class decorator: register a :class:`Method` subclass under ``name`` (in the classification registry unless
    another task's ``registry`` is given)."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        return registry.register(name)(cls)

    return deco


def list_methods() -> list[str]:
    """Registered method names."""
    return METHODS.names()


def validate_method_options(spec: dict[str, Any], registry: Registry[type[Method]] = METHODS) -> dict[str, Any]:
    """Check a ``method:`` mapping against the method's options and return it fully resolved.

    ``preset`` (if given) fills options first; explicit keys override it.
    """
    spec = dict(spec)
    if "name" not in spec:
        raise ConfigError(f"method.name is required (one of: {', '.join(registry.names())})")
    name = spec.pop("name")
    if not isinstance(name, str):
        raise ConfigError(f"method.name: expected str, got {type(name).__name__} {name!r}")
    cls = registry.get(name)
    preset = spec.pop("preset", None)
    values: dict[str, Any] = {}
    if preset is not None:
        if not isinstance(preset, str) or preset not in cls.PRESETS:
            raise ConfigError(f"method.preset: '{name}' has presets {sorted(cls.PRESETS) or 'none'}, got '{preset}'")
        values.update(cls.PRESETS[preset])
    values.update(spec)
    opts = from_dict(cls.Options, values, "method")
    return {"name": name, **({"preset": preset} if preset else {}), **dataclasses.asdict(opts)}


def method_options(spec: dict[str, Any], registry: Registry[type[Method]] = METHODS) -> tuple[type[Method], Any]:
    """The method class and its options object for a validated ``method:`` mapping."""
    spec = dict(spec)
    cls = registry.get(spec.pop("name"))
    spec.pop("preset", None)
    return cls, from_dict(cls.Options, spec, "method")


def build_method(spec: dict[str, Any], ctx: MethodContext) -> Method:
    """Instantiate the method named in a validated ``method:`` mapping."""
    cls, opts = method_options(spec)
    return cls(opts, ctx)


def describe_method(name: str, registry: Registry[type[Method]] = METHODS) -> dict[str, Any]:
    """Options with defaults and docs, requirements and cost of a method (for ``selfdistill list``)."""
    cls = registry.get(name)
    defaults = from_dict(cls.Options, {}, "method")
    return {
        "name": name,
        "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
        "options": {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                    for f in dataclasses.fields(cls.Options)},
        "requirements": dataclasses.asdict(cls.data_requirements(defaults)),
        "passes_per_step": cls.cost(defaults),
        "presets": sorted(cls.PRESETS),
    }


def method_reference(name: str, registry: Registry[type[Method]] = METHODS) -> list[str]:
    """Markdown section of one method: its summary, data needs, presets and every option (``method.<key>``)."""
    cls = registry.get(name)
    d = describe_method(name, registry)
    lines = [f"### `{name}` — {d['doc']}", "",
             f"Passes per step: {d['passes_per_step']:g}. Presets: "
             + (", ".join(f"`{p}` = `{cls.PRESETS[p]}`" for p in d["presets"]) if d["presets"] else "none") + ".", ""]
    if dataclasses.fields(cls.Options):
        lines += [*options_table(cls.Options, "method.")[0], ""]
    return lines
