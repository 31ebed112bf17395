"""Segmentation as a task: methods registered per task, short end-to-end runs (training, exact resume, evaluation, the
report) on real CamVid images."""

from __future__ import annotations

import json

import pytest

from selfdistill.config import ConfigError
from selfdistill.run import resolve_config


def _config(tmp_path, root, method: dict, epochs: int = 1) -> dict:
    return {
        "task": "segmentation", "seed": 0, "out": str(tmp_path / "runs"),
        "data": {"name": "camvid", "root": str(root), "batch_size": 4, "eval_batch_size": 16, "train_subset": 8},
        "segmentation": {"size": [36, 48], "crop": [32, 32], "min_pixels": 16, "test_split": "val"},
        "model": {"name": "lraspp_mobilenet_v3_large"}, "method": method,
        "optim": {"lr": 0.01}, "sched": {"name": "constant"},
        "train": {"epochs": epochs, "device": "cpu", "progress": False, "tensorboard": False},
    }


def test_segmentation_methods_are_per_task():
    seg = {"task": "segmentation", "data": {"name": "camvid"}, "model": {"name": "lraspp_mobilenet_v3_large"}}
    cfg = resolve_config({**seg, "method": {"name": "ips"}})
    assert cfg.method["dense_kd"] == "pixel_agree" and "partner_source" not in cfg.method
    with pytest.raises(KeyError, match="unknown method 'kd'"):
        resolve_config({**seg, "method": {"name": "kd"}})
    with pytest.raises(ConfigError, match="dense_kdd"):
        resolve_config({**seg, "method": {"name": "ips", "dense_kdd": "context"}})


@pytest.mark.parametrize("method", [{"name": "ce"}, {"name": "ips", "dense_kd": "context", "grid": 4}])
def test_segmentation_trains_resumes_and_evaluates_on_camvid(tmp_path, camvid_root, method):
    from selfdistill import evaluate, train
    from selfdistill.bench.report import write_report

    full = train(_config(tmp_path / "full", camvid_root, method, epochs=2))
    assert full.task == "segmentation" and full.metrics == ["miou", "pixel_acc"]
    assert 0 <= full.last["test_miou"] <= 100 and "iou_Road" in full.last_per_class
    assert full.best_val["epoch"] in (1, 2)
    # one epoch, then resumed to two: the same history as the uninterrupted run
    train(_config(tmp_path / "split", camvid_root, method, epochs=1))
    resumed = train(_config(tmp_path / "split", camvid_root, method, epochs=2), resume=True)
    assert resumed.last == full.last
    ck = tmp_path / "full" / "runs" / f"camvid_lraspp_mobilenet_v3_large_{method['name']}_s0" / "last.pt"
    assert evaluate(ck)["miou"] == pytest.approx(full.last["test_miou"], abs=1e-9)
    report = write_report(tmp_path / "full" / "runs", tmp_path / "report").read_text()
    assert "mIoU % (last)" in report and "Road" in report
    rows = json.loads((ck.parent / "summary.json").read_text())["last_per_class"]
    assert len(rows) == 11
