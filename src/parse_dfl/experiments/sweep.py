"""A sweep: many runs of one base config, described by a small YAML file.

```yaml
name: watch-main                 # default: the file name without .yaml
base: ../watch.yaml              # config file, relative to THIS sweep file (optional)
out: runs/watch-main             # default folder, relative to the working directory
set: [train.rounds=40]           # overrides applied to every run (list or mapping)
grid:                            # key -> values; the runs are the cartesian product
  method.name: [parse, local]
  seed: [0, 1, 2]
runs:                            # optional variants, each crossed with the grid: several
  - {}                           # keys changed together (a mapping or key=value list)
  - {method.name: centralized, topology.name: full}
```

Every run = base config + `set` + one grid point + one variant from `runs` (later wins).
Each run gets its own folder, named from its overrides (`method=parse/seed=0`): the name
only depends on the sweep file, so running the sweep again skips every folder that holds a
results.json (a finished run) and reruns the rest. Every run's config is validated (and its
data, agent mix and topology checked) before any run starts. `sweep.json` in the sweep
folder lists the runs and their status and is rewritten after every run.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import itertools
import json
import multiprocessing
import re
import shlex
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from parse_dfl.config import (
    Config,
    build_config,
    parse_override,
    read_yaml,
    resolve_paths,
    result_defining,
)
from parse_dfl.errors import UserError
from parse_dfl.files import atomic_write_text
from parse_dfl.yamlsafe import load_file

SWEEP_KEYS = ("name", "base", "out", "set", "grid", "runs", "tune", "tuned")


@dataclass
class RunSpec:
    """One run of a sweep: its folder name, the overrides that define it, its config."""

    name: str
    overrides: list[tuple[str, Any]]
    config: Config
    status: str = "pending"  # pending | running | done | failed
    skipped: bool = False  # finished before this invocation
    resume: bool = False  # continue from the folder's checkpoint (checkpoint.every > 0)
    seconds: float | None = None
    mean_accuracy: float | None = None
    mean_local_accuracy: float | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dir": self.name,
            "overrides": [f"{k}={json.dumps(v)}" for k, v in self.overrides],
            "method": self.config.method.name,
            "seed": self.config.seed,
            "status": self.status,
            "skipped": self.skipped,
            "resumed": self.resume,
            "seconds": self.seconds,
            "mean_accuracy": self.mean_accuracy,
            "mean_local_accuracy": self.mean_local_accuracy,
            "error": self.error,
        }


@dataclass
class Sweep:
    name: str
    path: Path
    base: Path | None
    out: Path
    set: list[tuple[str, Any]]
    grid: dict[str, list[Any]]
    variants: list[list[tuple[str, Any]]]
    runs: list[RunSpec] = field(default_factory=list)
    tune: TuneSpec | None = None  # a tune file (`parse-dfl tune`): what to choose, and where
    tuned: Path | None = None  # a tuned file whose chosen settings every run starts from


# ---- naming --------------------------------------------------------------------------------


def _value_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return "-".join(_value_text(x) for x in v)
    if isinstance(v, dict):
        return "_".join(f"{k}-{_value_text(x)}" for k, x in v.items())
    return str(v).replace(":", "-").replace(",", "_")


def slug(text: str, limit: int = 80) -> str:
    """A folder-safe version of `text` (letters, digits and . _ + - =), at most `limit` long."""
    s = re.sub(r"[^A-Za-z0-9._+=-]+", "-", text).strip("-") or "x"
    if s.startswith("."):
        s = "_" + s
    if len(s) > limit:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        s = f"{s[: limit - 9]}~{digest}"
    return s


def short_key(key: str) -> str:
    """`method.name` -> `method`, `topology.name` -> `topology`; other keys stay dotted."""
    return key[: -len(".name")] if key.endswith(".name") else key


def run_name(overrides: list[tuple[str, Any]]) -> str:
    """`[('method.name', 'parse'), ('seed', 0)]` -> `method=parse/seed=0` (one folder a key)."""
    if not overrides:
        return "run"
    return "/".join(slug(f"{short_key(k)}={_value_text(v)}") for k, v in overrides)


# ---- reading a sweep file ------------------------------------------------------------------


def _overrides(items: Any, where: str) -> list[tuple[str, Any]]:
    """A list of `key=value` strings or a mapping -> [(dotted key, value)]."""
    if items is None:
        return []
    if isinstance(items, dict):
        return [(str(k), v) for k, v in items.items()]
    if isinstance(items, list):
        out = []
        for item in items:
            if not isinstance(item, str):
                raise UserError(where, f"{item!r} is not a key=value string")
            path, value = parse_override(item)
            out.append((".".join(path), value))
        return out
    raise UserError(where, "must be a list of key=value strings or a mapping of key: value")


def _set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if not all(parts):
        raise UserError(key, "not a dotted key such as train.rounds")
    node = raw
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise UserError(key, f"'{part}' is not a section")
        node = nxt
    node[parts[-1]] = value


def load_sweep(path: str | Path, out: str | Path | None = None) -> Sweep:
    """Read and expand a sweep file and validate every run's config (nothing runs yet)."""
    path = Path(path)
    spec = read_yaml(path)
    where = str(path)
    for key in spec:
        if key not in SWEEP_KEYS:
            raise UserError(f"{where}: {key}", f"unknown key (a sweep has {', '.join(SWEEP_KEYS)})")
    name = str(spec.get("name") or path.stem)
    base = spec.get("base")
    base_path = None
    if base is not None:
        base_path = (path.parent / str(base)).resolve()
        if not base_path.is_file():
            raise UserError(f"{where}: base", f"config file {base_path} not found")
    out_dir = Path(out) if out is not None else Path(spec.get("out") or Path("runs") / slug(name))
    common = _overrides(spec.get("set"), f"{where}: set")

    grid_raw = spec.get("grid") or {}
    if not isinstance(grid_raw, dict):
        raise UserError(f"{where}: grid", "must be a mapping of config key -> list of values")
    grid: dict[str, list[Any]] = {}
    for key, values in grid_raw.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: grid.{key}", "must be a non-empty list of values")
        grid[str(key)] = values

    runs_raw = spec.get("runs")
    if runs_raw is None:
        variants: list[list[tuple[str, Any]]] = [[]]
    elif isinstance(runs_raw, list) and runs_raw:
        variants = [_overrides(v, f"{where}: runs[{i}]") for i, v in enumerate(runs_raw)]
    else:
        raise UserError(f"{where}: runs", "must be a non-empty list of variants")
    tune = None
    if spec.get("tune") is not None:
        tune = _tune_spec(spec["tune"], f"{where}: tune", path)
        if runs_raw is not None:
            raise UserError(f"{where}: runs", "a tune file makes its runs from `tune`: remove it")
        variants = tune.variants()
    for i, variant in enumerate(variants):
        for key, _ in variant:
            if key in grid and tune is not None:  # a tune file's grid keys are pooled
                raise UserError(f"{where}: grid.{key}", "is also a key the tune grid varies")
            if key in grid:
                raise UserError(f"{where}: runs[{i}]", f"'{key}' is also a grid key: set it once")
    tuned_path = (path.parent / str(spec["tuned"])).resolve() if spec.get("tuned") else None
    tuned = read_tuned(tuned_path, f"{where}: tuned") if tuned_path else {}

    sweep = Sweep(name, path, base_path, out_dir, common, grid, variants, tune=tune)
    sweep.tuned = tuned_path
    # File paths in the base config are relative to the base file, those the sweep sets to
    # the sweep file: each is read against the file that names it (config.resolve_paths).
    base_raw = resolve_paths(read_yaml(base_path), base_path.parent) if base_path else {}
    points = list(itertools.product(*grid.values())) if grid else [()]
    for variant in variants:
        for point in points:
            chosen = variant + list(zip(grid, point, strict=True))
            run = run_name(chosen)
            raw = json.loads(json.dumps(base_raw))  # deep copy
            try:
                for key, value in common + chosen:
                    _set_key(raw, key, value)
                extra = tuned.get(_method_name(raw), [])
                if extra:  # the method's tuned settings first: the sweep's own keys win
                    raw = json.loads(json.dumps(base_raw))
                    for key, value in extra + common + chosen:
                        _set_key(raw, key, value)
                cfg = build_config(resolve_paths(raw, path.parent))
            except UserError as e:
                raise UserError(f"{where}: run '{run}'", str(e)) from None
            if tune is not None and cfg.partition.val_fraction <= 0:
                raise UserError(
                    f"{where}: run '{run}'",
                    "a tune file chooses on validation data, never on test: set "
                    "partition.val_fraction (e.g. 0.2)",
                )
            sweep.runs.append(RunSpec(run, chosen, cfg))
    _dedupe_names(sweep.runs)
    return sweep


