"""Export and inference: an exported model, loaded back, gives evaluation's outputs exactly on the same images (same
process, same batches), for a zoo model, a timm model, BYOT's backbone, a segmenter and a detector; predict ranks the
classes of image files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from selfdistill import evaluate, export_model, load_model, train
from selfdistill.cli import main
from selfdistill.data.samplers import eval_ranges
from selfdistill.engine.checkpoint import CheckpointError, load_run_checkpoint
from selfdistill.run import load_run_model, resolve_config
from selfdistill.run.evaluation import without_count
from selfdistill.tasks import get_task
from selfdistill.version import __version__
from tests.helpers import REPO, cli_shim, doc_blocks, synthetic_config

CAMVID = REPO.parent / "shared" / "datasets" / "camvid"
PENNFUDAN = REPO.parent / "shared" / "datasets" / "pennfudan"
CPU = torch.device("cpu")


def _same(a, b) -> bool:
    """Exact equality of tensors, or of lists of dicts of tensors (detections)."""
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b, strict=True))


def check_export_reproduces_eval(ckpt, out, ema: bool = False) -> dict:
    """Export ``ckpt``, load it back, and check batch by batch that it returns what the run's model returns on
    evaluation's normalised batches when fed the raw uint8 images, and that its metrics are ``evaluate``'s."""
    record = json.loads(export_model(ckpt, out, ema=ema).read_text())
    loaded = load_model(out)
    ck = load_run_checkpoint(ckpt)
    cfg = resolve_config(ck["config"])
    task = get_task(cfg.task)
    data = task.data_module(cfg, CPU, 0, 1, torch.contiguous_format)
    reference = load_run_model(ck, CPU, ema=ema)
    split, acc = data.test, task.evaluator(data, CPU)
    ranges = eval_ranges(len(split), cfg.data.eval_batch_size, 0, 1)
    for (x, y), (a, b) in zip(data.eval_batches(split), ranges, strict=True):
        raw = split.images[a:b]
        with torch.no_grad():
            out_loaded = loaded(raw, split.sizes[a:b]) if cfg.task == "detection" else loaded(raw)
            assert _same(out_loaded, reference(x))
        acc.update(out_loaded, y)
    assert without_count(acc.compute()) == without_count(evaluate(ckpt, ema=ema))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert record["library_version"] == __version__ and record["task"] == cfg.task
    assert record["classes"] == data.classes and record["num_classes"] == len(data.classes)
    assert record["mean"] == data.mean.tolist() and record["std"] == data.std.tolist()
    assert record["model"] == {"name": cfg.model.name, "kwargs": cfg.model.kwargs}
    return record


def _weights(path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        return set(fh.keys())


def test_zoo_model_with_ema_exports_through_the_cli_and_predicts_image_files(tmp_path, capsys):
    s = train(synthetic_config(tmp_path, train={"epochs": 1, "ema_decay": 0.9}, data={"synthetic_size": 128}))
    ckpt = f"{s.run}/last.pt"
    record = check_export_reproduces_eval(ckpt, tmp_path / "ema.safetensors", ema=True)
    assert record["input_size"] == [16, 16] and record["resize"] == "stretch" and record["source"]["ema"]
    out = tmp_path / "export" / "resnet8.safetensors"
    assert main(["export", "--checkpoint", ckpt, "--out", str(out)]) == 0
    assert "resnet8.json" in capsys.readouterr().out
    assert _weights(out) == set(load_run_checkpoint(ckpt)["model"])  # the network only: no optimiser, no EMA
    # predict on PNG files (lossless: the same uint8 images) gives the loaded model's ranking
    model = load_model(out)
    test = get_task("classification").data_module(resolve_config(s.config), CPU, 0, 1, torch.contiguous_format).test
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    files = [folder / ("nested" if i % 2 else "") / f"img{i}.png" for i in range(6)]
    for f, img in zip(files, test.images[:6], strict=True):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(f)
    (folder / "notes.txt").write_text("not an image")
    with torch.no_grad():
        probs = model(test.images[:6]).softmax(1)
    table = tmp_path / "pred.csv"
    assert main(["predict", "--model", str(out), str(folder), "--topk", "3", "--batch-size", "4",
                 "--csv", str(table)]) == 0
    assert capsys.readouterr().out == f"predictions written to {table}\n"
    with table.open() as fh:
        rows = {r["image"]: r for r in csv.DictReader(fh)}
    assert sorted(rows) == sorted(map(str, files))
    for f, p in zip(files, probs, strict=True):
        top = p.topk(3)
        row = rows[str(f)]
        assert [row[f"class_{i}"] for i in (1, 2, 3)] == [record["classes"][c] for c in top.indices.tolist()]
        assert [float(row[f"prob_{i}"]) for i in (1, 2, 3)] == pytest.approx(top.values.tolist(), abs=1e-6)
    assert main(["predict", "--model", str(out), str(files[0]), "--topk", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{files[0]}\t{record['classes'][int(probs[0].argmax())]} ") and line.count("\t") == 2


def test_timm_model_exports(tmp_path):
    s = train(synthetic_config(tmp_path, model={"name": "timm:test_resnet"}, train={"epochs": 1},
                               data={"synthetic_size": 64, "batch_size": 16}))
    check_export_reproduces_eval(f"{s.run}/last.pt", tmp_path / "timm.safetensors")


def test_byot_exports_the_backbone_without_its_exits(tmp_path):
    s = train(synthetic_config(tmp_path, method={"name": "byot"}, train={"epochs": 1},
                               data={"synthetic_size": 64, "batch_size": 16}))
    ckpt = f"{s.run}/last.pt"
    check_export_reproduces_eval(ckpt, tmp_path / "byot.safetensors")
    plain = load_run_model(ckpt)
    assert _weights(tmp_path / "byot.safetensors") == set(plain.state_dict())
    assert load_run_checkpoint(ckpt)["extra"]  # the exits exist in the run, and stay there


@pytest.mark.slow
def test_segmentation_model_exports(tmp_path):
    cfg = {"task": "segmentation", "out": str(tmp_path / "runs"),
           "data": {"name": "camvid", "root": str(CAMVID), "batch_size": 4, "eval_batch_size": 16, "train_subset": 4},
           "segmentation": {"size": [36, 48], "crop": [32, 32], "min_pixels": 16, "test_split": "val"},
           "model": {"name": "lraspp_mobilenet_v3_large"}, "optim": {"lr": 0.01}, "sched": {"name": "constant"},
           "train": {"epochs": 1, "device": "cpu", "progress": False, "tensorboard": False}}
    s = train(cfg, log=lambda _: None)
    record = check_export_reproduces_eval(f"{s.run}/last.pt", tmp_path / "seg.safetensors")
    assert record["input_size"] == [36, 48] and record["task_options"]["size"] == [36, 48]


@pytest.mark.slow
def test_detection_model_exports(tmp_path, capsys):
    cfg = {"task": "detection", "out": str(tmp_path / "runs"),
           "data": {"name": "pennfudan", "root": str(PENNFUDAN), "batch_size": 2, "eval_batch_size": 4,
                    "train_subset": 4}, "detection": {"size": 96, "test_count": 6},
           "model": {"name": "fasterrcnn_mobilenet_v3_large_fpn", "kwargs": {"box_batch_size_per_image": 32}},
           "optim": {"lr": 0.01}, "train": {"epochs": 1, "device": "cpu", "progress": False, "tensorboard": False}}
    s = train(cfg, log=lambda _: None)
    out = tmp_path / "det.safetensors"
    record = check_export_reproduces_eval(f"{s.run}/last.pt", out)
    assert record["input_size"] == [96, 96]
    image = tmp_path / "street.png"
    Image.new("RGB", (120, 80)).save(image)
    assert main(["predict", "--model", str(out), str(image)]) == 2
    assert "predict ranks the classes of a classification model; this one is a detection model" in \
        capsys.readouterr().err


def test_load_model_names_what_is_missing(tmp_path):
    with pytest.raises(CheckpointError, match=r"model.safetensors not found"):
        load_model(tmp_path / "model.safetensors")
    assert main(["export", "--checkpoint", str(tmp_path / "last.pt"), "--out", str(tmp_path / "m.json")]) == 2


def test_the_documented_example_runs(tmp_path):
    doc = REPO / "docs" / "export.md"
    (tmp_path / "example.py").write_text(doc_blocks(doc, "python")[0])
    env = cli_shim(tmp_path / "bin")
    out = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'] [8, 8]" in out.stdout
    export, show, write = doc_blocks(doc, "bash")[-1].strip().splitlines()
    for command in (export, write):
        assert subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env).returncode == 0
    shown = subprocess.run(["bash", "-c", show], cwd=tmp_path, env=env, capture_output=True, text=True)
    lines = shown.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [f"my_images/{i}.png" for i in range(8)]
    with (tmp_path / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    printed = [line.split("\t")[1].split(" ") for line in lines]  # the top class and its probability, 4 decimals
    assert [r["image"] for r in rows] == [line.split("\t")[0] for line in lines]
    assert [r["class_1"] for r in rows] == [c for c, _ in printed]
    assert [float(r["prob_1"]) for r in rows] == pytest.approx([float(p) for _, p in printed], abs=5e-5)
    assert json.loads((tmp_path / "export" / "model.json").read_text())["source"]["epoch"] == 2
