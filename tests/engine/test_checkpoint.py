"""Checkpoints: a failed write keeps the previous file."""

import pytest
import torch

from selfdistill.engine import CheckpointError
from selfdistill.engine import checkpoint as ckmod
from selfdistill.engine.checkpoint import load_checkpoint


def test_checkpoint_write_failure_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckmod.save_checkpoint({"v": torch.tensor(1)}, path)

    def full_disk(obj, fh):
        fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckmod.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"No space left.*previous checkpoint is intact.*--resume"):
        ckmod.save_checkpoint({"v": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert int(load_checkpoint(path)["v"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind
