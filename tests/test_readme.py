"""The README's commands work from a fresh clone, checked without training: every command of its fenced code blocks
(shell and Python) is parsed, and what it names is resolved: ``selfdistill`` commands by the real parser, with the
configs of ``train`` and ``bench`` validated (overrides included, as ``bench --dry-run`` does), the checkpoints of
``eval`` and ``export`` those the README's ``train`` commands write, the inputs of ``report`` present; ``make``
targets in the Makefile; ``pip install`` extras in ``pyproject.toml``. The Python example runs, its training
replaced by a tiny synthetic run once its config has been resolved. A command this test cannot check fails it.

Also here: the headline block (``selfdistill report --headline``), the README's short table of chosen rows."""

from __future__ import annotations

import ast
import contextlib
import io
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

import selfdistill
from selfdistill.bench import load_grid
from selfdistill.bench.report import HEADLINE_END, HEADLINE_START, headline_sections, update_headline
from selfdistill.cli import USER_ERRORS, build_parser, main

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """The fenced code blocks of a markdown text: (language, body)."""
    return [(lang.strip(), body) for lang, body in FENCE.findall(text)]


def shell_commands(block: str) -> list[list[str]]:
    """The commands of a shell block as argument lists: continuation lines joined, comments dropped, ``&&`` and
    ``;`` chains split."""
    commands: list[list[str]] = []
    for line in block.replace("\\\n", " ").splitlines():
        current: list[str] = []
        for token in shlex.split(line, comments=True):
            if token in ("&&", ";"):
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [c for c in commands if c]


def make_targets() -> set[str]:
    """The targets the Makefile defines."""
    text = (REPO / "Makefile").read_text()
    return {t for line in re.findall(r"^([^\s#=:][^=:]*):(?!=)", text, re.MULTILINE) for t in line.split()}


def check_make(argv: list[str], state: dict[str, Any]) -> None:
    targets = [a for a in argv[1:] if "=" not in a]
    assert targets, f"`{shlex.join(argv)}`: name the target"
    missing = [t for t in targets if t not in make_targets()]
    assert not missing, f"`{shlex.join(argv)}`: the Makefile has no target {missing}"


def check_pip(argv: list[str], state: dict[str, Any]) -> None:
    assert argv[1:3] == ["install", "-e"] and len(argv) == 4, (
        f"`{shlex.join(argv)}`: only `pip install -e PATH[extras]` is checked")
    path, _, extras = argv[3].partition("[")
    project = tomllib.loads((REPO / path / "pyproject.toml").read_text())["project"]
    wanted = [e.strip() for e in extras.rstrip("]").split(",") if e.strip()]
    missing = [e for e in wanted if e not in project.get("optional-dependencies", {})]
    assert not missing, f"`{shlex.join(argv)}`: pyproject.toml has no extra {missing}"


def check_selfdistill(argv: list[str], state: dict[str, Any]) -> None:
    """Parse with the real parser, then resolve what the command names without running it."""
    shown = shlex.join(argv)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            args = build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        assert exc.code == 0, f"`{shown}` does not parse: {err.getvalue().strip()}"
        return  # --help, --version
    command = args.command
    try:
        if command == "train":
            overrides = [*args.overrides, *([f"out={args.out}"] if args.out else [])]
            cfg = selfdistill.resolve_config(REPO / args.config, overrides, plugins=args.plugins)
            state["runs"].add(str(Path(cfg.out) / cfg.run_name()))
        elif command in ("eval", "export"):
            run = str(Path(args.checkpoint).parent)
            assert Path(args.checkpoint).name == "last.pt" and run in state["runs"], (
                f"`{shown}`: {args.checkpoint} is not the last.pt of a run the README's train commands write "
                f"(those write {sorted(state['runs'])})")
            if command == "eval":
                selfdistill.resolve_config(REPO / state["configs"][run], args.overrides)
        elif command == "bench":
            load_grid(REPO / args.config, args.out, plugins=args.plugins)  # every grid point validated
        elif command == "report":
            named = [*args.runs_dir, *(p for p in (args.results, args.readme, args.headline) if p)]
            assert named, f"`{shown}` names nothing to report"
            missing = [p for p in named if not (REPO / p).exists()]
            assert not missing, f"`{shown}`: missing {missing}"
        elif command == "list":
            with contextlib.redirect_stdout(io.StringIO()):
                assert main(argv[1:]) == 0, f"`{shown}` failed"
    except (*USER_ERRORS, OSError) as exc:
        pytest.fail(f"`{shown}`: {exc}")
    if command == "train":
        state["configs"][str(Path(cfg.out) / cfg.run_name())] = args.config


