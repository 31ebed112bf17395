"""Frozen teachers for the teacher-based methods (the ``teacher_ckpt`` requirement, docs/extending.md).

A teacher is any model the library can build, loaded from a selfdistill checkpoint (``last.pt`` of any run)
or from a plain state-dict file (then ``teacher_model`` names its architecture). It runs in eval mode under
``no_grad``, and re-normalises the student's inputs when it was trained with other statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..config import ConfigError, limited
from ..engine.checkpoint import CheckpointError, load_checkpoint
from .base import Method, MethodContext


class TeacherError(ConfigError):
    """The teacher cannot be loaded or does not fit the run."""


@dataclass
class TeacherOptions:
    """Options shared by every method with a frozen teacher."""

    teacher: str = ""
    """Teacher weights: a selfdistill checkpoint (``<run>/last.pt``) or a plain state-dict file."""
    teacher_model: str = ""
    """Teacher architecture (``selfdistill list models``, ``timm:``/``torchvision:``). Required for a plain state
    dict; for a selfdistill checkpoint, if given, it must match the checkpoint's."""
    teacher_kwargs: dict[str, Any] = field(default_factory=dict)
    """Model keyword arguments for a plain state dict."""
    teacher_mean: list[float] | None = limited(None, low=0, high=1)
    """Input mean the teacher was trained with (plain state dict); ``None``: the checkpoint's, else the student's."""
    teacher_std: list[float] | None = limited(None, low=0, high=1, low_open=True)
    """Input std the teacher was trained with (plain state dict); ``None``: the checkpoint's, else the student's."""
    teacher_ema: bool = False
    """Use the EMA weights of a selfdistill checkpoint."""
    teacher_mode: Literal["eval", "train"] = "eval"
    """``eval`` (frozen BN statistics); ``train`` runs the teacher with batch statistics (an ablation only)."""


class Teacher(nn.Module):
    """A frozen model behind an input re-normalisation: ``forward`` takes the student's normalised inputs."""

    def __init__(self, model: nn.Module, scale: Tensor, shift: Tensor, mode: str = "eval") -> None:
        super().__init__()
        self.model = model
        self.register_buffer("scale", scale[None, :, None, None])
        self.register_buffer("shift", shift[None, :, None, None])
        self.identity = bool(torch.all(scale == 1) and torch.all(shift == 0))
        self.mode = mode
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        """The teacher's own mode is fixed by ``teacher_mode``; the student's ``train()`` does not reach it."""
        super().train(False)
        self.model.train(self.mode == "train")
        return self

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Teacher logits for student-normalised ``x`` (no gradient)."""
        if not self.identity:
            x = x * self.scale + self.shift
        return self.model(x).float()


def _norm(values: list[float] | None, fallback: Any, n: int, what: str) -> Tensor:
    v = torch.as_tensor(values if values is not None else fallback, dtype=torch.float32).flatten()
    if v.numel() != n:
        raise TeacherError(f"{what} needs {n} values, got {v.numel()}")
    return v


def load_teacher(opt: TeacherOptions, ctx: MethodContext) -> Teacher:
    """Build, load and freeze the teacher named in ``opt``; fail clearly if it does not fit the run."""
    from ..models import build_model

    if not opt.teacher:
        raise TeacherError("this method needs a teacher: set method.teacher to a checkpoint (<run>/last.pt of a "
                           "`selfdistill train` run) or to a state-dict file together with method.teacher_model")
    path = Path(opt.teacher)
    try:
        obj = load_checkpoint(path)
    except CheckpointError as exc:
        raise TeacherError(f"cannot load the teacher: {exc}") from exc
    if isinstance(obj, dict) and "model" in obj and "config" in obj:  # a selfdistill checkpoint
        cfg_model = obj["config"]["model"]
        name, kwargs = cfg_model["name"], cfg_model["kwargs"]
        if opt.teacher_model and opt.teacher_model != name:
            raise TeacherError(f"method.teacher_model is '{opt.teacher_model}' but {path} holds a '{name}'")
        if len(obj["classes"]) != ctx.num_classes:
            raise TeacherError(f"the teacher {path} predicts {len(obj['classes'])} classes, this run's data has "
                               f"{ctx.num_classes}: use a teacher trained on the same classes")
        state = obj["ema"] if opt.teacher_ema else obj["model"]
        if state is None:
            raise TeacherError(f"{path} holds no EMA weights (its run had train.ema_decay = 0)")
        aug = obj["config"]["data"]["augment"]
        mean = opt.teacher_mean or aug.get("mean") or obj.get("mean")
        std = opt.teacher_std or aug.get("std") or obj.get("std")
    else:
        if not opt.teacher_model:
            raise TeacherError(f"{path} is a plain state dict: set method.teacher_model to its architecture")
        name, kwargs, state = opt.teacher_model, opt.teacher_kwargs, obj.get("state_dict", obj)
        mean, std = opt.teacher_mean, opt.teacher_std
    model = build_model(name, ctx.num_classes, len(ctx.mean), **kwargs)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:4]
        raise TeacherError(f"the teacher weights in {path} do not fit a '{name}' with {ctx.num_classes} classes: "
                           f"{' '.join(first)}") from exc
    s_mean, s_std = torch.as_tensor(ctx.mean), torch.as_tensor(ctx.std)
    t_mean = _norm(mean, s_mean, len(ctx.mean), "teacher_mean")
    t_std = _norm(std, s_std, len(ctx.mean), "teacher_std")
    # student input x_s = (u − m_s)/s_s; the teacher wants (u − m_t)/s_t = x_s·(s_s/s_t) + (m_s − m_t)/s_t
    return Teacher(model, s_std / t_std, (s_mean - t_mean) / t_std, opt.teacher_mode).to(ctx.device)


class TeacherMethod(Method):
    """Base of methods with a frozen teacher: loads it at set-up and exposes it for the start-of-run evaluation."""

    def setup(self, model: nn.Module) -> None:
        """Load the frozen teacher named in the options."""
        self.teacher = load_teacher(self.opt, self.ctx)

    def teachers(self) -> dict[str, nn.Module]:
        """The teacher, evaluated and logged by the engine before training."""
        return {"teacher": self.teacher}
