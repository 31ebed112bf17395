"""The grid runner: committed grids, expansion and validation, method labels, skipping, resuming and locking runs,
stop signals and kills; and, end to end on a tiny synthetic grid, the report and comparison it feeds."""

import csv
import subprocess
import sys

import pytest
import yaml

from selfdistill.bench import load_grid, run_grid, write_report
from selfdistill.bench.report import (
    README_END,
    README_START,
    update_readme,
)
from selfdistill.bench.runner import method_label
from selfdistill.cli import main
from selfdistill.config import ConfigError
from selfdistill.run import resolve_config
from tests.helpers import REPO

GRID = {
    "config": {"data": {"name": "synthetic", "synthetic_size": 192, "batch_size": 32, "image_size": 16,
                        "val_fraction": 0.25, "augment": {"crop_padding": 2}},
               "model": {"name": "resnet8"}, "optim": {"lr": 0.1}, "sched": {"name": "cosine"},
               "train": {"epochs": 2, "device": "cpu", "tensorboard": False}},
    "out": "runs",
    "grid": {"method": [{"name": "ce"}, {"name": "ips", "p_swap": 0.5}], "seed": [0, 1]},
}


@pytest.mark.parametrize("path", sorted(REPO.glob("benchmarks/*/*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_committed_benchmark_grids_are_valid(path, tmp_path):
    """Every benchmark grid in the repository expands into validated run configs (a typo fails here, not in a
    multi-hour grid)."""
    grid = load_grid(path, out=tmp_path)
    assert grid.runs and all(r.status == "pending" for r in grid.runs)
    assert len({r.name for r in grid.runs}) == len(grid.runs)

def test_grid_expansion_names_and_validation(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(GRID))
    grid = load_grid(path)
    assert [r.name for r in grid.runs] == ["ce_resnet8_s0", "ce_resnet8_s1", "ips-p_swap=0.5_resnet8_s0",
                                           "ips-p_swap=0.5_resnet8_s1"]
    assert all(r.status == "pending" for r in grid.runs) and grid.out == tmp_path / "runs"
    assert grid.runs[3].config["method"]["p_swap"] == 0.5 and grid.runs[3].config["seed"] == 1
    bad = dict(GRID, grid={"method": [{"name": "ips", "p_swp": 0.5}]})
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="Did you mean 'p_swap'"):
        load_grid(path)
    path.write_text(yaml.safe_dump(dict(GRID, extra=1)))
    with pytest.raises(ConfigError, match="unknown grid keys"):
        load_grid(path)
    assert method_label({"name": "ips", "p_swap": 1.0, "T": 2.0}) == "ips(T=2.0)"
    # a list of grids runs the union of their products, in order
    path.write_text(yaml.safe_dump(dict(GRID, grid=[{"method": [{"name": "ce"}], "seed": [0, 1]},
                                                    {"method": [{"name": "ips"}], "seed": [0]}])))
    assert [r.name for r in load_grid(path).runs] == ["ce_resnet8_s0", "ce_resnet8_s1", "ips_resnet8_s0"]
    path.write_text(yaml.safe_dump(dict(GRID, grid=[{"seed": [0]}, {"seed": [0]}])))
    with pytest.raises(ConfigError, match="same run name"):
        load_grid(path)


def test_bench_skips_done_resumes_partial_and_reports(tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(GRID))
    grid = load_grid(path)
    assert run_grid(load_grid(path), jobs=2, log=lambda m: None) == []
    assert all(r.status == "done" for r in load_grid(path).runs)
    # a second bench runs nothing; a run with only a checkpoint is resumed, not restarted
    (grid.runs[0].run_dir / "summary.json").unlink()
    assert next(r.status for r in load_grid(path).runs) == "partial"
    assert main(["bench", "--config", str(path), "--dry-run"]) == 0
    assert "partial" in capsys.readouterr().out
    logs = []
    assert run_grid(load_grid(path), log=logs.append) == []
    assert "1 to run" in logs[0] and "(partial)" in logs[1]
    assert "resuming" in (tmp_path / "runs" / "_logs" / "ce_resnet8_s0.log").read_text()

    report = write_report(tmp_path / "runs")
    text = report.read_text()
    # a gain ladder names labels the runs have, at least two of them
    with pytest.raises(ConfigError, match=r"'ips\(p_swap=0.6\)': no run has this label. Did you mean 'ips\(p_swap=0.5"):
        write_report(tmp_path / "runs", tmp_path / "ladder", ladder=("ce", "ips(p_swap=0.6)"))
    with pytest.raises(ConfigError, match="at least two rungs"):
        write_report(tmp_path / "runs", tmp_path / "ladder", ladder=("ce",))
    laddered = write_report(tmp_path / "runs", tmp_path / "ladder", ladder=("ce", "ips(p_swap=0.5)")).read_text()
    assert "--ladder ce --ladder 'ips(p_swap=0.5)'" in laddered
    assert "| `ips(p_swap=0.5)` | " in laddered and "all steps" not in laddered  # one step is the whole ladder
    assert "| `ce` | 2 |" in text and "| `ips(p_swap=0.5)` | 2 |" in text and "(n=2)" in text
    assert "![training diagnostics](diagnostics_synthetic_resnet8.png)" in text
    for name in ("curves_synthetic_resnet8.png", "reliability_synthetic_resnet8.png",
                 "diagnostics_synthetic_resnet8.png", "runs.csv"):
        assert (report.parent / name).stat().st_size > 0
    with (report.parent / "runs.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {r["method"] for r in rows} == {"ce", "ips(p_swap=0.5)"}
    # the table's CE mean is the mean of the per-run values in the CSV
    ce = [float(r["test_top1_last"]) for r in rows if r["method"] == "ce"]
    assert f"{sum(ce) / 2:.2f} ± " in text
    # the IPS loss-terms script: one table per IPS run (CE runs log no KD term), values from metrics.csv
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "cifar10_cpu_resnet20" / "loss_terms.py"),
                    str(tmp_path / "runs"), str(tmp_path / "terms")], check=True, capture_output=True)
    terms = (tmp_path / "terms" / "loss_terms.md").read_text()
    assert terms.count("## `ips(p_swap=0.5)`") == 2 and "`ce`" not in terms
    with (tmp_path / "runs" / "ips-p_swap=0.5_resnet8_s0" / "metrics.csv").open() as fh:
        first = next(csv.DictReader(fh))
    assert (f"| 1 | {float(first['train_loss_ce']):.3f} | {float(first['train_loss_kd']):.3f} | "
            f"{float(first['train_kd_raw']):.3f} | {float(first['val_top1']):.3f} |") in terms

    # benchmarks side by side: a run folder and a report's runs.csv give the same paired gains
    from selfdistill.bench.compare import write_comparison

    ce_by_seed = {int(r["seed"]): float(r["test_top1_last"]) for r in rows if r["method"] == "ce"}
    ips_rows = [r for r in rows if r["method"] == "ips(p_swap=0.5)"]
    gains = [float(r["test_top1_last"]) - ce_by_seed[int(r["seed"])] for r in ips_rows]
    mean = sum(gains) / 2
    table = write_comparison({"folder": tmp_path / "runs", "csv": report.parent / "runs.csv"},
                             tmp_path / "cmp").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| `ips(p_swap=0.5)`"))
    assert row.count(f"{mean:+.2f} ± ") == 2 and row.count("(n=2)") == 2
    assert "(absolute, n=2)" in next(line for line in table.splitlines() if line.startswith("| `ce`"))
    other_base = write_comparison({"csv": report.parent / "runs.csv"}, tmp_path / "cmp_vs",
                                  "ips(p_swap=0.5)").read_text()
    assert "--baseline 'ips(p_swap=0.5)' --out" in other_base and "(absolute, n=2)" in other_base
    # a relabelled benchmark's rows move to the new label; the other benchmark keeps the old one
    out = tmp_path / "cmp2"
    assert main(["report", "--compare", f"folder={tmp_path / 'runs'}", f"csv={report.parent / 'runs.csv'}",
                 "--relabel", "csv", "ips(p_swap=0.5)", "ips(old)", "--out", str(out)]) == 0
    lines = (out / "comparison.md").read_text().splitlines()
    assert "--relabel csv 'ips(p_swap=0.5)' 'ips(old)'" in lines[2]
    def cells(label: str) -> list[str]:
        return next(line for line in lines if line.startswith(f"| `{label}`")).strip("| ").split(" | ")[1:]

    assert cells("ips(old)")[0] == "–" and cells("ips(old)")[1].startswith(f"{mean:+.2f} ± ")
    assert cells("ips(p_swap=0.5)")[0].startswith(f"{mean:+.2f} ± ") and cells("ips(p_swap=0.5)")[1] == "–"
    assert main(["report", "--compare", f"csv={report.parent / 'runs.csv'}", "--relabel", "other", "a", "b"]) == 2
    assert "no benchmark named 'other'" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "runs"), "--relabel", "csv", "a", "b"]) == 2
    assert "add --compare" in capsys.readouterr().err
    # a label the benchmark lacks (a typo) and a rename onto a label it keeps are refused, not silently applied
    csv_arg = f"csv={report.parent / 'runs.csv'}"
    assert main(["report", "--compare", csv_arg, "--relabel", "csv", "ips", "x", "--out", str(out)]) == 2
    assert "has no label 'ips' (have: ce, ips(p_swap=0.5))" in capsys.readouterr().err
    assert main(["report", "--compare", csv_arg, "--relabel", "csv", "ips(p_swap=0.5)", "ce", "--out", str(out)]) == 2
    assert "already has a label 'ce'" in capsys.readouterr().err

    # the screening form: validation numbers only, from several run folders
    other = tmp_path / "more"
    (tmp_path / "runs" / "ips-p_swap=0.5_resnet8_s1").rename(other)
    screen = write_report([tmp_path / "runs", other], tmp_path / "screen", split="val").read_text()
    assert "val top-1 (last)" in screen and "val top-1 (best epoch)" in screen and "test top-1" not in screen
    assert "| `ips(p_swap=0.5)` | 2 |" in screen and "reliability" not in screen
    with (other / "metrics.csv").open() as fh:
        last_val = float(list(csv.DictReader(fh))[-1]["val_top1"])
    with (tmp_path / "runs" / "ips-p_swap=0.5_resnet8_s0" / "metrics.csv").open() as fh:
        last_val0 = float(list(csv.DictReader(fh))[-1]["val_top1"])
    assert f"| `ips(p_swap=0.5)` | 2 | {(last_val + last_val0) / 2:.2f} ± " in screen
    assert f"`selfdistill report {tmp_path / 'runs'} {other} --split val`" in screen
    # another baseline: the table pairs against it, and the quoted command line names it
    vs = write_report(tmp_path / "runs", tmp_path / "vs", baseline="ips(p_swap=0.5)").read_text()
    assert f"`selfdistill report {tmp_path / 'runs'} --baseline 'ips(p_swap=0.5)'`" in vs
    assert "Δ top-1 vs ips(p_swap=0.5) (paired)" in vs

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold\n{README_END}\noutro\n")
    update_readme(readme, report, "selfdistill bench --config grid.yaml")
    new = readme.read_text()
    assert "old" not in new and "| `ce` | 2 |" in new and new.startswith("intro") and new.endswith("outro\n")
    assert "selfdistill bench --config grid.yaml" in new and "![" not in new
    # the cost figure's link, relative to the report in it, is made relative to the README
    assert "[Accuracy against cost](report/cost_synthetic_resnet8.png)" in new
    # several reports, each with its heading and command, from a manifest through the CLI
    manifest = tmp_path / "results.yaml"
    manifest.write_text(yaml.safe_dump([{"report": str(report), "command": "cmd one", "heading": "First"},
                                        {"report": str(tmp_path / "screen" / "report.md"), "command": "cmd two",
                                         "heading": "Second"}]))
    assert main(["report", "--readme", str(readme), "--results", str(manifest)]) == 0
    both = readme.read_text()
    assert both.index("### First") < both.index("cmd one") < both.index("### Second") < both.index("cmd two")
    assert "val top-1 (last)" in both and both.endswith("outro\n")