CHECKS = {"make": check_make, "pip": check_pip, "selfdistill": check_selfdistill}


def check_shell_block(block: str, state: dict[str, Any]) -> None:
    for argv in shell_commands(block):
        assert argv[0] in CHECKS, (f"README command `{shlex.join(argv)}`: tests/test_readme.py does not know how to "
                                   "check it; teach it (CHECKS) or use a command it checks")
        CHECKS[argv[0]](argv, state)


def check_python_names(source: str) -> None:
    """Every import of the snippet resolves, and every ``selfdistill.<name>`` it uses exists."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                __import__(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = __import__(node.module, fromlist=["_"])
            for alias in node.names:
                assert hasattr(module, alias.name), f"`from {node.module} import {alias.name}`: no such name"
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "selfdistill":
            assert hasattr(selfdistill, node.attr), f"selfdistill.{node.attr} does not exist"


def new_state() -> dict[str, Any]:
    return {"runs": set(), "configs": {}}


def test_readme_code_blocks_are_shell_or_python():
    blocks = readme_blocks(README.read_text())
    assert blocks, "README.md has no code blocks"
    other = [lang for lang, _ in blocks if lang not in ("bash", "python")]
    assert not other, f"README code blocks in {other}: tests/test_readme.py checks bash and python blocks only"


def test_readme_shell_commands_resolve(monkeypatch):
    monkeypatch.chdir(REPO)  # configs' relative paths (a grid's base) as from a fresh clone's root
    state = new_state()
    blocks = [body for lang, body in readme_blocks(README.read_text()) if lang == "bash"]
    commands = [argv[0] for body in blocks for argv in shell_commands(body)]
    assert {"make", "pip", "selfdistill"} <= set(commands)
    for body in blocks:
        check_shell_block(body, state)


def _tiny_config(tmp_path: Path, method: str) -> dict[str, Any]:
    return {"seed": 0, "out": str(tmp_path / "runs"),
            "data": {"name": "synthetic", "synthetic_size": 64, "num_classes": 4, "batch_size": 16, "image_size": 8,
                     "val_fraction": 0.25},
            "model": {"name": "resnet8"}, "method": {"name": method}, "optim": {"lr": 0.05},
            "train": {"epochs": 1, "device": "cpu", "tensorboard": False, "progress": False}}


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    """The Python example, run in a folder that sees the repository's configs: its configs are resolved for real,
    and its training is one epoch of the same method on a tiny synthetic dataset."""
    sources = [body for lang, body in readme_blocks(README.read_text()) if lang == "python"]
    assert sources, "README.md has no Python example"
    (tmp_path / "configs").symlink_to(REPO / "configs", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    real_train = selfdistill.train

    def tiny_train(config: Any, overrides: list[str] | None = None, **kwargs: Any) -> Any:
        cfg = selfdistill.resolve_config(config, overrides)  # the example's own config, validated
        return real_train(_tiny_config(tmp_path, cfg.method["name"]), **kwargs)

    monkeypatch.setattr(selfdistill, "train", tiny_train)
    for source in sources:
        check_python_names(source)
        exec(compile(source, "README.md", "exec"), {"__name__": "readme_example"})
    assert capsys.readouterr().out


@pytest.mark.parametrize("command", [
    "selfdistill trian --config configs/cifar10/resnet20_ce.yaml",
    "selfdistill train --config configs/cifar10/resnet20_ce.yaml --set optim.lrr=0.1",
    "selfdistill train --config configs/cifar10/resnet2_ce.yaml",
    "selfdistill train --config configs/cifar10/resnet20_ce.yaml --set method.name=ipss",
    "selfdistill eval --checkpoint runs/imagefolder_resnet20_ce_s1/last.pt",
    "selfdistill bench --config benchmarks/tinyimagenet100_cpu/grd.yaml --dry-run",
    "selfdistill report benchmarks/tinyimagenet100_cpu/rnus --out /tmp/report",
    "selfdistill list method",
    "make tset",
    "pip install -e '.[deb]'",
    "selfdistil --help",
])
def test_a_typo_in_a_readme_command_fails(command, monkeypatch):
    monkeypatch.chdir(REPO)
    state = new_state()
    check_shell_block("selfdistill train --config configs/cifar10/resnet20_ce.yaml\n", state)
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        check_shell_block(command + "\n", state)


@pytest.mark.parametrize("source", ["import selfdistill\nselfdistill.trian('x.yaml')\n",
                                    "from selfdistill import evaluat\n", "import selfdistil\n"])
def test_a_typo_in_the_python_example_fails(source):
    with pytest.raises((AssertionError, ImportError)):
        check_python_names(source)


REPORT = """# Benchmark report

