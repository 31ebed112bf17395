"""torchrun / DistributedDataParallel helpers: rank discovery, reductions, wrapping."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def is_main_process() -> bool:
    """Whether this process is rank 0 of a ``torchrun`` job (or not distributed at all)."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (NCCL on CUDA, gloo on CPU);
    a plain run is a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        # torch._dynamo imported after the group exists (torchvision, timm and torch.compile import it) keeps a
        # reference to the group that destroy_process_group cannot drop: its gloo threads then outlive
        # close_distributed and can abort the interpreter's exit; imported first, it holds none.
        import torch._dynamo  # noqa: F401

        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def close_distributed(barrier: bool = True) -> None:
    """Leave the ``torchrun`` process group, if one was joined: after every rank has finished (``barrier``), or at
    once (after an error on this rank, when the others may never reach a barrier; torchrun stops them).

    A gloo group still alive when the interpreter exits can abort the process after its work is done
    ("terminate called without an active exception"): a gloo worker thread that releases a finished
    collective's tensors needs the GIL, and a thread asking for the GIL during finalisation is unwound through a
    destructor that may not throw. Destroying the group joins those threads first."""
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over ranks in place (a no-op for one process); returns ``t``."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def batch_mean(x: torch.Tensor, world: int = 1) -> torch.Tensor:
    """Mean of ``x`` over its first dimension, taken over the rows of every rank when ``world > 1`` (a batch
    statistic of the global batch); no gradient."""
    total = x.detach().float().sum(0)
    count = torch.tensor(float(x.shape[0]), device=x.device)
    if world > 1:
        dist.all_reduce(total)
        dist.all_reduce(count)
    return total / count


def global_mean(total: torch.Tensor, count: torch.Tensor, share: tuple[int, int] | None = None) -> torch.Tensor:
    """``total / count`` for a mean over a data-dependent number of elements (labelled pixels, matched regions).

    ``share = (rows on this rank, rows in the global batch)``: in a DDP job ``count`` is summed over the ranks
    and the result scaled by ``global / local`` rows, so that the engine's row-share weighting and DDP's
    gradient average give the gradient of the mean over the global batch, as one process would. One process (or
    ``share=None``): the local ``total / count``. 0 when the count is 0.
    """
    count = count.detach().to(total.dtype)
    if share is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        count = count.clone()
        dist.all_reduce(count, op=dist.ReduceOp.SUM)
        total = total * (share[1] / max(share[0], 1))
    return total / count.clamp_min(1)


def sync_batchnorm(module: nn.Module, info: DistInfo, device: torch.device, sync_bn: bool) -> nn.Module:
    """``module`` with synchronised BatchNorm when ``sync_bn`` is set: always under DDP, and on one CPU process
    too, so that it computes BatchNorm as the synchronised version does."""
    if sync_bn and (info.enabled or device.type != "cuda"):
        return convert_sync_batchnorm(module, device)
    return module


def wrap_ddp(model: nn.Module, info: DistInfo, device: torch.device, sync_bn: bool) -> nn.Module:
    """Wrap ``model`` in DDP when running distributed (optionally converting BatchNorm to SyncBatchNorm)."""
    model = sync_batchnorm(model, info, device, sync_bn)
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is again the sum over ranks (every rank's loss depends on the total)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm (of (N, C) or (N, C, H, W) inputs) whose training statistics are computed over the whole global
    batch (all ranks), for CPU/gloo where ``nn.SyncBatchNorm`` is unavailable. The statistics are all-reduced with
    autograd, so gradients flow through them exactly as in single-process training of the global batch. On one
    process it computes the same two-pass statistics without communication (PyTorch's fp32 CPU BatchNorm can lose
    ~1e-3 in its gradients on ill-conditioned batches, which would make 1- and N-process runs differ).

    Each layer talks over a process group of its own, so its collectives are paired only with the same layer's on
    the other ranks, whatever order the autograd engine visits parallel branches (a residual block's main path
    and shortcut) in. (A precaution: a shared group was not observed to mispair in the tests.)
    """

    group = None

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 4):
            raise ValueError(f"expected 2D (BatchNorm1d) or 4D (BatchNorm2d) input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        synced = dist.is_initialized() and dist.get_world_size() > 1

        def total(t: torch.Tensor) -> torch.Tensor:
            return _AllReduceSum.apply(t, self.group) if synced else t

        c = x.shape[1]
        dims = (0, *range(2, x.dim()))  # every axis but the channels
        shape = (1, c, *([1] * (x.dim() - 2)))
        xf = x.float()
        count = torch.tensor([x.numel() / c], dtype=torch.float32, device=x.device)
        stats = total(torch.cat([xf.sum(dims), count]))  # two passes: no E[x²] − E[x]² cancellation
        n = stats[-1]
        mean = stats[:c] / n
        var = total(((xf - mean.view(shape)) ** 2).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1), m)
        y = (xf - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every ``BatchNorm1d``/``BatchNorm2d`` by a synchronised one: ``nn.SyncBatchNorm`` on CUDA,
    :class:`CPUSyncBatchNorm` elsewhere (parameters and buffers are kept)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm1d | nn.BatchNorm2d) and not isinstance(child, CPUSyncBatchNorm):
            new = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats).to(device)
            new.load_state_dict(child.state_dict())
            if dist.is_initialized():  # created in module order, collectively, on every rank
                new.group = dist.new_group(backend="gloo")
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            setattr(model, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DDP and ``torch.compile`` wrappers."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def update_center(center: torch.Tensor, outputs: torch.Tensor, momentum: float, world: int = 1) -> None:
    """``c ← m·c + (1 − m)·mean_batch(outputs)`` in place, the batch mean taken over all ranks (every rank keeps
    the same centre): DINO's and the mean teacher's centring."""
    center.mul_(momentum).add_(batch_mean(outputs, world), alpha=1 - momentum)
