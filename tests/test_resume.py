"""Every method resumes bit for bit: stopped at a round inside each of its stages (and at
each stage boundary), on the reference and batched engines, the resumed run equals the
uninterrupted one exactly. Method state (e.g. harmony's stage, anchors and clusters) is part
of the checkpoint contract."""

from __future__ import annotations

import pytest
import torch

from parse_dfl.engines import ENGINES
from parse_dfl.engines.setup import build_setup
from parse_dfl.experiments.run import resume_config, run
from parse_dfl.methods import METHODS
from tests.conftest import quick_config

ROUNDS = 8
BASE = (
    f"train.rounds={ROUNDS}",
    "checkpoint.every=1",
    "train.eval_every=2",
    "train.local_steps=2",
    "agents.mix=acc:2,gyro:2,acc+gyro:3",
    "agents.placement=interleaved",  # multimodal agents are neighbours on the ring
)


class Stopped(Exception):
    pass


def stop_rounds(method: str) -> list[int]:
    """Rounds to stop at: the second round of every stage and the first round of every
    stage after the first (the checkpoint then lies just before a stage change)."""
    setup = build_setup(quick_config(*BASE, f"method.name={method}"))
    stage = [setup.method.stage_of(t) for t in range(1, ROUNDS + 1)]
    rounds = set()
    for s in sorted(set(stage)):
        inside = [t for t in range(1, ROUNDS + 1) if stage[t - 1] == s]
        if len(inside) >= 2:
            rounds.add(inside[1])
        if s > 0:
            rounds.add(inside[0])
    return sorted(r for r in rounds if r > 1)


CASES = [(m, t) for m in sorted(METHODS) for t in stop_rounds(m)]


@pytest.mark.parametrize("engine", ["reference", "batched"])
@pytest.mark.parametrize(("method", "stop"), CASES)
def test_resume_equals_the_uninterrupted_run(tmp_path, monkeypatch, engine, method, stop) -> None:
    sets = (*BASE, f"method.name={method}", f"engine.name={engine}")
    assert_resume_equals(tmp_path, monkeypatch, sets, engine, stop)


@pytest.mark.parametrize("engine", ["reference", "batched"])
def test_a_local_choice_resumes_exactly(tmp_path, monkeypatch, engine) -> None:
    """parse-plus's private model and each agent's choice (a buffer and the loop's record)."""
    sets = (
        *BASE,
        "method.name=parse-plus",
        "method.plus_private=true",
        "partition.select_fraction=0.3",
        f"engine.name={engine}",
    )
    assert_resume_equals(tmp_path, monkeypatch, sets, engine, 3)


def assert_resume_equals(tmp_path, monkeypatch, sets: tuple[str, ...], engine: str, stop: int):
    full = run(quick_config(*sets), tmp_path / "full", progress=False)

    Engine = ENGINES[engine]
    original = Engine.local_round

    def stops(self, round_):
        if round_ == stop:
            raise Stopped
        return original(self, round_)

    cut = tmp_path / "cut"
    monkeypatch.setattr(Engine, "local_round", stops)
    with pytest.raises(Stopped):
        run(quick_config(*sets), cut, progress=False)
    monkeypatch.setattr(Engine, "local_round", original)
    assert not (cut / "results.json").exists() and (cut / "checkpoint.pt").is_file()

    resumed = run(resume_config(cut), cut, progress=False, resume=True)
    assert resumed["resumed_at_round"] == stop

    def strip(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert strip(resumed["history"]) == strip(full["history"])
    assert resumed["agents"] == full["agents"]
    assert resumed["method_summary"] == full["method_summary"]
    assert resumed["local_choice"] == full["local_choice"]
    a = torch.load(tmp_path / "full" / "models.pt", weights_only=True)
    b = torch.load(cut / "models.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "parameters differ after resume"


def test_harmony_clusters_exist_where_the_test_resumes() -> None:
    """The harmony cases above are meaningful only if stage 2 clusters neighbouring
    multimodal agents (that is where a lost state changes the result)."""
    res = run(quick_config(*BASE, "method.name=harmony", "checkpoint.every=0"), progress=False)
    clusters = res["method_summary"]["harmony"]["clusters"]
    assert len(clusters) == 3
    assert any(g["holders"] >= 2 for k, g in res["holder_graphs"].items() if "cluster" in k)


def test_a_checkpoint_from_before_a_new_config_field_still_resumes(tmp_path, monkeypatch) -> None:
    """A field added to the config after a checkpoint was written counts as its default:
    the run resumes; a config.yaml that sets it to something else is refused."""
    import yaml

    from parse_dfl.errors import UserError

    sets = (*BASE, "method.name=local", "engine.name=reference")
    cut = tmp_path / "cut"
    original = ENGINES["reference"].local_round

    def stops(self, round_):
        if round_ == 3:
            raise Stopped
        return original(self, round_)

    monkeypatch.setattr(ENGINES["reference"], "local_round", stops)
    with pytest.raises(Stopped):
        run(quick_config(*sets), cut, progress=False)
    monkeypatch.setattr(ENGINES["reference"], "local_round", original)
    state = torch.load(cut / "checkpoint.pt", weights_only=True)
    del state["config"]["partition"]["val_fraction"]  # written before the field existed
    torch.save(state, cut / "checkpoint.pt")
    resumed = run(resume_config(cut), cut, progress=False, resume=True)
    assert resumed["resumed_at_round"] == 3

    torch.save(state, cut / "checkpoint.pt")
    (cut / "results.json").unlink()
    cfg = yaml.safe_load((cut / "config.yaml").read_text())
    cfg["partition"]["val_fraction"] = 0.2
    (cut / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="val_fraction"):
        run(resume_config(cut), cut, progress=False, resume=True)
