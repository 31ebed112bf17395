"""Evaluation: a run's frozen model, and the evaluation pass (no autograd, the model's mode restored)."""


import pytest
import torch

from selfdistill import train
from selfdistill.engine import CheckpointError
from selfdistill.engine.checkpoint import load_checkpoint
from selfdistill.run import load_run_model
from tests.helpers import synthetic_config


def test_frozen_model_reproduces_the_run(tmp_path):
    s = train(synthetic_config(tmp_path, train={"epochs": 1}))
    teacher = load_run_model(f"{s.run}/last.pt")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    weights = load_checkpoint(f"{s.run}/last.pt")["model"]
    assert all(torch.equal(v, weights[k]) for k, v in teacher.state_dict().items())
    with pytest.raises(CheckpointError, match="no EMA"):
        load_run_model(f"{s.run}/last.pt", ema=True)


def test_evaluate_split_runs_without_autograd_and_restores_training_mode():
    """Evaluation builds no graph (no activations kept for a backward pass) and leaves the model's mode as it was."""
    from selfdistill.run.evaluation import evaluate_split
    from selfdistill.tasks import get_task

    seen: list[tuple[bool, bool]] = []

    class Probe(torch.nn.Linear):
        def forward(self, x):
            seen.append((torch.is_grad_enabled(), self.training))
            return super().forward(x)

    class Data:
        def eval_batches(self, split):
            yield torch.randn(4, 3), torch.tensor([0, 1, 2, 0])

    model = Probe(3, 3).train()
    metrics = evaluate_split(model, Data(), None, get_task("classification"), torch.device("cpu")).compute()
    assert seen == [(False, False)]
    assert model.training and metrics["n"] == 4
