"""`parse-dfl run --nprocs N` fails as one process does: a process count the config cannot use
is refused before anything starts, and a failing process's error reaches the user as its one
line (exit 2 for bad input, 1 for a crash naming the rank), never as torchrun's report."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from parse_dfl import cli
from parse_dfl.launch import first_failure
from tests.conftest import quick_config

QUICK = "configs/quick.yaml"
TORCHRUN_TEXT = ("Traceback", "ChildFailedError", "torch.distributed", "FAILED", "Root Cause")


def descendants(pid: int) -> list[int]:
    """Every process below `pid`: torchrun starts its workers in sessions of their own."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    kids = [int(x) for x in out.split()]
    return kids + [d for k in kids for d in descendants(k)]


def kill_tree(proc: subprocess.Popen) -> None:
    for pid in [*descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def parse_dfl(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> tuple:
    """The real command in a subprocess, killed with everything it started if it hangs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "parse_dfl.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    return proc.returncode, out, err


def assert_one_line(err: str, start: str) -> None:
    assert err.startswith(start) and err.count("\n") == 1, err
    assert not any(t in err for t in TORCHRUN_TEXT), err


@pytest.fixture
def no_processes(monkeypatch):
    """Starting torchrun (or anything) fails the test."""

    def refuse(*a, **k):
        raise AssertionError(f"a process was started: {a}")

    monkeypatch.setattr(subprocess, "Popen", refuse)


@pytest.mark.parametrize("n", ["0", "-1", "7", "999"])
def test_nprocs_outside_one_to_agents_is_refused_before_anything_starts(
    tmp_path, capsys, no_processes, n
) -> None:
    out = tmp_path / "run"
    start = time.monotonic()
    assert cli.main(["run", QUICK, "--nprocs", n, "--out", str(out), "--quiet"]) == 2
    assert time.monotonic() - start < 10
    cap = capsys.readouterr()
    assert cap.out == ""
    assert cap.err == (
        f"parse-dfl: error: --nprocs: must be 1..6, one process per agent at most (got {n})\n"
    )
    assert not out.exists()


def test_nprocs_counts_the_agents_of_the_overridden_mix(tmp_path, capsys, no_processes) -> None:
    code = cli.main(["run", QUICK, "--set", "agents.mix=acc:1,gyro:2", "--nprocs", "4"])
    assert code == 2
    assert "must be 1..3" in capsys.readouterr().err


@pytest.mark.parametrize("n", ["0", "4"])
def test_resume_checks_nprocs_against_the_folders_config(tmp_path, capsys, no_processes, n) -> None:
    cfg = quick_config("agents.mix=acc:1,acc+gyro:2")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert cli.main(["run", "--resume", str(tmp_path), "--nprocs", n]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"parse-dfl: error: --nprocs: must be 1..3, one process per agent at most (got {n})\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_bad_input_inside_every_process_is_one_line(tmp_path, capfd) -> None:
    """Each process refuses its config (the command's own checks are skipped here)."""
    missing = tmp_path / "missing.yaml"
    assert cli._torchrun(2, [str(missing)], quiet=True) == 2
    cap = capfd.readouterr()
    assert cap.out == ""
    assert_one_line(cap.err, f"parse-dfl: error: {missing}")


def test_a_data_file_missing_in_the_processes_is_one_line_and_exit_2(tmp_path) -> None:
    out = tmp_path / "run"
    missing = tmp_path / "missing.npz"
    code, stdout, err = parse_dfl(
        "run", QUICK, "--nprocs", "2", "--set", "data.name=npz", "--set", f"data.path={missing}",
        "--out", str(out), "--quiet",
    )  # fmt: skip
    assert code == 2, err
    assert stdout == ""
    assert_one_line(err, "parse-dfl: error: data.path: ")
    assert str(missing) in err
    assert not out.exists() or not any(out.iterdir())


# Loaded by every process started with this folder on PYTHONPATH: process 1 fails its run.
HOOK = """
import os, signal
if os.environ.get("RANK") == "1":
    import parse_dfl.experiments.run as r
    def _fail(*a, **k):
        if os.environ.get("TEST_FAILURE") == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("simulated crash\\nin process 1")
    r.run = _fail
"""


@pytest.mark.parametrize("how", ["exception", "kill"])
def test_a_crashing_process_is_one_line_naming_its_rank(tmp_path, how) -> None:
    (tmp_path / "sitecustomize.py").write_text(HOOK)
    path = os.pathsep.join(x for x in (str(tmp_path), os.environ.get("PYTHONPATH")) if x)
    code, stdout, err = parse_dfl(
        "run", QUICK, "--nprocs", "2", "--out", str(tmp_path / "run"), "--quiet",
        env={"PYTHONPATH": path, "TEST_FAILURE": how},
    )  # fmt: skip
    assert code == 1, err
    assert stdout == ""
    assert_one_line(err, "parse-dfl: rank 1 crashed: ")
    log = Path(err.rsplit("(log: ", 1)[1].rstrip(")\n"))
    try:
        if how == "exception":
            assert "RuntimeError: simulated crash in process 1 (log: " in err
            assert log.name == "rank-1.log"
            assert "Traceback" in log.read_text() and "simulated crash" in log.read_text()
        else:
            assert "killed by signal SIGKILL (log: " in err
            assert log.name == "torchrun.log" and "exitcode" in log.read_text()
    finally:
        shutil.rmtree(log.parent, ignore_errors=True)


def test_first_failure_is_the_earliest_own_line_or_a_silent_root_cause(tmp_path) -> None:
    def rank_file(rank: int, code: int, message: str, t: float) -> None:
        record = {"rank": rank, "code": code, "message": message, "time": t, "log": None}
        (tmp_path / f"rank-{rank}.json").write_text(json.dumps(record))

    assert first_failure(tmp_path) is None
    rank_file(3, 1, "RuntimeError: connection closed by peer", 100.7)
    rank_file(2, 2, "data.path: no such file", 100.2)
    f = first_failure(tmp_path)
    assert (f.rank, f.code, f.message) == (2, 2, "data.path: no such file")
    # a process killed in the same second left no line: it is the root cause
    root = {"rank": 0, "code": -9, "time": 100}
    (tmp_path / "root-cause.json").write_text(json.dumps(root))
    f = first_failure(tmp_path)
    assert (f.rank, f.code, f.message) == (0, 1, "killed by signal SIGKILL")
    assert f.log == str(tmp_path / "torchrun.log")
    # a root cause that left its own line is reported by it
    root = {"rank": 2, "code": 2, "time": 100}
    (tmp_path / "root-cause.json").write_text(json.dumps(root))
    assert first_failure(tmp_path).message == "data.path: no such file"
