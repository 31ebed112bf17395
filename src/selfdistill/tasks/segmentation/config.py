"""The segmentation task's own config section (``segmentation:`` in a run config)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SegmentationConfig:
    """The ``segmentation:`` section of a run config: image + label-map data of the ``segmentation`` task."""

    size: list[int] | None = None
    """Resize every image (bilinear) and label map (nearest) to ``[H, W]`` on load: the reduced resolution of
    CPU runs (``None`` keeps the files' size, which must then be equal)."""
    crop: list[int] | None = None
    """Training crop ``[h, w]`` taken after the random scaling (``None``: the loaded size)."""
    scale: list[float] = field(default_factory=lambda: [0.5, 2.0])
    """Range of the random per-image scale factor of training images (``[1, 1]`` disables scaling)."""
    ignore_index: int = 255
    """Label of pixels without a class (the dataset's void label is mapped to it); excluded from losses and
    metrics."""
    min_pixels: int = 64
    """A class is present in an image (for pairing) when it covers at least this many pixels."""
    exclude_background: bool = True
    """Never pair on the dataset's background class (datasets without one, e.g. CamVid, ignore this)."""
    train_split: str = "train"
    """Training split name (CamVid: a folder; VOC: a list in ``ImageSets/Segmentation``)."""
    val_split: str | None = "val"
    """Validation split for model selection (``None``: a seeded ``data.val_fraction`` of the training images, none
    when it is 0)."""
    test_split: str = "test"
    """Test split (VOC has no public test labels: use ``val`` and set ``val_split: null``)."""
