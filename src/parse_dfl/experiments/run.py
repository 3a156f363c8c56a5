"""One run: config -> setup -> engine -> results.json (+ the resolved config) in a run folder.

Nothing is written until the run has finished (or, with `checkpoint.every`, its config.yaml
and checkpoints): models.pt, config.yaml and then results.json are written to temporary
files first and renamed into place only once all three are on disk, so a folder with
results.json is always a finished run, and a full disk leaves the folder as it was.

Replacing a run (`parse-dfl run --overwrite`): the old run stays whole while the new one
trains; its results.json (the mark of a finished run) and models.pt are removed only just
before the new run's files are renamed in (without checkpoints: after training), and a
stale checkpoint.pt at once, so it can never be resumed into the new run.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from parse_dfl import registry
from parse_dfl.config import Config, build_config
from parse_dfl.data.partition import AgentSpec
from parse_dfl.diagnostics.missing import missing_modality
from parse_dfl.engines.base import CHECKPOINT
from parse_dfl.engines.setup import Setup, build_models, build_setup
from parse_dfl.errors import UserError
from parse_dfl.evaluation import by_type
from parse_dfl.experiments.metrics import MetricsLog, check_tensorboard
from parse_dfl.files import atomic_write_files, atomic_write_text, torch_bytes

atomic_write = atomic_write_text  # the old name, used by the CLI's --json outputs

RUN_FILES = ("results.json", "models.pt", "config.yaml", CHECKPOINT)
"""The files that make a folder a run folder (finished: results.json; interrupted: the rest)."""


def models_state(models: list[nn.Module]) -> dict[str, torch.Tensor]:
    """Every agent's final parameters, as tensors only (loaded with weights_only=True)."""
    return {
        f"{a}.{k}": v.detach().cpu()
        for a, m in enumerate(models)
        for k, v in m.state_dict().items()
    }


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """results.json of a finished run folder, or a UserError saying what is wrong with it
    (a missing folder, no results.json, a damaged or foreign file)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(str(run_dir), "no such run folder")
    res_path = run_dir / "results.json"
    if not res_path.is_file():
        raise UserError(str(run_dir), "not a finished run folder (no results.json)")
    try:
        results = json.loads(res_path.read_text())
        if not isinstance(results, dict):
            raise TypeError(f"a JSON {type(results).__name__}, not an object")
        if not isinstance(results["config"], dict) or not isinstance(results["method"], str):
            raise TypeError("'config' is not a mapping or 'method' not a name")
    except KeyError as e:
        raise UserError(str(res_path), f"not a results file of a run (no {e} key)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
        raise UserError(str(res_path), f"not a results file of a run ({e})") from None
    return results


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], Setup, list[nn.Module]]:
    """A finished run folder -> (results, setup, trained models), rebuilt from its config.
    A damaged folder is a UserError (one line), never a traceback."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    if not (run_dir / "models.pt").is_file():
        raise UserError(str(run_dir), "the run folder has no models.pt")
    cfg = build_config(results["config"])
    setup = build_setup(cfg)
    models = build_models(setup)
    try:
        state = torch.load(run_dir / "models.pt", map_location=setup.device, weights_only=True)
        for a, model in enumerate(models):
            prefix = f"{a}."
            model.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as e:
        # torch.load / load_state_dict on a damaged or foreign models.pt
        text = str(e).strip()
        first = text.splitlines()[0].split(". ")[0] if text else type(e).__name__
        raise UserError(
            str(run_dir / "models.pt"), f"cannot load the trained models ({first})"
        ) from None
    final = setup.method.stage_of(cfg.train.rounds)
    if final:  # a multi-stage method predicts with its last stage's parts
        setup.method.enter_stage(final, setup.agents, models)
    return results, setup, models


def resume_config(run_dir: str | Path) -> Config:
    """The config of an interrupted run folder (written when its first checkpoint was)."""
    path = Path(run_dir) / "config.yaml"
    if (Path(run_dir) / "results.json").is_file():
        raise UserError(str(run_dir), "this run has already finished (results.json exists)")
    if not path.is_file():
        raise UserError(str(run_dir), "nothing to resume: no config.yaml in the run folder")
    from parse_dfl.yamlsafe import load_file

    return build_config(load_file(path, "config.yaml"))


