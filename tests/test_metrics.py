"""Live metrics: metrics.csv grows as a run goes, survives its death, is rewritten exactly on
resume, never touches a finished run being replaced until the new one has finished; the
TensorBoard option is refused before training when tensorboard is missing."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import pytest

from parse_dfl.cli import main
from parse_dfl.engines.batched import BatchedEngine
from parse_dfl.errors import UserError
from parse_dfl.experiments import metrics
from parse_dfl.experiments import run as run_module
from parse_dfl.experiments.run import resume_config, run
from tests.conftest import quick_config

BASE = ("train.rounds=6", "train.eval_every=1", "train.local_steps=2")


class Stopped(Exception):
    pass


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def without_seconds(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def stop_at(monkeypatch: pytest.MonkeyPatch, round_: int, seen: list[Any] | None = None) -> None:
    """Make the batched engine die in round `round_`'s local steps."""
    original = BatchedEngine.local_round

    def local_round(self: BatchedEngine, t: int) -> float:
        if seen is not None:
            seen.append(t)
        if t == round_:
            raise Stopped
        return original(self, t)

    monkeypatch.setattr(BatchedEngine, "local_round", local_round)


def test_one_row_per_protocol_and_type_each_evaluation(tmp_path: Path) -> None:
    res = run(quick_config(*BASE, "train.eval_every=3"), tmp_path, progress=False)
    rows = read(tmp_path / "metrics.csv")
    assert list(rows[0]) == list(metrics.COLUMNS)
    assert len(rows) == 2 * 2 * 4  # rounds 3 and 6, global and local, 3 types and `all`
    for h in res["history"]:
        mine = {(r["protocol"], r["agent_type"]): r for r in rows if int(r["round"]) == h["round"]}
        for t, acc in h["by_type"].items():
            assert float(mine["global", t]["accuracy"]) == acc
        for t, acc in h["by_type_local"].items():
            assert float(mine["local", t]["accuracy"]) == acc
        assert float(mine["global", "all"]["accuracy"]) == h["mean_accuracy"]
        assert float(mine["local", "all"]["accuracy"]) == h["mean_local_accuracy"]
        assert {float(r["train_loss"]) for r in mine.values()} == {h["train_loss"]}
        assert {int(r["bytes_sent"]) for r in mine.values()} == {h["bytes_sent"]}
        assert {float(r["seconds"]) for r in mine.values()} == {h["seconds"]}


def test_rows_are_on_disk_while_the_run_goes_and_after_it_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_disk: dict[int, int] = {}
    original = BatchedEngine.local_round

    def local_round(self: BatchedEngine, t: int) -> float:
        path = tmp_path / "metrics.csv"
        on_disk[t] = len(read(path)) if path.exists() else 0
        if t == 4:
            raise Stopped
        return original(self, t)

    monkeypatch.setattr(BatchedEngine, "local_round", local_round)
    with pytest.raises(Stopped):
        run(quick_config(*BASE), tmp_path, progress=False)
    assert on_disk == {1: 0, 2: 8, 3: 16, 4: 24}  # flushed at each evaluation, file kept open
    assert [int(r["round"]) for r in read(tmp_path / "metrics.csv")][-1] == 3
    assert not (tmp_path / "results.json").exists()


def test_resume_drops_the_rows_after_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sets = (*BASE, "checkpoint.every=2")
    run(quick_config(*sets), tmp_path / "full", progress=False)
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        stop_at(m, 4)  # checkpoint after round 2; rounds 1-3 evaluated
        with pytest.raises(Stopped):
            run(quick_config(*sets), cut, progress=False)
    assert {int(r["round"]) for r in read(cut / "metrics.csv")} == {1, 2, 3}
    run(resume_config(cut), cut, progress=False, resume=True)
    full, resumed = read(tmp_path / "full" / "metrics.csv"), read(cut / "metrics.csv")
    assert [int(r["round"]) for r in resumed] == [t for t in range(1, 7) for _ in range(8)]
    assert without_seconds(resumed) == without_seconds(full)


def test_a_finished_run_being_replaced_keeps_its_metrics_until_the_new_one_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(quick_config(*BASE, "train.eval_every=3"), tmp_path, progress=False)
    old = (tmp_path / "metrics.csv").read_bytes()
    with monkeypatch.context() as m:
        stop_at(m, 5)
        with pytest.raises(Stopped):
            run(quick_config(*BASE, "train.eval_every=2"), tmp_path, progress=False)
    assert (tmp_path / "metrics.csv").read_bytes() == old
    assert (tmp_path / "results.json").is_file()
    assert {int(r["round"]) for r in read(tmp_path / "metrics.new.csv")} == {2, 4}
    run(quick_config(*BASE, "train.eval_every=2"), tmp_path, progress=False)
    assert {int(r["round"]) for r in read(tmp_path / "metrics.csv")} == {2, 4, 6}
    assert not (tmp_path / "metrics.new.csv").exists()