def _dedupe_names(runs: list[RunSpec]) -> None:
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.name] = seen.get(r.name, 0) + 1
    for r in runs:
        if seen[r.name] > 1:
            canon = json.dumps(r.overrides, sort_keys=True, default=str)
            r.name = f"{r.name}~{hashlib.sha1(canon.encode()).hexdigest()[:8]}"


def check_runs(sweep: Sweep) -> list[str]:
    """Beyond the config schema: data available, agent mix fits the data, topology builds,
    method accepts the config. Loads each distinct data config once. Returns warnings."""
    from parse_dfl import registry
    from parse_dfl.data import load_dataset
    from parse_dfl.data.partition import partition
    from parse_dfl.graph import Topology

    cache: dict[str, Any] = {}
    notes: list[str] = []
    for r in sweep.runs:
        cfg = r.config
        try:
            key = cfg.data.model_dump_json()
            if key not in cache:
                cache[key] = load_dataset(cfg.data)
            data = cache[key]
            agents = partition(data, cfg)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                registry.resolve("method", cfg.method.name, "method.name").check(cfg, data)
            for w in caught:
                text = f"{cfg.method.name}: {w.message}"
                if text not in notes:
                    notes.append(text)
            Topology(cfg.topology, len(agents), cfg.seed).graph(1)
        except UserError as e:
            raise UserError(f"{sweep.path}: run '{r.name}'", str(e)) from None
        except (ValueError, KeyError) as e:
            raise UserError(f"{sweep.path}: run '{r.name}'", f"{type(e).__name__}: {e}") from None
    return notes


