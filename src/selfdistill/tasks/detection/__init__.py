"""Object detection (docs/tasks.md, detection): COCO-format and Penn-Fudan data, torchvision detectors, the detector's
losses and dense IPS with box-aware swaps and matched-proposal distillation, COCO mAP."""

from .data import DET_DATASETS, DetDataModule, DetSplit, coco_items, hflip_boxes, hflip_valid, load_canvases
from .methods import DET_METHODS, DetectionIPS, DetectorLoss, box_kl, match_boxes, matched_box_kd, pool_boxes
from .models import DET_MODELS, DetectionNet, build_detector, init_backbone
from .ops import BoxSwap, box_swap, pennfudan_split, read_pascal_v1_boxes
from .task import CocoEvaluator, DetectionTask

__all__ = [
    "DET_DATASETS", "DET_METHODS", "DET_MODELS", "BoxSwap", "CocoEvaluator", "DetDataModule", "DetSplit",
    "DetectionIPS", "DetectionNet", "DetectionTask", "DetectorLoss", "box_kl", "box_swap", "build_detector",
    "coco_items", "hflip_boxes", "hflip_valid", "init_backbone", "load_canvases", "match_boxes", "matched_box_kd",
    "pennfudan_split", "pool_boxes", "read_pascal_v1_boxes",
]
