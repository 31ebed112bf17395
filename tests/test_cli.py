import os
import subprocess
import sys

import pytest
import torch
import yaml

from selfdistill.cli import build_parser, main


def test_list_commands(capsys):
    assert main(["list", "methods", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "ce " in out and "label_smoothing" in out and "epsilon" in out
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out and "timm:<name>" in out
    assert main(["list", "datasets"]) == 0
    assert "imagefolder" in capsys.readouterr().out


def test_help_everywhere():
    for args in ([], ["train"], ["eval"], ["export"], ["predict"], ["list"], ["demo"]):
        out = subprocess.run([sys.executable, "-m", "selfdistill", *args, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage: selfdistill" in out.stdout


def test_version_is_the_package_version(capsys):
    from selfdistill import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"selfdistill {__version__}\n"


def test_train_eval_and_user_errors(tmp_path, capsys):
    cfg = {"data": {"name": "synthetic", "synthetic_size": 256, "batch_size": 32, "image_size": 16},
           "model": {"name": "resnet8"}, "optim": {"lr": 0.1}, "sched": {"name": "cosine"},
           "train": {"epochs": 1, "device": "cpu", "progress": False, "tensorboard": True}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = str(tmp_path / "runs")
    assert main(["train", "--config", str(path), "--out", out, "--set", "seed=3"]) == 0
    assert "last epoch test top1" in capsys.readouterr().out
    run = tmp_path / "runs" / "synthetic_resnet8_ce_s3"
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert main(["eval", "--checkpoint", str(run / "last.pt")]) == 0
    assert '"top1"' in capsys.readouterr().out
    # user errors: one clear line, exit status 2, no traceback
    assert main(["train", "--config", str(path), "--out", out, "--set", "seed=3"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--config", str(path), "--set", "optim.lrr=1"]) == 2
    assert "Did you mean 'lr'" in capsys.readouterr().err
    assert main(["train", "--config", str(path), "--set", "data.name=imagefolder",
                 "--set", f"data.root={tmp_path / 'nothing'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    # a bare model state dict is not a run checkpoint: named, explained, one line
    bare = tmp_path / "weights.pt"
    torch.save(torch.load(run / "last.pt", weights_only=True)["model"], bare)
    assert main(["eval", "--checkpoint", str(bare)]) == 2
    err = capsys.readouterr().err
    assert f"{bare} is not a selfdistill run checkpoint (no 'config'" in err and "last.pt" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    # the same when a run directory's last.pt is such a file: the resume refuses it and leaves it as it was
    (run / "last.pt").write_bytes(bare.read_bytes())
    assert main(["train", "--config", str(path), "--out", out, "--set", "seed=3", "--resume"]) == 2
    assert "not a selfdistill run checkpoint" in capsys.readouterr().err
    assert (run / "last.pt").read_bytes() == bare.read_bytes()


def test_a_new_users_mistakes_end_in_one_line_and_leave_no_run_folder(tmp_path, capsys):
    cfg = {"data": {"name": "synthetic", "synthetic_size": 64, "batch_size": 16, "image_size": 8},
           "model": {"name": "resnet8"}, "out": str(tmp_path / "runs"),
           "train": {"epochs": 1, "device": "cpu", "progress": False, "tensorboard": False}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: {name: synthetic\nmodel: [\n")
    plain_file = tmp_path / "images.txt"
    plain_file.write_text("not a dataset")
    cases = [
        (broken, [], f"{broken}: invalid YAML at line 2, column 6"),
        (path, ["--set", "train.epochs=-1"], "train.epochs: expected an integer >= 1, got -1"),
        (path, ["--set", "data.batch_size=0"], "data.batch_size: expected an integer >= 1, got 0"),
        (path, ["--set", "model.name=timm:resnet_does_not_exist"], "model.name: unknown classification model"),
        (path, ["--set", "model.kwargs={width: 2}"], "model: cannot build 'resnet8'"),
        (path, ["--set", "data.batch_size=100"], "exceeds the 64 training images"),
        (path, ["--set", "data.name=imagefolder", "--set", f"data.root={plain_file}"],
         f"data.root '{plain_file}' is a file, not a folder or an archive"),
    ]
    for config, args, message in cases:
        assert main(["train", "--config", str(config), *args]) == 2
        err = capsys.readouterr().err
        assert message in err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_a_report_of_a_folder_without_runs_ends_in_one_line(tmp_path, capsys):
    missing = tmp_path / "no_runs"
    assert main(["report", str(missing)]) == 2
    assert f"no finished runs (summary.json) under {missing}" in capsys.readouterr().err
    assert main(["report", "--compare", f"a={missing}", "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert f"{missing} does not exist" in err and err.count("\n") == 1
    assert not (tmp_path / "cmp").exists()


def test_user_errors_end_without_a_traceback_in_a_real_process(tmp_path):
    env = {**os.environ, "SELFDISTILL_DEBUG": ""}
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"garbage")
    out = subprocess.run([sys.executable, "-m", "selfdistill", "eval", "--checkpoint", str(bad)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr and f"cannot read checkpoint {bad}" in out.stderr
    debug = subprocess.run([sys.executable, "-m", "selfdistill", "eval", "--checkpoint", str(bad)],
                           capture_output=True, text=True, env={**env, "SELFDISTILL_DEBUG": "1"}, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.slow
def test_demo_prints_its_table(tmp_path):
    """The demo (shortened to 6 epochs) trains CE, IPS, its robust preset and the same-images control on three seeds
    and prints each one's mean ± std, its per-seed Δ against CE, CE's training-fit gap and the pointer to the
    measured comparison."""
    out = subprocess.run([sys.executable, "-m", "selfdistill", "demo", "--out", str(tmp_path), "--epochs", "6"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "| method " in out.stdout and "| Δ vs ce, per seed " in out.stdout
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.stdout.splitlines() if line.startswith("| ") and "±" in line}
    assert list(rows) == ["ce", "ips", "ips, preset robust", "same images, no swap or term"]
    for label, (top1, delta, _ece, _speed) in rows.items():
        assert 20 < float(top1.split("±")[0]) <= 100  # well above chance (10 %) after 6 epochs on the digits
        assert delta == "–" if label == "ce" else len(delta.split(",")) == 3
    assert len(list(tmp_path.glob("demo_digits_*_s[012]/summary.json"))) == 12
    assert "CE's clean training top-1 minus its validation top-1 here: " in out.stdout
    assert "docs/results.md" in out.stdout


def test_report_command_option_does_not_shadow_the_subcommand():
    argv = ["report", "runs", "--readme", "docs/results.md", "--command", "selfdistill bench"]
    args = build_parser().parse_args(argv)
    assert args.command == "report" and args.quoted_command == "selfdistill bench"
