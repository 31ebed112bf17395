"""The detection task's own config section (``detection:`` in a run config)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import limited


@dataclass
class DetectionConfig:
    """The ``detection:`` section of a run config: image + box data of the ``detection`` task."""

    size: int = limited(320, low=1)
    """Side of the square canvas: each image is resized on load so that its longer side is ``size`` (aspect kept)
    and placed top-left on a zero canvas; boxes are scaled with it and the test metrics are measured at this size
    (the reduced resolution of CPU runs)."""
    train_split: str = limited("train", nonempty=True)
    """COCO layout: ``annotations/instances_<split>.json`` with images in ``<split>/``; Penn-Fudan: ``train``."""
    val_split: str | None = limited(None, nonempty=True)
    """Validation split for model selection (``None``: ``data.val_fraction`` of the training images, seeded)."""
    test_split: str = limited("test", nonempty=True)
    """Test split (Penn-Fudan: ``test``, the last ``test_count`` images by name)."""
    test_count: int = limited(50, low=1)
    """Penn-Fudan: how many images, last by name, form the test split."""
    min_box: float = limited(1.0, low=0)
    """Boxes narrower or lower than this many pixels after the resize are dropped (a detector cannot train on a
    degenerate box)."""
