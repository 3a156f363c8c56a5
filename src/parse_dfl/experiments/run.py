"""One run: config -> setup -> engine -> results.json (+ the resolved config) in a run folder.

Nothing is written until the run has finished: models.pt, config.yaml and then
results.json appear, each atomically, so a folder with results.json is always a finished run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from parse_dfl.config import Config, build_config
from parse_dfl.engines import ENGINES
from parse_dfl.engines.base import CHECKPOINT
from parse_dfl.engines.setup import Setup, build_models, build_setup
from parse_dfl.errors import UserError
from parse_dfl.evaluation import by_type


def atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file, fsync and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_models(path: Path, models: list[nn.Module]) -> None:
    """Every agent's final parameters, as tensors only (loaded with weights_only=True)."""
    state = {
        f"{a}.{k}": v.detach().cpu()
        for a, m in enumerate(models)
        for k, v in m.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], Setup, list[nn.Module]]:
    """A finished run folder -> (results, setup, trained models), rebuilt from its config."""
    run_dir = Path(run_dir)
    res_path = run_dir / "results.json"
    if not res_path.is_file():
        raise UserError(str(run_dir), "not a finished run folder (no results.json)")
    if not (run_dir / "models.pt").is_file():
        raise UserError(str(run_dir), "the run folder has no models.pt")
    results = json.loads(res_path.read_text())
    cfg = build_config(results["config"])
    setup = build_setup(cfg)
    models = build_models(setup)
    state = torch.load(run_dir / "models.pt", map_location=setup.device, weights_only=True)
    for a, model in enumerate(models):
        prefix = f"{a}."
        model.load_state_dict(
            {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        )
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
    return build_config(yaml.safe_load(path.read_text()))


def run(
    cfg: Config, out: Path | None = None, progress: bool = True, resume: bool = False
) -> dict[str, Any]:
    """Run one config to the end; returns (and, with `out`, writes) the results.

    With `checkpoint.every` and a run folder, a checkpoint is written every that many rounds;
    `resume=True` continues from the folder's last checkpoint."""
    start = time.perf_counter()
    setup = build_setup(cfg)
    engine = ENGINES[cfg.engine.name](setup)
    if out is not None and cfg.checkpoint.every and not resume and engine.writes_output:
        atomic_write(
            Path(out) / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        )
    res = engine.run(progress=progress, checkpoint_dir=out, resume=resume)
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
    if out is not None:
        out = Path(out)
        models = engine.agent_models()  # collective on a distributed engine
        if not engine.writes_output:
            return results
        save_models(out / "models.pt", models)
        atomic_write(out / "config.yaml", yaml.safe_dump(results["config"], sort_keys=False))
        atomic_write(out / "results.json", json.dumps(results, indent=2))
        (out / CHECKPOINT).unlink(missing_ok=True)
    return results
