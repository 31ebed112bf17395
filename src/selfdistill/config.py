"""Typed experiment configuration: YAML files are plain data validated against dataclass defaults.

Unknown keys fail with a did-you-mean suggestion, wrong types name the key and the expected type, and
``--set a.b=value`` overrides use YAML scalar syntax. Method options are validated against the
options dataclass of the chosen method (see :mod:`selfdistill.methods`).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .limits import ConfigError as ConfigError
from .limits import Limits as Limits
from .limits import field_limits, limited
from .registry import did_you_mean

_FLOAT = re.compile(r"[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|\.?inf)", re.IGNORECASE)


# --------------------------------------------------------------------------------------------- schema
@dataclass
class AugmentConfig:
    """Batched on-device training augmentation (test images are only normalised)."""

    crop_padding: int = limited(4, low=0)
    """Zero-padding (px) for the random crop; 0 disables the crop."""
    hflip: bool = True
    """Random horizontal flip with probability ½."""
    mean: list[float] | None = limited(None, low=0, high=1)
    """Per-channel mean in [0, 1]; ``None`` takes the dataset's default."""
    std: list[float] | None = limited(None, low=0, high=1, low_open=True)
    """Per-channel std in (0, 1]; ``None`` takes the dataset's default."""
    randaugment_ops: int = limited(2, low=0)
    """``strong`` views: RandAugment ops per image (each applied with probability ½)."""
    randaugment_magnitude: int = limited(10, low=1, high=10)
    """``strong`` views: largest RandAugment magnitude (1..10); each op draws its magnitude in 1..this."""
    cutout: float = limited(0.5, low=0, high=1)
    """``strong`` views: Cutout side is drawn in ``[0, cutout)`` × the image width (0 disables Cutout)."""
    cutout_fill: list[int] = limited(lambda: [125, 123, 114], low=0, high=255)
    """``strong`` views: Cutout fill colour (uint8 per channel)."""


@dataclass
class DataConfig:
    """Dataset, split and loader options."""

    name: str = limited("cifar10", nonempty=True)
    """Dataset source (``selfdistill list datasets``)."""
    root: str | None = limited(None, nonempty=True)
    """Dataset folder. ``imagefolder`` needs ``train/`` and ``val/`` or ``test/`` inside it, or takes a ``.tar.gz``,
    ``.tgz``, ``.tar`` or ``.zip`` archive of such a folder (unpacked once under ``cache_dir``)."""
    download: bool = False
    """Let torchvision download CIFAR (needs internet)."""
    batch_size: int = limited(128, low=1)
    """Global batch (anchors per optimiser step summed over all ranks)."""
    eval_batch_size: int = limited(512, low=1)
    """Batch size for evaluation."""
    train_subset: int = limited(0, low=0)
    """Class-balanced number of training images to keep (0 = all), drawn with ``split_seed`` (segmentation and
    detection: a random subset)."""
    val_fraction: float = limited(0.0, low=0, high=1, high_open=True)
    """Class-balanced fraction of the training set held out for model selection (segmentation and detection: a
    random fraction, only where the task's ``val_split`` is null)."""
    split_seed: int = limited(0, low=0)
    """Seed of the subset and validation split (independent of the run seed)."""
    image_size: int | None = limited(None, low=1)
    """Resize images to this square size on decode (needed when an ImageFolder's sizes differ)."""
    in_memory: Literal["auto", "always", "never"] = "auto"
    """Hold decoded images in memory as uint8 (``auto``: when under ``memory_limit_gb``) or stream them."""
    memory_limit_gb: float = limited(8.0, low=0)
    """``auto`` keeps a dataset in memory as uint8 when its decoded size is under this limit."""
    cache_dir: str | None = limited(None, nonempty=True)
    """Where decoded ImageFolder tensors are cached (default ``$SELFDISTILL_CACHE`` or ~/.cache/selfdistill)."""
    skip_corrupt: bool = False
    """Skip unreadable images (counted and reported) instead of failing."""
    num_workers: int = limited(4, low=0)
    """DataLoader workers for streamed (not in-memory) datasets."""
    drop_last: bool = True
    """Drop the last incomplete training batch of each epoch."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Training augmentation."""
    synthetic_size: int = limited(512, low=1)
    """Images per split for the ``synthetic`` dataset."""
    num_classes: int | None = limited(None, low=2)
    """Classes for ``synthetic`` (default 10); ignored elsewhere."""