def _finished_config(run_dir: Path) -> dict[str, Any] | None:
    """The config of a finished run folder (None when the folder holds no results.json)."""
    res = run_dir / "results.json"
    if not res.is_file():
        return None
    try:
        return json.loads(res.read_text()).get("config", {})
    except (json.JSONDecodeError, OSError):
        return None  # unreadable: treated as unfinished, rerun


def _resumable(run_dir: Path, cfg: Config) -> bool:
    """An interrupted run with a checkpoint of this very config (see `checkpoint.every`)."""
    from parse_dfl.engines.base import CHECKPOINT

    if not (run_dir / CHECKPOINT).is_file() or not (run_dir / "config.yaml").is_file():
        return False
    try:
        have = build_config(load_file(run_dir / "config.yaml"))
    except (UserError, yaml.YAMLError, OSError):
        return False
    return result_defining(have.model_dump(mode="json")) == result_defining(
        cfg.model_dump(mode="json")
    )


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            d = _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
            if d:
                return d
        return None
    return None if a == b else f"{prefix.rstrip('.')}: {a!r} in the folder, {b!r} in the sweep"


def select(sweep: Sweep, only: list[str]) -> None:
    """Keep the runs whose config matches every `KEY=VALUE` (several values of one key: any).

    `--only seed=0 --only method.name=parse --only method.name=local` keeps seed 0 of PARSE
    and local. A key that is not in the config, or a filter that keeps nothing, is an error.
    """
    wanted: dict[str, list[Any]] = {}
    for item in only:
        path, value = parse_override(item)
        wanted.setdefault(".".join(path), []).append(value)

    def lookup(cfg: dict[str, Any], key: str) -> Any:
        node: Any = cfg
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise UserError(f"--only {key}", "no such config key")
            node = node[part]
        return node

    def same(have: Any, want: Any) -> bool:
        if isinstance(have, (list, tuple)) and isinstance(want, (list, tuple)):
            return list(have) == list(want)
        return have == want or str(have) == str(want)

    keep = []
    for r in sweep.runs:
        cfg = r.config.model_dump(mode="json")
        if all(any(same(lookup(cfg, k), v) for v in vs) for k, vs in wanted.items()):
            keep.append(r)
    if not keep:
        raise UserError("--only", f"no run of {sweep.path} matches {' '.join(only)}")
    sweep.runs = keep


