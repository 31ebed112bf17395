"""Per-sample memories: read and write semantics, dtype, checkpoints, and the rows of every rank under DDP."""

import pytest
import torch

from selfdistill.engine import CheckpointError, SampleMemory
from selfdistill.engine import memory as memory_module
from selfdistill.engine.checkpoint import atomic_save, load_checkpoint
from selfdistill.engine.distributed import DistInfo


def test_sample_memory_read_write_and_checkpoint(tmp_path):
    mem = SampleMemory(6, 3, fill=1 / 3)
    assert torch.allclose(mem.read(torch.tensor([0, 5])), torch.full((2, 3), 1 / 3))
    vals = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
    mem.write(torch.tensor([4, 1]), vals)
    assert torch.equal(mem.read(torch.tensor([1, 4])), vals.detach().flip(0))
    atomic_save(mem.state_dict(), tmp_path / "m.pt")
    other = SampleMemory(6, 3)
    other.load_state_dict(load_checkpoint(tmp_path / "m.pt"))
    assert torch.equal(other.table, mem.table)
    with pytest.raises(CheckpointError, match="does not match"):
        SampleMemory(5, 3).load_state_dict(mem.state_dict())


def test_reads_are_copies_and_later_writes_replace_earlier_ones():
    mem = SampleMemory(4, 2)
    assert torch.equal(mem.table, torch.zeros(4, 2))  # the default fill
    mem.write(torch.tensor([1, 2]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    rows = mem.read(torch.tensor([1]))
    rows += 100.0  # changing what was read leaves the memory alone
    assert torch.equal(mem.read(torch.tensor([1])), torch.tensor([[1.0, 2.0]]))
    mem.write(torch.tensor([2]), torch.tensor([[5.0, 6.0]]))
    assert torch.equal(mem.table, torch.tensor([[0.0, 0.0], [1.0, 2.0], [5.0, 6.0], [0.0, 0.0]]))


def test_writes_are_detached_and_stored_in_the_tables_dtype():
    mem = SampleMemory(3, 2, dtype=torch.bfloat16)
    values = torch.tensor([[0.1, 0.2]], dtype=torch.float64, requires_grad=True)
    mem.write(torch.tensor([0]), values * 2)
    assert mem.table.dtype == torch.bfloat16 and not mem.table.requires_grad
    assert torch.equal(mem.table[0], torch.tensor([0.2, 0.4]).to(torch.bfloat16))


def test_a_loaded_state_is_copied_not_shared():
    mem = SampleMemory(2, 2)
    state = {"table": torch.ones(2, 2)}
    mem.load_state_dict(state)
    state["table"].zero_()
    assert torch.equal(mem.table, torch.ones(2, 2))


def test_under_ddp_every_rank_stores_the_rows_of_all_ranks(monkeypatch):
    """Rank 0 writes two rows, rank 1 one (its last batch is smaller, so it pads to two with index 0 and zeros): the
    gathers (standing in for rank 1 here) put rows 2, 3 and 5 in the table and leave the padding out."""
    from_rank1 = iter([torch.tensor([1]), torch.tensor([5, 0]), torch.tensor([[7.0, 7.0], [0.0, 0.0]])])

    def all_gather(outputs: list[torch.Tensor], tensor: torch.Tensor) -> None:
        outputs[0].copy_(tensor)
        outputs[1].copy_(next(from_rank1))

    monkeypatch.setattr(memory_module.dist, "all_gather", all_gather)
    mem = SampleMemory(6, 2, fill=-1.0, dist_info=DistInfo(rank=0, world=2))
    mem.write(torch.tensor([2, 3]), torch.tensor([[1.0, 1.0], [2.0, 2.0]]))
    expected = torch.full((6, 2), -1.0)
    expected[2], expected[3], expected[5] = 1.0, 2.0, 7.0
    assert torch.equal(mem.table, expected)
