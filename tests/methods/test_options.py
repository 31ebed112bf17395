"""Every method option with a range refuses a value just outside it when the config is read, in every task: the
error names ``method.<option>``. The options are enumerated from the registries and their declared limits
(``selfdistill.config.limited``), so a range that is dropped, or a numeric option added without one, fails here."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any

import pytest

from selfdistill.config import ConfigError, Limits, field_limits
from selfdistill.run import resolve_config
from selfdistill.tasks import get_task, list_tasks


@dataclasses.dataclass(frozen=True)
class Option:
    """One bounded option of one method of one task."""

    task: str
    method: str
    name: str
    limits: Limits
    number: type
    """``int`` or ``float``: the option's number type (of its items, for a list)."""
    is_list: bool


def _number(tp: Any) -> tuple[type | None, bool]:
    """The number type of annotation ``tp`` (a number, a list of numbers, either or null) and whether it is a list."""
    members = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    for member in members:
        is_list = typing.get_origin(member) is list
        item = typing.get_args(member)[0] if is_list else member
        if item in (int, float):
            return item, is_list
    return None, False


def _methods() -> list[tuple[str, str, type]]:
    """``(task, method, options class)`` of every method registered in every task."""
    return [(t, m, get_task(t).methods.get(m).Options) for t in list_tasks() for m in get_task(t).methods.names()]


def _bounded() -> list[Option]:
    out = []
    for task, method, options in _methods():
        hints = typing.get_type_hints(options)
        for name, lim in field_limits(options).items():
            number, is_list = _number(hints[name])
            if number is not None and (lim.low is not None or lim.high is not None):
                out.append(Option(task, method, name, lim, number, is_list))
    return out


BOUNDED = _bounded()


def _resolve(task: str, method: dict[str, Any]):
    """The run config of ``method`` in a valid config of ``task`` (nothing is read)."""
    t = get_task(task)
    base = {} if task == "classification" else {"data": {"name": t.dataset_names()[0]},
                                                 "model": {"name": t.model_names()[0]}}
    return resolve_config({"task": task, **base, "method": method})


def _just_outside(opt: Option) -> list[int | float]:
    """Below ``low`` and above ``high``: the bound itself where it is open, else the nearest number past it."""
    lim, out = opt.limits, []
    for bound, is_open, away in ((lim.low, lim.low_open, -math.inf), (lim.high, lim.high_open, math.inf)):
        if bound is None:
            continue
        if is_open:
            out.append(opt.number(bound))
        elif opt.number is int:
            out.append(int(bound) + (1 if away > 0 else -1))
        else:
            out.append(math.nextafter(bound, away))
    return out


def _closed_bounds(opt: Option) -> list[int | float]:
    lim = opt.limits
    return [opt.number(b) for b, is_open in ((lim.low, lim.low_open), (lim.high, lim.high_open))
            if b is not None and not is_open]


def test_the_enumeration_reaches_every_task_and_many_options():
    assert len(BOUNDED) > 40, len(BOUNDED)
    assert {o.task for o in BOUNDED} == set(list_tasks())
    assert {(o.method, o.name) for o in BOUNDED} >= {("kd", "T"), ("label_smoothing", "epsilon"),
                                                    ("mean_teacher", "ema_decay"), ("pskd", "alpha_T"),
                                                    ("ips", "p_swap"), ("dino", "global_scale")}


def test_every_numeric_method_option_declares_its_range():
    """Temperatures, weights, probabilities, momenta, counts and sizes all have a range; a new numeric option states
    its own where it is declared."""
    missing = [f"{task}/{method}: method.{f.name}" for task, method, options in _methods()
               for f in dataclasses.fields(options)
               if _number(typing.get_type_hints(options)[f.name])[0] is not None
               and f.name not in field_limits(options)]
    assert not missing, f"numeric method options without limits: {missing}"


@pytest.mark.parametrize("opt", BOUNDED, ids=lambda o: f"{o.task}/{o.method}/{o.name}")
def test_a_value_just_outside_an_options_range_is_refused_naming_the_key(opt):
    defaults = _resolve(opt.task, {"name": opt.method}).method  # the default resolves
    lim = opt.limits
    lim.check(defaults[opt.name], f"method.{opt.name}")  # and lies within its own range
    n = (lim.length or 1) if opt.is_list else None
    for value in _just_outside(opt):
        given = value if n is None else [value] * n
        with pytest.raises(ConfigError, match=rf"^method\.{opt.name}(\[0\])?: expected .*{re.escape(lim.interval())}"):
            _resolve(opt.task, {"name": opt.method, opt.name: given})
    for value in _closed_bounds(opt):  # a closed end is itself valid
        given = value if n is None else [value] * n
        assert _resolve(opt.task, {"name": opt.method, opt.name: given}).method[opt.name] == given


@pytest.mark.parametrize(("method", "message"), [
    ({"name": "kd", "T": 0}, "method.T: expected a number > 0, got 0.0"),
    ({"name": "label_smoothing", "epsilon": 2}, "method.epsilon: expected a number in [0, 1], got 2.0"),
    ({"name": "mean_teacher", "ema_decay": 1.5}, "method.ema_decay: expected a number in [0, 1], got 1.5"),
    ({"name": "pskd", "alpha_T": 3}, "method.alpha_T: expected a number in [0, 1], got 3.0"),
    ({"name": "dkd", "alpha": -1}, "method.alpha: expected a number >= 0, got -1.0"),
    ({"name": "ips", "ratio_low": 0.8, "ratio_high": 0.2},
     "method.ratio_low must be <= method.ratio_high, got 0.8 > 0.2"),
])
def test_nonsense_that_used_to_be_accepted_is_refused(method, message):
    with pytest.raises(ConfigError) as err:
        resolve_config({"method": method})
    assert str(err.value) == message


def test_values_outside_the_obvious_range_that_mean_something_stay_valid():
    assert resolve_config({"method": {"name": "ban", "generation": -1}}).method["generation"] == -1  # run them all
    assert resolve_config({"method": {"name": "dkd", "nckd_mask": math.inf}}).method["nckd_mask"] == math.inf
    assert resolve_config({"method": {"name": "sld_self", "gamma": math.inf}}).method["gamma"] == math.inf
    assert resolve_config({"method": {"name": "ips", "T_teacher": None}}).method["T_teacher"] is None


@pytest.mark.parametrize(("method", "message"), [
    ({"name": "dino", "n_global": 1, "n_local": 0}, "method.n_global + method.n_local must be at least 2"),
    ({"name": "dino", "global_scale": [1.0, 0.5]}, "method.global_scale is an area range [low, high], got low 1.0"),
    ({"name": "dino", "local_scale": [0.3, 0.1]}, "method.local_scale is an area range"),
    ({"name": "sld_self", "temps": []}, "method.temps must list at least one temperature"),
    ({"name": "sld", "temps": []}, "method.temps must list at least one temperature"),
])
def test_options_that_do_not_fit_together_are_refused_naming_them(method, message):
    """Values each in range whose combination the method cannot run: refused when read, not at the first step."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_config({"method": method})


def test_one_global_crop_with_a_local_one_is_enough_for_dino():
    assert resolve_config({"method": {"name": "dino", "n_global": 1, "n_local": 1}}).method["n_local"] == 1
