"""Helpers shared by the test modules: the repository's paths, the real datasets beside it, a tiny run config, and
a model of fixed logits for losses computed by hand.

The real datasets live in ``../shared/datasets`` (or ``$SELFDISTILL_SHARED_DATASETS``); a test that needs a missing
one is skipped, naming the folder, unless ``SELFDISTILL_REQUIRE_SHARED=1`` makes that a failure (as CI does)."""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from selfdistill import evaluate, train
from selfdistill.batch import Batch
from selfdistill.bench.report import write_report
from selfdistill.engine import RunSummary
from selfdistill.engine.checkpoint import load_checkpoint
from selfdistill.methods import Method, MethodContext, build_method
from selfdistill.methods.teacher import Teacher
from selfdistill.run import resolve_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("SELFDISTILL_SHARED_DATASETS") or REPO.parent / "shared" / "datasets")


def shared_dataset(name: str, inside: str) -> Path:
    """The real dataset ``name`` under :data:`SHARED_DATASETS`, recognised by the path ``inside`` it; when it is
    missing the calling test is skipped (failed under ``SELFDISTILL_REQUIRE_SHARED=1``) with the folder named."""
    root = SHARED_DATASETS / name
    if not (root / inside).exists():
        message = (f"the real {name} dataset is missing: expected {root / inside} (set SELFDISTILL_SHARED_DATASETS "
                   "to the folder that holds the shared datasets)")
        if os.environ.get("SELFDISTILL_REQUIRE_SHARED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return root


def doc_blocks(doc: Path, lang: str) -> list[str]:
    """The fenced code blocks of ``lang`` in a markdown file, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", doc.read_text(), flags=re.MULTILINE | re.DOTALL)


def cli_shim(folder: Path) -> dict[str, str]:
    """An environment whose ``selfdistill`` command runs this checkout as an installed console script would (the
    script's folder, not the working directory, first on ``sys.path``), with this checkout's ``src`` on
    ``PYTHONPATH``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "selfdistill"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom selfdistill.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}


def synthetic_config(tmp_path: Path, **sections) -> dict:
    """A tiny, fast run config on the synthetic dataset."""
    cfg = {
        "seed": 0,
        "out": str(tmp_path / "runs"),
        "data": {"name": "synthetic", "synthetic_size": 512, "batch_size": 32, "image_size": 16,
                 "augment": {"crop_padding": 2}},
        "model": {"name": "resnet8"},
        "method": {"name": "ce"},
        "optim": {"lr": 0.1},
        "sched": {"name": "cosine"},
        "train": {"epochs": 2, "device": "cpu", "tensorboard": False, "progress": False},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


class Fixed(torch.nn.Module):
    """Returns preset logits per input row (keyed by the first pixel) so the loss can be computed by hand."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].long()]


def id_images(ids: list[int]) -> torch.Tensor:
    """1-channel 2×2 images whose first pixel is the row id (inputs of :class:`Fixed`)."""
    return torch.tensor(ids, dtype=torch.float32)[:, None, None, None].expand(-1, 1, 2, 2)


def id_batch(ids: list[int], y: list[int], views: int = 1) -> Batch:
    """A batch of :func:`id_images` (dataset indices ``ids``, labels ``y``) with ``views`` identical views."""
    x = id_images(ids)
    return Batch(x, torch.tensor(y), torch.tensor(ids), [x] * views)


def make_method(name: str, teacher: torch.Tensor | None = None, epochs: int = 4, num_train: int = 8,
                **opts: object) -> Method:
    """The method ``name`` with ``opts`` resolved as a config's, for 3 classes on the CPU (``epochs`` of one step,
    ``num_train`` samples). With ``teacher`` (a table of logits) a :class:`Fixed` teacher stands in for the
    checkpoint a teacher method would load; otherwise the method is set up without a model."""
    spec = resolve_config({"method": {"name": name, **opts}}).method
    method = build_method(spec, MethodContext(3, num_train, epochs, 1, torch.device("cpu")))
    if teacher is not None:
        method.teacher = Teacher(Fixed(teacher), torch.ones(1), torch.zeros(1))
    else:
        method.setup(None)
    return method


def train_with_teacher(tmp_path: Path, teacher: Path, method: dict) -> RunSummary:
    """Train a tiny run of a teacher method taught by the checkpoint ``teacher`` and check that the run measured the
    teacher at its start as :func:`~selfdistill.evaluate` does and that the report lists it."""
    summary = train(synthetic_config(tmp_path, method={**method, "teacher": str(teacher)}))
    assert summary.epochs == 2 and math.isfinite(summary.last["test_top1"])
    measured = summary.teachers["teacher"]["test"]["top1"]
    assert measured == pytest.approx(evaluate(teacher)["top1"], abs=1e-9)
    report = write_report(tmp_path / "runs", tmp_path / "report").read_text()
    assert "Teachers, measured at the start" in report and f"| {measured:.2f} |" in report
    return summary


def train_one_epoch(tmp_path: Path, method: dict) -> RunSummary:
    """One epoch of a tiny synthetic run of ``method``, checked to end with a finite test NLL."""
    summary = train(synthetic_config(tmp_path, method=method, train={"epochs": 1}))
    assert summary.epochs == 1 and math.isfinite(summary.last["test_nll"])
    return summary


def assert_state_survives_kill_and_resume(tmp_path: Path, method: str, key: str) -> None:
    """Interrupt a run of ``method`` after epoch 1, resume it, and check that its method state ``key`` (a memory or
    a cache) ends exactly as in an uninterrupted run."""
    class Stop(Exception):
        pass

    def stop(msg: str) -> None:
        if msg.startswith("epoch 2/2"):
            raise Stop

    cfg = synthetic_config(tmp_path / "a", name="r", method={"name": method}, data={"synthetic_size": 128})
    with pytest.raises(Stop):
        train(cfg, log=stop)
    train(cfg, resume=True, log=lambda m: None)
    ref_cfg = synthetic_config(tmp_path / "b", name="r", method={"name": method}, data={"synthetic_size": 128})
    train(ref_cfg, log=lambda m: None)
    a = load_checkpoint(tmp_path / "a" / "runs" / "r" / "last.pt")["method"][key]
    b = load_checkpoint(tmp_path / "b" / "runs" / "r" / "last.pt")["method"][key]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def small_bn_net() -> torch.nn.Module:
    """A seeded conv → BatchNorm → linear network for 3-channel images (the linear layer sized on the first call)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.LazyLinear(3))


def image_folder(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 3,
                 splits: tuple[str, ...] = ("train", "test"), size: tuple[int, int] = (6, 5),
                 mode: str = "RGB") -> Path:
    """An ImageFolder tree ``root/<split>/<class>/<i>.png`` of one-colour images (PIL ``mode``, ``size`` = (w, h))."""
    colours = {"RGB": (10, 200, 30), "L": 128, "P": 3}
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                im = Image.new(mode, size, colours[mode])
                im.save(d / f"{i}.png")
    return root
