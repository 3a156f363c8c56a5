"""Partitioning: counts match the mix, shards are disjoint, seeds are deterministic."""

from __future__ import annotations

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
