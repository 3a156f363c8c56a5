"""Seconds per round of the reference and the batched engine as the number of agents grows.

Run by hand (not a test):

    .venv/bin/python benchmarks/bench_engines.py                      # everything (long)
    .venv/bin/python benchmarks/bench_engines.py --workload parse-watch --sizes 10,100 --rounds 2
    .venv/bin/python benchmarks/bench_engines.py --threads 1 --clock cpu   # on a shared machine

Workloads (synthetic data, so any number of agents fits):

  mlp-600      600 features, 7 classes, 150 training (+50 test) samples per agent; every agent
               an MLP 600-128-128-7; SGD (momentum 0.9), batch 32, one local epoch per round
               (ceil(150/32) = 5 steps); ring; Metropolis-Hastings gossip of all parameters
               (plain DSGD: a benchmark-only method, registered nowhere).
  parse-watch  PARSE with the default encoders (width 64, split 64/64/64) on data of the
               watch data's shape (acc, gyro: 3 x 100 series, 7 classes, 156 samples per
               agent as the watch data has for 30 agents); acc:gyro:acc+gyro = 1:1:1; Adam,
               5 local steps of 32, lr 0.003 (configs/watch.yaml); ring.

Every (workload, size, engine) runs in a fresh subprocess, so peak memory (ru_maxrss) is its
own. A measurement times `--rounds` rounds (local steps + gossip, no evaluation) after one
warm-up round (`--warmup 0`: none); evaluation is timed once separately where it is
affordable (its global test set grows with N, so it costs O(N^2)). Model FLOPs per round
(forward + backward, counted with torch.utils.flop_counter on the reference engine for one
round of a 12-agent system, scaled linearly in N) over the local-step time give the achieved
GFLOP/s, compared with a 2048x2048 float32 matmul measured in the same run on the same clock.
The `check` column is the receive checks' share of a round (every holder's block scanned
for non-finite values, wall clock). When other jobs share the cores, wall times swing by
10x (a 2-thread OpenMP loop whose partner thread is descheduled waits at every barrier);
`--threads 1 --clock cpu` measures each engine's time on one core instead.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from parse_dfl.config import Config, build_config
from parse_dfl.data.base import MultimodalDataset
from parse_dfl.data.partition import AgentSpec, global_test_indices, partition
from parse_dfl.engines import ENGINES
from parse_dfl.engines.setup import Setup, resolve_device
from parse_dfl.graph import Topology
from parse_dfl.methods.base import Method, Share, SharePlan
from parse_dfl.methods.parse import ParseMethod

WORKLOADS = ("mlp-600", "parse-watch")
DEFAULT_SIZES = (10, 30, 100, 300, 1000, 3000, 10000)

# --- the mlp-600 workload: a benchmark-only DSGD method -------------------------------------


class MLP(nn.Module):
    def __init__(self, features: int, hidden: int, n_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_classes),
        )

    def block_prefixes(self) -> dict[str, list[str]]:
        return {"mlp": ["net"]}

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(x["x"])


class PlainDsgd(Method):
    """Every agent: one MLP on modality "x", cross-entropy, every parameter averaged."""

    name = "bench-dsgd"

    def build_model(self, agent: AgentSpec) -> nn.Module:
        return MLP(self.input_shapes["x"][0], 128, self.n_classes)

    def loss(self, model: nn.Module, x: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    def logits(self, model: nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(x)

    def share_plan(self, agent: AgentSpec, model: nn.Module) -> SharePlan:
        return {"mlp": Share()}


# --- synthetic data and setup ----------------------------------------------------------------


def synthetic(kind: str, n_samples: int, seed: int) -> MultimodalDataset:
    """Class-dependent means plus noise, float32 (learnable, shaped like the real data)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, n_samples)
    if kind == "mlp-600":
        centres = rng.standard_normal((7, 600)).astype(np.float32)
        x = rng.standard_normal((n_samples, 600), dtype=np.float32)
        x += centres[y]
        return MultimodalDataset("bench-mlp", {"x": x}, {"x": "vector"}, y, 7)
    mods = {}
    for m in ("acc", "gyro"):
        centres = rng.standard_normal((7, 3, 1)).astype(np.float32)
        x = rng.standard_normal((n_samples, 3, 100), dtype=np.float32)
        x += centres[y]
        mods[m] = x
    return MultimodalDataset("bench-watch", mods, {"acc": "series", "gyro": "series"}, y, 7)


def config(workload: str, n: int, engine: str) -> Config:
    if workload == "mlp-600":
        raw: dict[str, Any] = {
            "data": {"name": "npz"},  # validation only: the data is built in memory
            "agents": {"mix": {"x": n}},
            "partition": {"samples_per_agent": 200},  # 150 train + 50 test
            "method": {"name": "local"},  # validation only: the method is PlainDsgd
            "train": {
                "rounds": 1000,
                "local_steps": math.ceil(150 / 32),
                "batch_size": 32,
                "lr": 0.05,
                "optimizer": "sgd",
                "momentum": 0.9,
            },
        }
    else:
        k = n // 3
        raw = {
            "data": {"name": "npz"},
            "agents": {"mix": {"acc": k, "gyro": k, "acc+gyro": n - 2 * k}},
            "partition": {"samples_per_agent": 156},
            "method": {"name": "parse"},
            "train": {"rounds": 1000, "local_steps": 5, "batch_size": 32, "lr": 0.003},
        }
    raw["topology"] = {"name": "ring"}
    raw["engine"] = {"name": engine, "device": "cpu"}
    return build_config(raw)


