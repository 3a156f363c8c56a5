"""What a crash leaves of each block's holder graph: live holders and their components.

For every run folder given (or found under a sweep folder) whose config crashes agents, the
holder groups of the method's first share plan are rebuilt from the run's config (no
training) and each group's graph among its live holders is cut into connected components; a
component averages on its own for the rest of the run (with faults.relink, over the graph
re-drawn among the live holders). Per run: the holder-weighted mean
share of a block's live holders that a live holder still averages with (1.0 = the block
agrees across every live holder). harmony's multimodal agents stop sharing their encoders
after stage 0 (half of the run by default), so for harmony the table describes stage 0
and the unimodal agents' blocks after it.

    .venv/bin/python scripts/crash_fragments.py runs/watch-faults-overlay-tuned
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import networkx as nx
import numpy as np
import torch

from parse_dfl.config import load_config
from parse_dfl.engines.faults import FaultPlan
from parse_dfl.engines.gossip import GossipSchedule
from parse_dfl.engines.setup import build_model, build_setup, holder_groups


def fragments(run: Path) -> tuple[str, dict[str, dict[str, int]], float] | None:
    """(method and relink, describe() of the holder graphs, mean reach of a live holder) or
    None."""
    cfg = load_config(run / "config.yaml")
    if cfg.faults.crash_fraction <= 0:
        return None
    setup = build_setup(cfg)
    models = [build_model(setup, a, torch.device("meta")) for a in setup.agents]
    groups = holder_groups(setup, models)
    faults = FaultPlan(cfg.faults, len(setup.agents), cfg.seed)
    schedule = GossipSchedule(setup.topology, groups, cfg.topology.mixing, faults)
    after = max(1, cfg.faults.crash_round)
    live = faults.live(after)
    reach, weight = 0.0, 0
    for k, g in enumerate(groups):
        up = [i for i, a in enumerate(g.holders) if live[a]]
        for comp in nx.connected_components(schedule.holder_graph(k, after).subgraph(up)):
            reach += len(comp) * len(comp) / len(up)
            weight += len(comp)
    name = cfg.method.name + (" (relink)" if cfg.faults.relink else "")
    return name, schedule.describe(), reach / max(1, weight)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    args = ap.parse_args(argv)
    runs = sorted(
        {
            p.parent
            for f in args.folders
            for p in [f / "config.yaml", *f.rglob("config.yaml")]
            if p.is_file()
        }
    )
    per_method: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        got = fragments(run)
        if got is None:
            continue
        method, graphs, reach = got
        per_method[method].append(reach)
        pieces = ", ".join(
            f"{b} {d['live_holders']}/{d['holders']} in {d['live_components']}"
            for b, d in graphs.items()
        )
        print(f"{run}: reach {reach:.2f}; {pieces}")
    if not per_method:
        print("no run with faults.crash_fraction > 0 found", file=sys.stderr)
        return 2
    print("\nmethod  runs  mean reach of a live holder (share of the block's live holders)")
    for method, r in sorted(per_method.items()):
        print(f"{method:20s} {len(r):3d}  {np.mean(r):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
