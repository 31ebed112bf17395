"""Experiment trackers (``train.loggers``): W&B offline and MLflow with a local file store get the config once and
the rows of ``metrics.csv`` with the epoch as step; a missing package is a one-line config error."""

from __future__ import annotations

import csv
import json
import struct
import sys
from pathlib import Path

import pytest

from selfdistill import train
from selfdistill.cli import main
from selfdistill.config import ConfigError
from selfdistill.run.trainer import Trainer
from tests.helpers import synthetic_config

pytest.importorskip("wandb")
pytest.importorskip("mlflow")


def csv_rows(run: Path) -> list[dict[str, float]]:
    """``metrics.csv`` as numbers (empty cells left out)."""
    with (run / "metrics.csv").open() as fh:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def tiny(tmp_path: Path, **train_opts) -> dict:
    return synthetic_config(tmp_path, data={"synthetic_size": 64}, train=train_opts)


def wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` transaction log (a 7-byte header, then LevelDB-style 32 KiB blocks of chunks with
    a 7-byte header: checksum, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, buf, out = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer
            pos += 32768 - pos % 32768
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def test_wandb_offline_run_holds_config_and_every_epoch(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(tiny(tmp_path, loggers=["wandb"], tracker_project="trackers"))
    run = tmp_path / "runs" / "synthetic_resnet8_ce_s0"
    (log,) = (tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(log)
    (start,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (start.project, start.display_name) == ("trackers", run.name)
    config = {u.key: json.loads(u.value_json) for u in start.config.update}
    assert config["method"] == {"name": "ce"} and config["train"]["loggers"] == ["wandb"] and config["seed"] == 0
    history = [{i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    rows = csv_rows(run)
    assert [h["_step"] for h in history] == [1, 2]
    for h, row in zip(history, rows, strict=True):
        assert {k: h[k] for k in row} == pytest.approx(row)
    (exit_record,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 0


def mlflow_runs(tmp_path: Path, monkeypatch) -> object:
    """An MLflow client on a file store in ``tmp_path`` (also the store the runs log to)."""
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store only on request
    return MlflowClient(tracking_uri=uri)


def metric_history(client, run_id: str, rows: list[dict[str, float]]) -> list[dict[str, float]]:
    """The run's metrics as rows by step, for the keys of ``rows``."""
    by_step: dict[int, dict[str, float]] = {}
    for key in {k for row in rows for k in row}:
        for m in client.get_metric_history(run_id, key):
            by_step.setdefault(m.step, {})[key] = m.value
    return [by_step[s] for s in sorted(by_step)]


def test_mlflow_run_holds_config_params_and_one_value_per_epoch(tmp_path, monkeypatch):
    client = mlflow_runs(tmp_path, monkeypatch)
    train(tiny(tmp_path, loggers=["mlflow"]))
    run_dir = tmp_path / "runs" / "synthetic_resnet8_ce_s0"
    experiment = client.get_experiment_by_name("runs")  # default: the name of the ``out`` folder
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    params = run.data.params
    assert params["method.name"] == "ce" and params["train.epochs"] == "2" and params["seed"] == "0"
    assert params["data.synthetic_size"] == "64" and params["train.loggers"] == "['mlflow']"
    rows = csv_rows(run_dir)
    assert len(rows) == 2 and all(len(client.get_metric_history(run.info.run_id, k)) == 2 for k in rows[0])
    assert metric_history(client, run.info.run_id, rows) == [pytest.approx(r) for r in rows]


def test_stopped_run_closes_its_tracker_and_the_resumed_run_replays_the_done_epochs(tmp_path, monkeypatch):
    client = mlflow_runs(tmp_path, monkeypatch)
    train_epoch = Trainer._train_epoch

    def stop_in_epoch_two(self, epoch, *args):
        if epoch == 2:
            raise KeyboardInterrupt
        return train_epoch(self, epoch, *args)

    monkeypatch.setattr(Trainer, "_train_epoch", stop_in_epoch_two)
    cfg = tiny(tmp_path, loggers=["mlflow"], tracker_project="exp")
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(Trainer, "_train_epoch", train_epoch)
    train(cfg, resume=True)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id], order_by=["start_time ASC"])
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED"]
    rows = csv_rows(tmp_path / "runs" / "synthetic_resnet8_ce_s0")
    assert metric_history(client, runs[0].info.run_id, rows) == [pytest.approx(rows[0])]
    assert metric_history(client, runs[1].info.run_id, rows) == [pytest.approx(r) for r in rows]


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_missing_tracker_is_one_line_error_before_the_run_starts(tmp_path, monkeypatch, capsys, name):
    monkeypatch.setitem(sys.modules, name, None)  # ``import name`` raises ImportError
    message = f"train.loggers: {name} is not installed; pip install 'selfdistill[{name}]'"
    with pytest.raises(ConfigError) as err:
        train(tiny(tmp_path, loggers=[name]))
    assert str(err.value) == message
    assert not (tmp_path / "runs").exists()
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(tiny(tmp_path, loggers=[name])))
    assert main(["train", "--config", str(config)]) == 2
    assert capsys.readouterr().err.strip() == f"selfdistill: error: {message}"


def test_unknown_tracker_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"train.loggers\[0\]: expected one of 'wandb', 'mlflow'"):
        train(tiny(tmp_path, loggers=["neptune"]))
