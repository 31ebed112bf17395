"""The benchmark report: statistics (the paired t-test by hand), labels of runs, the group, per-class, other-models,
diagnostics and machines tables, timings, registered sections, the cost figure."""

import csv
import json
import math

import pytest

from selfdistill.bench import write_report
from selfdistill.bench.report import (
    Cell,
    Run,
    eval_model_lines,
    group_table,
    load_runs,
    mean_std,
    paired_cells,
    paired_p,
    per_class_lines,
)
from selfdistill.engine import RunSummary


def test_statistics_helpers():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    m, s = mean_std([4.0])
    assert m == 4.0 and s != s  # std undefined for one value


def test_paired_t_test_golden_values():
    """The p of the paired t-test on three seeds, checked by hand: differences +1.5, +0.5, +2.0 have mean 4/3 and
    sample std sqrt(7/12), so t = (4/3) / (sqrt(7/12) / sqrt(3)); with two degrees of freedom the two-sided p is
    1 − t / sqrt(t² + 2)."""
    ips, ce = [71.5, 72.5, 73.0], [70.0, 72.0, 71.0]
    t = (4 / 3) / (math.sqrt(7 / 12) / math.sqrt(3))
    expected = 1 - t / math.sqrt(t * t + 2)
    assert expected == pytest.approx(0.0942, abs=1e-4)
    assert paired_p(ips, ce) == pytest.approx(expected)
    # pairing matters: the same values unpaired (Welch) give a larger p
    from scipy import stats

    assert paired_p(ips, ce) < stats.ttest_ind(ips, ce, equal_var=False).pvalue
    assert paired_cells(ips, ce) == ("+1.33 ± 0.76 (n=3)", f"{expected:.3f}")
    # two seeds: each seed's difference, in seed order, and no p; one seed: its difference; none: dashes
    assert math.isnan(paired_p(ips[:2], ce[:2]))
    assert paired_cells(ips[:2], ce[:2]) == ("+1.50, +0.50 (n=2)", "–")
    assert paired_cells([69.0], [70.0]) == ("-1.00 (n=1)", "–")
    assert paired_cells([], []) == ("–", "–")


def test_runs_of_one_method_with_other_settings_get_their_own_label(tmp_path):
    def run(name, seed, epochs, threads):
        d = tmp_path / name
        d.mkdir()
        cfg = {"method": {"name": "ce"}, "data": {"name": "x"}, "model": {"name": "m"}, "seed": seed,
               "train": {"epochs": epochs, "threads": threads}}
        (d / "summary.json").write_text(json.dumps({"config": cfg, "seed": seed}))

    run("a", 0, 24, 1)
    run("b", 1, 24, 2)  # threads differ: not a setting of the result
    run("c", 0, 48, 1)
    assert sorted(r.label for r in load_runs(tmp_path)) == ["ce", "ce", "ce [train.epochs=48]"]


def test_per_class_table_is_the_seed_mean_and_absent_for_one_class():
    def run(seed: int, per_class: dict[str, float]) -> Run:
        return Run(summary=RunSummary(seed=seed, last_per_class=per_class), rows=[])

    nan = float("nan")  # a class absent from the test split
    ce = Cell("ce", [run(0, {"ap_cat": 10.0, "ap_dog": nan}), run(1, {"ap_cat": 20.0, "ap_dog": nan})])
    ips = Cell("ips", [run(0, {"ap_cat": 30.0, "ap_dog": 1.24})])
    lines = per_class_lines([ce, ips])
    assert lines[3] == "| method | cat | dog |"
    assert lines[5:] == ["| `ce` | 15.0 | – |", "| `ips` | 30.0 | 1.2 |"]
    assert per_class_lines([Cell("ce", [run(0, {"ap_person": 50.0})])]) == []
    assert per_class_lines([Cell("ce", [run(0, {})])]) == []


