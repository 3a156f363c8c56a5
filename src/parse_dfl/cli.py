"""The `parse-dfl` command line.

Every mistake in the input ends as one line `parse-dfl: error: <field>: <problem>` and exit
code 2; nothing is written for a run that did not finish.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from parse_dfl.errors import UserError
from parse_dfl.text import text_table


def accuracy_table(results: list[dict[str, Any]]) -> str:
    """Methods as rows; per agent type and mean, under both protocols."""
    types = list(results[0]["by_type"])
    head = ["method"] + [f"{t} (global)" for t in types] + ["mean (global)"]
    head += [f"{t} (local)" for t in types] + ["mean (local)", "seconds"]
    rows = [head]
    for r in results:
        row = [r["method"]]
        row += [f"{100 * r['by_type'].get(t, float('nan')):.1f}" for t in types]
        row.append(f"{100 * r['mean_accuracy']:.1f}")
        row += [f"{100 * r['by_type_local'].get(t, float('nan')):.1f}" for t in types]
        row.append(f"{100 * r['mean_local_accuracy']:.1f}")
        row.append(f"{r['wall_seconds']:.0f}")
        rows.append(row)
    return text_table(rows)


def _cmd_run(args: argparse.Namespace) -> int:
    """Check every run folder before any training (a finished or interrupted run there is
    never replaced without --overwrite), then run each method."""
    from parse_dfl.config import load_config
    from parse_dfl.experiments.run import check_run_folder, new_run_folder, remove_if_empty, run

    if args.resume:
        from parse_dfl.experiments.run import resume_config

        if args.config or args.set or args.methods:
            raise UserError("--resume", "give only the run folder: its config is in it")
        if args.overwrite or args.out:
            flag = "--overwrite" if args.overwrite else "--out"
            raise UserError(flag, "not with --resume, which continues the run in its own folder")
        if args.nprocs is not None:
            # refuse a finished or empty folder, or too many processes, here, in one line
            _check_nprocs(args.nprocs, resume_config(args.resume))
            return _torchrun(args.nprocs, ["--resume", args.resume], args.quiet)
        r = run(resume_config(args.resume), Path(args.resume), progress=not args.quiet, resume=True)
        print(accuracy_table([r]))
        print(f"run folder: {args.resume}")
        return 0
    if not args.config:
        raise UserError("run", "a config file is needed (or --resume RUN-DIR)")
    cfg = load_config(args.config, args.set)
    if args.nprocs is not None:
        _check_nprocs(args.nprocs, cfg)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else [cfg.method.name]
    twice = sorted({m for m in methods if methods.count(m) > 1})
    if twice:
        raise UserError("--methods", f"{', '.join(twice)} given twice")
    configs = []
    for name in methods:
        configs.append(
            cfg
            if name == cfg.method.name
            else load_config(args.config, [*args.set, f"method.name={name}"])
        )
    if args.out:
        out, fresh = Path(args.out), False
        check_run_folder(out, overwrite=args.overwrite)
        if len(configs) > 1:
            for c in configs:
                check_run_folder(out / c.method.name, overwrite=args.overwrite)
    else:  # never nowhere, never over another run: a new folder under runs/
        out, fresh = new_run_folder("+".join(c.method.name for c in configs)), True
    try:
        if args.nprocs is not None:
            code = _launch(args, configs, out)  # process 0 prints the run folder
            if code and fresh:
                remove_if_empty(out)
            return code
        targets = [out / c.method.name if len(configs) > 1 else out for c in configs]
        results = _run_methods(configs, targets, args.jobs, quiet=args.quiet)
    except BaseException:
        if fresh:
            remove_if_empty(out)  # a run that wrote nothing leaves no empty folder behind
        raise
    first = results[0]
    print(
        f"{first['dataset']}: {len(first['agents'])} agents, {first['rounds']} rounds, "
        f"seed {first['seed']}; accuracy in % (global = all agents' test samples, "
        f"local = own test split)"
    )
    print(accuracy_table(results))
    print(f"run folder: {out}")
    return 0


def _run_methods(configs: list, targets: list[Path], jobs: int, quiet: bool) -> list[dict]:
    """Each method's run, one after the other or in `jobs` processes of one torch thread
    each (two methods on two cores take about the time of one)."""
    from parse_dfl.experiments.run import run

    def done(r: dict) -> None:
        if not quiet:
            print(
                f"{r['method']}: global {100 * r['mean_accuracy']:.1f} %, "
                f"local {100 * r['mean_local_accuracy']:.1f} %, {r['wall_seconds']:.0f} s",
                file=sys.stderr,
            )

    if jobs < 1:
        raise UserError("--jobs", f"must be at least 1 (got {jobs})")
    if jobs == 1 or len(configs) == 1:
        results = []
        for c, target in zip(configs, targets, strict=True):
            results.append(run(c, target, progress=not quiet))
            done(results[-1])
        return results
    import concurrent.futures as cf
    import multiprocessing

    from parse_dfl.experiments.sweep import _init_worker

    ctx = multiprocessing.get_context("spawn")  # no fork after torch threads started
    with cf.ProcessPoolExecutor(
        max_workers=min(jobs, len(configs)), mp_context=ctx, initializer=_init_worker
    ) as pool:
        futures = [
            pool.submit(run, c, target, False) for c, target in zip(configs, targets, strict=True)
        ]
        for f in cf.as_completed(futures):
            done(f.result())
        return [f.result() for f in futures]


def _check_nprocs(nprocs: int, cfg: Any) -> None:
    """Refuse a process count the job cannot use before any process starts: each process
    needs at least one agent, so torchrun would start them all only for each to fail."""
    agents = sum(cfg.agents.mix.values())
    if not 1 <= nprocs <= agents:
        raise UserError(
            "--nprocs", f"must be 1..{agents}, one process per agent at most (got {nprocs})"
        )


def _launch(args: argparse.Namespace, configs: list, out: Path | None) -> int:
    """`--nprocs N`: each method as one torchrun job of N processes on this machine."""
    for c in configs:
        target = out / c.method.name if (out is not None and len(configs) > 1) else out
        sets = [*args.set, f"method.name={c.method.name}", "engine.name=distributed"]
        launch = [args.config, *[x for kv in sets for x in ("--set", kv)]]
        if target is not None:
            launch += ["--out", str(target)]
        code = _torchrun(args.nprocs, launch, args.quiet)
        if code:
            return code
    return 0


def _torchrun(nprocs: int, launch: list[str], quiet: bool) -> int:
    """One torchrun job of `nprocs` processes on this machine, failing as one process does.

    torchrun's log and its multi-line report of a failed job go to a file; the processes'
    own output (tables, rank 0's progress bar) reaches the console as it is. When the job
    fails, the first failing process's line is printed: exit 2 for bad input, 1 for a crash
    (then the folder with its traceback is kept and named)."""
    import os
    import shutil
    import signal
    import subprocess
    import tempfile

    from parse_dfl.launch import ERROR_DIR, first_failure

    if nprocs < 1:
        raise UserError("--nprocs", f"must be at least 1 (got {nprocs})")
    folder = Path(tempfile.mkdtemp(prefix="parse-dfl-launch-"))
    cmd = [
        sys.executable, "-m", "parse_dfl.launch", "--agent", "--standalone",
        f"--nproc-per-node={nprocs}", "-m", "parse_dfl.launch", *launch,
    ]  # fmt: skip
    proc = subprocess.Popen(
        [*cmd, "--quiet"] if quiet else cmd, env={**os.environ, ERROR_DIR: str(folder)}
    )
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # torchrun got the signal too: it stops its workers
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    failure = first_failure(folder) if code else None
    if code == 0 or code > 128 or (failure is not None and failure.code == 2):
        shutil.rmtree(folder, ignore_errors=True)
    if code == 0:
        return 0
    if code > 128:  # torchrun was stopped by a signal (Ctrl-C) and stopped its workers
        if code - 128 == signal.SIGINT:
            raise KeyboardInterrupt
        print(f"parse-dfl: stopped by {signal.Signals(code - 128).name}", file=sys.stderr)
        return code
    if failure is None:
        print(
            f"parse-dfl: error: torchrun failed (exit code {code}); its log: "
            f"{folder / 'torchrun.log'}",
            file=sys.stderr,
        )
        return 1
    if failure.code == 2:
        print(f"parse-dfl: error: {failure.message}", file=sys.stderr)
        return 2
    print(
        f"parse-dfl: rank {failure.rank} crashed: {failure.message} (log: {failure.log})",
        file=sys.stderr,
    )
    return 1


def _cmd_datasets(args: argparse.Namespace) -> int:
    from parse_dfl.data import SOURCES

    rows = [["source", "available", "default modalities", "description"]]
    for s in SOURCES.values():
        ok, why = s.available()
        rows.append(
            [s.name, "yes" if ok else f"no ({why})", "+".join(s.default_modalities), s.description]
        )
    print(text_table(rows))
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from parse_dfl.methods import METHODS

    print(
        text_table(
            [["method", "description"]] + [[m.name, m.description] for m in METHODS.values()]
        )
    )
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from parse_dfl.config import describe_fields

    rows = [list(r) for r in describe_fields()]
    if args.markdown:
        print("| key | default | meaning |\n|---|---|---|")
        for key, default, doc in rows:
            print(f"| `{key}` | `{default}` | {doc.replace('|', '/')} |")
    else:
        print(text_table([["key", "default", "meaning"], *rows]))
    return 0


def _dry_run(args: argparse.Namespace) -> int:
    """Validate every run and print what the sweep would cost; nothing runs, nothing is written."""
    from parse_dfl.experiments.sweep import plan_sweep

    if args.reuse:
        raise UserError("--reuse", "copies runs: not with --dry-run")
    plan = plan_sweep(
        args.sweep,
        out=args.out,
        only=args.only,
        timing=args.time,
        log=None if args.quiet else (lambda msg: print(msg, file=sys.stderr)),
    )
    where = plan["out"] + ("" if plan["out_exists"] else " (does not exist yet)")
    print(
        f"dry run of sweep {plan['name']}: {plan['runs']} runs, every config valid; "
        f"{plan['finished']} finished before, {plan['to_run']} to run "
        f"({plan['resumable']} from a checkpoint); folder {where}, not written"
    )
    for note in plan["notes"]:
        print(f"note: {note}")
    if not plan["to_run"]:
        return 0
    head = ["method", "runs", "agent-rounds", "local agent-steps"]
    if plan["seconds"] is not None:
        head.append("estimated seconds")
    rows = [head]
    for method, m in plan["methods"].items():
        row = [method, str(m["runs"]), f"{m['agent_rounds']:,}", f"{m['agent_steps']:,}"]
        if plan["seconds"] is not None:
            row.append(f"~{m['seconds']:,.0f}")
        rows.append(row)
    total = ["total", str(plan["to_run"]), f"{plan['agent_rounds']:,}", f"{plan['agent_steps']:,}"]
    rows.append(total + ([f"~{plan['seconds']:,.0f}"] if plan["seconds"] is not None else []))
    print(text_table(rows))
    print("cost: agent-rounds = agents x rounds, local agent-steps = x train.local_steps")
    if plan["seconds"] is None:
        print("for a time estimate add --time (runs one round of each method, writes nothing)")
    else:
        print(
            f"time: an ESTIMATE from one timed round per method on this machine, scaled by "
            f"rounds x agents x local steps and counting an evaluation every round (an upper "
            f"figure when train.eval_every > 1): about {plan['seconds'] / 3600:.2f} h of runs, "
            f"about {plan['seconds'] / 3600 / max(1, args.jobs):.2f} h with --jobs {args.jobs}"
        )
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from parse_dfl.experiments.sweep import run_sweep

    if args.jobs < 1:
        raise UserError("--jobs", f"must be at least 1 (got {args.jobs})")
    if args.time and not args.dry_run:
        raise UserError("--time", "only with --dry-run")
    if args.dry_run:
        return _dry_run(args)
    summary = run_sweep(
        args.sweep,
        out=args.out,
        jobs=args.jobs,
        only=args.only,
        reuse=args.reuse,
        progress=not args.quiet,
        log=None if args.quiet else (lambda msg: print(msg, file=sys.stderr)),
    )
    print(
        f"sweep {summary['name']}: {summary['runs']} runs, {summary['ran']} run now, "
        f"{summary['skipped']} finished before, {summary['failed']} failed "
        f"({summary['seconds']:.0f} s); folder: {summary['out']}"
    )
    for name, error in summary["failures"].items():
        print(f"  failed: {name}: {error}")
    if summary["failed"]:
        return 1
    print(f"next: parse-dfl report {summary['out']}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    """Run a tune file's grid, choose each method's setting on validation data, write it."""
    from parse_dfl.experiments.sweep import run_tune

    if args.jobs < 1:
        raise UserError("--jobs", f"must be at least 1 (got {args.jobs})")
    done = run_tune(
        args.sweep,
        out=args.out,
        jobs=args.jobs,
        progress=not args.quiet,
        write=args.write,
        log=None if args.quiet else (lambda msg: print(msg, file=sys.stderr)),
    )
    summary, doc = done["sweep"], done["tuned"]
    print(
        f"tune {summary['name']}: {summary['runs']} runs, {summary['ran']} run now, "
        f"{summary['skipped']} finished before, {summary['failed']} failed; folder "
        f"{summary['out']}"
    )
    print(
        f"chosen on validation data (partition.val_fraction={doc['val_fraction']}, seeds "
        f"{', '.join(map(str, doc['seeds']))}): highest mean validation accuracy, global "
        "protocol (ties: local)"
    )
    rows = [["method", "setting", "val global", "val local", "settings tried"]]
    for method, m in doc["methods"].items():
        setting = " ".join(f"{k}={v}" for k, v in m["set"].items()) or "(the base config)"
        rows.append(
            [
                method,
                setting,
                f"{100 * m['val_accuracy']:.1f}",
                f"{100 * m['val_local_accuracy']:.1f}",
                str(len(m["candidates"])),
            ]
        )
    print(text_table(rows))
    for method, missing in doc.get("unfinished", {}).items():
        print(f"  not chosen: {method}: {missing} run(s) unfinished or failed; run it again")
    if done["path"] is None:
        print("no method could be chosen: nothing written")
        return 1
    print(f"tuned: {done['path']} (use it in a sweep file: `tuned: <path from the sweep file>`)")
    return 1 if doc.get("unfinished") else 0


def _cmd_report(args: argparse.Namespace) -> int:
    import importlib.util

    from parse_dfl.experiments.report import write_report

    if args.export:  # the compact raw results, no report (needs no matplotlib)
        from parse_dfl.experiments.export import export_results

        for path, runs in export_results(args.dir, args.export):
            print(f"export: {path} ({runs} runs, {path.stat().st_size / 1e3:,.1f} KB)")
        return 0
    if importlib.util.find_spec("matplotlib") is None:  # an optional extra: say so, in one line
        raise UserError("report", "needs matplotlib (pip install 'parse-dfl[report]')")

    path = write_report(
        args.dir,
        out=args.out,
        tsne=not args.no_tsne,
        figures=args.figures,
        pid=not args.no_pid,
        final_last=args.final_last,
        group_figures=not args.no_group_figures,
    )
    print(f"report: {path}")
    return 0


def _cmd_pid(args: argparse.Namespace) -> int:
    """The four terms with their shuffled-label null beside them, and a warning line when the
    sample is too small for the estimate to mean anything (docs/pid.md)."""
    import json

    from parse_dfl.config import load_config
    from parse_dfl.diagnostics import dataset_pid, format_pid

    cfg = load_config(args.config, args.set)
    if args.clusters is not None and args.clusters < 1:
        raise UserError("--clusters", "must be at least 1")
    if args.shuffles < 0:
        raise UserError("--shuffles", "must be 0 or more")
    pair = None if args.modalities is None else args.modalities.split(",")
    try:
        res = dataset_pid(cfg, clusters=args.clusters, shuffles=args.shuffles, modalities=pair)
    except UserError as e:
        if e.where != "modalities":
            raise
        raise UserError("--modalities", e.problem) from None
    print(format_pid(res))
    if args.json:
        from parse_dfl.experiments.run import atomic_write

        out = {
            "R": res["R"],
            "U1": res["U1"],
            "U2": res["U2"],
            "S": res["S"],
            "estimator": res["estimator"],
            **{k: v for k, v in res.items() if k not in ("R", "U1", "U2", "S", "estimator")},
        }
        atomic_write(Path(args.json), json.dumps(out, indent=2, default=float))
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    import json

    from parse_dfl.diagnostics import format_probe, probe_run

    if args.clusters is not None and args.clusters < 1:
        raise UserError("--clusters", "must be at least 1")
    res = probe_run(args.run_dir, agent=args.agent, clusters=args.clusters)
    print(format_probe(res))
    if args.json:
        from parse_dfl.experiments.run import atomic_write

        atomic_write(Path(args.json), json.dumps(res, indent=2, default=float))
    return 0


def _cmd_missing(args: argparse.Namespace) -> int:
    """Every run folder named, or found under a folder named (a sweep folder, a folder of
    `run --methods`), as `report` finds them; runs without a multimodal agent found under a
    folder are passed over with a note (a sweep over agent mixes has some), named ones refused."""
    import json

    from parse_dfl.diagnostics import format_missing, missing_modality_accuracy
    from parse_dfl.diagnostics.missing import run_folders

    results: list[dict[str, Any]] = []
    passed: list[str] = []
    for d in map(Path, args.run_dirs):
        found = run_folders(d)
        for run_dir in found:
            try:
                results.append(missing_modality_accuracy(run_dir))
            except UserError as e:
                if found == [d] or "no multimodal agent" not in e.problem:
                    raise
                passed.append(str(run_dir))
    if not results:
        raise UserError(" ".join(args.run_dirs), "no run with a multimodal agent")
    print(format_missing(results))
    if passed:
        print(f"passed over (no multimodal agent): {', '.join(passed)}")
    if args.json:
        from parse_dfl.experiments.run import atomic_write

        out = results[0] if len(results) == 1 else results
        atomic_write(Path(args.json), json.dumps(out, indent=2, default=float))
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    """Write the shipped example configs and the bring-your-own-data example into a new (or
    empty) folder: a start that runs without a clone of the repository."""
    from importlib.resources import files

    from parse_dfl.files import atomic_write_files

    folder = Path(args.dir)
    if folder.exists() and not folder.is_dir():
        raise UserError(str(folder), "is a file, not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not args.force:
        raise UserError(
            str(folder), "is not empty; choose a new folder, or --force to write into it"
        )
    examples = files("parse_dfl").joinpath("examples")
    items = sorted((e.name, e.read_bytes()) for e in examples.iterdir() if e.is_file())
    atomic_write_files([(folder / name, data) for name, data in items])
    print(f"wrote {', '.join(name for name, _ in items)} to {folder}")
    print(f"next: cd {folder} && parse-dfl run quick.yaml   (see README.md there)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from parse_dfl import __version__

    p = argparse.ArgumentParser(prog="parse-dfl", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"parse-dfl {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run one config (one or more methods) and write a run folder")
    r.add_argument("config", nargs="?", help="YAML config file")
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.rounds=5 (repeatable)",
    )
    r.add_argument(
        "--out",
        help="run folder (with several methods: one subfolder each); default: a new folder "
        "runs/METHOD-DATE-TIME. A folder holding a run is refused unless --overwrite",
    )
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (kept until the new run has finished, unless it "
        "writes checkpoints; a stale checkpoint.pt is removed at once)",
    )
    r.add_argument("--methods", help="comma-separated methods to run on the same config")
    r.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="with --methods: run up to N methods at once, in processes of one thread each",
    )
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument(
        "--nprocs",
        type=int,
        metavar="N",
        help="run on the distributed engine in N processes on this machine (torchrun)",
    )
    r.add_argument(
        "--resume", metavar="RUN-DIR", help="continue an interrupted run from its checkpoint"
    )
    r.set_defaults(func=_cmd_run)

    sw = sub.add_parser(
        "sweep", help="run every config of a sweep file (grid of overrides), skipping finished runs"
    )
    sw.add_argument("sweep", help="sweep YAML file (see docs/experiments.md)")
    sw.add_argument("--out", help="sweep folder (default: the sweep file's `out`)")
    sw.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    sw.add_argument("--quiet", action="store_true", help="no progress bars")
    sw.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run only the runs whose config has this value (repeat; one key given twice: "
        "either value), e.g. --only seed=0",
    )
    sw.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="DIR",
        help="copy finished runs with exactly the same config from DIR instead of rerunning",
    )
    sw.add_argument(
        "--dry-run",
        action="store_true",
        help="validate every run and print the count and cost (agent-rounds); run nothing, "
        "write nothing",
    )
    sw.add_argument(
        "--time",
        action="store_true",
        help="with --dry-run: also estimate seconds from one timed round of each method",
    )
    sw.set_defaults(func=_cmd_sweep)

    tn = sub.add_parser(
        "tune",
        help="run a tune file's grid per method and write each method's setting chosen on "
        "validation data (a tuned file for sweeps)",
    )
    tn.add_argument("sweep", help="tune file: a sweep file with a `tune:` section")
    tn.add_argument("--out", help="folder of its runs (default: the tune file's `out`)")
    tn.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    tn.add_argument("--quiet", action="store_true", help="no progress bars")
    tn.add_argument("--write", metavar="FILE", help="tuned file to write (default: tune.out)")
    tn.set_defaults(func=_cmd_tune)

    rp = sub.add_parser(
        "report", help="tables and figures (report.md) from every results.json under a folder"
    )
    rp.add_argument(
        "dir",
        help="folder with run folders (e.g. a sweep folder), or a compact export "
        "NAME.jsonl.gz (then the report is NAME.md and the figures NAME/ beside it)",
    )
    rp.add_argument("--out", help="report file (default DIR/report.md); figures go to DIR/figures")
    rp.add_argument("--figures", help="folder for the PNG figures (default DIR/figures)")
    rp.add_argument("--no-tsne", action="store_true", help="skip the t-SNE of PARSE's slices")
    rp.add_argument(
        "--no-group-figures",
        action="store_true",
        help="no curves, bars or bytes figure per table (a report of many tables stays small)",
    )
    rp.add_argument(
        "--no-pid", action="store_true", help="skip the dataset PID and the slice probes"
    )
    rp.add_argument(
        "--final-last",
        type=int,
        default=1,
        metavar="K",
        help="final accuracy = mean of each run's last K evaluations (default 1: the last "
        "one); smooths curves that swing between evaluations",
    )
    rp.add_argument(
        "--export",
        metavar="OUT",
        help="write no report: write the results under DIR compactly into folder OUT, one "
        "NAME.jsonl.gz per sweep (results.json without models, history kept), which "
        "`parse-dfl report OUT/NAME.jsonl.gz` reads back",
    )
    rp.set_defaults(func=_cmd_report)

    pid = sub.add_parser(
        "pid",
        help="partial information decomposition of a dataset's two "
        "modalities about the label (bits)",
    )
    pid.add_argument("config", help="YAML config file (its data section is used)")
    pid.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    pid.add_argument("--json", metavar="FILE", help="also write the estimate as JSON")
    pid.add_argument("--clusters", type=int, help="k-means bins per modality (default: by source)")
    pid.add_argument(
        "--modalities",
        metavar="A,B",
        help="the pair to decompose (default: the first two configured modalities)",
    )
    pid.add_argument(
        "--shuffles",
        type=int,
        default=5,
        help="label-shuffled estimates whose mean is the null beside each term (default 5; "
        "0: none)",
    )
    pid.set_defaults(func=_cmd_pid)

    pr = sub.add_parser(
        "probe",
        help="what a PARSE or parse-plus run's unique/redundant/synergistic slices carry "
        "(linear probes, PID)",
    )
    pr.add_argument("run_dir", metavar="RUN-DIR", help="a finished parse or parse-plus run folder")
    pr.add_argument(
        "--agent", type=int, help="agent id (default: the first agent with two or more modalities)"
    )
    pr.add_argument("--clusters", type=int, help="k-means cells per slice for the PID")
    pr.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    pr.set_defaults(func=_cmd_probe)

    ms = sub.add_parser(
        "missing",
        help="accuracy of multimodal agents when one of their modalities fails at test time",
    )
    ms.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN-DIR",
        help="finished run folder(s); a folder of run folders (a sweep folder, a folder of "
        "`run --methods`) counts as every run under it",
    )
    ms.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    ms.set_defaults(func=_cmd_missing)

    sub.add_parser("datasets", help="list data sources and whether each is available").set_defaults(
        func=_cmd_datasets
    )
    sub.add_parser("methods", help="list methods").set_defaults(func=_cmd_methods)
    it = sub.add_parser(
        "init", help="write starter configs and a bring-your-own-data example into a folder"
    )
    it.add_argument("dir", metavar="DIR", help="folder to create (refused if not empty)")
    it.add_argument(
        "--force", action="store_true", help="write into a non-empty folder (replacing those files)"
    )
    it.set_defaults(func=_cmd_init)
    c = sub.add_parser("config", help="every config key with its default and meaning")
    c.add_argument("--markdown", action="store_true", help="as a Markdown table")
    c.set_defaults(func=_cmd_config)
    return p


def _error(message: str) -> int:
    print(f"parse-dfl: error: {' '.join(message.splitlines())}", file=sys.stderr)
    return 2


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: the reader (`| head`) has gone, and the interpreter's own
    flush at exit must not fail again with a second BrokenPipeError."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # stdout is not a real file (a test's capture): nothing will flush it at exit


def _warning_line(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """A warning as one line of the tool's own, not Python's `file:line: Category:` form."""
    print(f"parse-dfl: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Every command ends the same way: bad input (UserError, an unreadable
    or unwritable file, a damaged JSON file) as one line and exit code 2; output cut short by
    its reader (`| head`) quietly with 141, like any tool killed by SIGPIPE; anything else is a
    bug and keeps its traceback."""
    import json

    args = build_parser().parse_args(argv)
    warnings.showwarning = _warning_line
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except UserError as e:
        return _error(str(e))
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    except KeyboardInterrupt:
        print("parse-dfl: interrupted", file=sys.stderr)
        return 130
    except json.JSONDecodeError as e:
        return _error(f"{args.command}: a JSON file it reads is damaged ({e})")
    except OSError as e:
        where = e.filename if e.filename is not None else args.command
        return _error(f"{where}: {e.strerror or e}")


if __name__ == "__main__":
    sys.exit(main())
