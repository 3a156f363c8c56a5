"""Hostile peers: corrupted blocks are checked and dropped; robust rules bound the damage.

The receive path (engines/receive.py) is the one every engine uses for plain and robust
gossip alike."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

from parse_dfl.config import AttackConfig, RobustConfig
from parse_dfl.engines.receive import inbox, receive
from parse_dfl.engines.robust import attackers, corrupt
from parse_dfl.experiments.run import run
from parse_dfl.graph import mixing_matrix
from tests.conftest import quick_config

W = mixing_matrix(nx.complete_graph(5), "metropolis-hastings")


def test_mean_rule_is_plain_gossip() -> None:
    rows = torch.randn(5, 7, dtype=torch.float64)
    mixed, dropped = receive(rows, rows, W, RobustConfig(rule="mean"))
    assert dropped == 0
    assert torch.allclose(mixed, torch.as_tensor(W.toarray()) @ rows)


@pytest.mark.parametrize("rule", ["mean", "clip", "median", "trimmed-mean"])
def test_non_finite_blocks_are_dropped_counted_and_their_weight_returned(rule: str) -> None:
    rows = torch.arange(15, dtype=torch.float64).view(5, 3)
    sent = rows.clone()
    sent[4, 0] = float("nan")
    mixed, dropped = receive(rows, sent, W, RobustConfig(rule=rule, radius=100.0))
    assert dropped == 4  # every neighbour of agent 4 refused its block
    assert torch.isfinite(mixed[:4]).all()
    if rule in ("mean", "clip"):  # = gossip among the 4 others, each keeping agent 4's weight
        Wd = W.toarray()
        want = np.array(
            [Wd[i, :4] @ rows[:4, :].numpy() + Wd[i, 4] * rows[i].numpy() for i in range(4)]
        )
        assert np.allclose(mixed[:4].numpy(), want, rtol=1e-12)


def test_plain_gossip_with_one_broken_holder_keeps_the_others_finite() -> None:
    rows = torch.ones(5, 3)
    rows[2, 1] = float("inf")  # a holder whose own copy diverged
    mixed, dropped = receive(rows, rows, W, RobustConfig(rule="mean"))
    assert dropped == 4
    assert torch.isfinite(mixed[[0, 1, 3, 4]]).all()
    assert torch.equal(mixed[[0, 1, 3, 4]], torch.ones(4, 3))


def test_dropped_weights_go_back_to_the_receiver() -> None:
    ok = np.array([True, True, False, True, True])
    box = inbox(W, ok)
    assert box.dropped == 4
    assert np.allclose(np.asarray(box.W.sum(axis=1)).ravel(), 1.0)
    assert (box.W.toarray()[[0, 1, 3, 4], 2] == 0).all()


def test_receivers_that_see_only_some_columns_get_the_same_rows() -> None:
    """A process of the distributed engine holds some senders' rows and receives for its own
    holders: its rows equal those of the whole computation."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    sent = rows.clone()
    sent[3] = float("nan")
    for rule in ("mean", "clip", "median"):
        cfg = RobustConfig(rule=rule)
        full, d_full = receive(rows, sent, W, cfg)
        mine, cols = np.array([1, 2]), np.array([0, 1, 2, 3, 4])
        part, d_part = receive(
            rows[cols], sent[cols], W[mine][:, cols], cfg, me=np.searchsorted(cols, mine)
        )
        assert torch.allclose(part, full[mine], rtol=1e-12) and d_part == 2 and d_full == 4


@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "clip"])
def test_robust_rules_resist_one_large_attacker(rule: str) -> None:
    rows = torch.zeros(5, 4)
    bad = torch.tensor([False, False, False, False, True])
    sent = corrupt(rows + 1.0, bad, AttackConfig(kind="scale", scale=1e4, fraction=0.2), 0) - 1.0
    plain, _ = receive(rows, sent, W, RobustConfig(rule="mean"))
    robust, _ = receive(rows, sent, W, RobustConfig(rule=rule, radius=0.5, trim=0.2))
    assert plain[:4].abs().max() > 100  # plain gossip is dragged far away
    assert robust[:4].abs().max() <= 0.5 + 1e-6


def test_attackers_are_a_seeded_share() -> None:
    mask = attackers(AttackConfig(kind="sign-flip", fraction=0.2), 50, 3)
    assert mask.sum() == 10 and np.array_equal(
        mask, attackers(AttackConfig(kind="sign-flip", fraction=0.2), 50, 3)
    )
    assert not attackers(AttackConfig(kind="none", fraction=0.2), 50, 3).any()


@pytest.mark.parametrize("engine", ["reference", "batched"])
def test_label_flip_attackers_train_on_flipped_labels(engine: str) -> None:
    from parse_dfl.engines import ENGINES
    from parse_dfl.engines.batched import BatchedEngine
    from parse_dfl.engines.setup import build_setup

    cfg = quick_config("attack.kind=label-flip", "attack.fraction=0.34", f"engine.name={engine}")
    eng = ENGINES[engine](build_setup(cfg))
    bad = np.flatnonzero(eng.attackers)
    assert len(bad) == 2
    C = eng.setup.data.n_classes
    y = torch.arange(C)
    for a in range(len(eng.setup.agents)):
        want = C - 1 - y if a in bad else y
        assert torch.equal(eng.labels(a, y), want)
    if isinstance(eng, BatchedEngine):  # the stacked batch flips the same rows
        for c in eng.cohorts:
            idx = eng.train_table[c.ids_t][:, :4]
            _, labels = eng._batch(c, idx, c.ids)
            for r, a in enumerate(c.ids):
                true = eng.setup.y[idx[r]]
                assert torch.equal(labels[r], C - 1 - true if a in bad else true)


