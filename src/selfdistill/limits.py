"""Limits of config values beyond their type, declared where a dataclass field is (:func:`limited`) and checked
where the config is read (:func:`selfdistill.config.from_dict`).

It sits below :mod:`selfdistill.config` so that the bottom layer's own options classes (the patch swap's) declare
their ranges the same way; :mod:`selfdistill.config` re-exports everything here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of its range."""


@dataclass(frozen=True)
class Limits:
    """What a config key accepts beyond its type: numbers (or each number of a list) from ``low`` to ``high`` (an
    end is excluded where ``low_open``/``high_open``), lists of exactly ``length`` items, non-empty strings.
    ``None`` always passes (where the type allows it)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    length: int | None = None
    nonempty: bool = False

    def interval(self) -> str:
        """The numeric range in words: ``>= 1``, ``> 0``, ``<= 10``, ``in [0, 1)``; empty when unbounded."""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return ""

    def describe(self) -> str:
        """The limits as the reference shows them after the type (``>= 1``, ``2 items in [0, 1)``, ``non-empty``)."""
        parts = [f"{self.length} items" if self.length is not None else "", self.interval(),
                 "non-empty" if self.nonempty else ""]
        return " ".join(p for p in parts if p)

    def _inside(self, x: float) -> bool:
        above = self.low is None or (x > self.low if self.low_open else x >= self.low)
        below = self.high is None or (x < self.high if self.high_open else x <= self.high)
        return above and below  # NaN is inside no interval

    def check(self, value: Any, path: str) -> None:
        """Raise :class:`ConfigError` naming ``path`` when the (type-checked) ``value`` is outside the limits."""
        if isinstance(value, str):
            if self.nonempty and not value.strip():
                raise ConfigError(f"{path}: expected a non-empty string (or null where allowed), got {value!r}")
        elif isinstance(value, list | tuple):
            if self.length is not None and len(value) != self.length:
                raise ConfigError(f"{path}: expected a list of {self.length} values, got {value!r}")
            for i, item in enumerate(value):
                self.check(item, f"{path}[{i}]")
        elif isinstance(value, int | float) and not isinstance(value, bool) and not self._inside(value):
            kind = "an integer" if isinstance(value, int) else "a number"
            raise ConfigError(f"{path}: expected {kind} {self.interval()}, got {value!r}")


def limited(default: Any, low: float | None = None, high: float | None = None, *, low_open: bool = False,
            high_open: bool = False, length: int | None = None, nonempty: bool = False) -> Any:
    """A dataclass field with ``default`` (a callable: the factory of a list default) whose values
    :func:`from_dict` checks against :class:`Limits`."""
    metadata = {"limits": Limits(low, high, low_open, high_open, length, nonempty)}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def field_limits(cls: type) -> dict[str, Limits]:
    """The :class:`Limits` of each field of dataclass ``cls`` that has them."""
    return {f.name: f.metadata["limits"] for f in dataclasses.fields(cls) if "limits" in f.metadata}