def reuse_finished(sweep: Sweep, sources: list[str | Path]) -> int:
    """Copy into this sweep every finished run under `sources` (searched recursively) whose
    config is exactly that of a pending run here (engine aside): the same experiment is never
    computed twice across sweeps. Returns the number of runs copied."""
    import shutil

    found: dict[str, Path] = {}
    for src in sources:
        if not Path(src).is_dir():
            raise UserError(f"--reuse {src}", "not a folder")
        for res in sorted(Path(src).rglob("results.json")):
            cfg = _finished_config(res.parent)
            if cfg is None:
                continue
            try:
                key = json.dumps(
                    result_defining(build_config(cfg).model_dump(mode="json")), sort_keys=True
                )
            except UserError:
                continue  # a run of an older config schema
            found.setdefault(key, res.parent)
    copied = 0
    for r in sweep.runs:
        dest = sweep.out / r.name
        if _finished_config(dest) is not None:
            continue
        key = json.dumps(result_defining(r.config.model_dump(mode="json")), sort_keys=True)
        if key in found and found[key].resolve() != dest.resolve():
            if dest.exists():
                shutil.rmtree(dest)
            tmp = dest.with_name(f".{dest.name}.copy")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(found[key], tmp)
            tmp.rename(dest)
            copied += 1
    return copied


def mark_finished(sweep: Sweep) -> None:
    """Mark runs whose folder already holds results.json for the same config as done.

    A finished folder for a different config is refused (the sweep file changed since):
    results are never silently mixed.
    """
    for r in sweep.runs:
        old = _finished_config(sweep.out / r.name)
        if old is None:
            r.resume = _resumable(sweep.out / r.name, r.config)
            continue
        want = r.config.model_dump(mode="json")
        try:
            have = build_config(old).model_dump(mode="json")
        except UserError:
            have = old
        diff = _first_difference(result_defining(have), result_defining(want))
        if diff is not None:
            raise UserError(
                f"{sweep.out / r.name}",
                f"finished run with another config ({diff}); "
                "delete the folder or use another --out",
            )
        res = json.loads((sweep.out / r.name / "results.json").read_text())
        r.status, r.skipped = "done", True
        r.seconds = res.get("wall_seconds")
        r.mean_accuracy = res.get("mean_accuracy")
        r.mean_local_accuracy = res.get("mean_local_accuracy")


# ---- running -------------------------------------------------------------------------------


