"""The distributed engine keeps the contracts of one process: harmony resumes bit for bit
from a checkpoint taken inside its last stage, a NaN peer is dropped by plain gossip across
processes, and a message whose size does not match the sender's plan is dropped and counted
(real torchrun jobs over loopback)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from parse_dfl.experiments.run import run
from tests.conftest import quick_config

QUICK = "configs/quick.yaml"
SUPPORT = Path(__file__).parent / "support"


def torchrun(nprocs: int, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nprocs}", "-m", "parse_dfl.launch", *args, "--quiet",
    ]  # fmt: skip


def sets_args(sets: tuple[str, ...]) -> list[str]:
    return [x for kv in sets for x in ("--set", kv)]


def launch(nprocs: int, out: Path, sets: tuple[str, ...], env: dict | None = None) -> dict:
    proc = subprocess.run(
        torchrun(nprocs, QUICK, *sets_args(sets), "--out", str(out)),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def kill_job(pid: int) -> None:
    """SIGKILL torchrun's workers (they run in sessions of their own) and torchrun."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    for child in [int(x) for x in out.split()] + [pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def models_equal(a: Path, b: Path) -> bool:
    ma = torch.load(a / "models.pt", weights_only=True)
    mb = torch.load(b / "models.pt", weights_only=True)
    return ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


def test_harmony_resumes_bit_for_bit_from_inside_its_last_stage(tmp_path) -> None:
    rounds = 30  # harmony: stage 0 to round 15, 1 to round 18, 2 (clusters) after
    sets = (
        f"train.rounds={rounds}",
        "train.eval_every=10",
        "checkpoint.every=1",
        "method.name=harmony",
        "agents.mix=acc:2,gyro:2,acc+gyro:3",
        "agents.placement=interleaved",
    )
    whole = launch(2, tmp_path / "whole", sets)
    out = tmp_path / "stopped"
    proc = subprocess.Popen(
        torchrun(2, QUICK, *sets_args(sets), "--out", str(out)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stopped_at = 0
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            ckpt = out / "checkpoint.pt"
            if ckpt.is_file():
                try:
                    stopped_at = int(torch.load(ckpt, weights_only=True)["round"])
                except Exception:  # noqa: BLE001 - replaced while being read
                    stopped_at = 0
                if stopped_at >= 20:
                    kill_job(proc.pid)  # every process of the job, mid-run
                    break
            time.sleep(0.01)
    finally:
        kill_job(proc.pid)
        proc.wait(timeout=30)
    assert 20 <= stopped_at < rounds, f"stopped at round {stopped_at}"
    assert not (out / "results.json").exists()
    done = subprocess.run(
        torchrun(2, "--resume", str(out)), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["resumed_at_round"] > 20
    assert res["method_summary"] == whole["method_summary"]
    assert [a["test_accuracy"] for a in res["agents"]] == [
        a["test_accuracy"] for a in whole["agents"]
    ]
    assert models_equal(tmp_path / "whole", out)


def test_a_nan_peer_is_dropped_across_processes(tmp_path) -> None:
    sets = (
        "train.rounds=4",
        "train.eval_every=2",
        "attack.kind=nan",
        "attack.fraction=0.34",
        "engine.dtype=float64",
    )
    ref = run(quick_config(*sets, "engine.name=reference"), tmp_path / "ref", progress=False)
    res = launch(2, tmp_path / "dist", sets)
    assert res["dropped_messages"] == ref["dropped_messages"] > 0
    assert [a["test_accuracy"] for a in res["agents"]] == [
        a["test_accuracy"] for a in ref["agents"]
    ]
    models = torch.load(tmp_path / "dist" / "models.pt", weights_only=True)
    bad = set(res["attack"]["attackers"])
    for key, value in models.items():
        if int(key.split(".")[0]) not in bad:
            assert torch.isfinite(value).all(), key


def test_a_message_of_the_wrong_size_is_dropped_and_counted(tmp_path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")]),
        "PARSE_DFL_TEST_BAD_SIZE": "1",
    }
    sets = ("train.rounds=3", "train.eval_every=3")
    res = launch(2, tmp_path / "bad", sets, env=env)
    clean = launch(2, tmp_path / "clean", sets)
    assert clean["dropped_messages"] == 0
    assert res["dropped_messages"] > 0  # process 0 refused every message of process 1
    assert np.isfinite([a["test_accuracy"] for a in res["agents"]]).all()
