"""Property tests: random configs and random npz files either load or fail with one clean
UserError line; nothing else escapes (no traceback for the user). Then every bad input the
README names, through the CLI: one line `parse-dfl: error: ...`, exit code 2, nothing written."""

from __future__ import annotations

import errno
import io
import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parse_dfl import cli
from parse_dfl.config import Config, build_config, describe_fields
from parse_dfl.data import load_dataset, npz
from parse_dfl.data.partition import partition
from parse_dfl.engines.setup import resolve_device
from parse_dfl.errors import UserError
from tests.conftest import quick_config

KEYS = [key for key, _, _ in describe_fields()]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 500),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-2, 70), max_size=4),
    st.dictionaries(st.text(max_size=6), st.integers(-3, 40), max_size=3),
)
COUNTS = {"tried": 0, "refused": 0}


@pytest.fixture(autouse=True, scope="module")
def _report_counts():
    """Say how many malformed inputs were thrown and refused (visible with pytest -s)."""
    yield
    print(f"\nbad input: {COUNTS['tried']} inputs tried, {COUNTS['refused']} refused cleanly")


def nested(flat: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                break
            node = nxt
        else:
            node[parts[-1]] = value
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=10)), SCALARS, max_size=5
    )
)
def test_random_configs_validate_or_fail_cleanly(flat: dict[str, object]) -> None:
    COUNTS["tried"] += 1
    try:
        cfg = build_config(nested(flat))
    except UserError as e:
        COUNTS["refused"] += 1
        assert "\n" not in str(e) and e.where
        return
    assert isinstance(cfg, Config)


ARRAYS = st.sampled_from(["ok", "nan", "inf", "short", "int", "1d", "5d", "empty"])


def make_array(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(size=(n, 3, 8)).astype(np.float32)
    if kind == "nan" and n:
        x[0, 0, 0] = np.nan
    elif kind == "inf" and n:
        x[-1, 0, 0] = np.inf
    elif kind == "short":
        x = x[: max(0, n - 1)]
    elif kind == "int":
        x = rng.integers(0, 5, size=(n, 4))
    elif kind == "1d":
        x = rng.normal(size=n)
    elif kind == "5d":
        x = rng.normal(size=(n, 1, 1, 2, 2))
    elif kind == "empty":
        x = np.zeros((0, 3))
    return x


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(0, 30),
    first=ARRAYS,
    second=ARRAYS,
    labels=st.sampled_from(["ok", "negative", "float", "fractional", "short", "missing", "2d"]),
    extra=st.sampled_from([None, "groups", "bad_groups", "typo"]),
    truncate=st.one_of(st.none(), st.floats(0.0, 0.99)),
    seed=st.integers(0, 10_000),
)
def test_random_npz_files_load_or_fail_cleanly(
    tmp_path_factory, n, first, second, labels, extra, truncate, seed
) -> None:
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {
        "x_acc": make_array(first, n, rng),
        "x_gyro": make_array(second, n, rng),
    }
    y = rng.integers(0, 3, size=n)
    if labels == "negative" and n:
        y[0] = -1
    if labels == "float":
        y = y.astype(np.float64)
    if labels == "fractional":
        y = y + 0.5
    if labels == "short":
        y = y[: max(0, n - 2)]
    if labels == "2d":
        y = y.reshape(-1, 1)
    if labels != "missing":
        arrays["y"] = y
    if extra == "groups":
        arrays["groups"] = np.arange(n) % 2
    elif extra == "bad_groups":
        arrays["groups"] = np.zeros(n + 1)
    elif extra == "typo":
        arrays["labels"] = y
    path = tmp_path_factory.mktemp("npz") / "data.npz"
    np.savez(path, **arrays)
    if truncate is not None:
        raw = path.read_bytes()
        path.write_bytes(raw[: int(len(raw) * truncate)])
    cfg = build_config(
        {"data": {"name": "npz", "path": str(path)}, "agents": {"mix": "acc:1,gyro:1"}}
    )
    COUNTS["tried"] += 1
    try:
        ds = load_dataset(cfg.data)
        partition(ds, cfg)
    except UserError as e:
        COUNTS["refused"] += 1
        assert "\n" not in str(e)
        assert e.where in ("data.path", "agents.mix", "data.modalities"), str(e)
        return
    # it loaded: then it really was valid
    assert n > 0
    assert {first, second} <= {"ok", "int", "nan", "inf"}
    assert not ({first, second} & {"nan", "inf"})
    assert labels in ("ok", "float") and truncate is None and extra in (None, "groups")


