"""Image classification: the library's first task (top-1/top-5, NLL and ECE)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..config import RunConfig
from ..data import DataModule, list_datasets
from ..engine.metrics import MetricAccumulator, topk_correct
from ..losses import entropy_rows
from ..methods import METHODS
from ..models import build_model, is_model, list_models
from .base import Task, register_task


@register_task("classification")
class ClassificationTask(Task):
    """Image classification."""

    metrics = ("top1", "top5", "ece", "nll")
    train_metric = "top1"
    methods = METHODS

    def data_module(self, cfg: RunConfig, device: torch.device, rank: int, world: int,
                    memory_format: torch.memory_format) -> DataModule:
        return DataModule(cfg.data, device, rank, world, memory_format)

    def build_model(self, cfg: RunConfig, num_classes: int, in_chans: int) -> nn.Module:
        return build_model(cfg.model.name, num_classes, in_chans, **cfg.model.kwargs)

    def model_names(self) -> list[str]:
        return list_models(external=True)

    def dataset_names(self) -> list[str]:
        return list_datasets()

    def known_model(self, name: str) -> bool:
        return is_model(name)

    def evaluator(self, data: Any, device: torch.device) -> MetricAccumulator:
        return MetricAccumulator(device)

    def train_hits(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor | int]:
        return topk_correct(logits, targets, 1), targets.numel()

    def train_stats(self, logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """The mean L2 norm of the training logits and the mean entropy (nats) of their softmax: how confident the
        network is on what it trains on."""
        return {"logit_norm": logits.norm(dim=1).mean().double(),
                "entropy": entropy_rows(torch.softmax(logits, 1)).mean().double()}
