"""A sensor fails at test time: how well does a multimodal agent do with what it still has?

For every multimodal agent of a finished run and every modality m it holds, the global-protocol
accuracy (the union of all agents' held-out samples) when m is absent from the input and the
agent answers with its other modalities. How each model copes with an absent modality:

* parse (models/parse.py): the unique heads of the present modalities, the redundant head on
  the mean r of the present ones, the synergy head only with two or more present.
* local, dsgd-*, centralized (models/monolithic.py): the absent modality is left out of the
  mean embedding (the model's `held` is set to the agent's modalities, so even dsgd-task, which
  zero-fills modalities an agent does not hold, skips a held one that failed).
* harmony (methods/harmony.py): the fusion classifier needs every embedding; without one the
  agent falls back to the mean logits of its present modalities' unimodal heads.

Nothing is retrained: these are the trained models of the run, as saved in models.pt.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from parse_dfl.text import text_table

__all__ = ["format_missing", "missing_modality_accuracy", "run_folders"]


def run_folders(path: str | Path) -> list[Path]:
    """The finished run folders a path names: itself if it holds results.json, else every
    folder under it (at any depth) that does, as `parse-dfl report` reads a sweep folder.
    A path with neither is returned as is, for the caller's check to refuse it by name."""
    path = Path(path)
    if (path / "results.json").is_file() or not path.is_dir():
        return [path]
    found = sorted(p.parent for p in path.rglob("results.json"))
    return found or [path]


def missing_modality(setup: Any, models: list[Any]) -> dict[str, Any] | None:
    """What `missing_modality_accuracy` measures, on a setup and its agents' trained models
    (None when no agent is multimodal): modalities, global_test_size, agents, by_type, mean
    and unimodal, as described there. The models are left as they were."""
    from parse_dfl.engines.setup import held_out
    from parse_dfl.evaluation import accuracy
    from parse_dfl.models.monolithic import FusionClassifier

    s = setup
    idx, samples = held_out(s)
    rows: list[dict[str, Any]] = []
    unimodal: dict[str, list[float]] = defaultdict(list)
    for agent, model in zip(s.agents, models, strict=True):
        mods = list(agent.modalities)
        if len(mods) < 2:
            unimodal[mods[0]].append(accuracy(s.method, model, mods, s.x, s.y, idx))
            continue
        saved = getattr(model, "held", None)
        if isinstance(model, FusionClassifier):
            model.held = frozenset(mods)  # a held modality absent from x: a failed sensor
        try:
            full = accuracy(s.method, model, mods, s.x, s.y, idx)
            dropped = {
                m: accuracy(s.method, model, [k for k in mods if k != m], s.x, s.y, idx)
                for m in mods
            }
        finally:
            if isinstance(model, FusionClassifier):
                model.held = saved
        rows.append(
            {
                "id": agent.id,
                "type": agent.type,
                "modalities": mods,
                "all": full,
                "dropped": dropped,
            }
        )
    if not rows:
        return None

    def summary(group: list[dict[str, Any]]) -> dict[str, Any]:
        per_mod: dict[str, list[float]] = defaultdict(list)
        for r in group:
            for m, v in r["dropped"].items():
                per_mod[m].append(v)
        order = [m for m in s.data.modalities if m in per_mod]
        return {
            "all": float(np.mean([r["all"] for r in group])),
            "dropped": {m: float(np.mean(per_mod[m])) for m in order},
        }

    types: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        types[r["type"]].append(r)
    return {
        "modalities": list(s.data.modalities),
        "global_test_size": int(len(idx)),
        "samples": samples,
        "agents": rows,
        "by_type": {t: summary(g) for t, g in types.items()},
        "mean": summary(rows),
        "unimodal": {m: float(np.mean(unimodal[m])) for m in s.data.modalities if m in unimodal},
    }


def missing_modality_accuracy(run_dir: str | Path) -> dict[str, Any]:
    """Accuracy of a run's multimodal agents with all modalities and with each one dropped.

    The samples are the global test set, or the validation set of a tuning run
    (partition.val_fraction > 0): `samples` says which, `global_test_size` how many.

    Returns a dict: run_dir, method, dataset, modalities (of the dataset), global_test_size,
    samples,
    agents [{id, type, modalities, all, dropped: {m: accuracy without m}}] (multimodal agents
    only), by_type {type: {all, dropped: {m: ...}}}, mean {all, dropped: {m: mean over the
    multimodal agents holding m}} and unimodal {m: mean accuracy of the run's agents that hold
    only m, for scale; absent if there are none}. Accuracies are shares in [0, 1].

    Raises UserError for a folder that is not a finished run, or a run without a multimodal
    agent.
    """
    from parse_dfl.errors import UserError
    from parse_dfl.experiments.run import load_run

    results, setup, models = load_run(run_dir)
    found = missing_modality(setup, models)
    if found is None:
        raise UserError(str(run_dir), "the run has no multimodal agent")
    return {
        "run_dir": str(run_dir),
        "method": results["method"],
        "dataset": results.get("dataset"),
        **found,
    }


def format_missing(results: list[dict[str, Any]]) -> str:
    """One row per run: mean accuracy (%) of its multimodal agents with every modality and
    with each one dropped, then the unimodal agents' accuracy for scale."""
    mods: list[str] = []
    for r in results:
        mods += [m for m in r["modalities"] if m not in mods]
    head = ["run", "method", "all"] + [f"without {m}" for m in mods]
    head += [f"{m}-only agents" for m in mods]
    rows = [head]
    for r in results:
        row = [r["run_dir"], r["method"], f"{100 * r['mean']['all']:.1f}"]
        row += [
            f"{100 * r['mean']['dropped'][m]:.1f}" if m in r["mean"]["dropped"] else "-"
            for m in mods
        ]
        row += [f"{100 * r['unimodal'][m]:.1f}" if m in r["unimodal"] else "-" for m in mods]
        rows.append(row)
    n = {len(r["agents"]) for r in results}
    sets = sorted({r.get("samples", "test") for r in results})
    return (
        "global-protocol accuracy in % of the multimodal agents (mean over "
        f"{'/'.join(map(str, sorted(n)))} agents) with every modality and with one dropped at "
        f"test time, on the global {' / '.join(sets)} set; unimodal agents of the same run "
        "for scale\n" + text_table(rows)
    )