def test_group_table_pairs_seeds_with_the_baseline_and_dashes_a_row_with_none():
    def run(seed: int, top1: float) -> Run:
        summary = RunSummary(seed=seed, metrics=["top1"], last={"test_top1": top1}, seconds_per_epoch=10.0,
                             images_per_s=100.0, steps_per_epoch=5)
        return Run(summary=summary, rows=[])

    ce = Cell("ce", [run(0, 70.0), run(1, 72.0), run(2, 71.0)])
    three = Cell("ips", [run(0, 71.5), run(1, 72.5), run(2, 73.0)])  # per-seed gains +1.5, +0.5, +2.0
    two = Cell("ips_s01", [run(1, 72.5), run(0, 71.5)])  # gains +1.5 (seed 0) and +0.5 (seed 1)
    one = Cell("ips_s1", [run(1, 74.0)])
    unpaired = Cell("ips_s3", [run(3, 80.0)])  # no seed in common with CE
    table = group_table([ce, three, two, one, unpaired], "ce")
    head = table[0].split(" | ")
    assert head[4:6] == ["Δ top-1 vs ce (paired)", "p (paired t)"] and "p (Welch)" not in table[0]
    rows = [line.split(" | ") for line in table[2:]]
    assert [r[4] for r in rows] == ["–", "+1.33 ± 0.76 (n=3)", "+1.50, +0.50 (n=2)", "+2.00 (n=1)", "–"]
    assert [r[5] for r in rows] == ["–", f"{paired_p([71.5, 72.5, 73.0], [70.0, 72.0, 71.0]):.3f}", "–", "–", "–"]
    assert rows[1][5] == "0.094"
    assert [r[2] for r in rows] == ["71.00 ± 1.00", "72.33 ± 0.76", "72.00 ± 0.71", "74.00", "80.00"]


def test_step_time_ratio_divides_by_the_baselines_time_on_the_same_machine():
    from selfdistill.bench.report import step_ratio

    def run(seed: int, seconds: float, machine: str) -> Run:
        summary = RunSummary(seed=seed, metrics=["top1"], last={"test_top1": 50.0 + seed}, seconds_per_epoch=seconds,
                             images_per_s=1.0, steps_per_epoch=10, env={"device_name": machine, "platform": "p"})
        return Run(summary=summary, rows=[])

    ce = Cell("ce", [run(0, 20.0, "A"), run(1, 40.0, "B"), run(2, 60.0, "B")])  # per step: A 2.0, B mean 5.0
    # A: 8.0 / 2.0 = 4; B: 15.0 / 5.0 = 3; the run on C has no CE run beside it and is left out (not 90 / 3.67)
    ips = Cell("ips", [run(0, 80.0, "A"), run(1, 150.0, "B"), run(2, 900.0, "C")])
    assert step_ratio(ips, ce) == pytest.approx(3.5)
    assert step_ratio(ce, ce) == pytest.approx(1.0)
    alone = Cell("kd", [run(0, 10.0, "C")])
    assert math.isnan(step_ratio(alone, ce))
    rows = [line.split(" | ") for line in group_table([ce, ips, alone], "ce")[2:]]
    assert [r[-1] for r in rows] == ["1.00 |", "3.50 |", "– |"]


def test_other_models_table_is_the_seed_mean_per_model():
    def run(seed: int, top1: float) -> Run:
        res = {"top1": top1, "ece": 2.0, "nll": 0.5}
        return Run(summary=RunSummary(seed=seed, eval_models_last={"teacher": res}), rows=[])

    lines = eval_model_lines([Cell("ce", [Run(summary=RunSummary(seed=0), rows=[])]),
                              Cell("mean_teacher", [run(0, 50.0), run(1, 60.0)])])
    assert lines[3] == "| method | model | n | test top-1 | ECE % | NLL |"
    assert lines[5:] == ["| `mean_teacher` | teacher | 2 | 55.00 ± 7.07 | 2.00 ± 0.00 | 0.500 ± 0.000 |"]
    assert eval_model_lines([Cell("ce", [Run(summary=RunSummary(seed=0), rows=[])])]) == []


