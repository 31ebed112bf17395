"""The segmentation task's own config section (``segmentation:`` in a run config)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import limited


@dataclass
class SegmentationConfig:
    """The ``segmentation:`` section of a run config: image + label-map data of the ``segmentation`` task."""

    size: list[int] | None = limited(None, low=1, length=2)
    """Resize every image (bilinear) and label map (nearest) to ``[H, W]`` on load: the reduced resolution of
    CPU runs (``None`` keeps the files' size, which must then be equal)."""
    crop: list[int] | None = limited(None, low=1, length=2)
    """Training crop ``[h, w]`` taken after the random scaling (``None``: the loaded size)."""
    scale: list[float] = limited(lambda: [0.5, 2.0], low=0, low_open=True, length=2)
    """Range of the random per-image scale factor of training images (``[1, 1]`` disables scaling)."""
    ignore_index: int = limited(255, low=0)
    """Label of pixels without a class (the dataset's void label is mapped to it); excluded from losses and
    metrics."""
    min_pixels: int = limited(64, low=0)
    """A class is present in an image (for pairing) when it covers at least this many pixels."""
    exclude_background: bool = True
    """Never pair on the dataset's background class (datasets without one, e.g. CamVid, ignore this)."""
    train_split: str = limited("train", nonempty=True)
    """Training split name (CamVid: a folder; VOC: a list in ``ImageSets/Segmentation``)."""
    val_split: str | None = limited("val", nonempty=True)
    """Validation split for model selection (``None``: a seeded ``data.val_fraction`` of the training images, none
    when it is 0)."""
    test_split: str = limited("test", nonempty=True)
    """Test split (VOC has no public test labels: use ``val`` and set ``val_split: null``)."""
