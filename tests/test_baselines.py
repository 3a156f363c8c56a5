"""The baselines: dsgd-task / -modality / -hybrid, harmony and centralized.

Each learns on the tiny config; each shares what METHOD.md says, with whom it says.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parse_dfl.engines import ENGINES
from parse_dfl.engines.setup import build_models, build_setup, holder_groups
from parse_dfl.experiments.run import run
from parse_dfl.methods import METHODS
from parse_dfl.methods.harmony import cluster_biases
from tests.conftest import quick_config

BASELINES = ["dsgd-task", "dsgd-modality", "dsgd-hybrid", "harmony", "centralized"]
CHANCE = 0.25  # basic-motions: 4 classes


def setup_and_models(*overrides: str):
    setup = build_setup(quick_config(*overrides))
    return setup, build_models(setup)


def groups_by_block(setup, models) -> dict[str, list]:
    out: dict[str, list] = {}
    for g in holder_groups(setup, models):
        out.setdefault(g.block, []).append(g)
    return out


def holders_of(setup, modality: str) -> list[int]:
    return [a.id for a in setup.agents if modality in a.modalities]


# --- every baseline learns -------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in BASELINES if n != "centralized"])
def test_baseline_beats_chance(name: str) -> None:
    res = run(quick_config(f"method.name={name}"), None, progress=False)
    assert res["mean_accuracy"] > CHANCE + 0.3, res["by_type"]
    assert all(acc > CHANCE for acc in res["by_type"].values()), res["by_type"]


def test_every_method_is_registered_with_a_description() -> None:
    for name in ["parse", "local", *BASELINES]:
        assert name in METHODS
        assert METHODS[name].description


# --- dsgd ------------------------------------------------------------------------------------


def test_dsgd_task_gives_every_agent_every_encoder_and_shares_everything() -> None:
    setup, models = setup_and_models("method.name=dsgd-task")
    assert any(len(a.modalities) == 1 for a in setup.agents)
    for agent, model in zip(setup.agents, models, strict=True):
        assert set(model.encoders.keys()) == {"acc", "gyro"}
        assert set(model.block_prefixes()) == {"enc.acc", "enc.gyro", "classifier"}
        x = {m: setup.x[m][:3] for m in agent.modalities}  # missing modality: zero-filled
        assert model(x).shape == (3, setup.data.n_classes)
    groups = groups_by_block(setup, models)
    everyone = [a.id for a in setup.agents]
    for block in ("enc.acc", "enc.gyro", "classifier"):
        assert [g.holders for g in groups[block]] == [everyone]


@pytest.mark.parametrize(
    "name,classifier_shared", [("dsgd-modality", False), ("dsgd-hybrid", True)]
)
def test_dsgd_modality_and_hybrid_share_encoders_by_modality(
    name: str, classifier_shared: bool
) -> None:
    setup, models = setup_and_models(f"method.name={name}")
    for agent, model in zip(setup.agents, models, strict=True):
        assert set(model.encoders.keys()) == set(agent.modalities)
    groups = groups_by_block(setup, models)
    for m in ("acc", "gyro"):
        assert [g.holders for g in groups[f"enc.{m}"]] == [holders_of(setup, m)]
    if classifier_shared:
        assert [g.holders for g in groups["classifier"]] == [[a.id for a in setup.agents]]
    else:
        assert "classifier" not in groups


# --- harmony ---------------------------------------------------------------------------------


def test_cluster_biases_separates_planted_groups() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal([1e-3, 1e-4], 1e-5, size=(5, 2))  # acc encoder moved most
    b = rng.normal([1e-4, 1e-3], 1e-5, size=(4, 2))  # gyro encoder moved most
    order = rng.permutation(9)
    biases = np.concatenate([a, b])[order]
    truth = np.array([0] * 5 + [1] * 4)[order]
    labels = cluster_biases(biases, k=2, seed=0)
    assert len(set(labels[truth == 0])) == 1 and len(set(labels[truth == 1])) == 1
    assert labels[truth == 0][0] != labels[truth == 1][0]
    assert np.array_equal(labels, cluster_biases(biases, k=2, seed=0))  # deterministic
    assert labels[0] == 0  # numbered by first appearance


def test_cluster_biases_degenerate_inputs() -> None:
    assert cluster_biases(np.ones((1, 2)), k=2, seed=0).tolist() == [0]  # fewer agents than k
    assert cluster_biases(np.zeros((4, 2)), k=2, seed=0).tolist() == [0] * 4  # all the same
    assert cluster_biases(np.zeros((0, 2)), k=2, seed=0).tolist() == []


def test_harmony_stages_change_the_share_plan() -> None:
    setup, models = setup_and_models("method.name=harmony", "agents.mix=acc:2,gyro:2,acc+gyro:4")
    method, agents = setup.method, setup.agents
    multi = [a.id for a in agents if len(a.modalities) == 2]
    uni = {m: [a.id for a in agents if a.modalities == (m,)] for m in ("acc", "gyro")}
    # 10 rounds: 1-5 modality-wise, 6 fusion warm-up, 7-10 clustered fusion
    assert [method.stage_of(t) for t in range(1, 11)] == [0] * 5 + [1] + [2] * 4

    # stage 0: encoders and unimodal heads among each modality's holders, no classifier
    groups = groups_by_block(setup, models)
    for m in ("acc", "gyro"):
        assert [g.holders for g in groups[f"enc.{m}"]] == [holders_of(setup, m)]
        assert [g.holders for g in groups[f"head.{m}"]] == [holders_of(setup, m)]
    assert "classifier" not in groups
    assert all(method.lr_scale(agents[a], "enc.acc") == 1.0 for a in multi)

    # stage 1: multimodal agents leave the modality groups, fine-tune encoders slowly
    method.enter_stage(1, agents, models)
    groups = groups_by_block(setup, models)
    for m in ("acc", "gyro"):
        assert [g.holders for g in groups[f"enc.{m}"]] == [uni[m]]
    assert "classifier" not in groups
    assert all(method.lr_scale(agents[a], "enc.gyro") == pytest.approx(0.1) for a in multi)
    assert all(method.lr_scale(agents[a], "classifier") == 1.0 for a in multi)

    # plant two modality biases: half the multimodal agents move acc, the others gyro
    with torch.no_grad():
        for i, a in enumerate(multi):
            enc = models[a].encoders["acc" if i % 2 == 0 else "gyro"]
            for p in enc.parameters():
                p.add_(torch.randn_like(p))
    method.enter_stage(2, agents, models)
    groups = groups_by_block(setup, models)
    clusters = sorted(g.holders for g in groups["classifier"])
    assert clusters == sorted([multi[0::2], multi[1::2]])
    assert all("cluster" in g.group for g in groups["classifier"])
    for a in multi:
        bias = method.biases[a]
        assert bias.shape == (2,) and (bias >= 0).all()


def test_harmony_trains_only_the_blocks_of_its_stage() -> None:
    setup, models = setup_and_models("method.name=harmony")
    method = setup.method
    a = next(a for a in setup.agents if len(a.modalities) == 2)
    model = models[a.id]
    idx = setup.train_idx[a.id][:8]
    x = {m: setup.x[m][idx] for m in a.modalities}

    def touched() -> set[str]:
        model.zero_grad(set_to_none=True)
        method.loss(model, x, setup.y[idx]).backward()
        return {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None}

    assert touched() == {"encoders", "heads"}
    method.enter_stage(1, setup.agents, models)
    assert touched() == {"encoders", "classifier"}
    assert method.logits(model, x).shape == (8, setup.data.n_classes)


# --- centralized -----------------------------------------------------------------------------


def test_centralized_is_one_model_on_all_agents() -> None:
    cfg = quick_config(
        "method.name=centralized", "topology.name=full", "agents.width_by_type={acc+gyro: 24}"
    )
    engine = ENGINES["reference"](build_setup(cfg))
    res = engine.run(progress=False)
    assert float(np.mean(res.test_accuracy)) > CHANCE + 0.3
    first = engine.params[0]
    assert set(first) >= {"encoders.acc.out.weight", "encoders.gyro.out.weight"}
    for params in engine.params[1:]:
        for n, p in params.items():
            torch.testing.assert_close(p, first[n])
    model, x = engine.models[0], {"gyro": engine.setup.x["gyro"][:3]}
    with torch.no_grad():  # a missing modality is skipped, not zero-filled
        torch.testing.assert_close(model.embed(x), model.encoders["gyro"](x["gyro"]))


def test_centralized_runs_on_the_complete_graph_whatever_the_config() -> None:
    setup = build_setup(quick_config("method.name=centralized", "topology.name=ring"))
    assert setup.topology.cfg.name == "full"
    graph = setup.topology.graph(1)
    n = len(setup.agents)
    assert graph.number_of_edges() == n * (n - 1) // 2