def test_started_runs_trained_with_other_settings_than_the_grid_now_gives_are_refused(tmp_path, capsys):
    """A grid edited after its runs started (its base config or a value) would report finished runs under settings
    they never ran and fail at a partial run's resume: the bench refuses before it trains, names the runs and the
    changed keys, and the dry run marks them ``stale``. More epochs continue a partial run but not a finished one,
    which trained exactly its saved number; a change of what a run only logs or evaluates (``train.eval_train``) is
    the same experiment."""
    from selfdistill.config import save_yaml

    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(GRID))
    runs = load_grid(path).runs
    for run in runs:  # started runs, as the grid gives them today: three finished, one with a checkpoint only
        run.run_dir.mkdir(parents=True)
        save_yaml(run.config, run.run_dir / "config.yaml")
        (run.run_dir / ("last.pt" if run is runs[3] else "summary.json")).write_text("{}")

    def edited(**train):
        return {**GRID, "config": {**GRID["config"], "train": {**GRID["config"]["train"], **train}}}

    logs = []
    path.write_text(yaml.safe_dump({**GRID, "config": {**GRID["config"], "optim": {"lr": 0.2}}}))
    with pytest.raises(ConfigError, match=r"4 started run\(s\) .*ce_resnet8_s0 \(optim\.lr: 0\.1 -> 0\.2\).*Delete"):
        run_grid(load_grid(path), log=logs.append)
    assert not logs  # refused before anything ran
    assert main(["bench", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and all(line.startswith("stale") and "optim.lr: 0.1 -> 0.2" in line for line in out)
    assert main(["bench", "--config", str(path)]) == 2 and "started run(s)" in capsys.readouterr().err
    path.write_text(yaml.safe_dump(edited(epochs=3)))
    assert main(["bench", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["stale", "stale", "stale", "partial"]
    assert "train.epochs: 2 -> 3" in out[0]
    path.write_text(yaml.safe_dump(edited(eval_train=True)))
    runs[3].run_dir.joinpath("summary.json").write_text("{}")  # all four finished: nothing to run, nothing stale
    logs = []
    assert run_grid(load_grid(path), log=logs.append) == [] and "4 already done, 0 to run" in logs[0]


def test_method_label_names_changed_options_but_not_the_teacher_source():
    assert method_label({"name": "ips", "teacher_rule": "always_a", "T": 4.0}) == "ips(teacher_rule=always_a)"
    assert method_label({"name": "mean_teacher", "teacher_bn": "copy"}) == "mean_teacher(teacher_bn=copy)"
    # a preset's own values are not differences: only what the run changes on top of it
    spec = resolve_config({"method": {"name": "ips", "preset": "spec", "T": 1.0}}).method
    assert method_label(spec) == "ips(preset=spec, T=1.0)"
    assert method_label({"name": "kd", "teacher": "runs/t/last.pt", "teacher_model": "resnet20",
                         "teacher_mode": "train"}) == "kd(teacher_mode=train)"


def test_method_label_is_the_shortest_of_the_defaults_and_the_presets():
    def label(**opts):
        return method_label(resolve_config({"method": {"name": "ips", **opts}}).method)

    # a preset plus overrides that add up to the defaults is the defaults
    assert label(preset="spec", teacher_rule="symmetric", lambda_kd=0.1) == "ips"
    assert label(preset="spec", teacher_rule="symmetric", lambda_kd=0.1, ce_inputs="swapped+original") == (
        "ips(preset=robust)")
    # a run that names no preset but has a preset's values is labelled by it (a run made under earlier defaults)
    assert label(teacher_rule="confidence", lambda_kd=1.0) == "ips(preset=spec)"
    assert label(ce_inputs="swapped+original") == "ips(preset=robust)"
    # a tie keeps the preset the run names, else the defaults
    assert label(preset="spec", lambda_kd=0.0, ce_inputs="swapped+original") == (
        "ips(preset=spec, lambda_kd=0.0, ce_inputs=swapped+original)")
    assert label(teacher_rule="confidence", T=2.0) == "ips(teacher_rule=confidence, T=2.0)"


def test_a_run_held_by_another_process_is_skipped(tmp_path):
    import os
    import subprocess
    import sys

    from selfdistill.bench.runner import acquire_lock

    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(dict(GRID, grid={"method": [{"name": "ce"}], "seed": [0]})))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        logs_dir = tmp_path / "runs" / "_logs"
        logs_dir.mkdir(parents=True)
        (logs_dir / "ce_resnet8_s0.lock").write_text(str(holder.pid))
        logs = []
        assert run_grid(load_grid(path), log=logs.append) == []
        assert any("another bench process" in m for m in logs)
        assert load_grid(path).runs[0].status == "pending"
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its stale lock is taken over
    assert acquire_lock(logs_dir / "ce_resnet8_s0.lock")
    assert (logs_dir / "ce_resnet8_s0.lock").read_text() == str(os.getpid())


def test_killing_the_bench_stops_its_training_run(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    grid = dict(GRID, grid={"method": [{"name": "ce"}], "seed": [0]})
    grid["config"] = {**GRID["config"], "train": {**GRID["config"]["train"], "epochs": 500}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    bench = subprocess.Popen([sys.executable, "-m", "selfdistill", "bench", "--config", str(path)])
    log = tmp_path / "runs" / "_logs" / "ce_resnet8_s0.log"
    deadline = time.monotonic() + 120
    while not (log.is_file() and "epoch 1/" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.5)
    children = subprocess.run(["pgrep", "-P", str(bench.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 1
    os.kill(bench.pid, signal.SIGKILL)  # no chance to clean up: the child must still stop
    bench.wait()
    child = int(children[0])
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the training run outlived its bench process")


def test_a_stop_signal_to_the_bench_stops_its_run_resumably_and_the_next_bench_finishes_it(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from selfdistill.engine.checkpoint import load_checkpoint
    from selfdistill.run import EXIT_STOPPED

    grid = dict(GRID, grid={"method": [{"name": "ce"}], "seed": [0]})
    grid["config"] = {**GRID["config"], "train": {**GRID["config"]["train"], "epochs": 500}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    bench = subprocess.Popen([sys.executable, "-m", "selfdistill", "bench", "--config", str(path)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "runs" / "_logs" / "ce_resnet8_s0.log"
    deadline = time.monotonic() + 120
    while not (log.is_file() and "epoch 1/" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "epoch 1/" in log.read_text()  # the run is training: its handlers are in place
    bench.send_signal(signal.SIGTERM)  # to the bench alone
    out, _ = bench.communicate(timeout=120)
    assert bench.returncode == EXIT_STOPPED, out
    assert "stopped ce_resnet8_s0: resumable" in out and "1 runs unfinished; run the same bench again" in out
    assert f"stopped by signal {int(signal.SIGTERM)} (SIGTERM) at epoch" in log.read_text()
    ck = load_checkpoint(tmp_path / "runs" / "ce_resnet8_s0" / "last.pt")
    assert ck["step_in_epoch"] > 0 and load_grid(path).runs[0].status == "partial"
    # the next bench (its grid ending with the stopped epoch: a resumed run may change its epochs) finishes it
    grid["config"]["train"]["epochs"] = ck["epoch"]
    path.write_text(yaml.safe_dump(grid))
    assert run_grid(load_grid(path), log=lambda m: None) == []
    assert load_grid(path).runs[0].status == "done"
    assert f"resuming {tmp_path / 'runs' / 'ce_resnet8_s0'} at epoch {ck['epoch']}, step {ck['step_in_epoch']}" in (
        log.read_text())
