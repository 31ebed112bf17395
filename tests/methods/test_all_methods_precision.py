"""Every method trains for one epoch under bf16 autocast with channels-last on CPU (no dtype or layout errors)."""

import math

import pytest

from selfdistill import train
from selfdistill.methods import METHODS, list_methods
from selfdistill.methods.teacher import TeacherMethod
from tests.helpers import synthetic_config


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("t")
    train(synthetic_config(tmp, name="t", data={"synthetic_size": 64}, train={"epochs": 1}), log=lambda m: None)
    return str(tmp / "runs" / "t" / "last.pt")


@pytest.mark.parametrize("name", list_methods())
def test_bf16_channels_last_epoch(tmp_path, teacher, name):
    method = {"name": name}
    if name == "ban":  # runs its own generations, each the teacher of the next
        method["generations"] = 1
    elif issubclass(METHODS.get(name), TeacherMethod):
        method["teacher"] = teacher
    if name == "dino":
        method.update(out_dim=64, hidden_dim=64, bottleneck_dim=16, global_size=16, local_size=8, n_local=2)
    cfg = synthetic_config(tmp_path, method=method, data={"synthetic_size": 64},
                           model={"name": "resnet8", "channels_last": True}, train={"epochs": 1, "amp": "bf16"})
    s = train(cfg, log=lambda m: None)
    assert math.isfinite(s.last["test_nll"])
