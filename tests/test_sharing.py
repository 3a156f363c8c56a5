"""Share plans and gossip: who holds which block, means kept, consensus reached, bytes counted."""

from __future__ import annotations

import warnings

import pytest
import torch

from parse_dfl.engines import ENGINES
from parse_dfl.engines.setup import build_setup
from tests.conftest import quick_config


def engine_for(*overrides: str):
    return ENGINES["reference"](build_setup(quick_config(*overrides)))


def block_rows(engine, group) -> torch.Tensor:
    return torch.stack(
        [
            torch.cat([engine.params[a][n].detach().reshape(-1) for n in group.params])
            for a in group.holders
        ]
    )


def test_unimodal_agents_hold_and_receive_no_multimodal_block() -> None:
    engine = engine_for("agents.mix=acc:3,gyro:3,acc+gyro:3")
    agents = engine.setup.agents
    for agent, params in zip(agents, engine.params, strict=True):
        if len(agent.modalities) == 1:
            assert not any(n.startswith(("fusion", "synergy_head")) for n in params)
    for g in engine.groups:
        holders = [agents[h] for h in g.holders]
        if g.block == "synergy":
            assert all(len(a.modalities) >= 2 for a in holders)
        if g.block.startswith(("enc.", "head.unique.")):
            m = g.block.split(".")[-1]
            assert all(m in a.modalities for a in holders)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # distinct values, so that gossip visibly moves what it mixes
        for params in engine.params:
            for p in params.values():
                p.add_(torch.randn(p.shape, generator=gen))
    before = {a.id: {n: p.detach().clone() for n, p in engine.params[a.id].items()} for a in agents}
    rows_before = {g.label: block_rows(engine, g) for g in engine.groups}
    engine.gossip(1)
    # a unimodal acc agent's parameters change only through blocks it holds, each becoming
    # its row of W times its holders' copies (holders checked above); the rest keep their value
    for a in agents:
        if a.modalities != ("acc",):
            continue
        mixed: set[str] = set()
        for k, g in enumerate(engine.groups):
            if a.id not in g.holders:
                continue
            W, _ = engine.schedule.mixing(k, 1)
            row = g.holders.index(a.id)
            want = torch.as_tensor(W.toarray()[row]) @ rows_before[g.label].double()
            got = block_rows(engine, g)[row].double()
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), g.label
            mixed |= set(g.params)
        assert mixed, "the agent shares nothing"
        for n, p in engine.params[a.id].items():
            if n not in mixed:
                assert torch.equal(p, before[a.id][n]), f"{n} changed without being shared"


def test_shared_blocks_start_equal_and_gossip_keeps_their_mean() -> None:
    engine = engine_for("topology.holder_graph=overlay")
    for g in engine.groups:
        rows = block_rows(engine, g)
        assert torch.equal(rows, rows[:1].expand_as(rows)), f"{g.label} differs at start"
    for params in engine.params:  # perturb so gossip has something to average
        for p in params.values():
            p.data.add_(torch.randn_like(p))
    means = {g.label: block_rows(engine, g).mean(dim=0) for g in engine.groups}
    for t in range(1, 200):
        engine.gossip(t)
    for g in engine.groups:
        rows = block_rows(engine, g)
        assert torch.allclose(rows.mean(dim=0), means[g.label], atol=1e-4)
        assert (rows - rows.mean(dim=0)).abs().max() < 1e-4, f"{g.label} did not reach consensus"


@pytest.mark.parametrize(
    ("scope", "n_groups"), [("all", 1), ("type", 3), ("none", 0), ("modality", 1)]
)
def test_redundant_head_scope(scope: str, n_groups: int) -> None:
    engine = engine_for(f"method.redundant_head_scope={scope}")
    groups = [g for g in engine.groups if g.block == "head.redundant"]
    assert len(groups) == n_groups
    if scope == "modality":
        # acc-only and gyro-only agents share no modality: never linked directly
        agents = engine.setup.agents
        g = groups[0]
        graph = engine.setup.topology.holder_graph(g.holders, g.tags, 1)
        for i, j in graph.edges:
            assert set(agents[g.holders[i]].modalities) & set(agents[g.holders[j]].modalities)


def test_blocks_of_different_widths_are_not_averaged_but_heads_are() -> None:
    engine = engine_for("agents.width_by_type={acc+gyro: 24}")
    enc = [g for g in engine.groups if g.block == "enc.acc"]
    assert len(enc) == 2  # width 16 holders and width 24 holders average separately
    heads = [g for g in engine.groups if g.block == "head.unique.acc"]
    assert len(heads) == 1 and len(heads[0].holders) == 4


def test_local_sends_nothing_and_parse_counts_bytes() -> None:
    from parse_dfl.experiments.run import run

    local = run(quick_config("method.name=local", "train.rounds=2"), progress=False)
    assert local["bytes_sent"] == 0 and local["holder_graphs"] == {}
    parse = run(quick_config("train.rounds=2"), progress=False)
    assert parse["bytes_sent"] > 0
    assert sum(a["bytes_sent"] for a in parse["agents"]) == parse["bytes_sent"]
    assert all(v["components"] >= 1 for v in parse["holder_graphs"].values())


def test_a_run_says_when_a_block_s_holders_cannot_agree() -> None:
    """On the watch ring the induced holder graphs of the encoders fall apart; the engine
    says so once (naming the blocks), and an overlay links every block's holders."""
    cfg = ("data.name=watch", "agents.mix=acc:10,gyro:10,acc+gyro:10", "topology.name=ring")
    with pytest.warns(RuntimeWarning, match=r"disconnected groups.*enc\.acc \d+") as caught:
        engine = engine_for(*cfg, "topology.holder_graph=induced")
    assert len([w for w in caught if "disconnected" in str(w.message)]) == 1
    split = {b for b, d in engine.schedule.describe().items() if d["components"] > 1}
    assert {"enc.acc", "enc.gyro"} <= split
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        overlay = engine_for(*cfg)  # the default
    assert overlay.setup.cfg.topology.holder_graph == "overlay"
    assert all(d["components"] == 1 for d in overlay.schedule.describe().values())
