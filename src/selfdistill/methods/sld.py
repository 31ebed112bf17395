"""SLD: swapped logit distillation (docs/methods.md, sld), and ``sld_self``, the library's teacher-free variant.

The swap makes a prediction's arg-max the label by exchanging two logits; the swapped teacher and (after
epoch γ) the swapped student itself are distilled at several temperatures on a weak and a strong view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ..batch import Batch, DataRequirements
from ..config import limited
from ..losses import KLReduction, cross_entropy, kd_loss
from .base import Method, StepOutput, register_method
from .teacher import TeacherMethod, TeacherOptions


def swap_logits(z: Tensor, y: Tensor) -> Tensor:
    """Per row, if the arg-max (first index on ties) is not the label, exchange the label logit and the arg-max
    logit; correct rows are unchanged. Works on a copy and keeps the autograd graph."""
    m = z.argmax(1, keepdim=True)
    y = y[:, None]
    z_m, z_y = z.gather(1, m), z.gather(1, y)
    return z.scatter(1, y, z_m).scatter(1, m, z_y)


@dataclass
class SLDSelfOptions:
    """``sld_self`` options (library design, docs/methods.md, sld)."""

    temps: list[float] = limited(lambda: [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], low=0, low_open=True)
    """Temperatures of the distillation terms (at least one)."""
    temp_reduce: Literal["sum", "mean"] = "sum"
    """Combine the temperature terms by their sum (official) or mean."""
    w_ce: float = limited(1.0, low=0)
    """Weight of the label CE (summed over views)."""
    w_kd: float = limited(1.0, low=0)
    """Weight of the distillation terms."""
    gamma: float = limited(150.0, low=0)
    """The student-swap term is on for 1-based epochs ``e > gamma`` (``inf``: never)."""
    detach_pseudo_teacher: bool = True
    """Detach the swapped student logits used as a target."""
    swap_student: bool = True
    """Include the student-swap (pseudo-teacher) term."""
    two_views: bool = True
    """A weak and a strong (RandAugment + Cutout) view per image; ``false``: the weak view only."""
    view_forward: Literal["separate", "joint"] = "separate"
    """One student forward per view (own BN batch statistics, official) or one forward over both views."""
    kl_reduction: KLReduction = "batchmean"
    """Reduction of each KL over rows."""

    def __post_init__(self) -> None:
        if not self.temps:
            raise ValueError("temps must list at least one temperature")


@dataclass
class SLDOptions(SLDSelfOptions, TeacherOptions):
    """SLD options (defaults: the official CIFAR code on mdistiller's defaults)."""

    w_ce: float = limited(0.1, low=0)
    """Weight of the label CE (summed over views)."""
    w_kd: float = limited(0.9, low=0)
    """Weight of all distillation terms (teacher-swap and student-swap)."""
    detach_pseudo_teacher: bool = False
    """Detach the swapped student logits used as a target (official: not detached)."""
    swap_teacher: bool = True
    """Swap the teacher's logits before distilling them (``false``: plain teacher logits)."""


def _views(opts: SLDSelfOptions) -> DataRequirements:
    return DataRequirements(views=("weak", "strong") if opts.two_views else ("weak",))


class _SwapDistill(Method):
    """The shared SLD step; subclasses say whether a teacher takes part."""

    @classmethod
    def data_requirements(cls, options: Any) -> DataRequirements:
        return _views(options)

    @classmethod
    def cost(cls, options: Any) -> float:
        return 2.0 if options.two_views else 1.0

    def _teacher_logits(self, views: list[Tensor]) -> list[Tensor] | None:
        return None

    def _kd(self, target: Tensor, zs: Tensor) -> Tensor:
        o = self.opt
        terms = torch.stack([kd_loss(target, zs, T, o.kl_reduction) for T in o.temps])
        return terms.sum() if o.temp_reduce == "sum" else terms.mean()

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        o = self.opt
        views = batch.views
        teacher = self._teacher_logits(views)  # before the student's forward, where it runs faster (as in kd)
        if o.view_forward == "joint" and len(views) > 1:
            student = list(model(torch.cat(views)).chunk(len(views)))
        else:
            student = [model(v) for v in views]
        y = batch.y
        losses = {"ce": o.w_ce * sum(cross_entropy(zs, y) for zs in student)}
        if teacher is not None:
            ts = [swap_logits(zt, y) if o.swap_teacher else zt for zt in teacher]
            losses["kd_teacher"] = o.w_kd * sum(self._kd(t, zs) for t, zs in zip(ts, student, strict=True))
        if o.swap_student and epoch > o.gamma:
            targets = [swap_logits(zs, y) for zs in student]
            if o.detach_pseudo_teacher:
                targets = [t.detach() for t in targets]
            losses["kd_self"] = o.w_kd * sum(self._kd(t, zs) for t, zs in zip(targets, student, strict=True))
        wrong = torch.stack([(zs.argmax(1) != y).float().mean() for zs in student])
        return StepOutput(losses, student[0], y, {f"wrong_view{i}": w for i, w in enumerate(wrong)})


@register_method("sld")
class SwappedLogitDistillation(_SwapDistill, TeacherMethod):
    """SLD: swapped-teacher and (after γ) swapped-student distillation, multi-temperature, on two views."""

    Options = SLDOptions
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"official": {"detach_pseudo_teacher": False},
                                                    "clean": {"detach_pseudo_teacher": True}}
    requirements = DataRequirements(views=("weak", "strong"))
    passes_per_step = 2.0

    def _teacher_logits(self, views: list[Tensor]) -> list[Tensor]:
        return [self.teacher(v) for v in views]


@register_method("sld_self")
class SwappedLogitSelfDistillation(_SwapDistill):
    """SLD-self (library design): the student-swap term only, no teacher; vanishes on correctly classified rows."""

    Options = SLDSelfOptions
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"clean": {"detach_pseudo_teacher": True},
                                                    "no_detach": {"detach_pseudo_teacher": False}}
    requirements = DataRequirements(views=("weak", "strong"))
    passes_per_step = 2.0

