"""The run summary is written and read by one class."""

import json
import math
from pathlib import Path

from selfdistill.engine import RunSummary


def test_summary_round_trip_and_accessors(tmp_path):
    s = RunSummary(run="runs/x", metrics=["top1", "nll"], seed=3, last={"test_top1": 70.0, "test_nll": 0.9},
                   seconds_per_epoch=2.0, images_per_s=500.0,
                   best_val={"epoch": 4, "val_top1": 71.0, "val_nll": 0.8, "test_top1": 69.0, "test_nll": 1.0})
    s.save(tmp_path / "summary.json")
    back = RunSummary.load(tmp_path / "summary.json")
    assert back == s and back.primary == "top1" and back.test("nll") == 0.9
    assert back.at_best_val("test", "top1") == 69.0 and back.at_best_val("val", "nll") == 0.8
    assert math.isnan(back.test("ece")) and math.isnan(RunSummary().at_best_val("test", "top1"))
    assert back.checkpoint() == Path("runs/x/last.pt")
    staged = RunSummary(run="top", generations=[{"run": "top/gen0"}, {"run": "top/gen1"}])
    assert staged.checkpoint() == Path("top/gen1/last.pt")  # the exported model is the last stage's
    # a record moved (or committed from another checkout) points at where it is now; foreign stage paths stay
    staged.generations.append({"run": "/elsewhere/gen2"})
    staged.relocate(tmp_path / "moved")
    assert staged.run == str(tmp_path / "moved")
    moved = tmp_path / "moved"
    assert [g["run"] for g in staged.generations] == [str(moved / "gen0"), str(moved / "gen1"), "/elsewhere/gen2"]


def test_older_summaries_read_with_their_metrics_from_the_last_epoch(tmp_path):
    # a summary written before the metrics were stored, with a key this version does not know
    (tmp_path / "summary.json").write_text(json.dumps({"seed": 1, "last": {"test_miou": 30.0, "test_pixel_acc": 80.0},
                                                       "from_another_version": True}))
    old = RunSummary.load(tmp_path / "summary.json")
    assert old.metrics == ["miou", "pixel_acc"] and old.primary == "miou" and old.seed == 1


def test_cpu_name_reads_the_first_cpu_and_its_speed_deciding_extensions():
    import platform

    from selfdistill.engine.summary import cpu_name

    block = "processor\t: {i}\nmodel name\t: Example CPU 9000\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 avx512_vnni\n"
    info = "\n".join(block.format(i=i) for i in range(2))
    assert cpu_name(info) == "Example CPU 9000 [avx2 avx512f amx_bf16]"
    assert cpu_name("processor\t: 0\nmodel name\t: Plain CPU\nflags\t: fpu sse2\n") == "Plain CPU []"
    assert cpu_name("") == (platform.processor() or platform.machine())  # no cpuinfo: the platform's string


def test_run_environment_records_the_device_and_threads():
    import torch

    from selfdistill.engine.summary import cpu_name, run_environment

    env = run_environment(torch.device("cpu"), 1)
    assert env["device_name"] == cpu_name() and env["threads"] == torch.get_num_threads() and env["world_size"] == 1


def test_git_sha_prefers_the_exported_commit(monkeypatch):
    from selfdistill.engine.summary import git_sha

    monkeypatch.setenv("SELFDISTILL_GIT_SHA", "0123abcd")  # a `git archive` copy has no .git to ask
    assert git_sha() == "0123abcd"
    monkeypatch.delenv("SELFDISTILL_GIT_SHA")
    sha = git_sha()  # this checkout (or None when the tests run from a copy without .git)
    assert sha is None or (len(sha) == 40 and set(sha) <= set("0123456789abcdef"))
