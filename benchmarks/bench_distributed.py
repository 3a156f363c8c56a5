"""Seconds per round of the distributed engine with 1, 2 (4...) processes against the
single-process reference engine (what each process runs on its shard), and the bytes that
cross process boundaries. Run by hand (not a test):

    .venv/bin/python benchmarks/bench_distributed.py                         # 30, 300, 1000
    .venv/bin/python benchmarks/bench_distributed.py --sizes 30,300 --procs 1,2 --rounds 3

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


def child(workload: str, n: int, engine_name: str, rounds: int) -> None:
    """One measurement inside this job's process(es); process 0 prints one JSON line."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    setup = make_setup(workload, n, engine_name)
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
                    "engine": engine_name,
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


def measure(args: argparse.Namespace, n: int, procs: int | None) -> dict:
    me = [os.path.abspath(__file__), "--one", f"{args.workload}:{n}", "--rounds", str(args.rounds)]
    if procs is None:
        cmd = [sys.executable, *me, "--engine", "reference"]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={procs}", *me, "--engine", "distributed",
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
    cols = ["agents", "engine", "s/round", "vs 1-proc ref", "wire B/round", "agents B/round"]
    widths = [6, 14, 8, 13, 13, 15, 10, 7]
    head = " ".join(
        f"{c:>{w}}" for c, w in zip([*cols, "wire share", "RSS GB"], widths, strict=True)
    )
    print(head)
    print("-" * len(head))
    for n in [int(x) for x in args.sizes.split(",")]:
        ref = measure(args, n, None)
        rows = [("reference", ref)] + [
            (f"distributed x{p}", measure(args, n, p))
            for p in [int(x) for x in args.procs.split(",")]
        ]
        for name, r in rows:
            if "error" in r:
                print(f"{n:>6} {name:>14} error: {r['error']}")
                continue
            ratio = r["round_s"] / ref["round_s"] if "round_s" in ref else float("nan")
            share = r["wire_bytes_per_round"] / max(1.0, r["agent_bytes_per_round"])
            print(
                f"{n:>6} {name:>14} {r['round_s']:>8.3f} {ratio:>13.2f} "
                f"{r['wire_bytes_per_round']:>13.3g} {r['agent_bytes_per_round']:>15.3g} "
                f"{share:>10.3f} {r['rss_total'] / 1e9:>7.2f}"
            )


if __name__ == "__main__":
    main()
