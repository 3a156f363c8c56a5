"""The distributed engine against the reference engine: real torchrun jobs of 2 (and 3)
processes over loopback, the same seeds, the same results; and a job whose process is killed
with SIGKILL restarts from its checkpoint and ends exactly where an uninterrupted job ends."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from parse_dfl.experiments.run import run
from tests.conftest import quick_config

QUICK = "configs/quick.yaml"


def torchrun(nprocs: int, out: Path, *sets: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nprocs}", *extra, "-m", "parse_dfl.launch", QUICK,
        *[x for kv in sets for x in ("--set", kv)], "--out", str(out), "--quiet",
    ]  # fmt: skip


def launch(nprocs: int, out: Path, *sets: str) -> dict:
    proc = subprocess.run(torchrun(nprocs, out, *sets), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def assert_same(a_dir: Path, a: dict, b_dir: Path, b: dict, tol: float = 1e-9) -> float:
    """Equal results; parameters within `tol` (the comparisons with the reference engine run
    in float64, where the batched shards' summation order is far below it)."""
    assert [x["test_accuracy"] for x in a["agents"]] == [x["test_accuracy"] for x in b["agents"]]
    assert [x["local_test_accuracy"] for x in a["agents"]] == [
        x["local_test_accuracy"] for x in b["agents"]
    ]
    assert a["bytes_sent"] == b["bytes_sent"]
    for ha, hb in zip(a["history"], b["history"], strict=True):
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-9)
        assert ha["conflict"].keys() == hb["conflict"].keys()
        for k in ha["conflict"]:
            assert ha["conflict"][k] == pytest.approx(hb["conflict"][k], abs=1e-4)
    ma = torch.load(a_dir / "models.pt", weights_only=True)
    mb = torch.load(b_dir / "models.pt", weights_only=True)
    assert ma.keys() == mb.keys()
    diff = max(float((ma[k] - mb[k]).abs().max()) for k in ma)
    assert diff <= tol
    return diff


CASES = {
    "parse": ("method.name=parse",),
    "harmony-random-gossip-faults": (
        "method.name=harmony",
        "topology.name=random-gossip",
        "topology.degree=2",
        "faults.link_failure=0.3",
        "faults.crash_fraction=0.2",
        "train.optimizer=sgd",
    ),
    "dsgd-modality-noise-attack-trimmed-mean": (
        "method.name=dsgd-modality",
        "attack.kind=noise",
        "attack.fraction=0.2",
        "robust.rule=trimmed-mean",
    ),
}


F64 = "engine.dtype=float64"


@pytest.mark.parametrize(
    ("case", "shard_engine"),
    [(case, "batched") for case in CASES] + [("parse", "reference")],
)
def test_two_processes_match_the_reference_engine(tmp_path, case, shard_engine) -> None:
    sets = (
        "train.rounds=6",
        "train.eval_every=3",
        F64,
        f"engine.shard_engine={shard_engine}",
        *CASES[case],
    )
    ref = run(quick_config(*sets, "engine.name=reference"), tmp_path / "ref", progress=False)
    dist = launch(2, tmp_path / "dist", *sets)
    assert dist["engine"] == "distributed" and dist["processes"] == 2
    assert_same(tmp_path / "ref", ref, tmp_path / "dist", dist)
    # what crossed the process boundary is part of what agents sent each other
    assert 0 < dist["bytes_between_processes"] < dist["bytes_sent"]
    assert dist["dropped_messages"] == ref["dropped_messages"]


def test_three_processes_with_uneven_shards_match(tmp_path) -> None:
    sets = ("train.rounds=4", "train.eval_every=2", "agents.mix=acc:3,gyro:2,acc+gyro:2", F64)
    ref = run(quick_config(*sets, "engine.name=reference"), tmp_path / "ref", progress=False)
    dist = launch(3, tmp_path / "dist", *sets)
    assert_same(tmp_path / "ref", ref, tmp_path / "dist", dist)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_a_killed_process_restarts_from_the_checkpoint_with_the_same_result(tmp_path) -> None:
    sets = ("train.rounds=40", "train.eval_every=10", "checkpoint.every=4", "train.optimizer=sgd")
    whole = launch(2, tmp_path / "whole", *sets)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        torchrun(2, out, *sets, extra=("--max-restarts=1",)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        workers = _children(proc.pid)
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGKILL)  # process 1, mid-run
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            for pid in _children(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["restarts"] == 1 and res["resumed_at_round"] > 1
    assert not (out / "checkpoint.pt").exists()
    # bit for bit: the restarted job ends exactly where the uninterrupted one did
    assert_same(tmp_path / "whole", whole, out, res, tol=0.0)
    assert res["bytes_between_processes"] == whole["bytes_between_processes"]


def _kill_tree(proc: subprocess.Popen) -> None:
    """The launcher and its workers (torchrun starts each in a session of its own)."""
    for pid in [*_children(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def test_two_launchers_as_two_machines_match_the_reference_engine(tmp_path) -> None:
    """The multi-machine recipe of docs/engines.md as written (the same torchrun line started
    twice, c10d rendezvous, one shared --out), here as two launchers of one process each on
    this machine over loopback."""
    sets = ("train.rounds=4", "train.eval_every=2", F64)
    ref = run(quick_config(*sets, "engine.name=reference"), tmp_path / "ref", progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "dist"
    line = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
        "--rdzv-id", "two-launchers", "--max-restarts", "3",
        "-m", "parse_dfl.launch", QUICK, *[x for kv in sets for x in ("--set", kv)],
        "--out", str(out), "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the reference ran on one thread
    start = time.monotonic()
    launchers = [
        subprocess.Popen(line, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    try:
        outputs = [
            p.communicate(timeout=max(1, 120 - (time.monotonic() - start))) for p in launchers
        ]
    finally:
        for p in launchers:
            if p.poll() is None:
                _kill_tree(p)
    for p, (_, err) in zip(launchers, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert sum("run folder:" in o for o, _ in outputs) == 1  # process 0 reports, on one machine
    dist = json.loads((out / "results.json").read_text())
    assert dist["engine"] == "distributed" and dist["processes"] == 2 and dist["restarts"] == 0
    assert_same(tmp_path / "ref", ref, out, dist)
    assert 0 < dist["bytes_between_processes"] < dist["bytes_sent"]
