"""Semantic segmentation as an engine task: mIoU, per-class IoU and pixel accuracy."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...config import RunConfig
from ..base import Task, register_task
from .config import SegmentationConfig
from .data import SEG_DATASETS, SegDataModule
from .methods import SEG_METHODS
from .models import SEG_MODELS, build_segmentation_model, init_backbone
from .ops import ConfusionMatrix, _upsample


@register_task("segmentation")
class SegmentationTask(Task):
    """Semantic segmentation."""

    metrics = ("miou", "pixel_acc")
    train_metric = "pixel_acc"
    methods = SEG_METHODS
    Options = SegmentationConfig

    def data_module(self, cfg: RunConfig, device: torch.device, rank: int, world: int,
                    memory_format: torch.memory_format) -> SegDataModule:
        return SegDataModule(cfg.data, self.options(cfg), device, rank, world, memory_format)

    def build_model(self, cfg: RunConfig, num_classes: int, in_chans: int) -> nn.Module:
        model = build_segmentation_model(cfg.model.name, num_classes, in_chans, **cfg.model.kwargs)
        if cfg.model.init_backbone:
            init_backbone(model, cfg.model.name, cfg.model.init_backbone)
        return model

    def model_names(self) -> list[str]:
        return list(SEG_MODELS)

    def dataset_names(self) -> list[str]:
        return SEG_DATASETS.names()

    def evaluator(self, data: Any, device: torch.device) -> ConfusionMatrix:
        return ConfusionMatrix(data.num_classes, data.ignore_index, device, data.classes)

    def train_hits(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        valid = (targets >= 0) & (targets < logits.shape[1])  # the ignore label lies outside the classes
        pred = _upsample(logits.float(), targets.shape[-2:]).argmax(1)
        return ((pred == targets) & valid).sum(), valid.sum()
