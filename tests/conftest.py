"""Shared fixtures: the real datasets beside the repository (see :func:`tests.helpers.shared_dataset`) and the
decode cache they share."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import shared_dataset


@pytest.fixture(scope="session")
def cifar10_cache(tmp_path_factory) -> Path:
    """One decode cache for every test that reads the real CIFAR-10 (the first decode takes ~15 s)."""
    return tmp_path_factory.mktemp("cifar10_cache")


@pytest.fixture
def cifar10_root() -> Path:
    """The real CIFAR-10 as an ImageFolder tree."""
    return shared_dataset("cifar10", "train")


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """The real CamVid (segmentation)."""
    return shared_dataset("camvid", "train")


@pytest.fixture(scope="session")
def pennfudan_root() -> Path:
    """The real Penn-Fudan pedestrians (detection)."""
    return shared_dataset("pennfudan", "PNGImages")