def _init_worker() -> None:
    """A worker: one torch thread; Ctrl-C is the main process's to handle (it stops us)."""
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def _stop_pool(pool: cf.ProcessPoolExecutor) -> None:
    """Cancel queued runs and end the pool's worker processes now (their runs are lost and
    rerun next time: a folder without results.json is unfinished)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=10)


def _run_one(
    raw_cfg: dict[str, Any], run_dir: str, progress: bool, resume: bool = False
) -> dict[str, Any]:
    """Run one config into its folder; never raises for a failed run (reports it)."""
    from parse_dfl.experiments import run as run_module

    start = time.perf_counter()
    try:
        cfg = build_config(raw_cfg)
        if resume:
            res = run_module.run(cfg, Path(run_dir), progress=progress, resume=True)
        else:
            res = run_module.run(cfg, Path(run_dir), progress=progress)
        return {
            "status": "done",
            "seconds": res["wall_seconds"],
            "mean_accuracy": res["mean_accuracy"],
            "mean_local_accuracy": res["mean_local_accuracy"],
        }
    except UserError as e:
        error = str(e)
    except Exception as e:  # a crash in one run must not stop the others
        error = f"{type(e).__name__}: {e}"
        try:  # the log is a help, not a must: a full disk must not stop the sweep here
            atomic_write_text(Path(run_dir) / "error.txt", traceback.format_exc())
        except (UserError, OSError) as log_error:
            error += f" (no error.txt: {log_error})"
    return {"status": "failed", "seconds": time.perf_counter() - start, "error": error}


def write_status(sweep: Sweep, command: str | None = None) -> None:
    path = sweep.out / "sweep.json"
    old: dict[str, Any] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
    counts = {s: sum(r.status == s for r in sweep.runs) for s in ("done", "failed", "pending")}
    # Every invocation, oldest first (why: a sweep finished in parts, `--only seed=0` then the
    # rest, has more than one command behind it, and the report shows them all).
    invocations = list(old.get("invocations") or [])
    if not invocations and old.get("command"):
        invocations = [{"command": old["command"], "started": old.get("updated")}]
    if command is not None:
        invocations.append(
            {
                "command": command,
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "runs": len(sweep.runs),
                "to_run": counts["pending"] + counts["failed"],
            }
        )
    doc = {
        "name": sweep.name,
        "sweep_file": str(sweep.path),
        "base": str(sweep.base) if sweep.base else None,
        "out": str(sweep.out),
        "command": command or old.get("command"),
        "invocations": invocations,
        "set": [f"{k}={json.dumps(v)}" for k, v in sweep.set],
        "grid": sweep.grid,
        "runs_variants": [[f"{k}={json.dumps(v)}" for k, v in var] for var in sweep.variants],
        **({"tuned": str(sweep.tuned)} if sweep.tuned else {}),
        "counts": counts,
        "total_run_seconds": sum(r.seconds or 0.0 for r in sweep.runs if r.status == "done"),
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runs": [r.as_json() for r in sweep.runs],
    }
    atomic_write_text(path, json.dumps(doc, indent=2, default=str))


def run_sweep(
    path: str | Path,
    out: str | Path | None = None,
    jobs: int = 1,
    progress: bool = True,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
    only: list[str] | None = None,
    reuse: list[str | Path] | None = None,
) -> dict[str, Any]:
    """Validate every run, then run the unfinished ones (in `jobs` processes); `only`
    restricts the sweep to matching runs (see `select`); `reuse` copies finished runs of
    the same config from other folders (see `reuse_finished`).

    Returns a summary: runs, ran, skipped, failed, out, seconds, failures (name -> error).
    """
    if jobs < 1:
        raise UserError("--jobs", f"must be at least 1 (got {jobs})")
    say = log or (lambda _msg: None)
    sweep = load_sweep(path, out)
    if only:
        select(sweep, only)
    for note in check_runs(sweep):
        say(f"note: {note}")
    if reuse:
        sweep.out.mkdir(parents=True, exist_ok=True)
        say(
            f"reused {reuse_finished(sweep, reuse)} finished runs from {', '.join(map(str, reuse))}"
        )
    mark_finished(sweep)
    todo = [r for r in sweep.runs if r.status != "done"]
    if command is None:
        extra = [x for item in only or [] for x in ("--only", item)]
        extra += [x for src in reuse or [] for x in ("--reuse", str(src))]
        command = "parse-dfl sweep " + shlex.join([str(path), "--out", str(sweep.out), *extra])
    sweep.out.mkdir(parents=True, exist_ok=True)
    write_status(sweep, command)
    say(
        f"sweep {sweep.name}: {len(sweep.runs)} runs, {len(sweep.runs) - len(todo)} finished "
        f"before, {len(todo)} to run ({sum(r.resume for r in todo)} from a checkpoint) "
        f"-> {sweep.out}"
    )
    start = time.perf_counter()
    bar = tqdm(total=len(todo), desc=sweep.name, unit="run", disable=not progress)

    def finish(r: RunSpec, outcome: dict[str, Any]) -> None:
        r.status = outcome["status"]
        r.seconds = outcome.get("seconds")
        r.mean_accuracy = outcome.get("mean_accuracy")
        r.mean_local_accuracy = outcome.get("mean_local_accuracy")
        r.error = outcome.get("error")
        if r.error:
            bar.write(f"run {r.name} failed: {r.error}", file=sys.stderr)
        bar.update(1)
        write_status(sweep)

    try:
        if jobs == 1:
            for r in todo:
                r.status = "running"
                bar.set_postfix_str(r.name)
                raw = r.config.model_dump(mode="json")
                finish(r, _run_one(raw, str(sweep.out / r.name), progress, r.resume))
        else:
            ctx = multiprocessing.get_context("spawn")  # no fork after torch threads started
            pool = cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker)
            try:
                futures = {}
                for r in todo:
                    raw = r.config.model_dump(mode="json")
                    fut = pool.submit(_run_one, raw, str(sweep.out / r.name), False, r.resume)
                    futures[fut] = r
                for fut in cf.as_completed(futures):
                    r = futures[fut]
                    try:
                        outcome = fut.result()
                    except Exception as e:  # the worker process died
                        outcome = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
                    finish(r, outcome)
                pool.shutdown(wait=True)
            except BaseException:  # Ctrl-C or a crash here: stop the workers, keep what is done
                _stop_pool(pool)
                raise
    finally:
        bar.close()
        for r in sweep.runs:
            if r.status == "running":
                r.status = "pending"
        write_status(sweep)
    failures = {r.name: r.error or "" for r in sweep.runs if r.status == "failed"}
    return {
        "name": sweep.name,
        "out": str(sweep.out),
        "runs": len(sweep.runs),
        "ran": sum(1 for r in todo if r.status == "done"),
        "skipped": len(sweep.runs) - len(todo),
        "failed": len(failures),
        "failures": failures,
        "seconds": time.perf_counter() - start,
        "ran_names": [r.name for r in todo],
    }


def _agents(cfg: Config) -> int:
    return int(sum(cfg.agents.mix.values()))


def _time_one_round(cfg: Config) -> tuple[float, float]:
    """(setup seconds, seconds of one round with its evaluation) of `cfg`, measured by running
    it for one round with nothing written (a distributed run is timed on the batched engine:
    they compute the same rounds)."""
    from parse_dfl.experiments import run as run_module

    raw = cfg.model_dump(mode="json")
    raw["train"].update(rounds=1, eval_every=1)
    raw["checkpoint"] = {"every": 0}
    if raw["engine"]["name"] == "distributed":
        raw["engine"]["name"] = "batched"
    res = run_module.run(build_config(raw), None, progress=False)
    train = float(res.get("train_seconds", res["wall_seconds"]))
    return max(0.0, float(res["wall_seconds"]) - train), train


def plan_sweep(
    path: str | Path,
    out: str | Path | None = None,
    only: list[str] | None = None,
    timing: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """What `run_sweep` would do, without running a run or writing anything: every run's
    config validated (schema, data, agent mix, topology, method), finished runs in the folder
    recognised, and the cost of the rest in agent-rounds and local agent-steps. With `timing`,
    also an estimate in seconds: one round of the first pending run of each method is run
    (nothing written) and scaled by rounds x agents x local steps; evaluation is then counted
    every round, so it is an upper estimate when train.eval_every > 1.

    Returns name, out, runs, finished, to_run, resumable, notes, methods {method: {runs,
    agent_rounds, agent_steps, seconds (with timing)}}, agent_rounds, agent_steps, seconds
    (None without timing), timed {method: [setup s, round s]}.
    """
    say = log or (lambda _msg: None)
    sweep = load_sweep(path, out)
    if only:
        select(sweep, only)
    notes = check_runs(sweep)
    mark_finished(sweep)
    todo = [r for r in sweep.runs if r.status != "done"]
    per: dict[str, dict[str, Any]] = {}
    timed: dict[str, tuple[float, float, Config]] = {}
    for r in todo:
        cfg = r.config
        m = per.setdefault(cfg.method.name, {"runs": 0, "agent_rounds": 0, "agent_steps": 0})
        m["runs"] += 1
        m["agent_rounds"] += _agents(cfg) * cfg.train.rounds
        m["agent_steps"] += _agents(cfg) * cfg.train.rounds * cfg.train.local_steps
        if timing and cfg.method.name not in timed:
            say(f"timing one round of {r.name} ...")
            timed[cfg.method.name] = (*_time_one_round(cfg), cfg)
    total_seconds = None
    if timing:
        total_seconds = 0.0
        for r in todo:
            setup, one, ref = timed[r.config.method.name]
            work = _agents(r.config) * max(1, r.config.train.local_steps)
            ref_work = _agents(ref) * max(1, ref.train.local_steps)
            seconds = setup + one * r.config.train.rounds * work / ref_work
            m = per[r.config.method.name]
            m["seconds"] = m.get("seconds", 0.0) + seconds
            total_seconds += seconds
    return {
        "name": sweep.name,
        "out": str(sweep.out),
        "out_exists": sweep.out.exists(),
        "runs": len(sweep.runs),
        "finished": len(sweep.runs) - len(todo),
        "to_run": len(todo),
        "resumable": sum(r.resume for r in todo),
        "notes": notes,
        "methods": per,
        "agent_rounds": sum(m["agent_rounds"] for m in per.values()),
        "agent_steps": sum(m["agent_steps"] for m in per.values()),
        "seconds": total_seconds,
        "timed": {k: [v[0], v[1]] for k, v in timed.items()},
    }


def describe(sweep: Sweep) -> str:
    """Short listing of the runs a sweep file expands to (for docs and debugging)."""
    lines = [f"{sweep.name}: {len(sweep.runs)} runs in {sweep.out}"]
    lines += [f"  {r.name}" for r in sweep.runs]
    return "\n".join(lines)


# ---- tuning: choose each method's settings on validation data ------------------------------

TUNE_KEYS = ("methods", "grid", "out")
SELECTION = (
    "for each method, the setting with the highest validation accuracy (partition.val_fraction "
    "of each agent's training samples; never the test split), mean over agents and seeds "
    "(and the other grid values, if any), "
    "global protocol; ties: local protocol, then the first in grid order"
)


@dataclass
class TuneSpec:
    """A tune file's `tune:` section: the methods, each method's grid (`all` + its own keys;
    its own values win), and the tuned file to write (relative to the tune file)."""

    methods: list[str]
    grid: dict[str, dict[str, list[Any]]]
    out: Path

    def settings(self, method: str) -> list[list[tuple[str, Any]]]:
        """Every setting tried for `method`: the product of its grid, in order."""
        keys = {**self.grid.get("all", {}), **self.grid.get(method, {})}
        points = itertools.product(*keys.values()) if keys else [()]
        return [list(zip(keys, point, strict=True)) for point in points]

    def variants(self) -> list[list[tuple[str, Any]]]:
        return [[("method.name", m), *s] for m in self.methods for s in self.settings(m)]


def _tune_spec(raw: Any, where: str, path: Path) -> TuneSpec:
    """Read a `tune:` section (see TuneSpec); one-line errors naming the key."""
    if not isinstance(raw, dict):
        raise UserError(where, "must be a mapping with methods, grid and out")
    for key in raw:
        if key not in TUNE_KEYS:
            raise UserError(f"{where}.{key}", f"unknown key (tune has {', '.join(TUNE_KEYS)})")
    methods = raw.get("methods")
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise UserError(f"{where}.methods", "must be a non-empty list of method names")
    grid_raw = raw.get("grid") or {}
    if not isinstance(grid_raw, dict):
        raise UserError(f"{where}.grid", "must map 'all' or a method to {config key: [values]}")
    grid: dict[str, dict[str, list[Any]]] = {}
    for owner, keys in grid_raw.items():
        if owner != "all" and owner not in methods:
            raise UserError(f"{where}.grid.{owner}", "neither 'all' nor one of tune.methods")
        if not isinstance(keys, dict):
            raise UserError(f"{where}.grid.{owner}", "must map config keys to lists of values")
        for key, values in keys.items():
            if key in ("method.name", "seed"):
                raise UserError(f"{where}.grid.{owner}.{key}", "is not tuned (methods, seeds)")
            if not isinstance(values, list) or not values:
                raise UserError(f"{where}.grid.{owner}.{key}", "must be a non-empty list")
        grid[str(owner)] = {str(k): v for k, v in keys.items()}
    if not raw.get("out"):
        raise UserError(f"{where}.out", "the tuned file to write (relative to the tune file)")
    return TuneSpec(list(methods), grid, (path.parent / str(raw["out"])).resolve())


def _method_name(raw: dict[str, Any]) -> str:
    method = raw.get("method")
    name = method.get("name") if isinstance(method, dict) else None
    return str(name or Config().method.name)


def read_tuned(path: Path, where: str) -> dict[str, list[tuple[str, Any]]]:
    """A tuned file (written by `parse-dfl tune`) -> method -> its chosen overrides."""
    if not path.is_file():
        raise UserError(where, f"tuned file {path} not found (parse-dfl tune writes it)")
    doc = read_yaml(path)
    methods = doc.get("methods")
    if not isinstance(methods, dict):
        raise UserError(where, f"{path} has no `methods` mapping: not a tuned file")
    out: dict[str, list[tuple[str, Any]]] = {}
    for m, entry in methods.items():
        chosen = entry.get("set") if isinstance(entry, dict) else None
        if not isinstance(chosen, dict):
            raise UserError(where, f"{path}: methods.{m} has no `set` mapping")
        out[str(m)] = [(str(k), v) for k, v in chosen.items()]
    return out


def choose_tuned(sweep: Sweep) -> dict[str, Any]:
    """From a tune sweep's finished runs: each method's best setting (SELECTION), with every
    candidate's scores. A method with an unfinished or failed setting is not chosen (a pick
    from part of the grid would not be the grid's pick); it is listed under `unfinished`."""
    assert sweep.tune is not None
    tune = sweep.tune
    scores: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in tune.methods}
    for r in sweep.runs:
        method = r.config.method.name
        # the grid's keys (seeds, and e.g. data settings) are pooled: one choice for all
        setting = {k: v for k, v in r.overrides if k != "method.name" and k not in sweep.grid}
        cand = scores[method].setdefault(
            json.dumps(setting, sort_keys=True, default=str),
            {"set": setting, "val": [], "local": [], "seeds": [], "missing": 0},
        )
        res_path = sweep.out / r.name / "results.json"
        if not res_path.is_file():
            cand["missing"] += 1
            continue
        res = json.loads(res_path.read_text())
        if "mean_val_accuracy" not in res:
            raise UserError(str(res_path), "has no validation accuracy (partition.val_fraction 0)")
        cand["val"].append(float(res["mean_val_accuracy"]))
        cand["local"].append(float(res["mean_val_local_accuracy"]))
        cand["seeds"].append(r.config.seed)
    chosen: dict[str, Any] = {}
    unfinished: dict[str, int] = {}
    for m in tune.methods:
        cands = list(scores[m].values())
        missing = sum(c["missing"] for c in cands)
        if missing:
            unfinished[m] = missing
            continue
        rows = [
            {
                "set": c["set"],
                "val_accuracy": round(float(sum(c["val"]) / len(c["val"])), 6),
                "val_local_accuracy": round(float(sum(c["local"]) / len(c["local"])), 6),
                "seeds": sorted(c["seeds"]),
            }
            for c in cands
        ]
        best = max(
            range(len(rows)),
            key=lambda i: (rows[i]["val_accuracy"], rows[i]["val_local_accuracy"], -i),
        )
        chosen[m] = {
            "set": dict(rows[best]["set"]),  # a copy: no YAML anchor between the two
            "val_accuracy": rows[best]["val_accuracy"],
            "val_local_accuracy": rows[best]["val_local_accuracy"],
            "candidates": [{k: v for k, v in row.items() if k != "seeds"} for row in rows],
        }
    seeds = sorted({r.config.seed for r in sweep.runs})
    pooled = {k: v for k, v in sweep.grid.items() if k != "seed"}  # judged over, as seeds
    fractions = sorted({r.config.partition.val_fraction for r in sweep.runs})
    return {
        "tune_file": str(sweep.path),
        "sweep": sweep.name,
        "base": str(sweep.base) if sweep.base else None,
        "set": {k: v for k, v in sweep.set},
        "runs": str(sweep.out),
        "seeds": seeds,
        **({"pooled": pooled} if pooled else {}),
        "val_fraction": fractions[0] if len(fractions) == 1 else fractions,
        "rounds": sorted({r.config.train.rounds for r in sweep.runs}),
        "selection": SELECTION,
        "methods": chosen,
        **({"unfinished": unfinished} if unfinished else {}),
    }