def test_label_flip_run_completes_and_drops_nothing() -> None:
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


@pytest.mark.parametrize("engine", ["reference", "batched"])
def test_a_nan_peer_is_dropped_by_plain_gossip(engine: str) -> None:
    """attack.kind=nan with the default rule (mean): every message of the attackers is
    dropped, honest agents never hold a non-finite value, and learn as in the clean run."""
    from parse_dfl.engines import ENGINES
    from parse_dfl.engines.setup import build_setup

    sets = ("train.rounds=6", "train.eval_every=3", f"engine.name={engine}")
    clean = ENGINES[engine](build_setup(quick_config(*sets)))
    clean_res = clean.run(progress=False)
    eng = ENGINES[engine](
        build_setup(quick_config(*sets, "attack.kind=nan", "attack.fraction=0.2"))
    )
    res = eng.run(progress=False)
    bad = eng.attackers
    assert bad.sum() == 1 and res.extra["dropped_messages"] > 0
    for a, model in enumerate(eng.agent_models()):
        if not bad[a]:
            assert all(torch.isfinite(p).all() for p in model.parameters()), a
    honest = np.asarray(res.test_accuracy)[~bad].mean()
    assert honest >= np.asarray(clean_res.test_accuracy)[~bad].mean() - 0.1


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


@pytest.mark.parametrize("engine", ["reference", "batched"])
@pytest.mark.parametrize("holder_graph", ["induced", "overlay"])
def test_plain_gossip_drops_a_holder_that_went_non_finite(engine: str, holder_graph: str) -> None:
    """No attack, no robust rule: an agent whose parameters became NaN (diverged) is still
    refused by its neighbours, and counted."""
    from parse_dfl.engines import ENGINES
    from parse_dfl.engines.setup import build_setup

    cfg = quick_config(f"engine.name={engine}", f"topology.holder_graph={holder_graph}")
    eng = ENGINES[engine](build_setup(cfg))
    assert eng.plain_gossip
    broken = 0
    with torch.no_grad():
        for p in eng.agent_models()[broken].parameters():
            p.fill_(float("nan"))
    eng.gossip(1)
    assert eng.dropped > 0
    for a, model in enumerate(eng.agent_models()):
        if a != broken:
            assert all(torch.isfinite(p).all() for p in model.parameters()), a


def test_the_check_is_exact_for_large_finite_and_mixed_infinite_rows() -> None:
    from parse_dfl.engines.receive import intact, intact_parts

    x = torch.randn(6, 10)
    x[1, 3] = float("nan")
    x[2, 0], x[2, 1] = float("inf"), -float("inf")  # sums to NaN
    x[3, :] = 3e38  # finite values whose float32 sum overflows: still usable
    x[4, 2] = -float("inf")
    want = np.array([True, False, False, True, False, True])
    assert np.array_equal(intact(x), want)
    assert np.array_equal(intact_parts([x[:, :4], x[:, 4:]]), want)


def _robust_one_by_one(own, sent, box, rule):
    """The robust rules written receiver by receiver: the specification of the vectorised
    code in engines/receive.py."""
    W = box.W
    out = torch.empty((W.shape[0], own.shape[1]), dtype=own.dtype)
    for i in range(W.shape[0]):
        lo, hi = W.indptr[i], W.indptr[i + 1]
        cols, weights = W.indices[lo:hi], W.data[lo:hi]
        mine = own[int(box.me[i])]
        others = cols != box.me[i]
        if box.ok is not None:
            others &= box.ok[cols]
        if not others.any():
            out[i] = mine
            continue
        m = sent[torch.as_tensor(cols[others])]
        if rule.rule == "clip":
            w_t = torch.as_tensor(weights[others], dtype=own.dtype)
            diff = m - mine
            norms = diff.norm(dim=1, keepdim=True).clamp_min(1e-12)
            out[i] = mine + w_t @ (diff * torch.clamp(rule.radius / norms, max=1.0))
            continue
        values = torch.cat([mine[None], m])
        if rule.rule == "median":
            out[i] = values.median(dim=0).values
        else:
            k = int(rule.trim * values.shape[0])
            srt = values.sort(dim=0).values
            out[i] = srt[k : values.shape[0] - k].mean(dim=0)
    return out


@pytest.mark.parametrize("rule", ["clip", "median", "trimmed-mean"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_robust_rules_equal_the_one_by_one_rules(rule: str, seed: int) -> None:
    from parse_dfl.engines import receive as rc

    g = nx.gnp_random_graph(12, 0.4, seed=seed)
    Wg = mixing_matrix(g, "metropolis-hastings")
    gen = torch.Generator().manual_seed(seed)
    own = torch.randn(12, 9, generator=gen, dtype=torch.float64)
    sent = own + torch.randn(12, 9, generator=gen, dtype=torch.float64)
    ok = np.random.default_rng(seed).random(12) > 0.25
    cfg = RobustConfig(rule=rule, radius=0.7, trim=0.25)
    for mine in (np.arange(12), np.array([1, 4, 5, 9])):  # all, or one process's receivers
        box = rc.inbox(Wg[mine], ok, me=mine)
        want = _robust_one_by_one(own, sent, box, cfg)
        for chunk in (1 << 30, 200):  # one block, or receivers in small chunks
            got = rc._robust(own, sent, box, cfg, chunk_bytes=chunk)
            assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
