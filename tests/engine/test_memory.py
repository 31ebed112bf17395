import pytest
import torch

from selfdistill import train
from selfdistill.engine import CheckpointError, SampleMemory
from selfdistill.engine.checkpoint import atomic_save, load_checkpoint
from selfdistill.run import load_run_model
from tests.helpers import synthetic_config


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


def test_frozen_model_reproduces_the_run(tmp_path):
    s = train(synthetic_config(tmp_path, train={"epochs": 1}))
    teacher = load_run_model(f"{s.run}/last.pt")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    weights = load_checkpoint(f"{s.run}/last.pt")["model"]
    assert all(torch.equal(v, weights[k]) for k, v in teacher.state_dict().items())
    with pytest.raises(CheckpointError, match="no EMA"):
        load_run_model(f"{s.run}/last.pt", ema=True)
