"""No run is ever lost or half-written: run folders are checked before training, files are
atomic with the user's permissions, a full disk is one line, and a resume matches its config."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

import parse_dfl.experiments.run as run_module
from parse_dfl import files
from parse_dfl.cli import main
from parse_dfl.errors import UserError

QUICK = str(Path("configs/quick.yaml").resolve())
TINY = ["--quiet", "--set", "train.rounds=2"]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["run", QUICK, *TINY, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    """The error is one line (a warning about the run's setup, e.g. split holder graphs, may
    come before it on its own line)."""
    lines = [x for x in err.strip().splitlines() if not x.startswith("parse-dfl: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("parse-dfl: error: "), err
    assert "Traceback" not in err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any training from here on fails the test: refusals must come before it."""

    def trains(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained although the run folder was refused")

    monkeypatch.setattr(run_module, "run", trains)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# ---- existing runs are not replaced silently -----------------------------------------------


def test_finished_run_is_refused_and_left_untouched(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "r"
    assert run_cli(capsys, "--out", str(out))[0] == 0
    before = snapshot(out)
    monkeypatch.setattr(run_module, "run", lambda *a, **k: pytest.fail("trained"))
    code, _, err = run_cli(capsys, "--out", str(out), "--set", "seed=1")
    line = one_error_line(err)
    assert code == 2
    assert str(out) in line and "finished run" in line and "--overwrite" in line
    assert snapshot(out) == before


def test_interrupted_run_is_refused(tmp_path, capsys, no_training) -> None:
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.yaml").write_text("seed: 0\n")
    (out / "checkpoint.pt").write_bytes(b"checkpoint")
    before = snapshot(out)
    code, _, err = run_cli(capsys, "--out", str(out))
    line = one_error_line(err)
    assert code == 2 and "interrupted run" in line
    assert f"--resume {out}" in line and "--overwrite" in line
    assert snapshot(out) == before


def test_every_method_subfolder_is_checked_before_any_training(
    tmp_path, capsys, no_training
) -> None:
    out = tmp_path / "r"
    (out / "local").mkdir(parents=True)
    (out / "local" / "results.json").write_text("{}")
    code, _, err = run_cli(capsys, "--out", str(out), "--methods", "parse,local")
    assert code == 2 and str(out / "local") in one_error_line(err)
    assert not (out / "parse").exists()


def test_overwrite_keeps_the_old_run_until_the_new_one_is_written(
    tmp_path, capsys, monkeypatch
) -> None:
    out = tmp_path / "r"
    assert run_cli(capsys, "--out", str(out))[0] == 0
    old = json.loads((out / "results.json").read_text())
    (out / "checkpoint.pt").write_bytes(b"stale")  # e.g. left by an older interrupted run

    real_run = run_module.run
    seen: dict[str, bool] = {}

    def spy(cfg, target, **kwargs):
        from parse_dfl.engines import ENGINES

        engine_cls = ENGINES[cfg.engine.name]
        original = engine_cls.local_round

        def local_round(self, round_):
            seen["old results kept"] = (target / "results.json").is_file()
            seen["stale checkpoint gone"] = not (target / "checkpoint.pt").exists()
            return original(self, round_)

        engine_cls.local_round = local_round
        try:
            return real_run(cfg, target, **kwargs)
        finally:
            engine_cls.local_round = original

    monkeypatch.setattr(run_module, "run", spy)
    code, outp, _ = run_cli(capsys, "--out", str(out), "--overwrite", "--set", "seed=1")
    assert code == 0 and f"run folder: {out}" in outp
    assert seen == {"old results kept": True, "stale checkpoint gone": True}
    new = json.loads((out / "results.json").read_text())
    assert old["seed"] == 0 and new["seed"] == 1
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 1
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "metrics.csv",
        "models.pt",
        "results.json",
    ]


def test_out_that_is_a_file_is_refused_before_training(tmp_path, capsys, no_training) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for out in (afile, afile / "sub"):
        code, _, err = run_cli(capsys, "--out", str(out))
        line = one_error_line(err)
        assert code == 2 and str(out) in line and "is a file" in line
    assert afile.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_unwritable_folder_is_refused_before_training(tmp_path, capsys, no_training) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = run_cli(capsys, "--out", str(ro / "r"))
    finally:
        ro.chmod(0o755)
    assert code == 2 and "cannot write here" in one_error_line(err)
    assert list(ro.iterdir()) == []


def test_the_writability_probe_leaves_nothing_behind(tmp_path) -> None:
    run_module.check_run_folder(tmp_path / "a" / "b" / "c")
    assert list(tmp_path.iterdir()) == []


def test_resume_with_overwrite_or_out_is_refused(tmp_path, capsys, no_training) -> None:
    assert main(["run", "--resume", str(tmp_path), "--overwrite"]) == 2
    assert "--overwrite" in one_error_line(capsys.readouterr().err)


# ---- a run without --out gets a new folder of its own --------------------------------------


def test_without_out_a_new_runs_folder_is_written(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out1, _ = run_cli(capsys)
    code2, out2, _ = run_cli(capsys)
    assert code == code2 == 0
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2 and all(f.name.startswith("parse-") for f in folders)
    assert all((f / "results.json").is_file() for f in folders)
    assert {f"run folder: runs/{f.name}" for f in folders} == {
        line for o in (out1, out2) for line in o.splitlines() if line.startswith("run folder:")
    }


def test_without_out_a_failed_run_leaves_no_folder(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "--set", "agents.mix=acc:500,gyro:500")
    assert code == 2 and "agents.mix" in one_error_line(err)
    assert not any((tmp_path / "runs").iterdir())


def test_new_run_folder_is_never_an_existing_one(tmp_path) -> None:
    a = run_module.new_run_folder("parse", tmp_path)
    b = run_module.new_run_folder("parse", tmp_path)
    assert a != b and a.is_dir() and b.is_dir()


# ---- file modes ----------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_get_the_users_umask(tmp_path, capsys, umask_022) -> None:
    out = tmp_path / "r"
    assert run_cli(capsys, "--out", str(out), "--set", "checkpoint.every=1")[0] == 0
    for name in ("results.json", "config.yaml", "models.pt"):
        assert mode(out / name) == 0o644, name
    files.atomic_write_text(tmp_path / "sweep.json", "{}")
    assert mode(tmp_path / "sweep.json") == 0o644
    os.umask(0o077)
    files.atomic_torch_save(tmp_path / "private.pt", {"x": torch.zeros(1)})
    assert mode(tmp_path / "private.pt") == 0o600


def test_checkpoints_get_the_users_umask(tmp_path, umask_022) -> None:
    cut = interrupted_run(tmp_path / "cut")
    assert mode(cut / "checkpoint.pt") == 0o644 and mode(cut / "config.yaml") == 0o644


# ---- a full disk ---------------------------------------------------------------------------


def disk_full(*args: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_full_disk_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch) -> None:
    target = tmp_path / "results.json"
    target.write_text("old")
    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(UserError, match="no space left on device"):
        files.atomic_write_text(target, "new")
    with pytest.raises(UserError, match="no space left on device"):
        files.atomic_write_files([(tmp_path / "a", b"a"), (target, b"new")])
    assert target.read_text() == "old" and not (tmp_path / "a").exists()
    assert temp_files(tmp_path) == []


def test_full_disk_run_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(files.os, "fsync", disk_full)
    out = tmp_path / "r"
    code, _, err = run_cli(capsys, "--out", str(out))
    line = one_error_line(err)
    assert code == 2 and "no space left on device" in line
    assert not out.exists()  # not even the folder


def test_full_disk_checkpoint_is_one_line_and_leaves_no_temp_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(files.os, "fsync", disk_full)
    out = tmp_path / "r"
    code, _, err = run_cli(capsys, "--out", str(out), "--set", "checkpoint.every=1")
    assert code == 2 and "no space left on device" in one_error_line(err)
    assert temp_files(tmp_path) == []


@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Path]:
    """A real 256 KiB file system (tmpfs): room for one quick run, not for two."""
    where = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)


