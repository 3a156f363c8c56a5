"""Partitioning: counts match the mix, shards are disjoint, seeds are deterministic."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from parse_dfl.data import load_dataset
from parse_dfl.data.partition import global_test_indices, partition
from parse_dfl.errors import UserError
from tests.conftest import quick_config


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_counts_and_disjoint_shards(scheme: str) -> None:
    cfg = quick_config(
        f"partition.name={scheme}", "partition.alpha=1.0", "agents.mix=acc:3,gyro:2,acc+gyro:4"
    )
    ds = load_dataset(cfg.data)
    agents = partition(ds, cfg)
    types = [a.type for a in agents]
    assert types.count("acc") == 3 and types.count("gyro") == 2 and types.count("acc+gyro") == 4
    everything = np.concatenate([np.concatenate([a.train_idx, a.test_idx]) for a in agents])
    assert len(everything) == len(np.unique(everything)), "a sample was dealt twice"
    assert all(len(a.test_idx) >= 1 and len(a.train_idx) >= cfg.partition.min_train for a in agents)
    assert np.array_equal(
        global_test_indices(agents), np.sort(np.concatenate([a.test_idx for a in agents]))
    )


def test_deterministic_for_a_seed() -> None:
    cfg = quick_config("partition.name=dirichlet")
    ds = load_dataset(cfg.data)
    a, b = partition(ds, cfg), partition(ds, cfg)
    assert all(np.array_equal(x.train_idx, y.train_idx) for x, y in zip(a, b, strict=True))
    c = partition(ds, quick_config("partition.name=dirichlet", "seed=5"))
    assert any(not np.array_equal(x.train_idx, y.train_idx) for x, y in zip(a, c, strict=True))


def test_group_partition_keeps_subjects_apart() -> None:
    cfg = quick_config(
        "data.name=watch", "partition.name=group", "agents.mix=acc:4,gyro:3,acc+gyro:3"
    )
    ds = load_dataset(cfg.data)
    agents = partition(ds, cfg)
    assert ds.groups is not None
    for a in agents:  # 10 agents, 10 subjects: each agent holds one subject
        assert len(np.unique(ds.groups[np.concatenate([a.train_idx, a.test_idx])])) == 1


def test_dirichlet_skews_labels() -> None:
    ds = load_dataset(quick_config("data.name=watch").data)

    def skew(alpha: float) -> float:
        cfg = quick_config(
            "data.name=watch",
            "partition.name=dirichlet",
            f"partition.alpha={alpha}",
            "partition.min_train=2",
        )
        shares = [
            np.bincount(ds.labels[a.train_idx], minlength=7) / len(a.train_idx)
            for a in partition(ds, cfg)
        ]
        return float(np.mean([s.max() for s in shares]))

    assert skew(0.1) > skew(100.0) + 0.2


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["agents.mix=acc:40,gyro:40"], "agents.mix"),
        (["agents.mix=acc:2,magnet:2"], "agents.mix"),
        (["data.modalities=[acc,magnet]"], "data.modalities"),
        (["partition.samples_per_agent=50"], "agents.mix"),
        (["partition.name=group"], "partition.name"),
    ],
)
def test_impossible_partitions_are_refused(overrides: list[str], field: str) -> None:
    cfg = quick_config(*overrides)
    with pytest.raises(UserError) as err:
        partition(load_dataset(cfg.data), cfg)
    assert err.value.where == field


def _dealt(agents) -> list[np.ndarray]:
    return [np.concatenate([a.train_idx, a.test_idx]) for a in agents]


@pytest.mark.parametrize("mode", ["random", "deterministic", "first-deterministic"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_agents_hold_exactly_their_k_classes(mode: str, k: int) -> None:
    cfg = quick_config(
        "partition.name=pathological",
        f"partition.classes_per_agent={k}",
        f"partition.class_assignment={mode}",
        "partition.min_train=2",
    )
    ds = load_dataset(cfg.data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # random modes may leave a class out
        agents = partition(ds, cfg)
    dealt = _dealt(agents)
    everything = np.concatenate(dealt)
    assert len(everything) == len(np.unique(everything)), "a sample was dealt twice"
    held = [sorted(set(ds.labels[d].tolist())) for d in dealt]
    assert all(len(h) == k for h in held), held
    if mode == "deterministic":
        assert held == [sorted((a + i) % 4 for i in range(k)) for a in range(len(agents))]
    if mode == "first-deterministic":
        assert all(a % 4 in h for a, h in enumerate(held))
    for c in range(ds.n_classes):  # a class is split evenly among its holders, all of it used
        counts = [int(np.sum(ds.labels[d] == c)) for d, h in zip(dealt, held, strict=True)]
        counts = [x for x, h in zip(counts, held, strict=True) if c in h]
        if counts:
            assert max(counts) - min(counts) <= 1
            assert sum(counts) == int(np.sum(ds.labels == c))


def test_pathological_warns_about_a_class_nobody_holds() -> None:
    cfg = quick_config(
        "agents.mix=acc:1,gyro:1",
        "partition.name=pathological",
        "partition.classes_per_agent=1",
        "partition.class_assignment=deterministic",
    )
    with pytest.warns(RuntimeWarning, match=r"no agent holds class\(es\) \[2, 3\]"):
        agents = partition(load_dataset(cfg.data), cfg)
    assert len(agents) == 2


@pytest.mark.parametrize(("size", "per_agent"), [(None, 2), (5, 2), (4, 3), (13, 1)])
def test_shards_are_label_sorted_contiguous_blocks(size: int | None, per_agent: int) -> None:
    sets = ["partition.name=shard", f"partition.shards_per_agent={per_agent}"]
    if size is not None:
        sets.append(f"partition.shard_size={size}")
    cfg = quick_config(*sets, "partition.min_train=2")
    ds = load_dataset(cfg.data)
    agents = partition(ds, cfg)
    width = size if size is not None else ds.n_samples // (len(agents) * per_agent)
    order = np.argsort(ds.labels, kind="stable")  # the label-sorted sequence of samples
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    used: list[int] = []
    for d in _dealt(agents):
        pos = np.sort(rank[d])
        assert len(pos) == per_agent * width
        blocks = pos.reshape(per_agent, width)
        assert all(b[0] % width == 0 for b in blocks), "a shard does not start on a shard edge"
        assert all(np.array_equal(b, np.arange(b[0], b[0] + width)) for b in blocks)
        used += [int(b[0]) // width for b in blocks]
    assert len(used) == len(set(used)), "a shard was dealt twice"
    assert max(used) < ds.n_samples // width  # no incomplete tail shard


@pytest.mark.parametrize(
    "sets",
    [
        ("partition.name=pathological", "partition.class_assignment=random"),
        ("partition.name=pathological", "partition.class_assignment=first-deterministic"),
        ("partition.name=shard", "partition.shard_size=6"),
    ],
)
def test_new_partitions_are_seeded(sets: tuple[str, ...]) -> None:
    def dealt(seed: int) -> list[np.ndarray]:
        cfg = quick_config(*sets, f"seed={seed}", "partition.min_train=2")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return _dealt(partition(load_dataset(cfg.data), cfg))

    a, b, c = dealt(0), dealt(0), dealt(7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(np.sort(x), np.sort(y)) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize(
    ("sets", "field"),
    [
        (
            ["partition.name=pathological", "partition.classes_per_agent=5"],
            "partition.classes_per_agent",
        ),
        (
            ["partition.name=pathological", "partition.classes_per_agent=0"],
            "partition.classes_per_agent",
        ),
        (
            ["partition.name=pathological", "partition.class_assignment=cyclic"],
            "partition.class_assignment",
        ),
        (
            [
                "agents.mix=acc:30",
                "partition.name=pathological",
                "partition.classes_per_agent=4",
                "partition.min_train=1",
            ],
            "partition.classes_per_agent",
        ),
        (["partition.name=shard", "partition.shard_size=30"], "partition.shard_size"),
        (["partition.name=shard", "partition.shard_size=0"], "partition.shard_size"),
        (["partition.name=shard", "partition.shards_per_agent=20"], "partition.shards_per_agent"),
        (["partition.name=shard", "partition.shards_per_agent=0"], "partition.shards_per_agent"),
        (["partition.name=shard", "partition.shard_size=2"], "agents.mix"),
    ],
)
def test_bad_new_partition_values_are_one_line_errors(sets: list[str], field: str) -> None:
    with pytest.raises(UserError) as err:
        cfg = quick_config(*sets)
        partition(load_dataset(cfg.data), cfg)
    assert err.value.where == field, str(err.value)
    assert "\n" not in str(err.value)
