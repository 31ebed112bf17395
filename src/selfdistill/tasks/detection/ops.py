"""Object-detection building blocks for dense IPS (docs/tasks.md, detection): the Penn-Fudan reader and the box-aware
patch swap on a common canvas (``object_preserving``, ``background_only`` and ``free`` policies).

Boxes are ``(M, 4)`` float tensors ``(x1, y1, x2, y2)`` in pixels (exclusive right/bottom edges).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

_BOX = re.compile(r"Bounding box for object \d+ \"[^\"]*\" \(Xmin, Ymin\) - \(Xmax, Ymax\) : "
                  r"\((\d+), (\d+)\) - \((\d+), (\d+)\)")


def read_pascal_v1_boxes(text: str) -> Tensor:
    """Boxes of a PASCAL v1 text annotation, converted from 1-based inclusive to 0-based ``[x1, x2)`` pixels."""
    rows = [[int(a) - 1, int(b) - 1, int(c), int(d)] for a, b, c, d in _BOX.findall(text)]
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def pennfudan_split(root: str | Path, split: Literal["train", "test"], test_count: int = 50
                    ) -> list[tuple[Path, Tensor]]:
    """``(image path, boxes)`` per image; the last ``test_count`` images by name are the test split."""
    root = Path(root)
    images = sorted((root / "PNGImages").glob("*.png"))
    if not images:
        from ..data.sources import DataError

        raise DataError(f"no Penn-Fudan images under {root / 'PNGImages'}")
    chosen = images[-test_count:] if split == "test" else images[:-test_count]
    return [(p, read_pascal_v1_boxes((root / "Annotation" / f"{p.stem}.txt").read_text())) for p in chosen]


@dataclass
class BoxSwap:
    """One pair's swap: the cell mask on the canvas and each output image's boxes (with their source)."""

    cells: Tensor  # (g, g) bool: swapped cells
    mask: Tensor  # (H, W) bool on the canvas: pixels taken from the partner
    boxes_a: Tensor  # boxes of x̃_a
    boxes_b: Tensor  # boxes of x̃_b
    labels_a: Tensor
    labels_b: Tensor


def _cell_edges(size: int, grid: int) -> Tensor:
    return torch.tensor([round(i * size / grid) for i in range(grid + 1)], dtype=torch.float32)


def _box_cells(boxes: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
    """Bool ``(M, g, g)``: the cells each box overlaps (positive-area intersection)."""
    rows = (boxes[:, None, 1] < ys[None, 1:]) & (boxes[:, None, 3] > ys[None, :-1])  # (M, g)
    cols = (boxes[:, None, 0] < xs[None, 1:]) & (boxes[:, None, 2] > xs[None, :-1])
    return rows[:, :, None] & cols[:, None, :]


def _units(overlap: Tensor, valid: Tensor) -> list[list[int]]:
    """Connected components of valid cells, two cells linked when one box overlaps both."""
    g2 = valid.numel()
    parent = list(range(g2))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for cells in overlap.flatten(1):
        idx = cells.nonzero()[:, 0].tolist()
        for j in idx[1:]:
            parent[find(j)] = find(idx[0])
    groups: dict[int, list[int]] = {}
    for i in range(g2):
        groups.setdefault(find(i), []).append(i)
    flat_valid = valid.flatten()
    return [u for u in groups.values() if all(bool(flat_valid[i]) for i in u)]


def box_swap(boxes_a: Tensor, boxes_b: Tensor, labels_a: Tensor, labels_b: Tensor, size_a: tuple[int, int],
             size_b: tuple[int, int], grid: int, k: int, policy: Literal["object_preserving", "background_only",
                                                                         "free"] = "object_preserving",
             k_max: int | None = None, min_visible: float = 0.5, generator: torch.Generator | None = None
             ) -> BoxSwap:
    """Choose cells to swap between two images laid on a common canvas (max H × max W, top-left aligned) and
    move the boxes with them.

    Cells not fully inside both images are never swapped. ``object_preserving`` swaps whole units (cells linked by
    a box of either image), adding units in random order until ``k`` cells are reached and skipping units that
    would exceed ``k_max``: no box is cut. ``background_only`` swaps only cells that no box touches.
    ``free`` swaps any ``k`` valid cells; a cut box becomes the bounding box of its visible part, dropped when
    less than ``min_visible`` of it remains.
    """
    h, w = max(size_a[0], size_b[0]), max(size_a[1], size_b[1])
    ys, xs = _cell_edges(h, grid), _cell_edges(w, grid)
    inside = min(size_a[0], size_b[0]), min(size_a[1], size_b[1])
    valid = (ys[1:] <= inside[0])[:, None] & (xs[1:] <= inside[1])[None, :]
    k_max = grid * grid if k_max is None else k_max
    all_boxes = torch.cat([boxes_a, boxes_b])
    overlap = _box_cells(all_boxes, ys, xs)
    chosen = torch.zeros(grid * grid, dtype=torch.bool)
    if policy == "object_preserving":
        units = _units(overlap, valid)
        order = torch.randperm(len(units), generator=generator).tolist()
        total = 0
        for i in order:
            u = units[i]
            if total >= k:
                break
            if total + len(u) > k_max:
                continue
            chosen[u] = True
            total += len(u)
    else:
        allowed = valid.flatten().clone()
        if policy == "background_only":
            allowed &= ~overlap.any(0).flatten() if len(all_boxes) else allowed
        cand = allowed.nonzero()[:, 0]
        pick = cand[torch.randperm(len(cand), generator=generator)[:min(k, k_max)]]
        chosen[pick] = True
    cells = chosen.view(grid, grid)
    rows = torch.bucketize(torch.arange(h) + 0.5, ys[1:-1])
    cols = torch.bucketize(torch.arange(w) + 0.5, xs[1:-1])
    mask = cells[rows[:, None], cols[None, :]]

    def keep_and_take(own: Tensor, own_labels: Tensor, other: Tensor, other_labels: Tensor) -> tuple[Tensor, Tensor]:
        """Boxes of an output image: its own outside the swapped cells, the partner's inside them."""
        out, lab = [], []
        for boxes, labels, inside_swap in ((own, own_labels, False), (other, other_labels, True)):
            for box, label in zip(boxes, labels, strict=True):
                kept = _visible_part(box, mask if inside_swap else ~mask, min_visible)
                if kept is not None:
                    out.append(kept)
                    lab.append(label)
        return (torch.stack(out) if out else torch.zeros(0, 4)), torch.stack(lab) if lab else labels_a[:0]

    ba, la = keep_and_take(boxes_a, labels_a, boxes_b, labels_b)
    bb, lb = keep_and_take(boxes_b, labels_b, boxes_a, labels_a)
    return BoxSwap(cells, mask, ba, bb, la, lb)


def _visible_part(box: Tensor, region: Tensor, min_visible: float) -> Tensor | None:
    """The bounding box of ``box ∩ region`` (pixel mask), or ``None`` when less than ``min_visible`` of the box
    area is visible."""
    x1, y1 = math.floor(float(box[0])), math.floor(float(box[1]))
    x2, y2 = math.ceil(float(box[2])), math.ceil(float(box[3]))
    patch = region[y1:y2, x1:x2]
    area = patch.numel()
    if area == 0:
        return None
    seen = patch.sum()
    if int(seen) == area:
        return box.clone()
    if float(seen) / area < min_visible or int(seen) == 0:
        return None
    ys, xs = patch.any(1).nonzero()[:, 0], patch.any(0).nonzero()[:, 0]
    return torch.tensor([x1 + xs.min(), y1 + ys.min(), x1 + xs.max() + 1, y1 + ys.max() + 1], dtype=box.dtype)
