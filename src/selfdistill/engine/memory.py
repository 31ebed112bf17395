"""Per-sample memories of methods (e.g. PS-KD's past predictions), consistent over ranks and checkpointed."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .checkpoint import CheckpointError
from .distributed import DistInfo


class SampleMemory:
    """An ``N × K`` table indexed by dataset index (e.g. PS-KD's past predictions), checkpointed with the method.

    Under DDP, :meth:`write` gathers the rows written by every rank, so all ranks hold the same table.
    """

    def __init__(self, num_samples: int, width: int, device: torch.device | str = "cpu",
                 fill: float = 0.0, dist_info: DistInfo | None = None, dtype: torch.dtype = torch.float32) -> None:
        self.table = torch.full((num_samples, width), fill, device=device, dtype=dtype)
        self.dist = dist_info or DistInfo()

    def read(self, index: Tensor) -> Tensor:
        """Rows for ``index`` (a copy)."""
        return self.table[index].clone()

    @torch.no_grad()
    def write(self, index: Tensor, values: Tensor) -> None:
        """Store ``values`` (detached, as the table's dtype) at ``index`` on every rank."""
        values = values.detach().to(self.table.dtype)
        if self.dist.enabled:  # ranks may hold different row counts (the last batch): pad to the largest
            n = torch.tensor([index.numel()], device=index.device)
            sizes = [torch.empty_like(n) for _ in range(self.dist.world)]
            dist.all_gather(sizes, n)
            most = int(max(int(x) for x in sizes))
            pad = most - index.numel()
            index = torch.cat([index, index.new_zeros(pad)])
            values = torch.cat([values, values.new_zeros((pad, *values.shape[1:]))])
            idx = [torch.empty_like(index) for _ in range(self.dist.world)]
            vals = [torch.empty_like(values) for _ in range(self.dist.world)]
            dist.all_gather(idx, index.contiguous())
            dist.all_gather(vals, values.contiguous())
            index = torch.cat([i[:int(k)] for i, k in zip(idx, sizes, strict=True)])
            values = torch.cat([v[:int(k)] for v, k in zip(vals, sizes, strict=True)])
        self.table[index] = values

    def state_dict(self) -> dict[str, Tensor]:
        """Checkpoint form."""
        return {"table": self.table}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`."""
        if state["table"].shape != self.table.shape:
            raise CheckpointError(f"sample memory shape {tuple(state['table'].shape)} does not match this run's "
                                  f"{tuple(self.table.shape)}")
        self.table.copy_(state["table"])
