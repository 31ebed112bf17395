"""Born-again networks: generation runner, resume across generations, ensembles, loss forms."""

import json
import math

import pytest
import torch

from selfdistill import train
from selfdistill.bench.report import load_runs, write_report
from selfdistill.losses import kd_loss, soft_cross_entropy
from selfdistill.methods.ban import cwtm_weights, dkpp_targets
from tests.helpers import Fixed, id_batch, make_method, synthetic_config


class Interrupt(Exception):
    pass


def _cfg(tmp_path, **method):
    return synthetic_config(tmp_path, name="ban", method={"name": "ban", "generations": 2, **method},
                            data={"synthetic_size": 256})


def test_two_generations_interrupted_and_resumed(tmp_path):
    def stop_in_gen2(msg):
        if msg.startswith("epoch 2/2") and (tmp_path / "runs" / "ban" / "gen2" / "last.pt").is_file():
            raise Interrupt

    with pytest.raises(Interrupt):
        train(_cfg(tmp_path), log=stop_in_gen2)
    top = tmp_path / "runs" / "ban"
    done = {k: (top / f"gen{k}" / "summary.json").stat().st_mtime for k in (0, 1)}
    assert not (top / "gen2" / "summary.json").exists()
    # the unfinished run is no run of the report's, and its finished generations are not runs either
    assert load_runs(tmp_path / "runs") == []
    messages = []
    summary = train(_cfg(tmp_path), resume=True, log=messages.append)
    assert any("resuming" in m and "gen2" in m and "epoch 2" in m for m in messages)
    assert {k: (top / f"gen{k}" / "summary.json").stat().st_mtime for k in (0, 1)} == done  # not retrained
    assert [g["generation"] for g in summary.generations] == [0, 1, 2]
    assert json.loads((top / "summary.json").read_text())["ensemble"] == summary.ensemble
    # generation k has seed + k and the previous generation as its teacher (measured at its start)
    gen2 = json.loads((top / "gen2" / "summary.json").read_text())
    assert gen2["seed"] == 2 and gen2["config"]["method"]["teacher"].endswith("gen1/last.pt")
    assert "teacher (generation 1)" in gen2["teachers"]
    # a one-generation ensemble equals that generation
    assert summary.ensemble[0]["generations"] == [1]
    assert summary.ensemble[0]["test_top1"] == pytest.approx(summary.generations[1]["last"]["test_top1"])
    assert summary.ensemble[1]["generations"] == [1, 2]
    # the uninterrupted run gives the same result
    clean = train(_cfg(tmp_path / "clean"))
    assert clean.ensemble == summary.ensemble
    # the report sees one run, not its generations
    runs = load_runs(tmp_path / "runs")
    assert len(runs) == 1 and runs[0].label == "ban(generations=2)"
    assert runs[0].checkpoint == top / "gen2" / "last.pt"
    text = write_report(tmp_path / "runs", tmp_path / "report").read_text()
    assert "Generations of `ban(generations=2)`" in text and "| 2 |" in text and "1, 2 |" in text


def test_new_run_refuses_an_existing_one(tmp_path):
    train(_cfg(tmp_path, generations=1), overrides=["train.epochs=1"])
    with pytest.raises(FileExistsError, match="--resume"):
        train(_cfg(tmp_path, generations=1), overrides=["train.epochs=1"])


@pytest.mark.parametrize("loss,expected", [
    # the teacher's σ = [1/5, 3/5, 1/5] (both rows' max 3/5 and ⅓); the student's log σ = ln [3/5, 1/5, 1/5] and ln ⅓
    ("ban", {"soft_ce": (math.log(5 / 3) / 5 + 4 * math.log(5) / 5 + math.log(3)) / 2}),
    ("ban+label", {"soft_ce": (math.log(5 / 3) / 5 + 4 * math.log(5) / 5 + math.log(3)) / 2,
                   "ce": (math.log(5 / 3) + math.log(3)) / 2}),
    # KL(teacher ‖ student) = 2/5·ln 3 on row 0 and 0 on row 1
    ("kd", {"ce": 0.1 * (math.log(5 / 3) + math.log(3)) / 2, "kd": 0.9 * (2 * math.log(3) / 5) / 2}),
    # confidence weights [3/5, ⅓] / (3/5 + ⅓) = [9/14, 5/14]
    ("cwtm", {"cwtm": 9 / 14 * math.log(5 / 3) + 5 / 14 * math.log(3)}),
])
def test_ban_losses_by_hand(loss, expected):
    m = make_method("ban", teacher=torch.tensor([[0.0, math.log(3.0), 0.0], [0.0, 0.0, 0.0]]), loss=loss, T=1.0)
    student = Fixed(torch.tensor([[math.log(3.0), 0.0, 0.0], [0.0, 0.0, 0.0]]))
    out = m.training_step(student, id_batch([0, 1], [0, 2]), 1)
    assert {k: v.item() for k, v in out.losses.items()} == pytest.approx(expected, rel=1e-5)


def test_generation_zero_is_plain_ce():
    m = make_method("ban", teacher=torch.zeros(1, 3), generation=0)
    out = m.training_step(Fixed(torch.tensor([[math.log(3.0), 0.0, 0.0]])), id_batch([0], [0]), 1)
    assert {k: v.item() for k, v in out.losses.items()} == pytest.approx({"ce": math.log(5 / 3)}, rel=1e-6)


def test_ban_loss_has_kd_gradients():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(6, 5, generator=g)
    s1 = torch.randn(6, 5, generator=g).requires_grad_(True)
    s2 = s1.detach().clone().requires_grad_(True)
    soft_cross_entropy(s1, t.softmax(1)).backward()
    kd_loss(t, s2, T=1.0).backward()
    torch.testing.assert_close(s1.grad, s2.grad)


def test_dkpp_keeps_the_argmax_and_permutes_the_rest():
    p = torch.randn(32, 6, generator=torch.Generator().manual_seed(1)).softmax(1)
    q = dkpp_targets(p, torch.Generator().manual_seed(2))
    torch.testing.assert_close(q.sort(1).values, p.sort(1).values)
    assert torch.equal(q.argmax(1), p.argmax(1))
    assert not torch.equal(q, p)


def test_cwtm_weights_sum_to_one_and_follow_confidence():
    p = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4]])
    w = cwtm_weights(p)
    assert float(w.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(w, torch.tensor([0.9, 0.5, 0.6]) / 2.0)