def check_run_folder(out: str | Path, overwrite: bool = False) -> None:
    """Refuse, before any training, a run folder the run could not or must not write: a
    path that is (or lies under) a file, a folder that cannot be written, and, unless
    `overwrite`, a folder that already holds a finished or interrupted run."""
    out = Path(out)
    for p in [out, *out.parents]:
        if p.exists() and not p.is_dir():
            what = "is a file" if p == out else f"lies under {p}, which is a file"
            raise UserError(str(out), f"{what}, not a folder; choose another --out")
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not overwrite:
        if "results.json" in found:
            raise UserError(
                str(out),
                "already holds a finished run (results.json); "
                "use --overwrite to replace it, or another --out",
            )
        raise UserError(
            str(out),
            f"already holds an interrupted run ({', '.join(found)}); "
            f"use --resume {out} to continue it, or --overwrite to replace it",
        )
    _check_writable(out)


def _check_writable(out: Path) -> None:
    """Create the folder (and its missing parents) and a file in it, then remove all that
    was created: a run that cannot write its results fails now, not after training."""
    created: list[Path] = []
    try:
        for p in reversed([out, *out.parents]):
            if not p.exists():
                p.mkdir()
                created.append(p)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".parse-dfl-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(str(out), f"cannot write here: {e.strerror or e}") from None
    finally:
        for p in reversed(created):
            with contextlib.suppress(OSError):
                p.rmdir()


