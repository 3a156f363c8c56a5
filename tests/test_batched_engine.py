"""The batched engine against the reference engine (the specification of a round).

Same config, same seed, in float64 (`engine.dtype`): per-agent accuracies must be equal and
every final parameter equal to a tight relative tolerance. The engines sum in different
orders and nothing else may differ; in float64 that leaves ~1e-15 per operation, far below
anything a discrete event (a ReLU switching, an argmax) could amplify into a visible
difference, so the comparison holds on any CPU and thread count. float32 runs only as a
smoke test with loose bounds. Every registered method is run, so methods added later are
covered without touching this file.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from parse_dfl.engines import ENGINES
from parse_dfl.engines.batched import BatchedEngine, StackedOptimizer
from parse_dfl.engines.setup import build_setup
from parse_dfl.methods import METHODS
from parse_dfl.methods.local import LocalMethod
from tests.conftest import quick_config

TOL = 1e-9  # float64: largest parameter difference relative to the parameter's scale
TOL32 = 1e-2  # float32 smoke test
BASE = (
    "agents.mix=acc:2,gyro:2,acc+gyro:2",
    "train.rounds=4",  # harmony: stages 0, 0, 1, 2
    "train.local_steps=2",
    "train.eval_every=2",
)


def run_engine(name: str, *overrides: str, fallback: bool = False, dtype: str = "float64"):
    cfg = quick_config(*BASE, *overrides, f"engine.name={name}", f"engine.dtype={dtype}")
    engine = ENGINES[name](build_setup(cfg))
    if fallback:
        assert isinstance(engine, BatchedEngine)
        engine.force_fallback = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. centralized off the complete graph
        result = engine.run(progress=False)
    return engine, result


def params_of(engine, agent: int) -> dict[str, torch.Tensor]:
    if isinstance(engine, BatchedEngine):
        return engine.parameters_of(agent)
    return {n: p.detach() for n, p in engine.models[agent].named_parameters()}


def max_param_diff(a, b) -> float:
    """max over parameters of max|a - b| / max(max|b|, 1): relative for large parameters,
    absolute for small ones."""
    worst = 0.0
    for agent in range(len(a.setup.agents)):
        pa, pb = params_of(a, agent), params_of(b, agent)
        assert pa.keys() == pb.keys()
        for n in pa:
            scale = max(float(pb[n].abs().max()), 1.0) if pb[n].numel() else 1.0
            worst = max(worst, float((pa[n] - pb[n]).abs().max()) / scale)
    return worst


def assert_accuracies_close(a, b, engine, samples: int) -> None:
    """Accuracies within `samples` test samples of each other, agent by agent."""
    s = engine.setup
    for protocol, sizes in (
        ("test_accuracy", [len(s.global_test)] * len(s.agents)),
        ("local_test_accuracy", [len(t) for t in s.test_idx]),
    ):
        for x, y, n in zip(getattr(a, protocol), getattr(b, protocol), sizes, strict=True):
            assert abs(x - y) <= samples / max(1, n) + 1e-12, protocol


def assert_same(
    *overrides: str, fallback: bool = False, dtype: str = "float64", tol: float | None = None
) -> None:
    ref, r_res = run_engine("reference", *overrides, dtype=dtype)
    bat, b_res = run_engine("batched", *overrides, fallback=fallback, dtype=dtype)
    exact = dtype == "float64"
    if exact:
        assert b_res.test_accuracy == r_res.test_accuracy
        assert b_res.local_test_accuracy == r_res.local_test_accuracy
    else:
        assert_accuracies_close(b_res, r_res, bat, samples=1)
    assert np.array_equal(b_res.bytes_sent, r_res.bytes_sent)
    assert b_res.extra["dropped_messages"] == r_res.extra["dropped_messages"]
    assert max_param_diff(ref, bat) <= (tol or (TOL if exact else TOL32))
    for hr, hb in zip(r_res.history, b_res.history, strict=True):
        assert hb["train_loss"] == pytest.approx(hr["train_loss"], rel=1e-10 if exact else 1e-4)
    if not fallback:  # the point of the engine: nothing fell back by accident
        assert all(c["mode"] == "batched" for c in bat.describe_cohorts())


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_matches_reference(method: str, optimizer: str) -> None:
    extra = ("train.lr=0.05", "train.weight_decay=0.001") if optimizer == "sgd" else ()
    assert_same(f"method.name={method}", f"train.optimizer={optimizer}", *extra)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("fusion", ["gated", "attention", "concat"])
def test_parse_fusions_and_widths_match_reference(fusion: str, optimizer: str) -> None:
    extra = ("train.lr=0.05",) if optimizer == "sgd" else ()
    assert_same(
        f"model.fusion={fusion}",
        "agents.width_by_type={acc: 12, acc+gyro: 24}",
        f"train.optimizer={optimizer}",
        *extra,
    )


@pytest.mark.parametrize("method", sorted(METHODS))
def test_float32_engines_agree_loosely(method: str) -> None:
    """The default number type: the same accuracies to within one test sample."""
    assert_same(f"method.name={method}", "model.fusion=attention", dtype="float32")


def test_engines_agree_round_by_round() -> None:
    """Local steps and gossip compared separately after every round (float64): a difference
    would show where it starts."""
    sets = (*BASE, "model.fusion=attention", "train.rounds=3", "engine.dtype=float64")
    ref = ENGINES["reference"](build_setup(quick_config(*sets, "engine.name=reference")))
    bat = ENGINES["batched"](build_setup(quick_config(*sets, "engine.name=batched")))
    assert max_param_diff(ref, bat) == 0.0
    for t in range(1, 4):
        assert bat.local_round(t) == pytest.approx(ref.local_round(t), rel=1e-12)
        assert max_param_diff(ref, bat) <= TOL, f"local steps of round {t}"
        ref.gossip(t)
        bat.gossip(t)
        assert max_param_diff(ref, bat) <= TOL, f"gossip of round {t}"


def test_faults_and_idle_agents_match_reference(monkeypatch) -> None:
    # stragglers and crashes leave holes in a cohort (gathered rows), lost links change W;
    # gossip in pieces of one parameter each
    monkeypatch.setattr(BatchedEngine, "gossip_bytes", 1)
    assert_same(
        "faults.straggler=0.4",
        "faults.crash_fraction=0.2",
        "faults.link_failure=0.2",
        "train.weight_decay=0.01",
    )


def test_relinked_holders_after_a_crash_match_reference() -> None:
    # agents down in rounds 2-3 and back in round 4: the holder graphs change twice
    assert_same(
        "faults.crash_fraction=0.34",
        "faults.crash_round=2",
        "faults.crash_rounds=2",
        "faults.relink=true",
    )


@pytest.mark.parametrize(
    "attack",
    [
        ("attack.kind=label-flip", "attack.fraction=0.4"),
        ("attack.kind=sign-flip", "attack.fraction=0.3", "robust.rule=clip"),
        ("attack.kind=nan", "attack.fraction=0.3"),
        ("attack.kind=noise", "attack.fraction=0.3", "robust.rule=median"),
    ],
)
def test_attacks_and_robust_gossip_match_reference(attack: tuple[str, ...]) -> None:
    assert_same(*attack)


def test_per_agent_fallback_matches_reference() -> None:
    assert_same("method.name=harmony", "train.optimizer=sgd", fallback=True)


class DropoutClassifier(nn.Module):
    """Random in its forward: vmap refuses it, so the engine must run it per agent."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.drop = nn.Dropout(0.3)

    def block_prefixes(self) -> dict[str, list[str]]:
        return {b: [f"inner.{p}" for p in ps] for b, ps in self.inner.block_prefixes().items()}

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.inner.classifier(self.drop(self.inner.embed(x)))


