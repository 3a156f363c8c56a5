"""The global protocol's optional subsample, the run's thread choice, and methods run side by
side in processes: each keeps what a plain run computes."""

from __future__ import annotations

import json

import numpy as np

from parse_dfl.cli import main
from parse_dfl.engines.setup import build_setup, choose_threads
from parse_dfl.evaluation import stratified_subsample
from parse_dfl.experiments.run import run
from tests.conftest import quick_config


def test_stratified_subsample_keeps_class_shares_and_is_seeded() -> None:
    labels = np.repeat(np.arange(4), [500, 300, 150, 50])
    idx = np.arange(0, 1000)
    sub = stratified_subsample(idx, labels, 100, seed=3)
    assert len(sub) == 100 and len(np.unique(sub)) == 100 and np.all(np.diff(sub) > 0)
    assert np.array_equal(np.bincount(labels[sub], minlength=4), [50, 30, 15, 5])
    assert np.array_equal(sub, stratified_subsample(idx, labels, 100, seed=3))
    assert not np.array_equal(sub, stratified_subsample(idx, labels, 100, seed=4))
    assert np.array_equal(stratified_subsample(idx, labels, 0, seed=3), idx)
    assert np.array_equal(stratified_subsample(idx, labels, 5000, seed=3), idx)


def test_a_subsampled_global_protocol_is_recorded_and_engines_agree() -> None:
    sets = ("train.rounds=2", "train.eval_global_samples=12")
    setup = build_setup(quick_config(*sets))
    full = sum(len(t) for t in setup.test_idx)
    assert len(setup.global_test) == 12 < full
    results = [
        run(quick_config(*sets, f"engine.name={e}", "engine.dtype=float64"), progress=False)
        for e in ("reference", "batched")
    ]
    for r in results:
        assert r["global_test_size"] == 12 and r["global_test_full_size"] == full
        for a in r["agents"]:
            assert round(a["test_accuracy"] * 12) == a["test_accuracy"] * 12
    assert [a["test_accuracy"] for a in results[0]["agents"]] == [
        a["test_accuracy"] for a in results[1]["agents"]
    ]


def test_threads_follow_the_config_or_the_free_cores(monkeypatch) -> None:
    import os

    import torch

    assert choose_threads(3) == (3, "engine.threads")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert choose_threads(None)[0] == 2  # an idle machine: every core
    monkeypatch.setattr(os, "getloadavg", lambda: (1.6, 1.0, 1.0))
    assert choose_threads(None)[0] == 1  # a busy core is left alone
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert choose_threads(None)[0] == 1


def test_methods_side_by_side_equal_methods_in_turn(tmp_path, capsys) -> None:
    base = ["run", "configs/quick.yaml", "--methods", "parse,local", "--quiet"]
    sets = ["--set", "train.rounds=2", "--set", "engine.threads=1"]
    assert main([*base, *sets, "--out", str(tmp_path / "a")]) == 0
    assert main([*base, *sets, "--jobs", "2", "--out", str(tmp_path / "b")]) == 0
    for m in ("parse", "local"):
        a = json.loads((tmp_path / "a" / m / "results.json").read_text())
        b = json.loads((tmp_path / "b" / m / "results.json").read_text())
        assert [x["test_accuracy"] for x in a["agents"]] == [
            x["test_accuracy"] for x in b["agents"]
        ]
        assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]
    capsys.readouterr()
    assert main([*base, *sets, "--jobs", "0", "--out", str(tmp_path / "c")]) == 2
    assert "--jobs" in capsys.readouterr().err


def test_a_batch_larger_than_some_agents_sets_warns_in_one_line(tmp_path, capsys) -> None:
    import pytest

    with pytest.warns(UserWarning, match="repeat samples"):
        build_setup(quick_config("agents.mix=acc:3,gyro:3,acc+gyro:3"))
    sets = ["--set", "agents.mix=acc:3,gyro:3,acc+gyro:3", "--set", "train.rounds=1"]
    assert main(["run", "configs/quick.yaml", *sets, "--quiet", "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "parse-dfl: warning: train.batch_size=8 is more than" in err
    assert "UserWarning" not in err