def test_only_the_writing_process_writes_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(BatchedEngine, "writes_output", property(lambda self: False))
    res = run(quick_config(*BASE, "train.rounds=2"), tmp_path / "r1", progress=False)
    assert len(res["history"]) == 2
    assert not (tmp_path / "r1" / "metrics.csv").exists()


def test_missing_tensorboard_is_one_line_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # find_spec: not installed
    trained: list[int] = []
    stop_at(monkeypatch, -1, seen=trained)
    with pytest.raises(UserError) as err:
        metrics.check_tensorboard()
    assert err.value.where == "logging.tensorboard" and "parse-dfl[tensorboard]" in str(err.value)
    out = tmp_path / "run"
    code = main(
        ["run", "configs/quick.yaml", "--set", "logging.tensorboard=true", "--out", str(out)]
    )
    err_text = capsys.readouterr().err.strip()
    assert code == 2
    assert err_text.startswith("parse-dfl: error: logging.tensorboard: ")
    assert "\n" not in err_text
    assert trained == [] and not out.exists()


class FakeWriter:
    made: list[FakeWriter] = []

    def __init__(self, log_dir: Path, purge_step: int | None) -> None:
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"events.out.tfevents.{len(self.made)}").write_text("")
        FakeWriter.made.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_tensorboard_scalars_and_purge_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeWriter.made = []
    monkeypatch.setattr(metrics, "_summary_writer", FakeWriter)
    monkeypatch.setattr(run_module, "check_tensorboard", lambda: None)
    sets = (*BASE, "checkpoint.every=2", "logging.tensorboard=true")
    with monkeypatch.context() as m:
        stop_at(m, 4)
        with pytest.raises(Stopped):
            run(quick_config(*sets), tmp_path, progress=False)
    first = FakeWriter.made[0]
    assert first.log_dir == tmp_path / "tensorboard" and first.purge_step is None and first.closed
    steps = {(tag, step) for tag, _, step in first.scalars}
    for t in (1, 2, 3):
        for tag in ("accuracy_global/all", "accuracy_local/gyro", "train_loss", "bytes_sent"):
            assert (tag, t) in steps
    res = run(resume_config(tmp_path), tmp_path, progress=False, resume=True)
    second = FakeWriter.made[1]
    assert second.purge_step == 3  # the checkpoint's history ends at round 2
    assert sorted({step for _, _, step in second.scalars}) == [3, 4, 5, 6]
    final = {tag: v for tag, v, step in second.scalars if step == 6}
    assert final["accuracy_global/all"] == res["mean_accuracy"]


def test_real_tensorboard_events(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = run(
        quick_config(*BASE, "train.rounds=2", "logging.tensorboard=true"), tmp_path, progress=False
    )
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("accuracy_global/all")
    assert [e.step for e in events] == [1, 2]
    assert events[-1].value == pytest.approx(res["mean_accuracy"])


def test_a_distributed_run_writes_one_metrics_file_from_process_0(tmp_path: Path) -> None:
    from tests.test_distributed_engine import launch

    res = launch(2, tmp_path / "d", "train.rounds=3", "train.eval_every=1", "train.local_steps=1")
    rows = read(tmp_path / "d" / "metrics.csv")
    keys = [(r["round"], r["protocol"], r["agent_type"]) for r in rows]
    assert len(keys) == len(set(keys)) == 3 * 2 * 4  # no process wrote twice
    assert [float(r["accuracy"]) for r in rows if r["agent_type"] == "all"] == [
        v for h in res["history"] for v in (h["mean_accuracy"], h["mean_local_accuracy"])
    ]


def test_a_run_stopped_with_one_line_leaves_no_metrics_but_a_refused_resume_keeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise UserError("results.json", "no space left on device")

    with monkeypatch.context() as m:
        m.setattr(run_module, "atomic_write_files", full_disk)
        with pytest.raises(UserError):
            run(quick_config(*BASE, "train.rounds=2"), tmp_path / "a" / "b", progress=False)
    assert not (tmp_path / "a").exists()  # as it was: the folders it made are gone too

    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        stop_at(m, 3)
        with pytest.raises(Stopped):
            run(quick_config(*BASE, "checkpoint.every=1"), cut, progress=False)
    curve = (cut / "metrics.csv").read_bytes()
    (cut / "config.yaml").write_text(
        (cut / "config.yaml").read_text().replace("lr: 0.003", "lr: 1")
    )
    with pytest.raises(UserError, match="no longer matches the checkpoint"):
        run(resume_config(cut), cut, progress=False, resume=True)
    assert (cut / "metrics.csv").read_bytes() == curve
