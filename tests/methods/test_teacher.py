"""Frozen teachers: input renormalisation and the errors a user meets when loading one."""

import pytest
import torch

from selfdistill import train
from selfdistill.methods.teacher import Teacher, TeacherError
from selfdistill.run import evaluate
from tests.helpers import synthetic_config


def test_teacher_renormalises_inputs():
    class Echo(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)

    s_mean, s_std, t_mean, t_std = torch.tensor([0.5]), torch.tensor([0.25]), torch.tensor([0.2]), torch.tensor([0.1])
    teacher = Teacher(Echo(), s_std / t_std, (s_mean - t_mean) / t_std)
    u = torch.rand(2, 1, 2, 2)  # raw pixels in [0, 1]
    torch.testing.assert_close(teacher((u - s_mean) / s_std), ((u - t_mean) / t_std).flatten(1))


def test_teacher_errors_are_clear(tmp_path, teacher_ckpt):
    cfg = synthetic_config(tmp_path, method={"name": "kd", "teacher": str(teacher_ckpt)}, data={"num_classes": 4})
    with pytest.raises(TeacherError, match="predicts 10 classes, this run's data has 4"):
        train(cfg)
    plain = tmp_path / "weights.pt"
    torch.save(torch.load(teacher_ckpt, weights_only=True)["model"], plain)
    with pytest.raises(TeacherError, match=r"plain state dict: set method\.teacher_model"):
        train(synthetic_config(tmp_path, method={"name": "kd", "teacher": str(plain)}))
    with pytest.raises(TeacherError, match="do not fit a 'resnet8'"):
        train(synthetic_config(tmp_path, method={"name": "kd", "teacher": str(plain), "teacher_model": "resnet8"}))
    with pytest.raises(TeacherError, match="needs a teacher"):
        train(synthetic_config(tmp_path, method={"name": "kd"}))
    # a plain state dict with the right architecture works
    summary = train(synthetic_config(tmp_path, name="plain", train={"epochs": 1},
                                     method={"name": "kd", "teacher": str(plain), "teacher_model": "resnet14"}))
    assert summary.teachers["teacher"]["test"]["top1"] == pytest.approx(evaluate(teacher_ckpt)["top1"])
