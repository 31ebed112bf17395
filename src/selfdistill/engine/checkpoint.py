"""Atomic checkpoint files and RNG-state capture."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fileio import atomic_save


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says what to do."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write a training checkpoint atomically; a write failure names the file and keeps the old one."""
    try:
        atomic_save(state, path)
    except OSError as exc:
        raise CheckpointError(
            f"could not write checkpoint {path}: {exc}. The previous checkpoint is intact; free disk space "
            "(or point --out elsewhere) and continue with --resume."
        ) from exc


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (tensors and plain Python data only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc


RUN_KEYS = ("config", "model", "classes")


def load_run_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a run's checkpoint (a ``last.pt`` written by training: the run's config, model, optimiser and more);
    anything else, e.g. a bare model state dict, is refused with a message naming the file."""
    ck = load_checkpoint(path, map_location)
    missing = [k for k in RUN_KEYS if not isinstance(ck, dict) or k not in ck]
    if missing:
        keys = [str(k) for k in ck] if isinstance(ck, dict) else []
        shown = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "") if keys else type(ck).__name__
        raise CheckpointError(
            f"{path} is not a selfdistill run checkpoint (no {', '.join(repr(k) for k in missing)}; it holds {shown}). "
            "Pass a run's last.pt (written by `selfdistill train`); a bare model state dict can serve as a teacher "
            "with method.teacher=<file> and method.teacher_model=<architecture>.")
    return ck


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states, as checkpoint-safe plain data and tensors."""
    np_state = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