@dataclass
class ModelConfig:
    """Network options."""

    name: str = limited("resnet20", nonempty=True)
    """A zoo name (``selfdistill list models``), ``timm:<name>`` or ``torchvision:<name>``; for segmentation a
    torchvision segmentation model (``lraspp_mobilenet_v3_large``, ``deeplabv3_resnet50``, ...), for detection a
    ``<fasterrcnn|retinanet|fcos>_<backbone>_fpn`` detector (``fasterrcnn_mobilenet_v3_large_fpn``, ...)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the model constructor."""
    channels_last: bool = False
    """Use the channels-last memory format for inputs and weights."""
    compile: bool = False
    """Wrap the training model in ``torch.compile``."""
    init_backbone: str | None = limited(None, nonempty=True)
    """``transfer`` mode of segmentation and detection: a selfdistill classification checkpoint (``last.pt``) of the
    matching torchvision backbone whose weights initialise the segmenter's or detector's backbone."""
    sync_bn: bool = False
    """Synchronise BatchNorm statistics over all ranks under DDP (``nn.SyncBatchNorm`` on CUDA, a gloo version on
    CPU)."""


@dataclass
class OptimConfig:
    """Optimiser options."""

    name: Literal["sgd", "adamw"] = "sgd"
    """Optimiser."""
    lr: float = limited(0.1, low=0, low_open=True)
    """Base learning rate (peak LR for ``onecycle``)."""
    momentum: float = limited(0.9, low=0, high=1, high_open=True)
    """SGD momentum."""
    nesterov: bool = False
    """Nesterov momentum (SGD)."""
    weight_decay: float = limited(5e-4, low=0)
    """Decoupled for AdamW, L2 for SGD."""
    wd_exclude_norm_bias: bool = False
    """Apply no weight decay to normalisation weights and biases."""
    betas: list[float] = limited(lambda: [0.9, 0.999], low=0, high=1, high_open=True, length=2)
    """AdamW betas."""
    grad_clip: float = limited(0.0, low=0)
    """Clip the global gradient norm to this value (0 = off)."""


@dataclass
class SchedConfig:
    """Learning-rate schedule, stepped every optimiser step."""

    name: Literal["multistep", "cosine", "onecycle", "constant"] = "multistep"
    """Schedule shape."""
    milestones: list[int] = limited(lambda: [150, 180, 210], low=0)
    """Epochs after which the LR is multiplied by ``gamma`` (multistep)."""
    gamma: float = limited(0.1, low=0, low_open=True)
    """LR factor at each milestone (multistep)."""
    warmup_epochs: float = limited(0.0, low=0)
    """Linear warm-up length in epochs (multistep, cosine, constant)."""
    warmup_start_factor: float = limited(0.1, low=0, high=1)
    """Warm-up starts at this fraction of the LR."""
    min_lr: float = limited(0.0, low=0)
    """Final LR of the cosine schedule."""
    pct_start: float = limited(0.25, low=0, high=1, low_open=True, high_open=True)
    """Fraction of training spent rising (onecycle)."""


@dataclass
class TrainConfig:
    """Loop options."""

    epochs: int = limited(240, low=1)
    """Training epochs."""
    device: str = limited("auto", nonempty=True)
    """``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``."""
    amp: Literal["none", "bf16", "fp16"] = "none"
    """Autocast precision (losses stay fp32; fp16 uses a GradScaler; fp16 on CPU falls back to bf16; bf16 on a CPU
    without AVX-512 warns: emulated there, many times slower than fp32)."""
    ema_decay: float = limited(0.0, low=0, high=1, high_open=True)
    """Keep an EMA copy of the model and evaluate it as well (0 = off)."""
    eval_every: int = limited(1, low=1)
    """Evaluate every N epochs (and always after the last)."""
    checkpoint_every_steps: int = limited(0, low=0)
    """Extra mid-epoch checkpoints every N steps (0 = only at epoch ends)."""
    stop_signals: list[Literal["SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2"]] = field(
        default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    """Signals on which training finishes the step in progress, writes a mid-epoch checkpoint and exits with status
    75 (``EX_TEMPFAIL``; ``selfdistill.train`` raises ``TrainingStopped``): continue with ``--resume``. Under DDP a
    signal to any rank stops every rank after the same step; ``selfdistill bench`` passes them on to its runs. ``[]``
    leaves every signal to its default action (see docs/cluster.md)."""
    log_every: int = limited(20, low=1)
    """Refresh the progress-bar statistics every N steps."""
    progress: bool | Literal["auto"] = "auto"
    """Progress bar: ``auto`` (only on a terminal), ``true``/``on`` or ``false``/``off``."""
    tensorboard: bool = True
    """Write TensorBoard events to ``<run>/tb``."""
    loggers: list[Literal["wandb", "mlflow"]] = field(default_factory=list)
    """Experiment trackers that also get the config and the per-epoch scalars of ``metrics.csv`` (epoch as step),
    from the main rank: ``wandb`` (``pip install 'selfdistill[wandb]'``; ``WANDB_MODE=offline`` works without an
    account) and ``mlflow`` (``pip install 'selfdistill[mlflow]'``; ``MLFLOW_TRACKING_URI`` says where). A resumed
    run starts a new tracker run that first gets the epochs already done."""
    tracker_project: str | None = limited(None, nonempty=True)
    """W&B project and MLflow experiment of ``loggers`` (default: the name of the ``out`` folder); the tracker run is
    named after the run directory."""
    deterministic: bool = False
    """Ask torch for deterministic kernels (warns where none exists)."""
    threads: int = limited(0, low=0)
    """torch intra-op threads (0 = torch default)."""
    eval_train: bool = False
    """After the last epoch, score the final model on its own training images without augmentation (one more pass
    over the training set): ``train_fit`` in the summary, the fit table of ``selfdistill report``."""
    grad_norm_every: int = limited(0, low=0)
    """Every N steps, measure the gradient norm of each loss term on the network's weights (one extra backward per
    term, on each rank's own shard; nothing else changes); logged per epoch as ``train_gradnorm_<term>`` (0 = off)."""


@dataclass
class RunConfig:
    """A complete experiment."""

    task: str = limited("classification", nonempty=True)
    """What the run trains (``selfdistill list tasks``): ``classification``, ``segmentation``, ``detection``.
    Methods are per task, and a task may own a section of settings named after it (e.g. ``segmentation:``)."""
    plugins: list[str] = field(default_factory=list)
    """Modules imported before the rest of the config is read, for the methods, models, datasets or tasks they
    register: module names on ``PYTHONPATH`` (``my_pkg.my_methods``) or ``.py`` file paths (relative to the working
    directory). ``--plugin MODULE`` adds to the list; installed packages' ``selfdistill.plugins`` entry points are
    imported as well (docs/plugins.md)."""
    seed: int = limited(0, low=0)
    """Seed of initialisation, data order and augmentation."""
    name: str | None = limited(None, nonempty=True)
    """Run directory name (default ``<dataset>_<model>_<method>_s<seed>``)."""
    out: str = limited("runs", nonempty=True)
    """Parent folder of the run directory (the run goes to ``out/name``)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Dataset and loader."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Network."""
    method: dict[str, Any] = field(default_factory=lambda: {"name": "ce"})
    """``name`` plus the method's own options (``selfdistill list methods --verbose``)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser."""
    sched: SchedConfig = field(default_factory=SchedConfig)
    """LR schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Loop."""
    task_options: dict[str, Any] = field(default_factory=dict)
    """The task's own section, written in YAML under the task's name (``segmentation: {size: ...}``) and validated
    by the task."""

    def run_name(self) -> str:
        """Run directory name: ``name`` or ``<dataset>_<model>_<method>_s<seed>``."""
        if self.name:
            return self.name
        model = self.model.name.replace(":", "-").replace("/", "-")
        return f"{self.data.name}_{model}_{self.method['name']}_s{self.seed}"


# ----------------------------------------------------------------------------------------- validation
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} options, got {value!r}")
        return from_dict(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{path}: expected null, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            # YAML 1.1 reads "1e-3" (no dot) as a string; "inf" and YAML's ".inf" spelling are accepted too
            return float(re.sub(r"\.(?=inf)", "", value.strip(), flags=re.IGNORECASE))
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _qualified(message: str, keys: list[str], path: str) -> str:
    """``message`` with every key of ``keys`` that it names bare written in full, as ``path.key``."""
    if not path or not keys:
        return message
    names = "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))
    return re.sub(rf"(?<![\w.])({names})(?!\w)", lambda m: f"{path}.{m[1]}", message)


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys, wrong types and values outside a field's
    :class:`Limits`; a ``ValueError`` of the class's own checks (options that do not fit together) becomes a
    :class:`ConfigError` that names the keys in full (``method.ratio_low``), or is prefixed with ``path`` where it
    names none."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    limits = field_limits(cls)
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in hints:
            raise ConfigError(
                f"unknown config key '{full}'.{did_you_mean(str(key), names)} Valid keys here: {', '.join(names)}"
            )
        kwargs[key] = _coerce(value, hints[key], full)
        if key in limits:
            limits[key].check(kwargs[key], full)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:  # the class's own checks (a bottom-layer options class names its keys bare)
        message = _qualified(str(exc), names, path)
        raise ConfigError(message if message != str(exc) else f"{path or cls.__name__}: {exc}") from exc


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data (YAML-safe) form of a config dataclass; a run config's task section is written under the task's
    name, as in YAML."""
    data = dataclasses.asdict(cfg)
    if isinstance(cfg, RunConfig):
        options = data.pop("task_options")
        if options:
            data[cfg.task] = options
    return data


# keys that moved: a config written before is read with a warning
MOVED = {("data", "dense"): "segmentation", ("data", "detection"): "detection"}


def parse_config(data: dict[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from plain data, with every key and type checked. The section named after the task
    (``segmentation: {...}``) is kept as ``task_options`` for the task to validate; method options are validated by
    the method (:func:`selfdistill.run.resolve_config` does both)."""
    data = copy.deepcopy(data)
    for (parent, key), task in MOVED.items():
        if isinstance(data.get(parent), dict) and key in data[parent]:
            moved = data[parent].pop(key)
            if data.get("task", "classification") == task:
                warnings.warn(f"config key '{parent}.{key}' is now the top-level section '{task}:'; read as such",
                              DeprecationWarning, stacklevel=2)
                data.setdefault(task, moved)
    task = data.get("task", "classification")
    if isinstance(task, str) and task in data and task not in {f.name for f in dataclasses.fields(RunConfig)}:
        section = data.pop(task)
        if not isinstance(section, dict):
            raise ConfigError(f"{task}: expected a mapping of the task's settings, got {section!r}")
        data["task_options"] = section
    return from_dict(RunConfig, data)


def set_by_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``dotted == 'a.b'``, creating mappings as needed."""
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        nxt = node.setdefault(key, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a mapping")
        node = nxt
    node[last] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """Parse ``key=value`` strings; values use YAML syntax (``1e-3``, ``true``, ``[1, 2]``)."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        out.append((key.strip(), _read_yaml(raw, f"--set {key.strip()}") if raw.strip() else None))
    return out


def _read_yaml(text: str | typing.IO[str], where: str) -> Any:
    """``yaml.safe_load`` whose syntax errors are a one-line :class:`ConfigError` naming ``where`` and the place."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML{at}: {problem}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file as plain data (safe loader: no code)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open() as fh:
        data = _read_yaml(fh, str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def config_data(source: RunConfig | dict[str, Any] | str | Path | None = None,
                overrides: list[str] | None = None) -> dict[str, Any]:
    """The plain data of a YAML path, a dict or a :class:`RunConfig`, with ``key=value`` overrides applied."""
    if isinstance(source, RunConfig):
        data = to_dict(source)
    elif isinstance(source, dict):
        data = copy.deepcopy(source)
    elif source is None:
        data = {}
    else:
        data = load_yaml(source)
    for key, value in parse_overrides(overrides or []):
        set_by_path(data, key, value)
    return data


def load_yaml_list(path: str | Path) -> list[dict[str, Any]]:
    """Read a YAML file whose top level is a list of mappings (plain data, safe loader)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"file not found: {path}")
    with path.open() as fh:
        data = _read_yaml(fh, str(path)) or []
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise ConfigError(f"{path}: the top level must be a list of mappings")
    return data