class DropoutMethod(LocalMethod):
    name = "test-dropout"

    def build_model(self, agent):
        return DropoutClassifier(super().build_model(agent))

    def loss(self, model, x, y):
        return F.cross_entropy(model(x), y)


def test_unbatchable_method_falls_back_with_the_same_maths(monkeypatch) -> None:
    monkeypatch.setitem(METHODS, DropoutMethod.name, DropoutMethod)
    torch.manual_seed(123)
    ref, r_res = run_engine("reference", "method.name=test-dropout")
    torch.manual_seed(123)
    cfg = quick_config(
        *BASE, "method.name=test-dropout", "engine.name=batched", "engine.dtype=float64"
    )
    bat = BatchedEngine(build_setup(cfg))
    with pytest.warns(RuntimeWarning, match="run per agent"):
        b_res = bat.run(progress=False)
    assert {c["mode"] for c in bat.describe_cohorts()} == {"fallback"}
    assert b_res.test_accuracy == r_res.test_accuracy
    assert max_param_diff(ref, bat) <= TOL


@pytest.mark.parametrize("pair", [("reference", "batched"), ("batched", "reference")])
def test_checkpoints_resume_across_engines(tmp_path, pair) -> None:
    first, second = pair
    extra = (*BASE, "train.rounds=5", "checkpoint.every=3", "method.name=harmony")
    engines = []
    for name, resume in ((first, False), (second, True)):
        cfg = quick_config(*extra, f"engine.name={name}", "engine.dtype=float64")
        engine = ENGINES[name](build_setup(cfg))
        # the first run writes a checkpoint after round 3; the second resumes from it
        res = engine.run(progress=False, checkpoint_dir=tmp_path, resume=resume)
        engines.append((engine, res))
    (a, a_res), (b, b_res) = engines
    assert b_res.test_accuracy == a_res.test_accuracy
    assert max_param_diff(a, b) <= TOL


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_stacked_optimizer_is_torch_optim(kind: str) -> None:
    """Row-wise learning rates, a parameter skipped at some steps, gathered rows."""
    from parse_dfl.config import TrainConfig

    cfg = TrainConfig(optimizer=kind, lr=0.1, momentum=0.9, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    n = 4
    init = {"w": torch.randn(n, 3, 5, generator=gen), "b": torch.randn(n, 5, generator=gen)}
    lr = {"w": np.array([0.1, 0.1, 0.05, 0.2]), "b": np.full(n, 0.1)}
    P = {k: v.clone() for k, v in init.items()}
    opt = StackedOptimizer(P, lr, cfg)
    mine = [{k: v[a].clone().requires_grad_() for k, v in init.items()} for a in range(n)]
    torch_opts = []
    for a in range(n):
        groups = [{"params": [mine[a][k]], "lr": float(lr[k][a])} for k in ("w", "b")]
        if kind == "adam":
            torch_opts.append(torch.optim.Adam(groups, weight_decay=cfg.weight_decay))
        else:
            torch_opts.append(
                torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            )
    for step in range(6):
        rows = torch.tensor([0, 2, 3]) if step % 2 else slice(0, n)
        idx = range(n) if isinstance(rows, slice) else rows.tolist()
        names = ("w",) if step in (1, 2) else ("w", "b")  # "b" unused at steps 1 and 2
        grads = {k: torch.randn(len(idx), *init[k].shape[1:], generator=gen) for k in names}
        opt.step(rows, grads)
        for i, a in enumerate(idx):
            for k in ("w", "b"):
                mine[a][k].grad = grads[k][i].clone() if k in names else None
            torch_opts[a].step()
    for a in range(n):
        for k in ("w", "b"):
            torch.testing.assert_close(P[k][a], mine[a][k].detach(), rtol=0, atol=1e-6)
