"""Faults keep the run going; checkpoints resume to the same result, bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from parse_dfl.config import FaultsConfig
from parse_dfl.engines.faults import FaultPlan, uniform_hash
from parse_dfl.errors import UserError
from parse_dfl.experiments.run import resume_config, run
from tests.conftest import quick_config


def test_fault_draws_are_deterministic_and_calibrated() -> None:
    u = uniform_hash(7, 3, np.arange(100_000))
    assert 0.49 < u.mean() < 0.51 and u.min() >= 0 and u.max() < 1
    assert np.array_equal(u, uniform_hash(7, 3, np.arange(100_000)))
    plan = FaultPlan(FaultsConfig(crash_fraction=0.3, crash_round=3, crash_rounds=2), 10, 0)
    assert plan.live(2).all()
    assert (~plan.live(3)).sum() == 3 and np.array_equal(plan.live(3), plan.live(4))
    assert plan.live(5).all()  # back after two rounds


def test_crashed_agents_stop_and_the_rest_keep_learning() -> None:
    res = run(
        quick_config(
            "faults.crash_fraction=0.34",
            "faults.crash_round=2",
            "faults.link_failure=0.2",
            "faults.message_loss=0.1",
            "faults.straggler=0.1",
            "train.rounds=6",
        ),
        progress=False,
    )
    crashed = res["faults"]["crashed_agents"]
    assert len(crashed) == 2
    for a in res["agents"]:
        assert a["live_rounds"] == (1 if a["id"] in crashed else 6)
        assert a["live_at_end"] == (a["id"] not in crashed)
    assert res["mean_accuracy_live"] > 0.4


def test_crashed_agent_is_isolated_in_gossip() -> None:
    from parse_dfl.engines import ENGINES
    from parse_dfl.engines.setup import build_setup

    engine = ENGINES["reference"](
        build_setup(quick_config("faults.crash_fraction=0.5", "faults.crash_round=1"))
    )
    down = engine.faults.crashing
    for k, g in enumerate(engine.groups):
        W, deg = engine.schedule.mixing(k, 1)
        for row, a in enumerate(g.holders):
            if a in down:
                assert deg[row] == 0 and W[row, row] == 1.0
        assert np.allclose(np.asarray(W.sum(axis=0)).ravel(), 1.0)  # still doubly stochastic


@pytest.mark.parametrize("engine", ["reference", "batched"])
def test_resume_gives_the_same_result_bit_for_bit(tmp_path, engine) -> None:
    from parse_dfl.engines import ENGINES

    Engine = ENGINES[engine]
    base = (
        "train.rounds=6",
        "checkpoint.every=2",
        "train.eval_every=2",
        "train.optimizer=sgd",
        f"engine.name={engine}",
    )
    full = run(quick_config(*base), tmp_path / "full", progress=False)

    class Killed(Exception):
        pass

    original = Engine.local_round

    def dies_in_round_5(self, round_):
        if round_ == 5:
            raise Killed
        return original(self, round_)

    cut = tmp_path / "cut"
    Engine.local_round = dies_in_round_5  # type: ignore[method-assign]
    try:
        with pytest.raises(Killed):
            run(quick_config(*base), cut, progress=False)
    finally:
        Engine.local_round = original  # type: ignore[method-assign]
    assert not (cut / "results.json").exists() and (cut / "checkpoint.pt").is_file()

    resumed = run(resume_config(cut), cut, progress=False, resume=True)
    strip = lambda hs: [{k: v for k, v in h.items() if k != "seconds"} for h in hs]  # noqa: E731
    assert strip(resumed["history"]) == strip(full["history"])
    assert resumed["agents"] == full["agents"]
    a = torch.load(tmp_path / "full" / "models.pt", weights_only=True)
    b = torch.load(cut / "models.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((cut / "results.json").read_text())["mean_accuracy"] == full["mean_accuracy"]
    assert not (cut / "checkpoint.pt").exists()


def test_resume_refuses_finished_and_empty_folders(tmp_path) -> None:
    run(quick_config("train.rounds=1"), tmp_path / "done", progress=False)
    with pytest.raises(UserError):
        resume_config(tmp_path / "done")
    with pytest.raises(UserError):
        resume_config(tmp_path / "empty")


def _crash_engine(*sets: str):
    from parse_dfl.engines import ENGINES
    from parse_dfl.engines.setup import build_setup

    base = ("agents.mix=acc:4,gyro:4,acc+gyro:4", "faults.crash_fraction=0.34")
    return ENGINES["reference"](build_setup(quick_config(*base, *sets)))


def test_a_crash_that_cuts_holder_rings_is_reported_and_relink_mends_it() -> None:
    with pytest.warns(RuntimeWarning, match="the crash cuts the live holders"):
        cut = _crash_engine()
    pieces = {b: d["live_components"] for b, d in cut.schedule.describe().items()}
    assert max(pieces.values()) > 1, pieces  # 4 of 12 down: some ring of holders breaks
    relinked = _crash_engine("faults.relink=true", "faults.crash_round=2", "faults.crash_rounds=3")
    down = set(relinked.faults.crashing.tolist())
    for b, d in relinked.schedule.describe().items():
        assert d["live_components"] == 1, b
        assert d["live_holders"] == d["holders"] - sum(
            a in down for a in relinked.groups[[g.label for g in relinked.groups].index(b)].holders
        )
    for k, g in enumerate(relinked.groups):
        before = relinked.schedule.holder_graph(k, 1)
        assert set(before.edges()) == set(
            relinked.setup.topology.holder_graph(g.holders, g.tags, 1).edges()
        )
        W, deg = relinked.schedule.mixing(k, 3)  # down in rounds 2-4
        for row, a in enumerate(g.holders):
            if a in down:
                assert deg[row] == 0 and W[row, row] == 1.0
        assert np.allclose(np.asarray(W.sum(axis=0)).ravel(), 1.0)
        back = relinked.schedule.holder_graph(k, 5)  # everyone up again: the original graph
        assert set(back.edges()) == set(before.edges())
