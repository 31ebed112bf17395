"""The registry of a report's sections: each (dataset, model) group of ``report.md`` is the concatenation of the
registered section builders' lines, in their order. A method or task contributes its own table or plot by
registering a builder in its own module (see :mod:`.generations`), without editing the report's writer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .runs import Cell

LABELS = {"top1": "top-1", "top5": "top-5", "nll": "NLL", "ece": "ECE %", "miou": "mIoU %", "pixel_acc": "pixel acc. %",
          "map": "mAP %", "ap50": "AP50 %", "ap75": "AP75 %"}


def task_metrics(cells: list[Cell]) -> list[str]:
    """The runs' metrics, the primary one first (summaries before tasks existed are classification)."""
    return cells[0].runs[0].summary.metrics


@dataclass(frozen=True)
class Group:
    """One (dataset, model) group of a report, as its sections see it."""

    dataset: str
    model: str
    cells: list[Cell]
    """Every method configuration of the group, the baseline first."""
    baseline: str
    split: str
    """``test``, or ``val`` for a screening report that must not read the test split."""
    out: Path
    """The report's folder: where a section writes its figures."""
    ladder: tuple[str, ...] = ()
    """Method labels of a gain ladder, in rung order (:mod:`.ladder`); empty for none."""

    @property
    def supervised(self) -> list[Cell]:
        """The cells of supervised methods: those the main table compares."""
        return [c for c in self.cells if c.runs[0].summary.supervised]

    @property
    def unsupervised(self) -> list[Cell]:
        """The cells of self-supervised methods (no trained classifier)."""
        return [c for c in self.cells if not c.runs[0].summary.supervised]

    @property
    def plotted(self) -> list[Cell]:
        """The cells the figures draw: the supervised ones, or every cell of a group without one."""
        return self.supervised or self.cells

    @property
    def slug(self) -> str:
        """The group's part of its figures' file names."""
        return f"{self.dataset}_{self.model}".replace(":", "-").replace("/", "-")

    @property
    def title(self) -> str:
        """The group's part of its figures' titles."""
        return f"{self.dataset} / {self.model}"


Builder = Callable[[Group], list[str]]
"""A section: the markdown lines it adds to a group (none when it has nothing to say about it)."""


@dataclass(frozen=True)
class Section:
    """A registered section builder: its name, its place in the group (lower first) and the splits it reads."""

    name: str
    order: int
    build: Builder
    splits: tuple[str, ...]


_SECTIONS: list[Section] = []


def section(name: str, order: int, splits: tuple[str, ...] = ("test", "val")) -> Callable[[Builder], Builder]:
    """Register the decorated builder as the report section ``name`` at place ``order`` of every group, in reports
    on ``splits`` (a section that reads the test split registers ``("test",)``)."""

    def register(build: Builder) -> Builder:
        if any(s.name == name for s in _SECTIONS):
            raise ValueError(f"report section {name!r} is registered twice")
        _SECTIONS.append(Section(name, order, build, splits))
        return build

    return register


def sections(split: str) -> list[Section]:
    """The registered sections of a report on ``split``, in order."""
    return sorted((s for s in _SECTIONS if split in s.splits), key=lambda s: s.order)


def group_lines(group: Group) -> list[str]:
    """Every registered section's lines for ``group``, in order."""
    return [line for s in sections(group.split) for line in s.build(group)]
