"""parse-plus's private model (`method.plus_private`) and the choice of each agent's
local-protocol predictor on its own held-out samples (`partition.select_fraction`): the split
comes out of training samples only, the private model leaves everything shared untouched, and
the choice is the rule's, read on the held-out samples and never on the test split."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from parse_dfl.data import load_dataset
from parse_dfl.data.partition import partition
from parse_dfl.engines import ENGINES
from parse_dfl.engines.setup import build_setup
from parse_dfl.errors import UserError
from parse_dfl.evaluation import accuracy
from tests.conftest import quick_config

PRIVATE = (
    "method.name=parse-plus",
    "method.plus_private=true",
    "partition.select_fraction=0.3",
    "train.rounds=4",
    "train.local_steps=3",
    "train.eval_every=2",
    "engine.dtype=float64",
)


def _run(*sets: str, engine: str = "reference"):
    cfg = quick_config(*sets, f"engine.name={engine}")
    eng = ENGINES[engine](build_setup(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return eng, eng.run(progress=False)


def test_the_selection_split_comes_out_of_training_samples_only() -> None:
    sets = ("data.name=watch", "partition.val_fraction=0.2")
    base_cfg = quick_config(*sets)
    ds = load_dataset(base_cfg.data)
    before = partition(ds, base_cfg)
    after = partition(ds, quick_config(*sets, "partition.select_fraction=0.25"))
    for a, b in zip(before, after, strict=True):
        assert len(a.select_idx) == 0
        assert np.array_equal(a.test_idx, b.test_idx), "the test split moved"
        assert np.array_equal(a.val_idx, b.val_idx), "the validation split moved"
        assert np.array_equal(np.sort(np.concatenate([b.train_idx, b.select_idx])), a.train_idx)
        assert len(np.intersect1d(b.train_idx, b.select_idx)) == 0
        assert len(b.select_idx) == round(0.25 * len(a.train_idx))


def test_a_selection_split_that_leaves_too_little_training_is_refused() -> None:
    cfg = quick_config("partition.select_fraction=0.9")
    with pytest.raises(UserError) as err:
        partition(load_dataset(cfg.data), cfg)
    assert err.value.where == "partition.select_fraction"


def test_a_method_that_chooses_nothing_is_told_its_held_out_samples_are_unused() -> None:
    with pytest.warns(RuntimeWarning, match="never uses"):
        build_setup(quick_config("method.name=parse", "partition.select_fraction=0.2"))


def test_the_private_model_never_changes_what_is_shared() -> None:
    """With a margin no predictor can clear, every agent keeps the shared ensemble: the run
    then equals the run without a private model, parameter for parameter (float64)."""
    with_private, r_on = _run(*PRIVATE, "method.plus_private_margin=1.0")
    without, r_off = _run(*PRIVATE, "method.plus_private=false")
    assert r_on.test_accuracy == r_off.test_accuracy
    assert r_on.local_test_accuracy == r_off.local_test_accuracy
    assert r_on.extra["local_choice"] == [0] * len(with_private.setup.agents)
    assert r_off.extra["local_choice"] is None
    for a, b in zip(with_private.models, without.models, strict=True):
        theirs = dict(b.named_parameters())
        for name, p in a.named_parameters():
            if name.startswith("private."):
                continue
            assert np.array_equal(p.detach().numpy(), theirs[name].detach().numpy()), name


def test_each_agent_uses_the_predictor_most_accurate_on_its_held_out_samples() -> None:
    engine, res = _run(*PRIVATE)
    s = engine.setup
    choice = res.extra["local_choice"]
    assert res.history[-1]["local_choice"] == np.bincount(choice, minlength=3).tolist()
    for a, agent in enumerate(s.agents):
        model = engine.models[a]

        def score(k: int, idx, a=a, agent=agent, model=model) -> float:
            s.method.choose_local(model, k)
            return accuracy(s.method, model, agent.modalities, s.x, s.y, idx, local=True)

        held = [score(k, s.select_idx[a]) for k in range(3)]
        best = int(np.argmax(held))
        assert choice[a] == (best if held[best] > held[0] else 0), (a, held)
        # what the run reports under the local protocol is the chosen predictor on the test split
        assert res.local_test_accuracy[a] == score(choice[a], s.test_idx[a])
    assert len(set(choice)) > 1, "the setting should make agents choose differently"


def test_the_agents_of_a_type_can_choose_together_on_all_their_held_out_samples() -> None:
    engine, res = _run(*PRIVATE, "method.plus_private_scope=type")
    s = engine.setup
    choice = res.extra["local_choice"]
    for t in {a.type for a in s.agents}:
        members = [a for a in s.agents if a.type == t]
        correct = np.zeros(3)
        for agent in members:
            model = engine.models[agent.id]
            for k in range(3):
                s.method.choose_local(model, k)
                idx = s.select_idx[agent.id]
                acc = accuracy(s.method, model, agent.modalities, s.x, s.y, idx, local=True)
                correct[k] += round(acc * len(idx))
            s.method.choose_local(model, choice[agent.id])
        best = int(np.argmax(correct))
        want = best if correct[best] > correct[0] else 0
        assert {choice[a.id] for a in members} == {want}, (t, correct)


def test_a_tuning_run_can_choose_on_its_validation_samples() -> None:
    """`partition.select_from: validation`: the choice is scored on the validation samples
    (nothing is carved out of training), and results.json names it per type, in the form
    `method.plus_private_choice` takes."""
    from parse_dfl.experiments.run import choice_by_type

    sets = (*PRIVATE[:2], *PRIVATE[3:], "partition.val_fraction=0.3")
    engine, res = _run(*sets, "partition.select_from=validation")
    s = engine.setup
    plain, _ = _run(*sets)
    for a, b in zip(s.agents, plain.setup.agents, strict=True):
        assert np.array_equal(a.train_idx, b.train_idx) and len(a.select_idx) == 0
        assert np.array_equal(s.select_idx[a.id].numpy(), a.val_idx)
    choice = res.extra["local_choice"]
    for a, agent in enumerate(s.agents):
        model = engine.models[a]
        held = []
        for k in range(3):
            s.method.choose_local(model, k)
            held.append(
                accuracy(s.method, model, agent.modalities, s.x, s.y, agent.val_idx, local=True)
            )
        best = int(np.argmax(held))
        assert choice[a] == (best if held[best] > held[0] else 0), (a, held)
    by_type = choice_by_type(s.agents, choice, s.method.local_names)
    assert sum(sum(c.values()) for c in by_type.values()) == len(s.agents)


def test_a_fixed_choice_per_type_holds_nothing_out_and_changes_only_the_local_protocol() -> None:
    """`method.plus_private_choice`: every agent of a named type uses that predictor from the
    first evaluation, the others the ensemble; what is shared trains as without the choice."""
    sets = (*PRIVATE[:2], *PRIVATE[3:])
    engine, res = _run(*sets, "method.plus_private_choice={acc: private, acc+gyro: mean}")
    plain, r_plain = _run(*sets)
    s = engine.setup
    want = {"acc": 1, "gyro": 0, "acc+gyro": 2}
    assert res.extra["local_choice"] == [want[a.type] for a in s.agents]
    assert r_plain.extra["local_choice"] is None and s.select_idx == []
    assert res.test_accuracy == r_plain.test_accuracy
    for a, agent in enumerate(s.agents):
        if agent.type == "gyro":
            assert res.local_test_accuracy[a] == r_plain.local_test_accuracy[a]
        s.method.choose_local(engine.models[a], want[agent.type])
        mine = accuracy(
            s.method, engine.models[a], agent.modalities, s.x, s.y, s.test_idx[a], local=True
        )
        assert res.local_test_accuracy[a] == mine


@pytest.mark.parametrize(
    ("sets", "where", "says"),
    [
        (("method.plus_private=false",), "method.plus_private_choice", "plus_private=true"),
        (("partition.select_fraction=0.2",), "method.plus_private_choice", "select_fraction=0"),
        (("method.plus_private_choice={magnet: private}",), "method.plus_private_choice", "magnet"),
    ],
)
def test_a_fixed_choice_that_cannot_apply_is_refused(sets, where, says) -> None:
    base = ("method.name=parse-plus", "method.plus_private=true")
    cfg = quick_config(*base, "method.plus_private_choice={acc: private}", *sets)
    with pytest.raises(UserError, match=says) as err:
        build_setup(cfg)
    assert err.value.where == where


def test_a_method_that_chooses_nothing_is_told_validation_scores_nothing() -> None:
    with pytest.warns(RuntimeWarning, match="makes no choice"):
        build_setup(
            quick_config(
                "method.name=parse",
                "partition.val_fraction=0.2",
                "partition.select_from=validation",
            )
        )


def test_choosing_on_validation_needs_validation_samples() -> None:
    with pytest.raises(UserError, match="partition.select_from: validation scores"):
        quick_config("partition.select_from=validation")