def write_tuned(doc: dict[str, Any], path: Path, command: str) -> None:
    """The tuned file: a comment saying how it was made and how to use it, then `doc`."""
    head = [
        f"# Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M')}.",
        "# Chosen on validation data only; a sweep applies each method's `set` with",
        "#   tuned: <path to this file, relative to the sweep file>",
        "# (before the sweep's own set / grid / runs, which win on a key they also set).",
    ]
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)
    atomic_write_text(path, "\n".join(head) + "\n" + body)


def run_tune(
    path: str | Path,
    out: str | Path | None = None,
    jobs: int = 1,
    progress: bool = True,
    write: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """`parse-dfl tune`: run (or finish) a tune file's sweep, choose each method's setting on
    validation data, and write the tuned file (tune.out, or `write`). Returns the summary of
    the sweep (`sweep`), the tuned document (`tuned`) and the file written (`path`, None
    when no method could be chosen)."""
    sweep = load_sweep(path, out)
    if sweep.tune is None:
        raise UserError(f"{path}: tune", "missing: a tune file has a `tune:` section")
    target = Path(write) if write is not None else sweep.tune.out
    extra = ["--write", str(write)] if write is not None else []
    command = "parse-dfl tune " + shlex.join([str(path), "--out", str(sweep.out), *extra])
    summary = run_sweep(path, out, jobs=jobs, progress=progress, command=command, log=log)
    sweep = load_sweep(path, out)
    doc = choose_tuned(sweep)
    written = None
    if doc["methods"]:
        write_tuned(doc, target, command)
        written = target
    return {"sweep": summary, "tuned": doc, "path": written}
