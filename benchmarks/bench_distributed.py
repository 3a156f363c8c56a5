"""Seconds per round of the distributed engine with 1, 2 (4...) processes against the
single-process engines it is built from (each process runs its shard with
`engine.shard_engine`: the batched engine by default, or the reference loop), and the bytes
that cross process boundaries. Run by hand (not a test):

    .venv/bin/python benchmarks/bench_distributed.py                         # 30, 300, 1000
    .venv/bin/python benchmarks/bench_distributed.py --sizes 30,300 --procs 1,2 --rounds 3
    .venv/bin/python benchmarks/bench_distributed.py --workload parse-watch --sizes 1000 --procs 2

Workload `mlp-600` of bench_engines.py (DSGD of a 600-128-128-7 MLP per agent on a ring,
SGD, one local epoch). Every measurement is a fresh job: the reference engine in one process,
the distributed engine under `torchrun --standalone --nproc-per-node P` (gloo over loopback,
one torch thread per process). A round is timed on the wall clock from one barrier to the
next (local steps + gossip, the slowest process decides), the median over `--rounds` rounds
after one warm-up round. Wall clock needs a quiet machine: P processes want P cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_engines import make_setup  # noqa: E402

from parse_dfl.engines import ENGINES  # noqa: E402


def child(workload: str, n: int, spec: str, rounds: int) -> None:
    """One measurement inside this job's process(es); process 0 prints one JSON line.
    `spec`: an engine name, or distributed:SHARD_ENGINE."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    engine_name, _, shard = spec.partition(":")
    setup = make_setup(workload, n, engine_name)
    if shard:
        engine_cfg = setup.cfg.engine.model_copy(update={"shard_engine": shard})
        setup.cfg = setup.cfg.model_copy(update={"engine": engine_cfg})
    engine = ENGINES[engine_name](setup)
    distributed = engine_name == "distributed"

    def barrier() -> None:
        if distributed:
            dist.barrier()

    def one(r: int) -> float:
        barrier()
        t = time.perf_counter()
        engine.local_round(r)
        engine.gossip(r)
        barrier()
        return time.perf_counter() - t

    one(1)  # warm-up
    wire0 = getattr(engine, "wire_bytes", 0)
    times = [one(r) for r in range(2, 2 + rounds)]
    agents_bytes = float(
        np.mean([engine.schedule.bytes_sent(r, n).sum() for r in range(2, 2 + rounds)])
    )
    wire = torch.tensor(
        [
            getattr(engine, "wire_bytes", 0) - wire0,
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        ],
        dtype=torch.float64,
    )
    if distributed:
        dist.all_reduce(wire)
    if not distributed or dist.get_rank() == 0:
        print(
            json.dumps(
                {
                    "n": n,
                    "engine": spec,
                    "procs": dist.get_world_size() if distributed else 1,
                    "round_s": float(np.median(times)),
                    "wire_bytes_per_round": float(wire[0]) / rounds,
                    "agent_bytes_per_round": agents_bytes,
                    "rss_total": float(wire[1]),
                }
            ),
            flush=True,
        )
    if distributed:
        dist.destroy_process_group()


def measure(args: argparse.Namespace, n: int, spec: str, procs: int | None) -> dict:
    """One fresh job: `spec` in one plain process (procs None) or under torchrun."""
    me = [os.path.abspath(__file__), "--one", f"{args.workload}:{n}", "--rounds", str(args.rounds)]
    if procs is None:
        cmd = [sys.executable, *me, "--engine", spec]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={procs}", *me, "--engine", spec,
        ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": " | ".join(done.stderr.strip().splitlines()[-3:])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workload", default="mlp-600", choices=["mlp-600", "parse-watch"])
    p.add_argument("--sizes", default="30,300,1000")
    p.add_argument("--procs", default="1,2", help="process counts for the distributed engine")
    p.add_argument(
        "--shard-engines", default="batched,reference", help="engine.shard_engine values"
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--engine", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        workload, n = args.one.split(":")
        child(workload, int(n), args.engine, args.rounds)
        return
    print(f"workload {args.workload}, {args.rounds} timed rounds, load {os.getloadavg()[0]:.2f}")
    cols = ["agents", "engine", "s/round", "vs batched", "vs ref", "wire B/round"]
    widths = [6, 26, 8, 10, 7, 13, 15, 10, 7]
    cols += ["agents B/round", "wire share", "RSS GB"]
    head = " ".join(f"{c:>{w}}" for c, w in zip(cols, widths, strict=True))
    print(head)
    print("-" * len(head))
    shard_engines = args.shard_engines.split(",")
    for n in [int(x) for x in args.sizes.split(",")]:
        ref = measure(args, n, "reference", None)
        batched = measure(args, n, "batched", None)
        rows = [("reference", ref), ("batched", batched)] + [
            (f"distributed x{p} ({shard})", measure(args, n, f"distributed:{shard}", p))
            for p in [int(x) for x in args.procs.split(",")]
            for shard in shard_engines
        ]
        for name, r in rows:
            if "error" in r:
                print(f"{n:>6} {name:>26} error: {r['error']}")
                continue
            vs_b = r["round_s"] / batched["round_s"] if "round_s" in batched else float("nan")
            vs_r = r["round_s"] / ref["round_s"] if "round_s" in ref else float("nan")
            share = r["wire_bytes_per_round"] / max(1.0, r["agent_bytes_per_round"])
            print(
                f"{n:>6} {name:>26} {r['round_s']:>8.3f} {vs_b:>10.2f} {vs_r:>7.2f} "
                f"{r['wire_bytes_per_round']:>13.3g} {r['agent_bytes_per_round']:>15.3g} "
                f"{share:>10.3f} {r['rss_total'] / 1e9:>7.2f}"
            )


if __name__ == "__main__":
    main()