def new_run_folder(name: str, root: str | Path = "runs") -> Path:
    """A fresh folder `root/NAME-YYYYmmdd-HHMMSS[-N]`, created now so that no other run can
    take it (remove it again with `remove_if_empty` if the run fails before writing)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{name}-{stamp}"
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            path = base if n == 1 else base.with_name(f"{base.name}-{n}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as e:
        raise UserError(str(root), f"cannot create a run folder here: {e.strerror or e}") from None
    raise UserError(str(root), f"no free run folder name for {base}")


def remove_if_empty(folder: Path) -> None:
    """Remove `folder` and its subfolders if no file was written in them."""
    if not folder.is_dir():
        return
    for sub in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if sub.is_dir():
            try:
                sub.rmdir()
            except OSError:
                return
        else:
            return
    with contextlib.suppress(OSError):
        folder.rmdir()


def _retire_finished(out: Path, log: MetricsLog | None = None) -> None:
    """Remove an earlier finished run's results.json (first: the folder stops looking
    finished) and models.pt, just before this run's own files take their place (its
    metrics, when this run wrote them beside the old ones, too)."""
    for name in ("results.json", "models.pt"):
        (out / name).unlink(missing_ok=True)
    if log is not None:
        log.commit()


def choice_by_type(
    agents: list[AgentSpec], choice: list[int], names: tuple[str, ...]
) -> dict[str, dict[str, int]]:
    """Agent type -> how many of its agents use each local-protocol predictor at the end:
    with one name per type, what `method.plus_private_choice` takes ({acc: private})."""
    out: dict[str, dict[str, int]] = {}
    for a, k in zip(agents, choice, strict=True):
        counts = out.setdefault(a.type, {})
        counts[names[k]] = counts.get(names[k], 0) + 1
    return out


def add_validation(
    results: dict[str, Any], glob: list[float], loc: list[float], setup: Setup
) -> None:
    """The validation accuracies (partition.val_fraction > 0), per agent and as means, under
    both protocols: what `parse-dfl tune` chooses hyperparameters by. A run without a
    validation split gets none of these keys, so its results.json is as before."""
    for entry, g, lo, a in zip(results["agents"], glob, loc, setup.agents, strict=True):
        entry.update(val_accuracy=g, val_local_accuracy=lo, n_val=int(len(a.val_idx)))
    mods = list(setup.data.modalities)
    assert setup.val_global is not None
    results.update(
        mean_val_accuracy=float(np.mean(glob)),
        mean_val_local_accuracy=float(np.mean(loc)),
        by_type_val=by_type(setup.agents, glob, mods),
        by_type_val_local=by_type(setup.agents, loc, mods),
        val_global_size=int(len(setup.val_global)),
    )


def run(
    cfg: Config, out: Path | None = None, progress: bool = True, resume: bool = False
) -> dict[str, Any]:
    """Run one config to the end; returns (and, with `out`, writes) the results.

    With `checkpoint.every` and a run folder, a checkpoint is written every that many rounds;
    `resume=True` continues from the folder's last checkpoint."""
    start = time.perf_counter()
    if out is not None and cfg.logging.tensorboard:
        check_tensorboard()
    setup = build_setup(cfg)
    engine = registry.resolve("engine", cfg.engine.name, "engine.name")(setup)
    if progress and engine.writes_output:
        print(
            f"{cfg.method.name}: {len(setup.agents)} agents, {cfg.train.rounds} rounds, "
            f"{cfg.engine.name} engine on {setup.device}, {setup.threads}",
            file=sys.stderr,
            flush=True,
        )
    if out is not None and not resume and engine.writes_output and Path(out).is_dir():
        # an earlier run's checkpoint must never be resumed into this one
        (Path(out) / CHECKPOINT).unlink(missing_ok=True)
    if out is not None and cfg.checkpoint.every and not resume and engine.writes_output:
        folder = Path(out)
        dump = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        atomic_write_files(
            [(folder / "config.yaml", dump.encode())],
            before_commit=lambda: _retire_finished(folder),
        )
    log = MetricsLog(Path(out), cfg.logging.tensorboard) if out and engine.writes_output else None
    engine.on_eval = log  # metrics.csv (and TensorBoard) as the run goes
    try:
        res = engine.run(progress=progress, checkpoint_dir=out, resume=resume)
    except UserError:
        if log is not None:
            log.discard()  # stopped with one line: the folder as it was
        raise
    finally:
        if log is not None:
            log.close()
    live_end = engine.faults.live(cfg.train.rounds)
    mods = list(setup.data.modalities)
    agents = setup.agents
    results: dict[str, Any] = {
        "method": cfg.method.name,
        "dataset": cfg.data.name,
        "seed": cfg.seed,
        "rounds": cfg.train.rounds,
        "engine": cfg.engine.name,
        "modalities": mods,
        "n_classes": setup.data.n_classes,
        "agents": [
            {
                "id": a.id,
                "modalities": list(a.modalities),
                "type": a.type,
                "width": a.width,
                "test_accuracy": res.test_accuracy[i],
                "local_test_accuracy": res.local_test_accuracy[i],
                "n_train": int(len(a.train_idx)),
                "n_test": int(len(a.test_idx)),
                "bytes_sent": int(res.bytes_sent[i]),
                "live_rounds": int(res.live_rounds[i]),
                "live_at_end": bool(live_end[i]),
            }
            for i, a in enumerate(agents)
        ],
        "by_type": by_type(agents, res.test_accuracy, mods),
        "by_type_local": by_type(agents, res.local_test_accuracy, mods),
        "mean_accuracy": float(np.mean(res.test_accuracy)),
        "mean_local_accuracy": float(np.mean(res.local_test_accuracy)),
        "mean_accuracy_live": float(np.mean(np.asarray(res.test_accuracy)[live_end])),
        "faults": {
            **cfg.faults.model_dump(),
            "crashed_agents": engine.faults.crashing.tolist(),
        },
        "attack": {
            **cfg.attack.model_dump(),
            "attackers": np.flatnonzero(engine.attackers).tolist(),
            "robust_rule": cfg.robust.rule,
        },
        "mean_accuracy_honest": float(np.mean(np.asarray(res.test_accuracy)[~engine.attackers])),
        "global_test_size": int(len(setup.global_test)),
        "global_test_full_size": int(sum(len(t) for t in setup.test_idx)),
        "history": res.history,
        "bytes_sent": int(res.bytes_sent.sum()),
        "bytes_sent_per_round_per_agent": float(
            res.bytes_sent.sum() / len(agents) / cfg.train.rounds
        ),
        "holder_graphs": res.holder_graphs,
        "topology_used": setup.topology.cfg.name,
        "method_summary": setup.method.summary(),
        "wall_seconds": time.perf_counter() - start,
        "train_seconds": res.wall_seconds,
        **res.extra,
        "config": cfg.model_dump(mode="json"),
    }
    choice = res.extra.get("local_choice")
    if choice is not None and setup.method.local_names:
        results["local_choice_by_type"] = choice_by_type(agents, choice, setup.method.local_names)
    if res.val_accuracy is not None and res.val_local_accuracy is not None:
        add_validation(results, res.val_accuracy, res.val_local_accuracy, setup)
    multimodal = any(len(a.modalities) > 1 for a in agents)
    models = (
        engine.agent_models()  # collective on a distributed engine
        if out is not None or (cfg.train.eval_missing and multimodal)
        else []
    )
    if cfg.train.eval_missing and multimodal and engine.writes_output:
        found = missing_modality(setup, models)
        assert found is not None
        results["missing_modality"] = {k: found[k] for k in ("by_type", "mean", "unimodal")}
    if out is not None:
        out = Path(out)
        if not engine.writes_output:
            return results
        try:
            atomic_write_files(
                [
                    (out / "models.pt", torch_bytes(models_state(models))),
                    (
                        out / "config.yaml",
                        yaml.safe_dump(results["config"], sort_keys=False).encode(),
                    ),
                    (out / "results.json", json.dumps(results, indent=2).encode()),
                ],
                before_commit=lambda: _retire_finished(out, log),
            )
        except UserError:
            if log is not None:
                log.discard()
            raise
        (out / CHECKPOINT).unlink(missing_ok=True)
    return results
