"""Hostile peers: corrupted blocks are checked and dropped; robust rules bound the damage."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

from parse_dfl.config import AttackConfig, RobustConfig
from parse_dfl.engines.robust import attackers, corrupt, robust_mix
from parse_dfl.experiments.run import run
from parse_dfl.graph import mixing_matrix
from tests.conftest import quick_config

W = mixing_matrix(nx.complete_graph(5), "metropolis-hastings")


def test_mean_rule_is_plain_gossip() -> None:
    rows = torch.randn(5, 7, dtype=torch.float64)
    mixed, dropped = robust_mix(rows, rows, W, RobustConfig(rule="mean"))
    assert dropped == 0
    assert torch.allclose(mixed, torch.as_tensor(W.toarray()) @ rows)


def test_non_finite_and_misshaped_blocks_are_dropped_and_counted() -> None:
    rows = torch.ones(5, 3)
    sent = rows.clone()
    sent[4, 0] = float("nan")
    mixed, dropped = robust_mix(rows, sent, W, RobustConfig(rule="mean"))
    assert dropped == 4  # every neighbour of agent 4 refused its block
    assert torch.isfinite(mixed).all() and torch.allclose(mixed[:4], rows[:4])


@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "clip"])
def test_robust_rules_resist_one_large_attacker(rule: str) -> None:
    rows = torch.zeros(5, 4)
    bad = torch.tensor([False, False, False, False, True])
    sent = corrupt(rows + 1.0, bad, AttackConfig(kind="scale", scale=1e4, fraction=0.2), 0) - 1.0
    plain, _ = robust_mix(rows, sent, W, RobustConfig(rule="mean"))
    robust, _ = robust_mix(rows, sent, W, RobustConfig(rule=rule, radius=0.5, trim=0.2))
    assert plain[:4].abs().max() > 100  # plain gossip is dragged far away
    assert robust[:4].abs().max() <= 0.5 + 1e-6


def test_attackers_are_a_seeded_share() -> None:
    mask = attackers(AttackConfig(kind="sign-flip", fraction=0.2), 50, 3)
    assert mask.sum() == 10 and np.array_equal(
        mask, attackers(AttackConfig(kind="sign-flip", fraction=0.2), 50, 3)
    )
    assert not attackers(AttackConfig(kind="none", fraction=0.2), 50, 3).any()


def test_label_flip_attackers_train_on_flipped_labels_but_run_completes() -> None:
    res = run(
        quick_config(
            "attack.kind=label-flip",
            "attack.fraction=0.34",
            "train.rounds=3",
            "robust.rule=trimmed-mean",
        ),
        progress=False,
    )
    assert len(res["attack"]["attackers"]) == 2
    assert 0.0 <= res["mean_accuracy_honest"] <= 1.0 and res["dropped_messages"] == 0


def test_a_trim_that_cuts_nothing_is_reported() -> None:
    from parse_dfl.engines import ENGINES
    from parse_dfl.engines.robust import trim_is_void
    from parse_dfl.engines.setup import build_setup

    ring = np.array([2, 2, 2])  # 3 values per coordinate: int(0.2 x 3) = 0 cut at each end
    assert trim_is_void(RobustConfig(rule="trimmed-mean", trim=0.2), ring)
    assert not trim_is_void(RobustConfig(rule="trimmed-mean", trim=0.4), ring)
    assert not trim_is_void(RobustConfig(rule="trimmed-mean", trim=0.2), np.array([4, 5]))
    assert not trim_is_void(RobustConfig(rule="median", trim=0.2), ring)
    with pytest.warns(RuntimeWarning, match="trims nothing"):
        ENGINES["reference"](build_setup(quick_config("robust.rule=trimmed-mean")))