def test_really_full_disk_keeps_the_old_run(tiny_disk, capsys) -> None:
    out = tiny_disk / "r"
    assert run_cli(capsys, "--out", str(out))[0] == 0
    before = snapshot(out)
    ballast = tiny_disk / "ballast"  # leave less room than a second models.pt needs
    free = os.statvfs(tiny_disk).f_bavail * os.statvfs(tiny_disk).f_frsize
    ballast.write_bytes(b"x" * max(0, free - 64 * 1024))
    code, _, err = run_cli(capsys, "--out", str(out), "--overwrite", "--set", "seed=1")
    assert code == 2 and "no space left on device" in one_error_line(err)
    assert snapshot(out) == before  # the old run is whole; no temporary file anywhere
    code, _, err = run_cli(capsys, "--out", str(tiny_disk / "new"))
    assert code == 2 and "no space left on device" in one_error_line(err)
    assert not (tiny_disk / "new").exists()
    assert temp_files(tiny_disk) == []


# ---- a checkpoint remembers its config -----------------------------------------------------


def interrupted_run(out: Path) -> Path:
    """A quick run killed in round 3, with a checkpoint of round 2."""
    from parse_dfl.engines import ENGINES
    from tests.conftest import quick_config

    cfg = quick_config("train.rounds=4", "checkpoint.every=1")
    engine_cls = ENGINES[cfg.engine.name]
    original = engine_cls.local_round

    class Killed(Exception):
        pass

    def dies_in_round_3(self, round_):
        if round_ == 3:
            raise Killed
        return original(self, round_)

    engine_cls.local_round = dies_in_round_3
    try:
        with pytest.raises(Killed):
            run_module.run(cfg, out, progress=False)
    finally:
        engine_cls.local_round = original
    assert (out / "checkpoint.pt").is_file() and not (out / "results.json").exists()
    return out


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [("agents.width", 32, "agents.width: 16 -> 32"), ("seed", 7, "seed: 0 -> 7")],
)
def test_resume_refuses_an_edited_config(tmp_path, capsys, key, value, shown) -> None:
    cut = interrupted_run(tmp_path / "cut")
    raw = yaml.safe_load((cut / "config.yaml").read_text())
    section, _, name = key.rpartition(".")
    (raw[section] if section else raw)[name] = value
    (cut / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    before = snapshot(cut)
    code = main(["run", "--resume", str(cut), "--quiet"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and line == (
        f"parse-dfl: error: {cut}: config.yaml no longer matches the checkpoint ({shown}); "
        "restore it or start a new run"
    )
    assert snapshot(cut) == before


def test_resume_may_switch_engine_and_accepts_old_checkpoints(tmp_path, capsys) -> None:
    cut = interrupted_run(tmp_path / "cut")
    state = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert state["config"]["seed"] == 0 and "name" not in state["config"]["engine"]
    del state["config"]  # a checkpoint written before checkpoints recorded their config
    torch.save(state, cut / "checkpoint.pt")
    raw = yaml.safe_load((cut / "config.yaml").read_text())
    raw["engine"]["name"] = "reference"
    (cut / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["run", "--resume", str(cut), "--quiet"]) == 0
    res = json.loads((cut / "results.json").read_text())
    assert res["resumed_at_round"] == 3 and res["engine"] == "reference"
