"""Plug-ins: a module outside the package registers a method, a model and a dataset, and runs train, resume and
bench with them (each in processes of their own, so nothing registers into this test process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from selfdistill import plugins
from selfdistill.cli import main
from tests.helpers import REPO, cli_shim, doc_blocks

DOC = REPO / "docs" / "plugins.md"


@pytest.fixture
def plugin_project(tmp_path):
    """docs/plugins.md's module and run config written into a project folder, and a shell environment for it."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_plugins.py").write_text(doc_blocks(DOC, "python")[0])
    (project / "my_run.yaml").write_text(doc_blocks(DOC, "yaml")[0])
    return project, cli_shim(tmp_path / "bin")


def _sh(command: str, project, env) -> subprocess.CompletedProcess:
    # the checkout's src stays on the path beside the project folder the documented command puts there
    command = command.replace("PYTHONPATH=.", "PYTHONPATH=.:$PYTHONPATH")
    return subprocess.run(["bash", "-c", command], cwd=project, env=env, capture_output=True, text=True)


def test_the_documented_plugin_trains_resumes_and_is_listed(plugin_project):
    project, env = plugin_project
    train, resume, listing = (line.split("#")[0].strip() for line in doc_blocks(DOC, "bash")[0].strip().splitlines())
    out = _sh(train, project, env)
    assert out.returncode == 0, out.stderr
    run = project / "runs" / "checkerboards_tiny_cnn_confidence_penalty_s0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "confidence_penalty" and summary["model"] == "tiny_cnn"
    assert summary["num_train"] == 256 and summary["epochs"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["plugins"] == ["my_plugins"]
    assert "train_loss_entropy" in (run / "metrics.csv").read_text().splitlines()[0]
    out = _sh(resume, project, env)
    assert out.returncode == 0, out.stderr
    assert "resuming" in out.stdout and json.loads((run / "summary.json").read_text())["epochs"] == 4
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 4
    out = _sh(listing, project, env)
    assert out.returncode == 0 and "confidence_penalty" in out.stdout and "Cross-entropy minus beta" in out.stdout


def test_bench_children_import_the_plugins_given_on_the_command_line(plugin_project):
    project, env = plugin_project
    cfg = yaml.safe_load((project / "my_run.yaml").read_text())
    del cfg["plugins"]  # given with --plugin instead: the children know it from their configs only
    cfg["train"].update(epochs=1, tensorboard=False)
    grid = {"config": cfg, "out": "grid_runs", "grid": {"method.beta": [0.1, 0.2]}}
    (project / "grid.yaml").write_text(yaml.safe_dump(grid))
    out = _sh("PYTHONPATH=. selfdistill bench --config grid.yaml --plugin my_plugins", project, env)
    assert out.returncode == 0, out.stdout + out.stderr
    runs = sorted(p.parent.name for p in (project / "grid_runs").glob("*/summary.json"))
    assert runs == ["confidence_penalty-beta=0.2_tiny_cnn_s0", "confidence_penalty_tiny_cnn_s0"]
    child = yaml.safe_load((project / "grid_runs" / "_logs" / f"{runs[0]}.yaml").read_text())
    assert child["plugins"] == ["my_plugins"]


def test_installed_packages_are_found_through_their_entry_points(tmp_path):
    site = tmp_path / "site"
    (site / "extras_pkg-0.1.dist-info").mkdir(parents=True)
    (site / "extras_pkg-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: extras-pkg\n"
                                                                  "Version: 0.1\n")
    (site / "extras_pkg-0.1.dist-info" / "entry_points.txt").write_text(
        "[selfdistill.plugins]\nextras = extras_models\n")
    (site / "extras_models.py").write_text(
        "from torch import nn\nfrom selfdistill.models import register_model\n\n\n@register_model('extras_net')\n"
        "def extras_net(num_classes, in_chans=3):\n    return nn.Linear(in_chans, num_classes)\n")
    env = cli_shim(tmp_path / "bin")
    env["PYTHONPATH"] = f"{site}:{env['PYTHONPATH']}"
    out = subprocess.run(["selfdistill", "list", "models"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "extras_net" in out.stdout.splitlines()
    # a broken installed plug-in is named with its package
    (site / "extras_models.py").write_text("raise RuntimeError('needs a licence file')\n")
    out = subprocess.run(["selfdistill", "list", "models"], env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr == ("selfdistill: error: plug-in entry point 'extras' (extras_models) of package 'extras-pkg' "
                          "failed to import: RuntimeError: needs a licence file\n")


def test_a_plugin_that_fails_to_import_is_one_line_and_exit_status_2(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "broken_plugin_mod.py").write_text("import numpy\nraise ValueError('bad constant')\n")
    assert main(["list", "methods", "--plugin", "no_such_plugin_mod"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("selfdistill: error: plug-in 'no_such_plugin_mod' failed to import: ModuleNotFoundError")
    assert "PYTHONPATH" in err and err.count("\n") == 1
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"plugins": ["broken_plugin_mod"], "data": {"name": "synthetic"}}))
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "plug-in 'broken_plugin_mod' failed to import: ValueError: bad constant" in err
    assert "PYTHONPATH" not in err and "broken_plugin_mod" not in sys.modules
    assert main(["eval", "--checkpoint", "x.pt", "--plugin", str(tmp_path / "missing.py")]) == 2
    assert "plug-in file not found" in capsys.readouterr().err


def test_a_file_path_plugin_is_imported_once(tmp_path):
    path = tmp_path / "counting_plugin.py"
    path.write_text("import builtins\nbuiltins.counting_plugin_imports = "
                    "getattr(builtins, 'counting_plugin_imports', 0) + 1\n")
    import builtins

    try:
        first = plugins.import_plugin(str(path))
        assert plugins.import_plugin(str(path)) is first
        assert builtins.counting_plugin_imports == 1 and first.__file__ == str(path)
    finally:
        del builtins.counting_plugin_imports