def test_report_timing_is_the_median_epoch_and_stages_add_up(tmp_path):
    def run_dir(path, times, rates, seed=0):
        path.mkdir(parents=True)
        cfg = {"method": {"name": "ce"}, "data": {"name": "x"}, "model": {"name": "m"}, "seed": seed}
        (path / "summary.json").write_text(json.dumps({"config": cfg, "seed": seed, "seconds_per_epoch": 99.0}))
        with (path / "metrics.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["epoch", "train_time_s", "images_per_s"])
            w.writerows([e + 1, t, r] for e, (t, r) in enumerate(zip(times, rates, strict=True)))

    # one epoch slowed 60-fold (the machine paused): the median ignores it, the mean would not
    run_dir(tmp_path / "plain", [10.0, 600.0, 12.0], [100.0, 2.0, 90.0])
    # a run of two stages (born-again generations): epoch times add, rates combine as 1 / Σ 1/rate
    run_dir(tmp_path / "staged", [1.0], [1.0], seed=1)
    run_dir(tmp_path / "staged" / "gen0", [4.0, 5.0, 6.0], [40.0, 50.0, 60.0], seed=1)
    run_dir(tmp_path / "staged" / "gen1", [2.0, 3.0, 100.0], [200.0, 150.0, 1.0], seed=2)
    plain, staged = sorted(load_runs(tmp_path), key=lambda r: r.seed)
    assert plain.seconds_per_epoch == 12.0 and plain.images_per_s == 90.0
    assert plain.checkpoint == tmp_path / "plain" / "last.pt"  # where the record is, not where it was written
    assert staged.seconds_per_epoch == 5.0 + 3.0
    assert staged.images_per_s == pytest.approx(1 / (1 / 50.0 + 1 / 150.0))
    # without timed rows the summary's value stands
    (tmp_path / "plain" / "metrics.csv").write_text("epoch\n1\n")
    assert min(load_runs(tmp_path), key=lambda r: r.seed).seconds_per_epoch == 99.0


def test_diagnostic_columns_and_the_kd_to_ce_ratio(tmp_path):
    from selfdistill.bench.report.diagnostics import column, diagnostics_lines, plot_diagnostics

    rows = [{"epoch": 1.0, "train_loss_ce": 2.0, "train_loss_kd": 1.0, "train_logit_norm": 3.0},
            {"epoch": 2.0, "train_loss_ce": 1.0, "train_loss_kd": 4.0, "train_logit_norm": 5.0},
            {"epoch": 3.0, "train_loss_ce": 0.0, "train_loss_kd": 4.0}]  # a zero CE term has no ratio
    run = Run(summary=RunSummary(seed=0), rows=rows)
    assert column(run, "kd/ce") == [(1.0, 0.5), (2.0, 4.0)]
    assert column(run, "train_logit_norm") == [(1.0, 3.0), (2.0, 5.0)]
    assert plot_diagnostics([Cell("ips", [run])], "t", tmp_path / "d.png") and (tmp_path / "d.png").stat().st_size
    bare = Run(summary=RunSummary(seed=0), rows=[{"epoch": 1.0, "test_top1": 5.0}])
    assert not plot_diagnostics([Cell("ce", [bare])], "t", tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
    # the table holds each logged column's last value (mean over seeds), a dash where a cell does not log it
    other = Run(summary=RunSummary(seed=1), rows=[{"epoch": 1.0, "train_loss_ce": 1.0, "train_loss_kd": 2.0}])
    table = diagnostics_lines([Cell("ips", [run, other]), Cell("ce", [bare])])
    assert table[2] == "| method | `train_logit_norm` | `kd/ce` |"
    assert table[4:6] == ["| `ips` | 5.000 | 3.000 |", "| `ce` | – | – |"]
    assert diagnostics_lines([Cell("ce", [bare])]) == []


def test_report_names_the_machines_when_a_groups_runs_ran_on_several():
    from selfdistill.bench.report import machine_lines

    def run(seed, device_name, plat="Linux-x"):
        return Run(summary=RunSummary(seed=seed, env={"device_name": device_name, "platform": plat}), rows=[])

    assert machine_lines([Cell("ce", [run(0, "cpu A"), run(1, "cpu A")]), Cell("ips", [run(0, "cpu A")])]) == []
    lines = machine_lines([Cell("ce", [run(0, "cpu A"), run(1, "cpu B")]), Cell("ips", [run(0, "cpu A", "Linux-y")])])
    assert "3 environments" in lines[1]
    assert lines[3:6] == ["- cpu A · Linux-x: `ce` s0", "- cpu B · Linux-x: `ce` s1", "- cpu A · Linux-y: `ips` s0"]


def test_sections_are_registered_in_order_and_test_only_ones_stay_out_of_a_validation_report():
    from selfdistill.bench.report.sections import section, sections

    names = [s.name for s in sections("test")]
    assert names == ["table", "cost", "ladder", "machines", "training fit", "teachers", "other models", "generations",
                     "self-supervised", "per class", "curves", "reliability", "diagnostics"]
    assert [s.name for s in sections("val")] == ["table", "cost", "ladder", "machines", "training fit", "curves",
                                                 "diagnostics"]
    with pytest.raises(ValueError, match="registered twice"):
        section("generations", 1)(lambda group: [])


def test_cost_figure_places_methods_at_their_step_time_and_ce_at_k_times_the_epochs(tmp_path):
    """CE runs with 2× and 4× the group's epochs are the reference points at cost 2 and 4; a method's cost is its
    measured step time ×ce, or its declared passes per step where no CE run shares its machine."""
    from selfdistill.bench.report.cost import cost_figure

    def run(name, method, seed, epochs, seconds, top1, val, machine="A", passes=1.0):
        d = tmp_path / "runs" / name
        d.mkdir(parents=True)
        cfg = {"method": {"name": method}, "data": {"name": "x", "batch_size": 8}, "model": {"name": "m"},
               "seed": seed, "train": {"epochs": epochs}}
        (d / "summary.json").write_text(json.dumps({
            "config": cfg, "seed": seed, "epochs": epochs, "metrics": ["top1", "nll", "ece"],
            "last": {"test_top1": top1, "test_nll": 1.0, "test_ece": 5.0}, "seconds_per_epoch": seconds,
            "images_per_s": 100.0, "steps_per_epoch": 10, "passes_per_step": passes,
            "env": {"device_name": machine, "platform": "p"}}))
        rows = f"1,40,{val - 1},{top1 - 1}\n2,60,{val},{top1}\n"
        (d / "metrics.csv").write_text("epoch,train_top1,val_top1,test_top1\n" + rows)

    run("ce_s0", "ce", 0, 10, 10.0, 50.0, 48.0)
    run("ce_s1", "ce", 1, 10, 10.0, 52.0, 50.0)
    run("ips_s0", "ips", 0, 10, 20.0, 55.0, 53.0, passes=2.0)
    run("ips_s1", "ips", 1, 10, 20.0, 57.0, 55.0, passes=2.0)
    run("kd_s0", "kd", 0, 10, 99.0, 54.0, 52.0, machine="B")  # no CE run on B: its declared passes per step
    run("ce_e20_s0", "ce", 0, 20, 10.0, 54.0, 52.0)
    run("ce_e20_s1", "ce", 1, 20, 10.0, 56.0, 54.0)
    run("ce_e40_s0", "ce", 0, 40, 10.0, 58.0, 56.0)
    cells: dict[str, Cell] = {}
    for r in load_runs(tmp_path / "runs"):
        cells.setdefault(r.label, Cell(r.label)).runs.append(r)
    figure = cost_figure(list(cells.values()), "ce")
    assert (figure.baseline.label, figure.baseline.cost, figure.baseline.mean) == ("ce", 1.0, 51.0)
    assert [(p.label, p.cost, p.mean) for p in figure.references] == [("ce [train.epochs=20]", 2.0, 55.0),
                                                                      ("ce [train.epochs=40]", 4.0, 58.0)]
    methods = {p.label: p for p in figure.methods}
    assert set(methods) == {"ips", "kd"}
    assert methods["ips"].cost == pytest.approx(2.0) and methods["ips"].measured and methods["ips"].mean == 56.0
    assert methods["kd"].cost == 1.0 and not methods["kd"].measured
    assert cost_figure([cells["ips"]], "ce") is None  # no baseline in the group: no figure
    assert cost_figure([cells["ce"]], "ce") is None  # nothing beside the baseline: no figure
    val = cost_figure(list(cells.values()), "ce", split="val")
    assert val.baseline.mean == 49.0 and [p.mean for p in val.references] == [53.0, 56.0]

    for split, metric in (("test", "test top-1"), ("val", "val top-1")):
        text = write_report(tmp_path / "runs", tmp_path / split, split=split).read_text()
        assert (tmp_path / split / "cost_x_m.png").stat().st_size > 0
        lines = text.splitlines()
        figure_line = lines.index(f"![{metric} against training cost](cost_x_m.png)")
        assert lines[figure_line - 2].startswith("| `kd` |")  # under the main table
        assert "`ce` trained for k× the epochs" in lines[figure_line + 2] and "Hollow markers" in lines[figure_line + 2]


def test_gain_ladder_steps_are_paired_on_the_seeds_every_rung_has_and_add_up():
    from selfdistill.bench.report import ladder_lines

    def run(seed: int, top1: float) -> Run:
        return Run(summary=RunSummary(seed=seed, metrics=["top1"], last={"test_top1": top1}), rows=[])

    ce = Cell("ce", [run(0, 30.0), run(1, 31.0), run(2, 32.0), run(3, 50.0)])  # seed 3: only CE has it
    partner = Cell("control", [run(0, 31.0), run(1, 31.5), run(2, 33.5)])  # +1.0, +0.5, +1.5 over CE
    swap = Cell("swap", [run(2, 34.5), run(0, 32.0), run(1, 33.5)])  # +1.0, +2.0, +1.0 over the control
    ips = Cell("ips", [run(0, 33.0), run(1, 33.5), run(2, 36.5)])  # +1.0, 0.0, +2.0 over the swap
    lines = ladder_lines([ce, partner, swap, ips], ["ce", "control", "swap", "ips"])
    assert "the 3 seed(s) every rung has (0, 1, 2)" in lines[1]
    rows = [line.split(" | ") for line in lines[5:-1]]
    assert [r[1] for r in rows[:4]] == ["31.00", "32.00", "33.33", "34.33"]  # CE's mean without seed 3
    assert [r[2] for r in rows] == ["–", "+1.00 ± 0.50 (n=3)", "+1.33 ± 0.58 (n=3)", "+1.00 ± 1.00 (n=3)",
                                    "+3.33 ± 1.04 (n=3)"]  # 1.00 + 1.33 + 1.00 = 3.33; gains 3, 2.5, 4.5
    assert rows[4][0] == "| all steps: `ips` over `ce`"
    assert rows[4][3] == f"{paired_p([33.0, 33.5, 36.5], [30.0, 31.0, 32.0]):.3f} |"
    # on the validation split it reads the last epoch's validation value, never the test one
    val = [Cell(c.label, [Run(summary=r.summary, rows=[{"val_top1": r.summary.last["test_top1"] - 10.0}])
                          for r in c.runs]) for c in (ce, ips)]
    val_lines = ladder_lines(val, ["ce", "ips"], "val")
    assert "paired val top-1 gain" in val_lines[1]
    assert [line.split(" | ")[1] for line in val_lines[5:7]] == ["21.00", "24.33"]
    assert val_lines[7:] == [""]  # two rungs: the one step is the whole ladder, no second row for it
    # a group without the rungs, one without all of them, rungs without a shared seed
    assert ladder_lines([Cell("kd", [run(0, 1.0)])], ["ce", "ips"]) == []
    assert "`control`, `swap`" in ladder_lines([ce, ips], ["ce", "control", "swap", "ips"])[1]
    assert "share no seed" in ladder_lines([ce, Cell("late", [run(7, 1.0)])], ["ce", "late"])[1]


def test_training_fit_names_the_methods_whose_runs_did_not_measure_it():
    from selfdistill.bench.report.table import fit_lines

    def run(seed: int, fit: float | None) -> Run:
        return Run(summary=RunSummary(seed=seed, metrics=["top1"], last={"test_top1": 39.0},
                                      train_fit={"top1": fit} if fit is not None else {}), rows=[{"val_top1": 40.0}])

    ce = Cell("ce", [run(0, 80.0), run(1, 70.0)])
    late = Cell("kd", [run(0, None)])  # trained before its grid turned train.eval_train on
    lines = fit_lines([ce, late])
    assert "| `ce` | 2 | 75.00 ± 7.07 | 40.00 ± 0.00 | 39.00 ± 0.00 | 35.00 ± 7.07 |" in lines
    assert "No training fit in the runs of `kd` (`train.eval_train` off when they ran)." in lines
    assert not any("No training fit" in line for line in fit_lines([ce]))
    assert fit_lines([late]) == []
