"""A tiny typed name -> factory registry with did-you-mean lookups (timm-style ``list_*`` discovery)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised when a registry lookup fails; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def did_you_mean(name: str, choices: list[str]) -> str:
    """Return a ``" Did you mean 'x'?"`` suffix for the closest choice, or an empty string."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


class Registry(Generic[T]):
    """Maps names to objects (classes or factory functions)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a duplicate name is an error."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """Look up ``name``; an unknown name raises :class:`UnknownNameError` with suggestions."""
        try:
            return self._items[name]
        except KeyError:
            names = self.names()
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'.{did_you_mean(name, names)} "
                f"Run `selfdistill list {self.kind}s` to see all {len(names)}."
            ) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
