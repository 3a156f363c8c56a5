"""One run: config -> setup -> engine -> results.json (+ the resolved config) in a run folder.

Nothing is written until the run has finished: results.json and config.yaml appear
together, atomically, so a folder with results.json is always a finished run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from parse_dfl.config import Config
from parse_dfl.engines import ENGINES
from parse_dfl.engines.setup import build_setup
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


def run(cfg: Config, out: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run one config to the end; returns (and, with `out`, writes) the results."""
    start = time.perf_counter()
    setup = build_setup(cfg)
    engine = ENGINES[cfg.engine.name](setup)
    res = engine.run(progress=progress)
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
            }
            for i, a in enumerate(agents)
        ],
        "by_type": by_type(agents, res.test_accuracy, mods),
        "by_type_local": by_type(agents, res.local_test_accuracy, mods),
        "mean_accuracy": float(np.mean(res.test_accuracy)),
        "mean_local_accuracy": float(np.mean(res.local_test_accuracy)),
        "global_test_size": int(len(setup.global_test)),
        "history": res.history,
        "bytes_sent": int(res.bytes_sent.sum()),
        "bytes_sent_per_round_per_agent": float(res.bytes_sent.sum() / len(agents) / cfg.train.rounds),
        "holder_graphs": res.holder_graphs,
        "wall_seconds": time.perf_counter() - start,
        "train_seconds": res.wall_seconds,
        **res.extra,
        "config": cfg.model_dump(mode="json"),
    }
    if out is not None:
        out = Path(out)
        atomic_write(out / "config.yaml", yaml.safe_dump(results["config"], sort_keys=False))
        atomic_write(out / "results.json", json.dumps(results, indent=2))
    return results