def make_setup(workload: str, n: int, engine: str) -> Setup:
    """What engines.setup.build_setup does, with in-memory data and the benchmark method."""
    cfg = config(workload, n, engine)
    per = cfg.partition.samples_per_agent or 0
    ds = synthetic(workload, n * per, cfg.seed)
    agents = partition(ds, cfg)
    method: Method = PlainDsgd(cfg, ds) if workload == "mlp-600" else ParseMethod(cfg, ds)
    device = resolve_device(cfg.engine.device)
    x = {m: torch.from_numpy(v).to(device) for m, v in ds.modalities.items()}
    return Setup(
        cfg=cfg,
        data=ds,
        agents=agents,
        method=method,
        topology=Topology(cfg.topology, len(agents), cfg.seed),
        device=device,
        x=x,
        y=torch.from_numpy(ds.labels.astype(np.int64)).to(device),
        global_test=torch.from_numpy(global_test_indices(agents)).to(device),
        train_idx=[torch.from_numpy(a.train_idx).to(device) for a in agents],
        test_idx=[torch.from_numpy(a.test_idx).to(device) for a in agents],
    )


# --- measurements ----------------------------------------------------------------------------


def gemm_gflops(clock: str = "wall", size: int = 2048, repeats: int = 5) -> float:
    """Best of `repeats` 2048x2048 float32 matmuls, on the wall or the process CPU clock."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t = now()
        a @ b
        best = min(best, now() - t)
    return 2 * size**3 / best / 1e9


def flops_per_agent_round(workload: str) -> float:
    """Model FLOPs (forward + backward) of one round, per agent, on the reference engine."""
    from torch.utils.flop_counter import FlopCounterMode

    n = 12
    engine = ENGINES["reference"](make_setup(workload, n, "reference"))
    with FlopCounterMode(display=False) as counter:
        engine.local_round(1)
    return counter.get_total_flops() / n


def gossip_flops(engine: Any) -> float:
    """2 * nnz(W) * numel per holder group and round (what the mixing product costs)."""
    total = 0.0
    for k, g in enumerate(engine.groups):
        W, _ = engine.schedule.mixing(k, 1)
        total += 2.0 * W.nnz * g.numel
    return total


def check_seconds(engine: Any, rounds: int) -> float:
    """Seconds per round of the receive checks alone (engines/receive.py: every holder's
    block scanned for non-finite values), as the engine runs them in its gossip."""
    from parse_dfl.engines.batched import BatchedEngine
    from parse_dfl.engines.receive import intact

    groups = range(len(engine.groups))
    if isinstance(engine, BatchedEngine):
        scan = [lambda k=k: engine._intact(k) for k in groups]
    else:
        rows = [engine.block_rows(k) for k in groups]
        scan = [lambda r=r: intact(r) for r in rows]
    times = []
    for _ in range(max(1, rounds)):
        t = time.perf_counter()
        for f in scan:
            f()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def measure_one(
    workload: str, n: int, engine_name: str, rounds: int, evaluate: bool, warmup: int = 1
) -> dict:
    """One measurement, in this process (called in a fresh subprocess)."""
    t0 = time.perf_counter()
    setup = make_setup(workload, n, engine_name)
    engine = ENGINES[engine_name](setup)
    build_s = time.perf_counter() - t0
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    warm_s = 0.0
    if warmup:
        t = time.perf_counter()
        engine.local_round(1)
        engine.gossip(1)
        warm_s = time.perf_counter() - t
    local_s, gossip_s, local_cpu, gossip_cpu = [], [], [], []
    for r in range(1 + warmup, 1 + warmup + rounds):
        c = time.process_time()
        t = time.perf_counter()
        engine.local_round(r)
        t1 = time.perf_counter()
        c1 = time.process_time()
        engine.gossip(r)
        t2 = time.perf_counter()
        local_s.append(t1 - t)
        gossip_s.append(t2 - t1)
        local_cpu.append(c1 - c)
        gossip_cpu.append(time.process_time() - c1)
    check_s = check_seconds(engine, rounds)
    eval_s = None
    if evaluate:
        t = time.perf_counter()
        engine.evaluate()
        eval_s = time.perf_counter() - t
    out = {
        "workload": workload,
        "n": n,
        "engine": engine_name,
        "build_s": build_s,
        "warmup_round_s": warm_s,
        "wall": {
            "round_s": float(np.median(np.add(local_s, gossip_s))),
            "local_s": float(np.median(local_s)),
            "gossip_s": float(np.median(gossip_s)),
        },
        "cpu": {
            "round_s": float(np.median(np.add(local_cpu, gossip_cpu))),
            "local_s": float(np.median(local_cpu)),
            "gossip_s": float(np.median(gossip_cpu)),
        },
        "eval_s": eval_s,
        "check_s": check_s,
        "gossip_flops": gossip_flops(engine),
        "param_bytes": sum(
            p.numel() * p.element_size() for m in engine.agent_models() for p in m.parameters()
        ),
        "data_bytes": sum(v.numel() * v.element_size() for v in setup.x.values()),
        "rss_built": rss_built,
        "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "threads": torch.get_num_threads(),
        "load": os.getloadavg()[0],
    }
    if hasattr(engine, "describe_cohorts"):
        out["cohorts"] = engine.describe_cohorts()
    return out


def run_child(args: argparse.Namespace, workload: str, n: int, engine: str, timeout: float):
    cmd = [
        sys.executable,
        __file__,
        "--one",
        f"{workload}:{n}:{engine}",
        "--rounds",
        str(args.rounds),
        "--warmup",
        str(args.warmup),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.eval_max and n <= args.eval_max:
        cmd += ["--evaluate"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {done.returncode}: {' | '.join(tail)}"}


def fmt(v: float | None, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workload", default=",".join(WORKLOADS), help="comma-separated workloads")
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="agent counts")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up")
    p.add_argument(
        "--warmup", type=int, default=1, choices=(0, 1), help="untimed first round (0: time it)"
    )
    p.add_argument("--engines", default="reference,batched")
    p.add_argument(
        "--ref-limit",
        type=float,
        default=60.0,
        help="largest predicted seconds of one reference "
        "measurement (warm-up + timed rounds); larger sizes run the batched engine only",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    p.add_argument("--eval-max", type=int, default=100, help="time evaluation up to this N")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what 's/round', ratios and GFLOP/s use: wall time, or the process's CPU time\n"
        "(with --threads 1: the time on one core, robust when other jobs share the machine)",
    )
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--evaluate", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        workload, n, engine = args.one.split(":")
        res = measure_one(workload, int(n), engine, args.rounds, args.evaluate, args.warmup)
        print(json.dumps(res))
        return

    workloads = [w for w in args.workload.split(",") if w]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    engines = [e for e in args.engines.split(",") if e]
    gemm = gemm_gflops(args.clock)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, clock: {args.clock}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"large GEMM (2048x2048 float32 matmul): {gemm:.1f} GFLOP/s\n")
    for workload in workloads:
        fpa = flops_per_agent_round(workload)
        gc.collect()
        print(f"== {workload}: {fpa / 1e9:.4f} GFLOP of model forward+backward per agent-round")
        print(
            f"{'N':>6} {'engine':>9} {'s/round':>8} {'local':>8} {'gossip':>7} {'wall s':>7} "
            f"{'cpu s':>7} {'ratio':>6} {'GFLOP/s':>8} {'%GEMM':>6} {'peak RSS':>9} "
            f"{'MiB/agent':>9} {'eval s':>7} {'check':>6} {'build s':>7} {'load':>5}"
        )
        ref_last: tuple[int, float] | None = None
        ref_stopped = False
        for n in sizes:
            ref_round = None
            for engine in engines:
                if engine == "reference":
                    if ref_stopped:
                        continue
                    if ref_last is not None:
                        predicted = ref_last[1] * n / ref_last[0] * (args.rounds + args.warmup)
                        if predicted > args.ref_limit:
                            ref_stopped = True
                            print(f"{n:>6} {'reference':>9}  skipped (predicted {predicted:.0f} s)")
                            continue
                res = run_child(args, workload, n, engine, args.timeout)
                if "error" in res:
                    print(f"{n:>6} {engine:>9}  {res['error']}")
                    continue
                t = res[args.clock]
                rate = fpa * n / t["local_s"] / 1e9 if t["local_s"] > 0 else 0.0
                ratio = None
                if engine == "reference":
                    ref_round = t["round_s"]
                    ref_last = (n, res["wall"]["round_s"])
                elif ref_round is not None:
                    ratio = ref_round / t["round_s"]
                print(
                    f"{n:>6} {engine:>9} {t['round_s']:>8.3f} {t['local_s']:>8.3f} "
                    f"{t['gossip_s']:>7.3f} {res['wall']['round_s']:>7.2f} "
                    f"{res['cpu']['round_s']:>7.2f} {fmt(ratio, '.1f'):>6} "
                    f"{rate:>8.1f} {100 * rate / gemm:>5.0f}% "
                    f"{res['rss_peak'] / 2**30:>8.2f}G "
                    f"{res['rss_peak'] / 2**20 / n:>9.2f} {fmt(res['eval_s'], '.2f'):>7} "
                    f"{100 * res['check_s'] / res['wall']['round_s']:>5.1f}% "
                    f"{res['build_s']:>7.1f} {res['load']:>5.1f}",
                    flush=True,
                )
        print()
    print(
        f"large GEMM at the end: {gemm_gflops(args.clock):.1f} GFLOP/s, "
        f"load average {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
