"""Helpers shared by the test modules: the repository's paths, the real datasets beside it, a tiny run config, and
a model of fixed logits for losses computed by hand.

The real datasets live in ``../shared/datasets`` (or ``$SELFDISTILL_SHARED_DATASETS``); a test that needs a missing
one is skipped, naming the folder, unless ``SELFDISTILL_REQUIRE_SHARED=1`` makes that a failure (as CI does)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import torch

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