# --- the README's promises, one bad input at a time: one line, exit code 2 --------------------

BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
data: {name: *i}
"""


def refused(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI in-process: exit code 2, one stderr line holding every needle."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("parse-dfl: error: "), err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


def quick_run(capsys, tmp_path: Path, *sets: str) -> str:
    out = tmp_path / "never"
    args = [x for s in sets for x in ("--set", s)]
    line = refused(capsys, ["run", "configs/quick.yaml", "--quiet", "--out", str(out), *args])
    assert not out.exists()
    return line


# YAML


def test_yaml_alias_bomb_in_a_config_is_refused_quickly(capsys, tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    refused(capsys, ["run", str(path), "--quiet"], str(path), "expands to more than")


def test_yaml_alias_bomb_in_a_sweep_file_and_in_set(capsys, tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    refused(capsys, ["sweep", str(path), "--quiet"], "expands to more than")
    levels = ["&a [1,1,1,1,1,1,1,1,1,1]"]
    for level in "bcdefgh":  # 10^8 values once expanded
        levels.append(f"&{level} [{','.join(['*' + chr(ord(level) - 1)] * 10)}]")
    line = quick_run(capsys, tmp_path, f"data.name=[{', '.join(levels)}]")
    assert line.startswith("parse-dfl: error: --set: the YAML expands to more than")


def test_recursive_yaml_alias_is_refused(capsys, tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("data: &x {name: [*x]}\n")
    refused(capsys, ["run", str(path)], "recursive alias")


def test_resume_folder_with_a_bomb_as_config_yaml(capsys, tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(BOMB)
    refused(capsys, ["run", "--resume", str(tmp_path), "--quiet"], "config.yaml", "expands")


# engine.device


def test_malformed_device_names_the_field(capsys, tmp_path: Path) -> None:
    quick_run(capsys, tmp_path, "engine.device=nonsense")
    line = quick_run(capsys, tmp_path, "engine.device=cuda:x")
    assert "engine.device" in line and "not a device" in line


def test_unavailable_device_is_refused(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for device in ("cuda", "cuda:0", "mps"):
        line = quick_run(capsys, tmp_path, f"engine.device={device}")
        assert "engine.device" in line and "not available here" in line
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_index_beyond_the_device_count(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match=r"'cuda:2' is not available here .*2 CUDA devices"):
        resolve_device("cuda:2")


# train.batch_size


def test_batch_larger_than_all_training_samples(capsys, tmp_path: Path) -> None:
    line = quick_run(capsys, tmp_path, "train.batch_size=10000")
    assert "train.batch_size: 10000 is more than all 60 training samples" in line
    assert "(every agent has 10): use a batch of at most 10" in line
    line = quick_run(capsys, tmp_path, "train.batch_size=61", "partition.name=dirichlet")
    assert "agent 0 has the fewest, 5; agent 5 the most, 20" in line


def test_batch_a_little_above_an_agents_samples_still_runs() -> None:
    """Small shards (dirichlet, many agents) with a batch above some of them: allowed, as in
    the paper's label-skew sweep; the batch repeats the agent's samples."""
    from parse_dfl.engines.setup import build_setup

    setup = build_setup(quick_config("train.batch_size=60", "partition.name=dirichlet"))
    assert min(len(a.train_idx) for a in setup.agents) < 60


# topology


def test_erdos_renyi_that_cannot_connect(capsys, tmp_path: Path) -> None:
    line = quick_run(capsys, tmp_path, "topology.name=erdos-renyi", "topology.p=0.01")
    assert "topology.p" in line and "connected" in line and "larger p" in line


# npz


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a)
    return buf.getvalue()


def npz_error(path: Path) -> str:
    cfg = build_config({"data": {"name": "npz", "path": str(path)}})
    with pytest.raises(UserError) as err:
        load_dataset(cfg.data)
    assert err.value.where == "data.path" and "\n" not in str(err.value)
    return err.value.problem


def test_npz_header_declaring_a_trillion_values(tmp_path: Path, capsys) -> None:
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    )
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x_acc.npy", head.getvalue() + bytes(64))
        z.writestr("y.npy", npy(np.arange(10) % 2))
    quick_run(capsys, tmp_path, "data.name=npz", f"data.path={path}")
    problem = npz_error(path)
    assert "'x_acc' declares shape (1000000000000,)" in problem and "damaged" in problem


def test_npz_deflate_bomb_refused_by_its_declared_size(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(npz, "MAX_BYTES", 2**20)  # the same check as 8 GiB, on 1 MiB
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x_acc.npy", npy(np.zeros((2**17 + 1, 1))))  # 1 MiB + of zeros
        z.writestr("y.npy", npy(np.arange(10) % 2))
    assert path.stat().st_size < 10_000
    assert "uncompressed; at most 1.0 MiB" in npz_error(path)


def test_npz_member_sizes_that_lie(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    x = np.zeros((4000, 3), np.float32)  # larger than zipfile's first read of a member
    np.savez(good, x_acc=x, y=np.arange(4000) % 2)
    raw = bytearray(good.read_bytes())
    at = raw.find(b"PK\x01\x02")  # central directory: claim 600 more bytes for x_acc
    assert raw[at + 46 : at + 55] == b"x_acc.npy"
    csize, usize = struct.unpack_from("<II", raw, at + 20)
    struct.pack_into("<II", raw, at + 20, csize + 600, usize + 600)
    lie = tmp_path / "lie.npz"
    lie.write_bytes(bytes(raw))
    assert "declares shape (4000, 3)" in npz_error(lie)  # the header still says 4000 x 3
    shape = raw.find(b"'shape': (4000, 3)")
    raw[shape : shape + 18] = b"'shape': (4050, 3)"  # and now the header agrees with the lie
    lie.write_bytes(bytes(raw))
    assert "not a valid .npz file" in npz_error(lie)


def test_npz_member_that_is_not_an_array(tmp_path: Path) -> None:
    path = tmp_path / "text.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("y", b"1 2 3")
    assert "'y' is not a .npy array" in npz_error(path)


# parse-dfl missing and damaged run folders


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "quick"
    argv = ["run", "configs/quick.yaml", "--quiet", "--out", str(out), "--set", "train.rounds=1"]
    assert cli.main(argv) == 0
    return out


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ('{"method": "parse", "conf', "not a results file of a run (Unterminated string"),
        ('{"method": "parse"}', "not a results file of a run (no 'config' key)"),
        ("[1, 2]", "not a results file of a run (a JSON list, not an object)"),
    ],
)
def test_missing_on_a_damaged_results_json(
    capsys, tmp_path: Path, finished_run: Path, damage: str, needle: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "results.json").write_text(damage)
    refused(capsys, ["missing", str(run)], str(run / "results.json"), needle)


def test_missing_on_a_damaged_models_file(capsys, tmp_path: Path, finished_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "models.pt").write_bytes((finished_run / "models.pt").read_bytes()[:500])
    refused(capsys, ["missing", str(run)], "models.pt", "cannot load the trained models")


def test_missing_works_on_the_intact_run(capsys, finished_run: Path) -> None:
    assert cli.main(["missing", str(finished_run)]) == 0
    assert "without acc" in capsys.readouterr().out


# every command: file-system and JSON trouble is one line too, a bug is not hidden


@pytest.mark.parametrize(
    ("exc", "needle"),
    [
        (PermissionError(errno.EACCES, "Permission denied", "/data/x.json"), "/data/x.json"),
        (OSError(errno.ENOSPC, "No space left on device", "/runs/r"), "No space left"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory"), "No such file"),
        (json.JSONDecodeError("Expecting value", "{", 1), "JSON file it reads is damaged"),
    ],
)
def test_main_turns_file_trouble_into_one_line(capsys, monkeypatch, exc, needle) -> None:
    def boom(args) -> int:
        raise exc

    monkeypatch.setattr(cli, "_cmd_methods", boom)
    refused(capsys, ["methods"], needle)


def test_main_keeps_the_traceback_of_a_bug(monkeypatch) -> None:
    def bug(args) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "_cmd_methods", bug)
    with pytest.raises(ZeroDivisionError):
        cli.main(["methods"])
