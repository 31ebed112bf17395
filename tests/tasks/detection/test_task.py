"""Detection as a task: the COCO evaluator, config errors that name the task, short end-to-end runs (training, exact
resume, evaluation, the report) on real Penn-Fudan images."""

import csv

import pytest
import torch

from selfdistill import train
from selfdistill.bench.report import write_report
from selfdistill.config import ConfigError
from selfdistill.run import evaluate, resolve_config
from selfdistill.tasks.detection import (
    CocoEvaluator,
)


# ----------------------------------------------------------------------------------------------- evaluator
def test_coco_evaluator_scores_perfect_shifted_and_missing_detections():
    gt = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0]]), "labels": torch.tensor([1]), "image_id": torch.tensor(0)},
          {"boxes": torch.tensor([[0.0, 0.0, 30.0, 20.0]]), "labels": torch.tensor([2]), "image_id": torch.tensor(1)}]
    perfect = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.tensor([0.9])} for t in gt]
    ev = CocoEvaluator(["a", "b"])
    ev.update(perfect, gt)
    m = ev.compute()
    assert m["map"] == pytest.approx(100) and m["ap50"] == pytest.approx(100) and m["ap_b"] == pytest.approx(100)
    # IoU 0.6 with the ground truth: a hit at 0.5, a miss at 0.75
    shifted = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 34.0]]), "labels": torch.tensor([1]),
                "scores": torch.tensor([0.9])}]
    ev = CocoEvaluator(["a", "b"])
    ev.update(shifted, gt[:1])
    m = ev.compute()
    assert m["ap50"] == pytest.approx(100) and m["ap75"] == 0.0 and m["n"] == 1
    empty = CocoEvaluator(["a", "b"])
    empty.update([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                   "scores": torch.zeros(0)}], gt[:1])
    assert empty.compute()["map"] == 0.0


# ------------------------------------------------------------------------------------------- end to end
def _e2e_config(tmp_path, root, method, model="fasterrcnn_mobilenet_v3_large_fpn"):
    return {"task": "detection", "seed": 0, "out": str(tmp_path),
            "data": {"name": "pennfudan", "root": str(root), "batch_size": 2, "eval_batch_size": 8,
                     "train_subset": 6, "val_fraction": 0.34}, "detection": {"size": 96, "test_count": 50},
            "model": {"name": model, "kwargs": {"box_batch_size_per_image": 32}},
            "method": method, "optim": {"name": "sgd", "lr": 0.01},
            "train": {"epochs": 2, "device": "cpu", "tensorboard": False, "progress": False}}


@pytest.mark.slow
@pytest.mark.parametrize("method", [{"name": "ce"}, {"name": "ips", "box_policy": "free"}])
def test_detection_trains_resumes_exactly_and_evaluates(tmp_path, pennfudan_root, method):
    cfg = _e2e_config(tmp_path / "full", pennfudan_root, method)
    full = train(cfg, log=lambda _: None)
    assert full.task == "detection" and full.metrics == ["map", "ap50", "ap75"]
    assert 0.0 <= full.last["test_map"] <= 100.0 and "ap_person" in full.last_per_class
    short = _e2e_config(tmp_path / "split", pennfudan_root, method)
    short["train"]["epochs"] = 1
    train(short, log=lambda _: None)
    resumed = train(_e2e_config(tmp_path / "split", pennfudan_root, method), resume=True, log=lambda _: None)
    assert resumed.last == full.last  # 1 epoch + resume = 2 epochs uninterrupted
    run = tmp_path / "full" / resolve_config(cfg).run_name()
    again = evaluate(run / "last.pt")
    assert again["map"] == pytest.approx(full.last["test_map"])
    report = write_report(tmp_path / "full", tmp_path / "report")
    assert "mAP %" in report.read_text()
    with (tmp_path / "report" / "runs.csv").open() as fh:
        row = next(csv.DictReader(fh))
    assert float(row["test_map_last"]) == pytest.approx(full.last["test_map"])


def test_detection_config_errors_name_the_task(tmp_path):
    with pytest.raises(KeyError, match=r"unknown method 'cskd'.*task: detection, whose methods are ce, ips"):
        train(_e2e_config(tmp_path, tmp_path, {"name": "cskd"}), log=lambda _: None)
    with pytest.raises(ConfigError, match="sigmoid_kd"):
        train(_e2e_config(tmp_path, tmp_path, {"name": "ips", "sigmoid_kd": "nope"}), log=lambda _: None)
