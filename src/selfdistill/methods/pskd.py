"""PS-KD: progressive self-knowledge distillation from the previous epoch's predictions (docs/methods.md, pskd)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..batch import Batch
from ..config import limited
from ..engine.distributed import DistInfo
from ..engine.memory import SampleMemory
from ..losses import soft_cross_entropy
from .base import Method, StepOutput, register_method


@dataclass
class PSKDOptions:
    """PS-KD options."""

    alpha_T: float = limited(0.8, low=0, high=1)
    """Final mixing weight; epoch e (1-based) uses ``α_T·e/E``."""
    memory_dtype: Literal["fp32", "fp16"] = "fp32"
    """Storage of the N×K memory (fp16 halves it, e.g. for ImageNet)."""


@register_method("pskd")
class ProgressiveSelfKD(Method):
    """PS-KD: targets (1−α_e)·e_y + α_e·P[i], where P holds each sample's softmax from its last visit."""

    Options = PSKDOptions
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"official": {"alpha_T": 0.8}, "clean": {"alpha_T": 0.8}}

    def setup(self, model: nn.Module) -> None:
        """Allocate the per-sample memory (rows not yet written read as the one-hot label)."""
        dtype = torch.float16 if self.opt.memory_dtype == "fp16" else torch.float32
        self.memory = SampleMemory(self.ctx.num_train, self.ctx.num_classes, self.ctx.device,
                                   dist_info=DistInfo(self.ctx.rank, self.ctx.world), dtype=dtype)

    def alpha(self, epoch: int) -> float:
        """``α_e = α_T·e/E``."""
        return self.opt.alpha_T * epoch / self.ctx.epochs

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.x)
        onehot = F.one_hot(batch.y, logits.shape[1]).float()
        past = self.memory.read(batch.index).float()
        past = torch.where(past.sum(1, keepdim=True) > 0, past, onehot)  # never written: the label
        a = self.alpha(epoch)
        targets = (1 - a) * onehot + a * past
        self.memory.write(batch.index, logits.detach().float().softmax(1))  # read before write, this step's view
        return StepOutput({"pskd": soft_cross_entropy(logits, targets)}, logits, batch.y,
                          {"pskd_alpha": torch.tensor(a)})

    def state_dict(self) -> dict[str, Any]:
        """The memory."""
        return {"memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the memory bit for bit."""
        self.memory.load_state_dict(state["memory"])
