"""The command line: end-to-end runs beat chance, and bad input is one line with exit code 2."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from parse_dfl.cli import main


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "parse_dfl.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_quick_run_beats_chance_on_basic_motions(tmp_path) -> None:
    out = tmp_path / "run"
    assert (
        main(
            ["run", "configs/quick.yaml", "--out", str(out), "--quiet", "--set", "train.rounds=15"]
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    assert res["mean_accuracy"] > 0.6  # chance: 0.25
    assert set(res["by_type"]) == {"acc", "gyro", "acc+gyro"}
    for key in (
        "agents",
        "by_type_local",
        "mean_local_accuracy",
        "history",
        "bytes_sent",
        "wall_seconds",
        "holder_graphs",
        "config",
    ):
        assert key in res
    assert {"id", "modalities", "test_accuracy", "local_test_accuracy", "n_train", "n_test"} <= set(
        res["agents"][0]
    )
    assert (out / "config.yaml").is_file()


def test_quick_run_beats_chance_on_watch(tmp_path) -> None:
    out = tmp_path / "watch"
    code = main(
        [
            "run",
            "configs/quick.yaml",
            "--quiet",
            "--out",
            str(out),
            "--methods",
            "parse,local",
            "--set",
            "data.name=watch",
            "--set",
            "agents.mix=acc:3,gyro:3,acc+gyro:3",
            "--set",
            "train.rounds=10",
            "--set",
            "train.local_steps=10",
            "--set",
            "train.batch_size=32",
            "--set",
            "agents.width=32",
            "--set",
            "partition.samples_per_agent=150",
        ]
    )
    assert code == 0
    for method in ("parse", "local"):
        res = json.loads((out / method / "results.json").read_text())
        assert res["mean_accuracy"] > 0.5, method  # chance: 1/7
        assert res["method"] == method


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "train.rounds=abc"], "train.rounds"),
        (["--set", "agents.mix=acc:500,gyro:500"], "agents.mix"),
        (["--set", "agents.mix=acc:2,sonar:2"], "agents.mix"),
        (["--set", "data.modalities=[acc,sonar]"], "data.modalities"),
        (["--set", "train.bogus=1"], "train.bogus"),
        (["--set", "data.name=npz"], "data.path"),
        (
            ["--set", "topology.name=edge-list", "--set", "topology.path=/nonexistent"],
            "topology.path",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args: list[str], needle: str) -> None:
    out = tmp_path / "never"
    proc = cli("run", "configs/quick.yaml", "--quiet", "--out", str(out), *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()


def test_missing_config_file() -> None:
    proc = cli("run", "no/such.yaml")
    assert proc.returncode == 2 and "config file not found" in proc.stderr


def test_datasets_lists_every_source() -> None:
    proc = cli("datasets")
    assert proc.returncode == 0
    for name in ("watch", "mfeat", "basic-motions", "synthetic-pid", "npz"):
        assert name in proc.stdout


def test_pid_command_writes_json(tmp_path) -> None:
    out = tmp_path / "pid.json"
    code = main(
        [
            "pid",
            "configs/quick.yaml",
            "--set",
            "data.name=synthetic-pid",
            "--set",
            "data.setting=uniqueness0",
            "--set",
            "data.noise=1",
            "--set",
            "data.n_samples=2000",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    res = json.loads(out.read_text())
    assert {"R", "U1", "U2", "S", "estimator"} <= set(res)
    assert res["U1"] > 1.5 and max(res["R"], res["U2"], res["S"]) < 0.3


def test_version(capsys) -> None:
    from parse_dfl import __version__

    with pytest.raises(SystemExit) as end:
        main(["--version"])
    assert end.value.code == 0
    assert capsys.readouterr().out.strip() == f"parse-dfl {__version__}"


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """The reader is gone before the first line (`| head` that has had enough): no traceback,
    no 'Exception ignored' at exit; 141 as for any tool stopped by SIGPIPE."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "parse_dfl.cli", "config"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""


def test_piped_into_head() -> None:
    cmd = f"set -o pipefail; {shlex.quote(sys.executable)} -m parse_dfl.cli config | head -1"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 141), proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.split() == ["key", "default", "meaning"]


@pytest.mark.parametrize("command", ["config", "datasets", "methods"])
def test_tables_fit_100_columns(capsys, command: str) -> None:
    assert main([command]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100
    if command == "config":  # every key is still there, each on a line of its own
        from parse_dfl.config import describe_fields

        starts = {line.split(" ")[0] for line in out.splitlines()}
        assert {key for key, _, _ in describe_fields()} <= starts


def test_text_table_wraps_the_last_column() -> None:
    from parse_dfl.text import text_table

    long = "word " * 60
    out = text_table([["name", "n", "description"], ["a", "1", long], ["bb", "22", "short"]])
    lines = out.splitlines()
    assert max(map(len, lines)) <= 100
    assert len(lines) > 4  # the long description went on continuation lines
    assert lines[0].startswith("name  ") and lines[2].startswith("a      1  word")
    assert " ".join(" ".join(lines[2:-1]).split()[2:]) == long.strip()
    assert lines[-1] == "bb    22  short"  # numbers right-aligned, words left-aligned


def test_text_table_splits_many_numeric_columns_into_blocks() -> None:
    from parse_dfl.text import text_table

    head = ["method", *(f"type {i} (global)" for i in range(12))]
    rows = [head, ["parse", *(f"{i}.5" for i in range(12))]]
    out = text_table(rows)
    assert max(len(line) for line in out.splitlines()) <= 100
    blocks = out.split("\n\n")
    assert len(blocks) > 1
    assert all(b.startswith("method") for b in blocks)  # the first column is repeated
    assert all(f"type {i} (global)" in out for i in range(12))
