"""Resuming and run folders: a changed config is refused (before any data is read, the folder left untouched), more
epochs are not; keys added or moved since a run was saved."""

import pytest
import torch

from selfdistill import train
from selfdistill.cli import main
from selfdistill.config import ConfigError, save_yaml
from selfdistill.run import Trainer
from tests.helpers import synthetic_config


def test_resume_refuses_a_changed_config_but_allows_more_epochs(tmp_path):
    cfg = synthetic_config(tmp_path, train={"epochs": 1})
    train(cfg)
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.1 -> 0\.2"):
        train(cfg, ["optim.lr=0.2"], resume=True)
    s = train(cfg, ["train.epochs=2"], resume=True)
    assert s.epochs == 2


def test_a_run_folder_of_other_settings_is_refused_before_any_data_and_left_untouched(tmp_path, monkeypatch,
                                                                                        capsys):
    """The folder name ``<dataset>_<model>_<method>_s<seed>`` does not change with a method's options: a new run
    that lands in an old one's folder with other settings is refused, with or without --resume."""
    cfg = synthetic_config(tmp_path, train={"epochs": 1}, method={"name": "label_smoothing"})
    train(cfg)
    run = tmp_path / "runs" / "synthetic_resnet8_label_smoothing_s0"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    path = tmp_path / "run.yaml"
    save_yaml(cfg, path)

    def no_data(self):
        raise AssertionError("the data was read before the run folder was checked")

    monkeypatch.setattr(Trainer, "_setup", no_data)
    for resume in ([], ["--resume"]):
        err = _refusal(path, ["--set", "method.epsilon=0.2", *resume], capsys)
        assert str(run) in err and "method.epsilon: 0.1 -> 0.2" in err
    assert "another --out or name, or delete" in _refusal(path, ["--set", "method.epsilon=0.2"], capsys)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # a folder holding only the config of a run that never finished an epoch is refused the same way
    (run / "last.pt").unlink()
    assert "method.epsilon: 0.1 -> 0.2" in _refusal(path, ["--set", "method.epsilon=0.2"], capsys)
    # a changed number of epochs is the same experiment: it asks for --resume as before
    (run / "last.pt").write_bytes(before[run / "last.pt"])
    assert "Pass --resume" in _refusal(path, ["--set", "train.epochs=3"], capsys)


def _refusal(config, args: list[str], capsys) -> str:
    """The one line, without a traceback, that ``selfdistill train`` prints when it refuses (exit status 2)."""
    assert main(["train", "--config", str(config), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_resume_accepts_keys_added_since_at_their_defaults(tmp_path):
    """A run saved before a config key existed resumes when the key has its default, not when it differs."""
    cfg = synthetic_config(tmp_path, name="old", train={"epochs": 1}, method={"name": "consistency"})
    train(cfg)
    path = tmp_path / "runs" / "old" / "last.pt"
    ck = torch.load(path, weights_only=True)
    del ck["config"]["data"]["augment"]["cutout"]  # as if written before these options existed
    del ck["config"]["method"]["divergence"]
    torch.save(ck, path)
    with pytest.raises(ConfigError, match=r"data\.augment\.cutout: 0\.5 -> 0\.3"):  # read at its default
        train(cfg, ["train.epochs=2", "data.augment.cutout=0.3"], resume=True)
    assert train(cfg, ["train.epochs=2"], resume=True).epochs == 2


def test_resume_reads_moved_keys_in_their_new_place(tmp_path):
    """A classification run saved when every config held the dense tasks' sections under data resumes."""
    cfg = synthetic_config(tmp_path, name="old", train={"epochs": 1})
    train(cfg)
    path = tmp_path / "runs" / "old" / "last.pt"
    ck = torch.load(path, weights_only=True)
    ck["config"]["data"]["dense"] = {"size": None, "ignore_index": 255}
    ck["config"]["data"]["detection"] = {"size": 320}
    torch.save(ck, path)
    assert train(cfg, ["train.epochs=2"], resume=True).epochs == 2
