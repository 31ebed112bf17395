"""Every config key refuses invalid values the way a user meets them: ``selfdistill train`` exits with status 2 and
one line naming the key, without a traceback, before any data is read and without creating the run folder.

The keys are enumerated from the typed config dataclasses (the run config, each task's own section, each method's
options), so a key added later is covered without touching this file; values out of a key's range are drawn from
the limits it declares (``selfdistill.config.limited``)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfdistill.cli import main
from selfdistill.config import Limits, RunConfig, field_limits, save_yaml
from selfdistill.run import Trainer
from selfdistill.tasks import get_task, list_tasks


@dataclass(frozen=True)
class Key:
    """One config key of one task (and method, for a method's options) with its annotation and limits."""

    task: str
    method: str
    path: str
    tp: Any
    limits: Limits | None


def _fields(cls: type, prefix: str) -> list[tuple[str, Any, Limits | None]]:
    """``(dotted key, annotation, limits)`` of every field of ``cls``, nested sections and their fields included."""
    hints, limits = typing.get_type_hints(cls), field_limits(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name == "task_options":  # written under the task's name: enumerated from the task's Options
            continue
        out.append((prefix + f.name, hints[f.name], limits.get(f.name)))
        if dataclasses.is_dataclass(hints[f.name]):
            out += _fields(hints[f.name], f"{prefix}{f.name}.")
    return out


def _keys() -> list[Key]:
    keys = [Key("classification", "ce", path, tp, lim) for path, tp, lim in _fields(RunConfig, "")]
    keys.append(Key("classification", "ce", "method.name", str, None))
    for task_name in list_tasks():
        task = get_task(task_name)
        if task.Options is not None:
            keys += [Key(task_name, task.methods.names()[0], path, tp, lim)
                     for path, tp, lim in _fields(task.Options, f"{task_name}.")]
        for method in task.methods.names():
            keys += [Key(task_name, method, path, tp, lim)
                     for path, tp, lim in _fields(task.methods.get(method).Options, "method.")]
    return keys


KEYS = _keys()


# ----------------------------------------------------------------------------------------- what is valid
def _members(tp: Any) -> tuple[Any, ...]:
    """The alternatives of a union annotation (``tp`` alone otherwise)."""
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)


def _accepts(tp: Any, value: Any) -> bool:
    """Whether ``value`` (plain YAML data) has the type annotation ``tp`` asks for (ints count as floats)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in _members(tp))
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(tp))
    if origin is list:
        return isinstance(value, list) and all(_accepts(typing.get_args(tp)[0], v) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(tp):
        return value == {}  # a section: only the empty mapping holds no unknown key
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _number_type(tp: Any) -> type | None:
    """``int`` or ``float`` when ``tp`` is a number or a list of numbers (or null)."""
    for a in _members(tp):
        item = typing.get_args(a)[0] if typing.get_origin(a) is list else a
        if item in (int, float):
            return item
    return None


def _is_list(tp: Any) -> bool:
    return any(typing.get_origin(a) is list for a in _members(tp))


def _choices(tp: Any) -> list[Any]:
    """The values of the ``Literal`` alternatives of ``tp``."""
    return [v for a in _members(tp) if typing.get_origin(a) is Literal for v in typing.get_args(a)]


DEVICE = re.compile(r"(auto|cpu|cuda|mps)(:\d+)?")


def _known_names(key: Key) -> typing.Callable[[str], bool] | None:
    """For a key naming a registered thing, the test of a known name; ``None`` for other keys."""
    task = get_task(key.task)
    return {"task": lambda s: s in list_tasks(),
            "data.name": lambda s: s in task.dataset_names(),
            "model.name": task.known_model,
            "method.name": lambda s: s in task.methods.names(),
            "train.device": DEVICE.fullmatch}.get(key.path)


# ------------------------------------------------------------------------------------------ invalid values
WRONG_TYPES = ["word", 7, -3, 2.5, True, [1, 2], {"k": 1}, None]
NAMES = st.from_regex(r"[a-z][a-z0-9_]{1,11}", fullmatch=True)


def _out_of_range(number: type, lim: Limits) -> st.SearchStrategy:
    """Numbers outside ``lim``: below ``low``, above ``high`` (and NaN, for floats)."""
    parts = []
    if number is int:
        if lim.low is not None:
            parts.append(st.integers(max_value=math.floor(lim.low) if lim.low_open else math.ceil(lim.low) - 1))
        if lim.high is not None:
            parts.append(st.integers(min_value=math.ceil(lim.high) if lim.high_open else math.floor(lim.high) + 1))
    else:
        if lim.low is not None:
            parts.append(st.floats(max_value=lim.low, exclude_max=not lim.low_open, allow_nan=False,
                                   allow_infinity=False))
        if lim.high is not None:
            parts.append(st.floats(min_value=lim.high, exclude_min=not lim.high_open, allow_nan=False,
                                   allow_infinity=False))
        parts.append(st.just(math.nan))
    return st.one_of(parts)


def _inside(number: type, lim: Limits) -> int | float:
    """A number within ``lim``."""
    if lim.low is None:
        value = lim.high - 1 if lim.high is not None else 0
    else:
        value = lim.low + 1 if lim.high is None else (lim.low + lim.high) / 2
    return number(value)


def invalid_values(key: Key) -> st.SearchStrategy:
    """Values ``key`` must refuse: of another type, out of its range, empty, or an unknown name or choice."""
    kinds = [st.sampled_from([v for v in WRONG_TYPES if not _accepts(key.tp, v)])]
    lim, number = key.limits, _number_type(key.tp)
    if lim is not None and number is not None and (lim.low is not None or lim.high is not None):
        bad = _out_of_range(number, lim)
        if _is_list(key.tp):  # one item out of range among good ones
            good, n = _inside(number, lim), lim.length or 2
            bad = st.builds(lambda v, i: [good] * i + [v] + [good] * (n - 1 - i), bad, st.integers(0, n - 1))
        kinds.append(bad)
    if lim is not None and lim.length is not None and number is not None:  # good items, a wrong count
        good = _inside(number, lim)
        kinds.append(st.integers(0, 5).filter(lambda n: n != lim.length).map(lambda n: [good] * n))
    if lim is not None and lim.nonempty:
        kinds.append(st.sampled_from(["", "  "]))
    choices = _choices(key.tp)
    if choices:
        kinds.append(NAMES.filter(lambda s: s not in choices))
    known = _known_names(key)
    if known is not None:
        kinds.append(NAMES.filter(lambda s: not known(s)))
    return st.one_of(kinds)


def _yaml(value: Any) -> str:
    """``value`` as YAML text for ``--set key=<text>`` (strings quoted, so ``on`` or ``1e3`` stay strings)."""
    return ".nan" if isinstance(value, float) and math.isnan(value) else json.dumps(value)


# --------------------------------------------------------------------------------------------------- tests
def _base_config(key: Key, out: Path) -> dict[str, Any]:
    """A valid config of the key's task and method (nothing is read: every example is refused first)."""
    task = get_task(key.task)
    return {"task": key.task, "out": str(out), "method": {"name": key.method},
            "data": {"name": "synthetic" if key.task == "classification" else task.dataset_names()[0]},
            "model": {"name": "resnet8" if key.task == "classification" else task.model_names()[0]},
            "train": {"epochs": 1, "device": "cpu", "progress": False, "tensorboard": False}}


def _refuse_reading(self) -> None:
    raise AssertionError("the config was accepted: data would be read")


@pytest.mark.parametrize("key", KEYS, ids=lambda k: f"{k.task}/{k.method}/{k.path}")
def test_every_config_key_refuses_invalid_values_in_one_line(key, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_values")
    out, config = folder / "runs", folder / "config.yaml"
    save_yaml(_base_config(key, out), config)

    @settings(max_examples=6, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(value=invalid_values(key))
    def refused(value: Any) -> None:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
                mock.patch.object(Trainer, "_setup", _refuse_reading):
            code = main(["train", "--config", str(config), "--set", f"{key.path}={_yaml(value)}"])
        text = err.getvalue()
        assert code == 2, text
        assert text.count("\n") == 1 and "Traceback" not in text, text
        assert key.path in text, text
        assert not out.exists()

    refused()


def test_the_base_configs_are_valid(tmp_path, monkeypatch):
    """Each example changes one key of a valid config: the base itself trains (up to reading data)."""
    monkeypatch.setattr(Trainer, "_setup", _refuse_reading)
    for key in {(k.task, k.method): k for k in KEYS}.values():
        save_yaml(_base_config(key, tmp_path / "runs"), tmp_path / "config.yaml")
        with pytest.raises(AssertionError, match="data would be read"):
            main(["train", "--config", str(tmp_path / "config.yaml")])


def test_every_number_and_text_key_of_the_run_config_and_the_task_sections_declares_limits_its_default_meets():
    """A new numeric or free-text key states its range (or that it must not be empty) where it is declared."""
    for cls, prefix in [(RunConfig, ""), *((get_task(t).Options, f"{t}.") for t in list_tasks()
                                           if get_task(t).Options is not None)]:
        for path, tp, lim in _fields(cls, prefix):
            if _number_type(tp) is not None or str in _members(tp):
                assert lim is not None, f"{path} declares no limits"
        default = dataclasses.asdict(cls())
        for name, lim in field_limits(cls).items():
            lim.check(default[name], prefix + name)  # a default outside its own limits raises here