def save_yaml(data: dict[str, Any], path: str | Path) -> None:
    """Write plain data as YAML (keys in definition order)."""
    with Path(path).open("w") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)


# ------------------------------------------------------------------------------------------- reference
def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal right after a field) of a dataclass and its dataclass bases, read
    from their source."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body  # type: ignore[attr-defined]
        for node, nxt in itertools.pairwise(body):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[union-attr]
    return docs


def options_table(cls: type, prefix: str = "") -> tuple[list[str], list[tuple[type, str]]]:
    """Markdown rows ``| key | type | default | meaning |`` of a dataclass's fields (meaning: the field's
    docstring; type: with its :class:`Limits`), and its nested dataclass fields as ``(type, prefix)`` to document
    separately."""
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    limits = field_limits(cls)
    rows, nested = ["| key | type | default | meaning |", "|---|---|---|---|"], []
    for f in dataclasses.fields(cls):
        if f.name == "task_options":  # written under the task's name: documented with the task
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            nested.append((tp, f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = _type_name(tp) + (f", {limits[f.name].describe()}" if f.name in limits else "")
        rows.append(f"| `{prefix}{f.name}` | {kind} | `{default!r}` | {docs.get(f.name, '')} |")
    return rows, nested


def config_reference() -> str:
    """Markdown reference of every config key with its type, default and description (method options are
    documented per method by the layer that knows the methods: ``selfdistill list config``)."""
    lines = ["# Configuration reference", "",
             "Generated by `selfdistill list config` from `selfdistill/config.py` and each method's options class.",
             ""]

    def section(cls: type, prefix: str) -> None:
        rows, nested = options_table(cls, prefix)
        lines.extend([f"## `{prefix.rstrip('.') or 'top level'}` — {cls.__doc__}", "", *rows, ""])
        for tp, p in nested:
            section(tp, p)

    section(RunConfig, "")
    return "\n".join(lines)
