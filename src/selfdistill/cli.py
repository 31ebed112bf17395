"""The ``selfdistill`` command: train, eval, export, predict, bench, report, list, demo."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from .config import ConfigError, config_reference, options_table, set_by_path
from .data import DataError
from .engine import CheckpointError, RunSummary
from .engine.distributed import close_distributed, is_main_process
from .methods import describe_method, method_reference
from .plugins import PluginError, import_plugins
from .registry import UnknownNameError
from .run import (
    EXIT_STOPPED,
    NonFiniteLossError,
    RunExistsError,
    TrainingStopped,
    evaluate,
    export_model,
    image_files,
    load_model,
    predict,
    resolve_device,
    train,
)
from .tasks import get_task, list_tasks
from .version import __version__

# the demo: CE, IPS at its defaults, its four-image preset and the defaults' same-images control (the anchor and its
# same-class partner under CE, no swap, no term), on 20 training images per class, three paired seeds, so that the
# table shows the spread the comparison sits in; CE's training fit then says which IPS reading docs/ips.md picks
DEMO_METHODS: dict[str, dict[str, Any]] = {
    "ce": {"name": "ce"}, "ips": {"name": "ips"}, "ips, preset robust": {"name": "ips", "preset": "robust"},
    "same images, no swap or term": {"name": "ips", "p_swap": 0.0, "lambda_kd": 0.0}}
DEMO_SEEDS = (0, 1, 2)
DEMO_CONFIG: dict[str, Any] = {
    "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1, "train_subset": 200,
             "augment": {"crop_padding": 1, "hflip": False}},
    "model": {"name": "resnet8"},
    "optim": {"lr": 0.05, "weight_decay": 5e-4},
    "sched": {"name": "cosine"},
    "train": {"epochs": 30, "device": "cpu", "tensorboard": False, "progress": False, "eval_train": True},
}


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=0.05 --set data.root=/data (YAML values)")


def _add_plugin_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="MODULE",
                   help="import a module that registers methods, models, datasets or tasks (a name on PYTHONPATH "
                        "or a .py path; repeatable; added to the run config's 'plugins')")


def _cmd_train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    summary = train(args.config, overrides, resume=args.resume, plugins=args.plugins)
    _print_summary(summary)
    return 0


def _print_summary(s: RunSummary) -> None:
    main = s.primary
    last = ", ".join(f"{m} {s.test(m):.4g}" for m in s.metrics)
    print(f"\nrun {s.run}: last epoch test {last}")
    if s.best_val:
        print(f"best-validation epoch {s.best_val['epoch']}: val {main} {s.at_best_val('val', main):.2f}, test {main} "
              f"{s.at_best_val('test', main):.2f}")


def _cmd_eval(args: argparse.Namespace) -> int:
    metrics = evaluate(args.checkpoint, args.overrides, split=args.split, ema=args.ema)
    if is_main_process():
        print(json.dumps(metrics, indent=2))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    record = export_model(args.checkpoint, args.out, ema=args.ema)
    print(f"model written to {args.out}, its record to {record}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import csv

    model = load_model(args.model, resolve_device(args.device))
    rows = predict(model, image_files(args.images), args.topk, args.batch_size)
    if not args.csv:
        for path, top in rows:
            print(f"{path}\t" + "\t".join(f"{c} {p:.4f}" for c, p in top))
        return 0
    with open(args.csv, "w", newline="") as fh:
        writer = csv.writer(fh)
        k = min(args.topk, model.record["num_classes"])
        writer.writerow(["image", *(f"{key}_{i}" for i in range(1, k + 1) for key in ("class", "prob"))])
        for path, top in rows:
            writer.writerow([str(path), *(v for c, p in top for v in (c, f"{p:.6f}"))])
    print(f"predictions written to {args.csv}")
    return 0


def full_reference() -> str:
    """``docs/config.md``: every config key, each task's own section, then every method's options, task by task."""
    lines = [config_reference()]
    for task_name in list_tasks():
        task = get_task(task_name)
        if task.Options is not None:
            lines += [f"## `{task_name}` — the {task_name} task's own section: {task.Options.__doc__}", "",
                      *options_table(task.Options, f"{task_name}.")[0], ""]
    lines += ["## `method` — options of each method, by task", "",
             "`method.name` picks the method; `method.preset` fills a named set of options first, and keys given",
             "beside it override the preset.", ""]
    for task_name in list_tasks():
        registry = get_task(task_name).methods
        lines += [f"## Methods of task `{task_name}`", ""]
        for name in registry.names():
            lines += method_reference(name, registry)
    return "\n".join(lines)


def _cmd_list(args: argparse.Namespace) -> int:
    if args.what == "methods":
        for task_name in list_tasks():
            registry = get_task(task_name).methods
            print(f"# task: {task_name}")
            for name in registry.names():
                d = describe_method(name, registry)
                print(f"{name:18s} {d['doc']}")
                if args.verbose:
                    print(f"    options: {d['options']}\n    data: {d['requirements']}  passes/step: "
                          f"{d['passes_per_step']}  presets: {d['presets'] or '-'}")
    elif args.what == "config":
        print(full_reference())
    elif args.what == "tasks":
        for task_name in list_tasks():
            task = get_task(task_name)
            print(f"{task_name:16s} metrics {', '.join(task.metrics)}; section "
                  f"{task_name + ':' if task.Options is not None else '-'}")
    else:
        for task_name in list_tasks():
            task = get_task(task_name)
            print("\n".join([f"# task: {task_name}", *(task.model_names() if args.what == "models"
                                                        else task.dataset_names())]))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import load_grid, run_grid

    grid = load_grid(args.config, args.out, plugins=args.plugins)
    if args.dry_run:
        for run in grid.runs:
            changes = run.changes()
            print(f"{'stale' if changes else run.status:8s} {run.run_dir}"
                  + (f"  (other settings: {'; '.join(changes)})" if changes else ""))
        return 0
    failed = run_grid(grid, jobs=args.jobs)
    if failed:
        print(f"{len(failed)} runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .bench import write_report
    from .bench.report import headline_sections, results_sections, update_headline, update_readme

    if args.results:
        if not (args.readme or args.headline):
            raise ConfigError("--results needs --readme (the file whose results block it writes) or --headline (the "
                              "file whose headline block it writes), or both")
        if args.readme:
            update_readme(args.readme, results_sections(args.results))
            print(f"results block of {args.readme} written from {args.results}")
        if args.headline:
            update_headline(args.headline, headline_sections(args.results), args.readme)
            print(f"headline block of {args.headline} written from {args.results}")
        return 0
    if args.headline:
        raise ConfigError("--headline needs --results (the manifest whose entries' 'headline' pick the rows)")
    if not args.runs_dir:
        raise ConfigError("name the run folders to report (or --results with --readme or --headline)")
    if args.relabel and not args.compare:
        raise ConfigError("--relabel renames labels in a --compare table; add --compare")
    if args.ladder and args.compare:
        raise ConfigError("--ladder adds a table to a report, not to a --compare table; drop one of them")
    if args.compare:
        from .bench.compare import parse_relabel, write_comparison

        named = dict(item.split("=", 1) if "=" in item else (Path(item).parent.name, item) for item in args.runs_dir)
        relabel = parse_relabel(args.relabel, list(named))
        print(f"comparison written to {write_comparison(named, args.out or 'comparison', args.baseline, relabel)}")
        return 0
    out = write_report(args.runs_dir, args.out, baseline=args.baseline, split=args.split, ladder=tuple(args.ladder))
    print(f"report written to {out}")
    if args.readme:
        update_readme(args.readme, out, args.quoted_command or f"selfdistill report {' '.join(args.runs_dir)}")
        print(f"results block of {args.readme} updated")
    return 0


def _demo_run(label: str, method: dict[str, Any], seed: int, args: argparse.Namespace) -> RunSummary:
    cfg = json.loads(json.dumps(DEMO_CONFIG))
    cfg["name"] = f"demo_digits_{re.sub(r'[^0-9a-z]+', '_', label).strip('_')}_s{seed}"
    cfg["method"], cfg["seed"] = method, seed
    set_by_path(cfg, "out", args.out)
    if args.epochs:
        set_by_path(cfg, "train.epochs", args.epochs)
    run_dir = Path(args.out) / cfg["name"]
    if (run_dir / "config.yaml").is_file():  # a previous demo run: start it afresh
        shutil.rmtree(run_dir)
    return train(cfg)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .bench.report import Run, fmt, mean_std, read_rows

    rows = [("method", "test top-1 %", "Δ vs ce, per seed", "ECE %", "s/epoch")]
    print("selfdistill demo: cross-entropy, Intra-class Patch Swap and its same-images control on scikit-learn's 8×8 "
          f"digits (offline), 20 training images per class, ResNet-8, CPU, seeds {list(DEMO_SEEDS)}\n")
    runs = {label: [_demo_run(label, m, seed, args) for seed in DEMO_SEEDS] for label, m in DEMO_METHODS.items()}
    ce = [s.test("top1") for s in runs["ce"]]
    for label, summaries in runs.items():
        top1 = [s.test("top1") for s in summaries]
        delta = "–" if label == "ce" else ", ".join(f"{t - c:+.2f}" for t, c in zip(top1, ce, strict=True))
        rows.append((label, fmt(*mean_std(top1)), delta, fmt(*mean_std([s.test("ece") for s in summaries])),
                     f"{statistics.mean(s.seconds_per_epoch for s in summaries):.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for i, r in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    s = runs["ce"][0]
    gap = statistics.mean(c.train_fit["top1"] - Run(c, read_rows(Path(c.run))).metric("val", "top1")
                          for c in runs["ce"])
    print(f"\n{s.num_train} train / {s.num_val} validation / {s.num_test} test images (one test image is "
          f"{100 / s.num_test:.2f} points): read each Δ against the seeds' spread.\n"
          f"CE's clean training top-1 minus its validation top-1 here: {gap:.1f} points. docs/ips.md picks the IPS "
          f"reading by that gap: the defaults where CE memorises its training images (a large gap, e.g. 41 points "
          f"on the 100-class benchmark), preset robust where it does not (e.g. 13 on CIFAR-10 with 10,000 images).\n"
          f"The measured comparison, on 100 classes with three paired seeds, the controls and the cost of each "
          f"method, is the README's Results (docs/results.md). Runs in {args.out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    p = argparse.ArgumentParser(prog="selfdistill", description="Self-distillation for computer vision.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one run from a YAML config")
    t.add_argument("--config", required=True, help="YAML config file (see configs/)")
    t.add_argument("--out", help="parent folder of the run directory (default: the config's 'out', runs/)")
    t.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    _add_config_args(t)
    _add_plugin_arg(t)
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint")
    e.add_argument("--checkpoint", required=True, help="a run's last.pt")
    e.add_argument("--split", choices=["test", "val", "train"], default="test")
    e.add_argument("--ema", action="store_true", help="evaluate the EMA copy of the model")
    _add_config_args(e)
    _add_plugin_arg(e)
    e.set_defaults(func=_cmd_eval)

    x = sub.add_parser("export", help="write a run's inference model as safetensors, with a JSON record beside it")
    x.add_argument("--checkpoint", required=True, help="a run's last.pt")
    x.add_argument("--ema", action="store_true", help="export the EMA copy of the model")
    x.add_argument("--out", required=True, help="the weights file to write (e.g. model.safetensors); the record "
                                                 "goes beside it (model.json)")
    _add_plugin_arg(x)
    x.set_defaults(func=_cmd_export)

    pr = sub.add_parser("predict", help="top-k classes of images under an exported classification model")
    pr.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    pr.add_argument("--model", required=True, help="an exported model (selfdistill export)")
    pr.add_argument("--topk", type=int, default=5, help="classes to show per image")
    pr.add_argument("--csv", help="write the predictions to this CSV file instead of printing them")
    pr.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    pr.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    _add_plugin_arg(pr)
    pr.set_defaults(func=_cmd_predict)

    ls = sub.add_parser("list", help="list methods, models, datasets, tasks or config keys")
    ls.add_argument("what", choices=["methods", "models", "datasets", "tasks", "config"])
    ls.add_argument("--verbose", "-v", action="store_true", help="show each method's options and requirements")
    _add_plugin_arg(ls)
    ls.set_defaults(func=_cmd_list)

    b = sub.add_parser("bench", help="run a grid of configs (methods × models × seeds × ...), resumable")
    b.add_argument("--config", required=True, help="grid YAML (see docs/bench.md)")
    b.add_argument("--out", help="output tree (default: the grid's 'out', relative to the grid file)")
    b.add_argument("--jobs", type=int, default=1, help="runs at once; torch threads are split between them")
    b.add_argument("--dry-run", action="store_true", help="list the runs and their status, run nothing")
    _add_plugin_arg(b)
    b.set_defaults(func=_cmd_bench)

    r = sub.add_parser("report", help="tables (markdown, CSV) and plots from a tree of runs")
    r.add_argument("runs_dir", nargs="*", help="folders holding run directories (searched recursively)")
    r.add_argument("--out", help="report folder (default: the first RUNS_DIR/../report)")
    r.add_argument("--split", choices=["test", "val"], default="test",
                   help="val: tables and curves from the validation split only (for choosing settings)")
    r.add_argument("--compare", action="store_true",
                   help="one table of each method's paired gain over the baseline on each benchmark; RUNS_DIR are "
                        "NAME=PATH, PATH a run folder or a report's runs.csv")
    r.add_argument("--relabel", action="append", default=[], nargs=3, metavar=("NAME", "OLD", "NEW"),
                   help="with --compare: rename benchmark NAME's method label OLD to NEW (repeatable), e.g. when "
                        "a method's defaults changed after that benchmark ran")
    r.add_argument("--baseline", default="ce", help="method label the gains are measured against")
    r.add_argument("--ladder", action="append", default=[], metavar="LABEL",
                   help="a rung of the gain ladder (repeatable, in order, each adding one thing to the one before): "
                        "each step's paired gain over the rung before it, e.g. --ladder ce --ladder 'ips(p_swap=0.0, "
                        "lambda_kd=0.0)' --ladder 'ips(lambda_kd=0.0)' --ladder ips")
    r.add_argument("--readme", help="also replace the results block of this markdown file (e.g. docs/results.md) "
                                    "with the report's tables")
    r.add_argument("--command", dest="quoted_command",  # not ``command``: that names the subcommand
                   help="the command line quoted in the results block (how the runs were produced)")
    r.add_argument("--results", help="with --readme and/or --headline: build the blocks from several reports listed "
                                     "in this YAML file (report, command, heading, optional headline per entry)")
    r.add_argument("--headline", help="with --results: replace the headline block of this markdown file (e.g. "
                                      "README.md) with the rows and columns each entry's 'headline' picks, and link "
                                      "the --readme file")
    r.set_defaults(func=_cmd_report)

    d = sub.add_parser("demo", help="CE, IPS and its same-images control on scikit-learn's digits, three seeds, "
                                     "offline (about a minute on CPU)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--epochs", type=int, default=0, help="override the demo's epochs")
    d.set_defaults(func=_cmd_demo)
    return p


USER_ERRORS = (ConfigError, DataError, CheckpointError, UnknownNameError, RunExistsError, NonFiniteLossError,
               PluginError)


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors (bad config, data or checkpoint) print one clear line and exit with status 2, without
    a traceback unless ``SELFDISTILL_DEBUG=1``. Under ``torchrun`` a failing rank leaves the process group at once
    (no barrier: the other ranks may never reach it), so its exit is not buried under gloo's abort. A run or grid
    stopped by a stop signal (``train.stop_signals``; the run has logged where) exits with :data:`EXIT_STOPPED`."""
    args = build_parser().parse_args(argv)
    try:
        import_plugins(getattr(args, "plugins", []))
        code = args.func(args)
        close_distributed()
        return code
    except TrainingStopped:
        close_distributed()  # every rank stopped after the same step: the barrier waits for rank 0's checkpoint
        return EXIT_STOPPED
    except USER_ERRORS as exc:
        close_distributed(barrier=False)
        if os.environ.get("SELFDISTILL_DEBUG"):
            raise
        print(f"selfdistill: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nselfdistill: interrupted; the last checkpoint is kept, continue with --resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (`selfdistill list | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
