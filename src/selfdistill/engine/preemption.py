"""Stopping cleanly on a signal: a cluster's scheduler sends SIGTERM (or a signal it is asked for) some time before
it kills a job, and a preempted run should lose nothing but that time."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from .distributed import DistInfo

EXIT_STOPPED = 75
"""Exit status of a run (or a grid) stopped by a stop signal after checkpointing: ``EX_TEMPFAIL`` of
``sysexits.h``, "try again later". The same command with ``--resume`` continues it (a grid: the same ``bench``)."""


class TrainingStopped(RuntimeError):
    """Training (a run, or the runs of a grid) stopped on a stop signal, its checkpoint written; ``signum`` is the
    signal. Continue with ``resume=True`` (``--resume``; a grid: the same ``bench``)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def signal_name(signum: int) -> str:
    """``"10 (SIGUSR1)"``: a signal's number and name."""
    return f"{signum} ({signal.Signals(signum).name})"


class StopSignals:
    """A context that catches the named signals (``"SIGTERM"``, ...) while it is entered and restores the previous
    handlers when it is left. A caught signal is only recorded (:attr:`received`; ``on_signal(signum)`` is called
    too, if given): the holder stops at its next safe point. Signal handlers belong to the main thread, so entered
    from another thread it catches nothing."""

    def __init__(self, names: Sequence[str], on_signal: Callable[[int], None] | None = None) -> None:
        self.signals = [getattr(signal, name) for name in names if hasattr(signal, name)]  # as the platform has
        self.on_signal = on_signal
        self.received = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        if self.on_signal is not None:
            self.on_signal(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():  # None: a handler not set from Python, which cannot be put back
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def agreed(self, info: DistInfo, device: torch.device) -> int:
        """The stop signal received by any rank (0: none), the same on every rank, so that all stop after the same
        step: one integer all-reduced with MAX under DDP (a collective: every rank must call it)."""
        if not info.enabled:
            return self.received
        flag = torch.tensor([self.received], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())
