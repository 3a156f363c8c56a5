"""The validation split (`partition.val_fraction`): carved out of each agent's training
samples only, seeded and class-stratified, measured by every engine under both protocols, and
absent (no keys, the same splits) when the fraction is 0."""

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
from parse_dfl.experiments.run import run
from tests.conftest import quick_config

VAL_KEYS = {
    "mean_val_accuracy",
    "mean_val_local_accuracy",
    "by_type_val",
    "by_type_val_local",
    "val_global_size",
}
TINY = ("train.rounds=2", "train.local_steps=2", "train.eval_every=1")


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_validation_comes_out_of_training_samples_only(scheme: str) -> None:
    sets = ("data.name=watch", f"partition.name={scheme}", "partition.alpha=1.0")
    base_cfg = quick_config(*sets)
    ds = load_dataset(base_cfg.data)
    before = partition(ds, base_cfg)
    after = partition(ds, quick_config(*sets, "partition.val_fraction=0.2"))
    for a, b in zip(before, after, strict=True):
        assert len(a.val_idx) == 0
        assert np.array_equal(a.test_idx, b.test_idx), "the test split moved"
        assert np.array_equal(np.sort(np.concatenate([b.train_idx, b.val_idx])), a.train_idx)
        assert len(np.intersect1d(b.train_idx, b.val_idx)) == 0
        assert len(b.val_idx) == round(0.2 * len(a.train_idx))


def test_validation_is_seeded_and_stratified() -> None:
    cfg = quick_config("data.name=watch", "partition.val_fraction=0.25")
    ds = load_dataset(cfg.data)
    one, two = partition(ds, cfg), partition(ds, cfg)
    assert all(np.array_equal(a.val_idx, b.val_idx) for a, b in zip(one, two, strict=True))
    other = partition(ds, quick_config("data.name=watch", "partition.val_fraction=0.25", "seed=3"))
    assert any(not np.array_equal(a.val_idx, b.val_idx) for a, b in zip(one, other, strict=True))
    for a in one:  # each class keeps its share of the agent's training samples, within one
        pool = np.concatenate([a.train_idx, a.val_idx])
        classes, counts = np.unique(ds.labels[pool], return_counts=True)
        held = np.array([(ds.labels[a.val_idx] == c).sum() for c in classes])
        assert np.all(np.abs(held - 0.25 * counts) < 1.0 + 1e-9)


def test_a_validation_split_that_leaves_too_little_training_is_refused() -> None:
    cfg = quick_config("partition.val_fraction=0.9")
    with pytest.raises(UserError) as err:
        partition(load_dataset(cfg.data), cfg)
    assert err.value.where == "partition.val_fraction"


def _run_engine(name: str, *sets: str):
    cfg = quick_config(*TINY, *sets, f"engine.name={name}", "engine.dtype=float64")
    engine = ENGINES[name](build_setup(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return engine, engine.run(progress=False)


@pytest.mark.parametrize("method", ["parse", "dsgd-hybrid"])
def test_engines_measure_validation_alike_and_on_the_validation_samples(method: str) -> None:
    sets = (f"method.name={method}", "partition.val_fraction=0.3")
    ref, r = _run_engine("reference", *sets)
    bat, b = _run_engine("batched", *sets)
    assert r.val_accuracy is not None and r.val_local_accuracy is not None
    assert b.val_accuracy == r.val_accuracy
    assert b.val_local_accuracy == r.val_local_accuracy
    assert b.test_accuracy == r.test_accuracy  # the swap back restored the test sets
    assert b.local_test_accuracy == r.local_test_accuracy
    assert all(c["mode"] == "batched" for c in bat.describe_cohorts())
    s = ref.setup
    assert s.val_global is not None
    for a, agent in enumerate(s.agents):  # the reference's own models, on the validation sets
        model = ref.models[a]
        want_g = accuracy(s.method, model, agent.modalities, s.x, s.y, s.val_global)
        want_l = accuracy(s.method, model, agent.modalities, s.x, s.y, s.val_idx[a])
        assert r.val_accuracy[a] == want_g and r.val_local_accuracy[a] == want_l
    for h in r.history:
        assert {"mean_val_accuracy", "mean_val_local_accuracy"} <= set(h)
    assert r.history[-1]["mean_val_accuracy"] == pytest.approx(np.mean(r.val_accuracy))


def test_results_gain_validation_keys_only_with_a_split(tmp_path) -> None:
    plain = run(quick_config(*TINY), tmp_path / "plain", progress=False)
    assert not VAL_KEYS & set(plain)
    assert all("val_accuracy" not in a for a in plain["agents"])
    assert all("mean_val_accuracy" not in h for h in plain["history"])
    held = run(quick_config(*TINY, "partition.val_fraction=0.2"), tmp_path / "val", progress=False)
    assert set(held) >= VAL_KEYS
    assert all({"val_accuracy", "val_local_accuracy", "n_val"} <= set(a) for a in held["agents"])
    assert held["mean_val_accuracy"] == pytest.approx(
        np.mean([a["val_accuracy"] for a in held["agents"]])
    )
    assert held["val_global_size"] == sum(a["n_val"] for a in held["agents"])
    assert [a["n_test"] for a in held["agents"]] == [a["n_test"] for a in plain["agents"]]
    assert held["global_test_size"] == plain["global_test_size"]
