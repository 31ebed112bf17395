"""Fixtures of the method tests: a teacher checkpoint trained once for every teacher method."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfdistill import train
from tests.helpers import synthetic_config


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A small teacher trained by the library itself (a ResNet-14, 2 epochs on synthetic data)."""
    tmp = tmp_path_factory.mktemp("teacher")
    train(synthetic_config(tmp, name="teacher", model={"name": "resnet14"}))
    return tmp / "runs" / "teacher" / "last.pt"