Generated by `selfdistill report runs` from 6 finished runs.

## synthetic / resnet8

60 training images; 2 epochs.

| method | n | test top-1 (last) | ECE % (last) | Δ top-1 vs ce (paired) | s/epoch |
|---|---|---|---|---|---|
| `ce` | 2 | 50.00 ± 1.00 | 5.00 ± 0.10 | – | 1.0 |
| `ips` | 2 | 52.00 ± 1.00 | 4.00 ± 0.10 | +2.00, +2.00 (n=2) | 2.0 |
| `kd` | 2 | 51.00 ± 1.00 | 6.00 ± 0.10 | +1.00, +1.00 (n=2) | 1.5 |

![test top-1 against training cost](cost_synthetic_resnet8.png)

[Accuracy against cost](cost_synthetic_resnet8.png): the caption.

| method | other |
|---|---|
| `ce` | 1 |

![test top-1](curves_synthetic_resnet8.png)

## synthetic / resnet20

| method | n | test top-1 (last) |
|---|---|---|
| `ce` | 1 | 40.00 |
"""


def test_headline_block_picks_rows_and_columns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bench" / "report").mkdir(parents=True)
    (tmp_path / "bench" / "report" / "report.md").write_text(REPORT)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text("# Results\n<!-- results:start (generated by selfdistill report "
                                                  "--readme; do not edit) -->\n<!-- results:end -->\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{HEADLINE_START}\nold\n{HEADLINE_END}\noutro\n")
    entry = {"report": "bench/report/report.md", "command": "selfdistill report runs",
             "headline": {"rows": ["ips", "ce"], "columns": ["method", "Δ top-1 vs ce (paired)", "test top-1 (last)"],
                          "title": "Short"}}
    manifest = tmp_path / "results.yaml"
    manifest.write_text(yaml.safe_dump([entry, {"report": "bench/report/report.md", "command": "again"}],
                                       allow_unicode=True))
    assert main(["report", "--results", "results.yaml", "--readme", "docs/results.md", "--headline", "README.md"]) == 0
    text = readme.read_text()
    assert text.startswith(f"intro\n{HEADLINE_START}\n") and text.endswith(f"{HEADLINE_END}\noutro\n")
    assert "old" not in text and "### Short\n\n60 training images; 2 epochs.\n" in text
    # the rows and columns listed, in the order listed; nothing else of the table
    assert ("| method | Δ top-1 vs ce (paired) | test top-1 (last) |\n|---|---|---|\n"
            "| `ips` | +2.00, +2.00 (n=2) | 52.00 ± 1.00 |\n| `ce` | – | 50.00 ± 1.00 |\n") in text
    block = text.split(HEADLINE_START, 1)[1].split(HEADLINE_END, 1)[0]
    assert "`kd`" not in block and "ECE" not in block and "| other |" not in block and "40.00" not in block
    assert "2 of the table's 3 rows and 3 of its 6 columns" in text
    # links relative to the README: the report, the full results, the cost figure and its caption (no other plot)
    assert "[bench/report/report.md](bench/report/report.md)" in text and "[docs/results.md](docs/results.md)" in text
    assert "\n\n![test top-1 against training cost](bench/report/cost_synthetic_resnet8.png)\n\n" in text
    assert "[Accuracy against cost](bench/report/cost_synthetic_resnet8.png): the caption." in text
    assert "curves" not in text
    # the results block of docs/results.md links from docs/ (up one folder), naming the report from the root
    results = (tmp_path / "docs" / "results.md").read_text()
    assert "From [bench/report/report.md](../bench/report/report.md), reproduced by:" in results
    assert "[Accuracy against cost](../bench/report/cost_synthetic_resnet8.png)" in results

    # another section, by its title; no figure
    [headline] = headline_sections(manifest)
    headline.section, headline.figure, headline.rows, headline.columns = "synthetic / resnet20", False, ["ce"], ["n"]
    update_headline(readme, [headline])
    text = readme.read_text()
    assert "| n |\n|---|\n| 1 |\n" in text and "### Short" in text and "cost_" not in text and "results.md" not in text


@pytest.mark.parametrize(("headline", "message"), [
    ({"rows": ["ce", "ipss"], "columns": ["method"]}, "no row 'ipss' (have: ce, ips, kd)"),
    ({"rows": ["ce"], "columns": ["method", "NLL"]}, "no column 'NLL'"),
    ({"rows": ["ce"], "columns": ["method"], "section": "cifar / resnet8"}, "no section '## cifar / resnet8'"),
    ({"rows": ["ce"], "columns": ["method"], "colour": "red"}, "unknown keys ['colour']"),
    ({"rows": [], "columns": ["method"]}, "'rows' must be a non-empty list of strings"),
])
def test_headline_refuses_what_the_report_lacks(headline, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.md").write_text(REPORT)
    (tmp_path / "README.md").write_text(f"{HEADLINE_START}\n{HEADLINE_END}\n")
    (tmp_path / "results.yaml").write_text(yaml.safe_dump([{"report": "report.md", "command": "c",
                                                            "headline": headline}]))
    assert main(["report", "--results", "results.yaml", "--headline", "README.md"]) == 2
    assert message in capsys.readouterr().err


def test_headline_needs_results_and_a_block(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["report", "runs", "--headline", "README.md"]) == 2
    assert "--headline needs --results" in capsys.readouterr().err
    assert main(["report", "--results", "results.yaml"]) == 2
    assert "--results needs --readme" in capsys.readouterr().err
    (tmp_path / "report.md").write_text(REPORT)
    (tmp_path / "README.md").write_text("no markers\n")
    (tmp_path / "results.yaml").write_text(yaml.safe_dump([{"report": "report.md", "command": "c", "headline": {
        "rows": ["ce"], "columns": ["method"]}}]))
    assert main(["report", "--results", "results.yaml", "--headline", "README.md"]) == 2
    assert "README.md has no headline block" in capsys.readouterr().err


def test_readme_has_the_headline_block_and_links_the_results_doc():
    text = README.read_text()
    block = text.split(HEADLINE_START, 1)[1].split(HEADLINE_END, 1)[0]
    assert "| `ce` |" in block and "| `ips(preset=robust)` |" in block
    assert "](docs/results.md)" in block and "![" in block
    assert "<!-- results:start" not in text, "the full results block lives in docs/results.md"
