"""What changed between two exports of the same benchmark, method by method, paired by seed.

Two committed exports (`parse-dfl report RUNS --export docs/results`) that differ in one thing
(the holder graph, the rounds) hold the same methods on the same seeds (the same split, graph
and initial values): the per-seed difference B - A of a method's mean accuracy, with its 95 %
t interval (experiments/stats.py), says whether the change moved that method. Runs are
matched on (method, seed, and every config key given with --key, e.g. data.setting).
`--where-a` / `--where-b KEY=VALUE` keep only the runs of one export (or of one grid cell
of it) whose config has that value, so a grid cell can be paired with the clean runs of
another table: the cost of an attack on the honest agents, say,

    .venv/bin/python scripts/paired_exports.py docs/results/watch-main-overlay-tuned.jsonl.gz \
        docs/results/watch-attacks-overlay-tuned.jsonl.gz --where-b attack.fraction=0.2 \
        --where-b robust.rule=mean --metric mean_accuracy_honest

    .venv/bin/python scripts/paired_exports.py docs/results/watch-main-overlay-160-tuned.jsonl.gz \\
        docs/results/watch-main-overlay-tuned.jsonl.gz

or two methods of one export, on one agent type (`--any-method`, `--agent-type`): parse-plus
with its private model against local training on the acc agents, local protocol,

    E=docs/results/watch-subjects-overlay-tuned.jsonl.gz
    .venv/bin/python scripts/paired_exports.py $E $E --any-method --where-a method.name=local \\
        --where-b method.plus_private=true --metric mean_local_accuracy --agent-type acc
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import yaml

from parse_dfl.experiments.export import read_export
from parse_dfl.experiments.stats import paired_by_seed


def by_method(
    path: Path,
    keys: list[str],
    metric: str,
    where: list[str] | None = None,
    agent_type: str | None = None,
    any_method: bool = False,
) -> dict[tuple[str, ...], dict[int, float]]:
    """(method, *key values) -> seed -> `metric` in % of one export's runs whose config has
    every KEY=VALUE of `where` (a run without `metric`, e.g. no attacker: its mean_accuracy);
    `agent_type`: the mean over that type's agents instead (global or local protocol);
    `any_method`: every method under one name, "*" (to pair two methods picked by --where)."""
    _, runs, _ = read_export(path)
    out: dict[tuple[str, ...], dict[int, float]] = defaultdict(dict)
    pairs = [w.split("=", 1) for w in where or []]
    if any(len(w) != 2 for w in pairs):
        raise SystemExit(f"--where-a/--where-b take KEY=VALUE, got {where}")
    wanted = [(k, yaml.safe_load(v)) for k, v in pairs]  # as --set reads it: false, 0.2, mean
    for r in runs:
        if any(json.loads(r.flat.get(k, "null")) != v for k, v in wanted):
            continue
        name = "*" if any_method else r.method
        group = (name, *(json.loads(r.flat.get(k, "null")) or "-" for k in keys))
        if agent_type is not None:
            local = metric == "mean_local_accuracy"
            value = r.res["by_type_local" if local else "by_type"][agent_type]
        else:
            value = r.res.get(metric)
            value = r.res["mean_accuracy"] if value is None else value
        out[tuple(map(str, group))][int(r.res["config"]["seed"])] = 100 * float(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", type=Path, help="the export to subtract (A)")
    ap.add_argument("b", type=Path, help="the export compared with it (B)")
    ap.add_argument("--key", action="append", default=[], help="also match on this config key")
    ap.add_argument(
        "--metric",
        default="mean_accuracy",
        choices=[
            "mean_accuracy",
            "mean_local_accuracy",
            "mean_accuracy_honest",  # attacks: the honest agents
            "mean_accuracy_live",  # crashes: the agents up at the end
        ],
    )
    ap.add_argument("--where-a", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--where-b", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument(
        "--agent-type", help="the mean over this agent type's agents (mean_accuracy or local)"
    )
    ap.add_argument(
        "--any-method",
        action="store_true",
        help="pair across methods: A and B are what --where-a / --where-b pick "
        "(e.g. --where-a method.name=local --where-b method.name=parse-plus)",
    )
    args = ap.parse_args()
    if args.agent_type and args.metric not in ("mean_accuracy", "mean_local_accuracy"):
        raise SystemExit("--agent-type goes with --metric mean_accuracy or mean_local_accuracy")
    pick = {"agent_type": args.agent_type, "any_method": args.any_method}
    a = by_method(args.a, args.key, args.metric, args.where_a, **pick)
    b = by_method(args.b, args.key, args.metric, args.where_b, **pick)
    head = ["method", *args.key, "A", "B", "B - A [95 % CI]", "pairs", "verdict"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for group in sorted(set(a) & set(b)):
        d = paired_by_seed(b[group], a[group])
        seeds = set(a[group]) & set(b[group])  # A and B: means over the paired seeds
        mean_a = sum(a[group][t] for t in seeds) / max(1, len(seeds))
        mean_b = sum(b[group][t] for t in seeds) / max(1, len(seeds))
        cells = [*group, f"{mean_a:.1f}", f"{mean_b:.1f}"]
        verdict = {"win": "B higher", "loss": "B lower"}.get(d.verdict, d.verdict)
        if d.n >= 2 and d.sd == 0:
            verdict = "identical" if d.mean == 0 else verdict
        cells += [f"{d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}]", str(d.n), verdict]
        print("| " + " | ".join(cells) + " |")
    for name, only in (("A", set(a) - set(b)), ("B", set(b) - set(a))):
        if only:
            print(f"only in {name}: {', '.join('/'.join(g) for g in sorted(only))}")


if __name__ == "__main__":
    main()
