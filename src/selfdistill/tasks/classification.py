"""Image classification: the library's first task (top-1/top-5, NLL and ECE)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..config import DataConfig
from ..data import DataModule
from ..engine.metrics import MetricAccumulator, topk_correct
from ..methods import METHODS
from ..models import build_model
from .base import TASKS, Task


@TASKS.register("classification")
class ClassificationTask(Task):
    """Image classification."""

    name = "classification"
    metrics = ("top1", "top5", "ece", "nll")
    train_metric = "top1"
    methods = METHODS

    def data_module(self, cfg: DataConfig, device: torch.device, rank: int, world: int,
                    memory_format: torch.memory_format) -> DataModule:
        return DataModule(cfg, device, rank, world, memory_format)

    def build_model(self, model_cfg: dict[str, Any], num_classes: int, in_chans: int) -> nn.Module:
        return build_model(model_cfg["name"], num_classes, in_chans, **model_cfg["kwargs"])

    def evaluator(self, data: Any, device: torch.device) -> MetricAccumulator:
        return MetricAccumulator(device)

    def train_hits(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor | int]:
        return topk_correct(logits, targets, 1), targets.numel()
