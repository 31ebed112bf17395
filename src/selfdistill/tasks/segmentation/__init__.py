"""Semantic segmentation (docs/tasks.md, segmentation): data, torchvision segmenters, pixel CE and dense IPS, mIoU."""

from .data import SEG_DATASETS, PresencePairSampler, SegDataModule, SegSplit, sample_scale_crop_flip, scale_crop_flip
from .methods import SEG_METHODS, DenseIPS, SegCrossEntropy, border_pixels, pixel_cross_entropy
from .models import SEG_MODELS, SegmentationNet, build_segmentation_model, init_backbone
from .ops import (
    ConfusionMatrix,
    class_presence,
    class_region_loss,
    draw_partners,
    load_segmentation_folder,
    pixel_agree_loss,
    swap_pair,
)
from .task import SegmentationTask

__all__ = [
    "SEG_DATASETS", "SEG_METHODS", "SEG_MODELS", "ConfusionMatrix", "DenseIPS", "PresencePairSampler",
    "SegCrossEntropy", "SegDataModule", "SegSplit", "SegmentationNet", "SegmentationTask", "border_pixels",
    "build_segmentation_model", "class_presence", "class_region_loss", "draw_partners", "init_backbone",
    "load_segmentation_folder", "pixel_agree_loss", "pixel_cross_entropy", "sample_scale_crop_flip",
    "scale_crop_flip", "swap_pair",
]
