"""PARSE-plus: shapes, the share plan, each objective doing its job, every switch, and a
synergy fusion that fits (s_a + s_b) mod C where mean fusion cannot."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from parse_dfl.data import load_dataset
from parse_dfl.data.partition import AgentSpec
from parse_dfl.engines import ENGINES
from parse_dfl.engines.setup import build_models, build_setup, holder_groups
from parse_dfl.errors import UserError
from parse_dfl.methods import METHODS
from parse_dfl.methods.base import Share
from parse_dfl.methods.disentangle import (
    cross_correlation,
    hsic,
    modality_loss,
    predictability,
    predictor_fit,
)
from parse_dfl.methods.parse_plus import (
    ParsePlusMethod,
    allocate_split,
    auto_projector_hidden,
)
from parse_dfl.models.blocks import param_blocks
from parse_dfl.models.encoders import build_head
from parse_dfl.models.fusion import MeanFusion
from parse_dfl.models.parse_plus import ParsePlusModel, TensorFusion, build_synergy_fusion
from tests.conftest import quick_config
from tests.test_batched_engine import assert_same

KINDS = {"acc": "series", "gyro": "series", "img": "image", "vec": "vector"}
SHAPES = {"acc": (3, 40), "gyro": (3, 40), "img": (1, 16, 15), "vec": (12,)}


def batch(mods: tuple[str, ...], n: int = 6) -> dict[str, torch.Tensor]:
    return {m: torch.randn(n, *SHAPES[m]) for m in mods}


def method(*overrides: str) -> ParsePlusMethod:
    cfg = quick_config("method.name=parse-plus", *overrides)
    m = METHODS["parse-plus"](cfg, load_dataset(cfg.data))
    assert isinstance(m, ParsePlusMethod)
    return m


def agent(mods: tuple[str, ...], id_: int = 0, width: int = 16) -> AgentSpec:
    return AgentSpec(id_, mods, width, np.arange(4), np.arange(4, 6))


@pytest.mark.parametrize("mods", [("acc",), ("img",), ("vec",), ("acc", "gyro"), ("acc", "img")])
@pytest.mark.parametrize("fusion", ["tensor", "mlp", "mean"])
def test_output_shapes_and_blocks(mods: tuple[str, ...], fusion: str) -> None:
    model = ParsePlusModel(
        mods, KINDS, SHAPES, 8, (4, 6, 5), 7, fusion=fusion, projector_hidden=3, discriminator=4
    )
    out = model(batch(mods))
    assert out.ensemble.shape == (6, 7)
    multi = len(mods) > 1
    assert set(out.heads) == {f"unique.{m}" for m in mods} | {"redundant"} | (
        {"synergy"} if multi else set()
    )
    for m in mods:
        assert out.unique[m].shape == (6, 4)
        assert out.redundant[m].shape == (6, 6)
        assert (out.synergy[m].shape == (6, 5)) if multi else (m not in out.synergy)
    blocks = param_blocks(model)  # raises if a parameter is in no block or in two
    assert ("synergy" in blocks) == multi
    assert all((f"proj.s.{m}" in blocks) == multi for m in mods)
    assert "head.modality" in blocks


def test_a_missing_modality_at_test_time_is_left_out() -> None:
    model = ParsePlusModel(("acc", "gyro"), KINDS, SHAPES, 8, (4, 4, 4), 3, personal_head=True)
    out = model(batch(("gyro",)))
    assert set(out.heads) == {"unique.gyro", "redundant"}
    assert out.ensemble.shape == (6, 3)


def test_personal_weights_start_as_the_plain_mean() -> None:
    torch.manual_seed(0)
    model = ParsePlusModel(("acc", "gyro"), KINDS, SHAPES, 8, (4, 4, 4), 3, personal_weights=True)
    out = model(batch(("acc", "gyro")))
    mean = torch.stack(list(out.heads.values())).mean(dim=0)
    assert torch.allclose(out.ensemble, mean, atol=1e-6)


def test_projectors_stay_within_parse_last_layer() -> None:
    """The auto hidden size keeps the three projectors no bigger than PARSE's width -> D
    layer (the bytes budget: at most PARSE's + 10 %)."""
    for width, split in ((64, (64, 64, 64)), (32, (16, 16, 16)), (16, (4, 20, 8))):
        h = auto_projector_hidden(width, split)
        d = sum(split)
        projectors = h * (3 * width + 3 + d) + d
        assert projectors <= width * d + d
        assert h >= 1


def test_share_plan_says_who_shares_which_slice() -> None:
    m = method("method.plus_personal_weights=true")
    uni, multi = agent(("acc",), 0), agent(("acc", "gyro"), 1)
    plan_u = m.share_plan(uni, m.build_model(uni))
    plan_m = m.share_plan(multi, m.build_model(multi))
    # trunk + u/r projectors and the unique head: every holder of the modality
    assert plan_u["enc.acc"] == plan_m["enc.acc"] == Share()
    assert plan_u["head.unique.acc"] == Share()
    # the s projector exists, and travels, only among multimodal agents
    assert "proj.s.acc" not in plan_u
    assert plan_m["proj.s.acc"] == plan_m["proj.s.gyro"] == Share(group="multimodal")
    assert plan_m["synergy"] == Share(group="acc+gyro")
    assert plan_u["head.redundant"] == plan_m["head.redundant"] == Share()
    # the personal part never leaves its agent
    assert plan_u["personal"] is None and plan_m["personal"] is None


def test_holder_groups_keep_personal_parts_and_s_projectors_where_they_belong() -> None:
    setup = build_setup(
        quick_config(
            "method.name=parse-plus",
            "method.plus_discriminator=true",
            "method.plus_personal_head=true",
        )
    )
    groups = holder_groups(setup, build_models(setup))
    multi = {a.id for a in setup.agents if len(a.modalities) > 1}
    by_block = {g.block: g for g in groups}
    assert "personal" not in by_block
    assert set(by_block["proj.s.acc"].holders) == multi
    assert set(by_block["head.modality"].holders) == {a.id for a in setup.agents}
    acc = {a.id for a in setup.agents if "acc" in a.modalities}
    assert set(by_block["enc.acc"].holders) == acc


def test_bytes_per_round_within_parse_plus_ten_percent() -> None:
    sent = {}
    for name in ("parse", "parse-plus"):
        cfg = quick_config(f"method.name={name}", "train.rounds=1", "train.local_steps=1")
        sent[name] = int(
            ENGINES["reference"](build_setup(cfg)).run(progress=False).bytes_sent.sum()
        )
    assert sent["parse-plus"] <= 1.1 * sent["parse"]


# --- objectives -------------------------------------------------------------------------


def minimise(fn, params: list[torch.Tensor], steps: int = 60, lr: float = 0.05) -> tuple:
    opt = torch.optim.Adam(params, lr=lr)
    first = float(fn().detach())
    for _ in range(steps):
        opt.zero_grad()
        loss = fn()
        loss.backward()
        opt.step()
    return first, float(fn().detach())


@pytest.mark.parametrize("dep", [cross_correlation, hsic])
def test_dependence_penalties_fall_as_u_forgets_r(dep) -> None:
    torch.manual_seed(0)
    r = torch.randn(64, 6)
    u = nn.Parameter(r @ torch.randn(6, 5) + 0.1 * torch.randn(64, 5))
    independent = dep(torch.randn(64, 5), r)
    first, last = minimise(lambda: dep(u, r), [u], steps=150)
    assert first > 3 * float(independent)
    assert last < 0.5 * first


def test_cross_correlation_is_one_for_a_copy_and_small_for_noise() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 1)
    assert float(cross_correlation(x, x)) == pytest.approx(1.0, abs=1e-3)
    assert float(cross_correlation(torch.randn(256, 4), torch.randn(256, 4))) < 0.02


def test_modality_loss_is_low_for_a_confident_right_answer() -> None:
    right = torch.tensor([[0.0, 9.0], [0.0, 9.0]])
    assert float(modality_loss(right, 1)) < 1e-3
    assert float(modality_loss(right, 0)) > 8


@pytest.mark.parametrize("term", ["alignment", "dependence", "discrimination"])
def test_each_objective_decreases_on_a_toy_batch(term: str) -> None:
    """A few steps on one objective alone, through the whole model, lower that objective."""
    torch.manual_seed(0)
    m = method("method.plus_discriminator=true", "method.plus_decor=xcov")
    model = m.build_model(agent(("acc", "gyro"), width=16))
    assert isinstance(model, ParsePlusModel)
    x = batch(("acc", "gyro"), n=128)  # the dependence estimates' noise floor is ~1/n

    def value() -> torch.Tensor:
        out = model(x)
        if term == "discrimination":
            return m.discrimination(model, out)
        return getattr(m, term)(out)

    first, last = minimise(value, list(model.parameters()), steps=40, lr=0.01)
    assert last < 0.7 * first


# --- switches ---------------------------------------------------------------------------

SWITCHES = [
    "method.plus_projectors=true",
    "method.plus_decor=none",
    "method.plus_decor=hsic",
    "method.plus_discriminator=true",
    "method.plus_residual=true",
    "method.plus_agreement=true",
    "method.plus_cross=1.0",
    "method.plus_adversary=1.0",
    "method.align=false",
    "method.plus_fusion=mlp",
    "method.plus_fusion=tensor",
    "method.plus_fusion=gated",
    "method.plus_synergy_hidden=-1",
    "method.plus_synergy_trunk=8",
    "method.plus_synergy_raw=true",
    "method.plus_personal_weights=true",
    "method.plus_personal_head=true",
    "method.plus_local_head=true",
    "method.plus_split=pid",
    "model.ensemble=probs",
]


@pytest.mark.parametrize("switch", SWITCHES)
def test_every_switch_trains(switch: str) -> None:
    cfg = quick_config("method.name=parse-plus", switch, "train.rounds=2", "train.local_steps=2")
    res = ENGINES["reference"](build_setup(cfg)).run(progress=False)
    assert all(np.isfinite(h["train_loss"]) for h in res.history)
    assert 0.0 <= float(np.mean(res.test_accuracy)) <= 1.0


def test_switches_change_the_model_as_named() -> None:
    a = agent(("acc", "gyro"))
    linear = method().build_model(a)
    assert isinstance(linear.projectors["acc"].u, nn.Linear)
    deep = method("method.plus_projectors=true").build_model(a)
    assert isinstance(deep.projectors["acc"].u, nn.Sequential)
    assert "personal" not in param_blocks(method().build_model(a))
    assert "personal" in param_blocks(method("method.plus_personal_weights=true").build_model(a))
    assert isinstance(method().build_model(a).fusion, MeanFusion)
    assert isinstance(method("method.plus_fusion=tensor").build_model(a).fusion, TensorFusion)


def test_the_synergy_trunk_is_the_s_slices_own_and_travels_with_them() -> None:
    """With `plus_synergy_trunk` the s slices read their own trunk (no gradient reaches the
    shared trunk through the synergy head), it travels in the multimodal-only proj.s block,
    and a unimodal agent has none."""
    m = method("method.plus_synergy_trunk=5")
    multi, uni = agent(("acc", "gyro"), 1), agent(("acc",), 0)
    model = m.build_model(multi)
    assert model.s_trunks is not None and set(model.s_trunks) == {"acc", "gyro"}
    blocks = param_blocks(model)  # raises if a parameter is in no block or in two
    own = {n for n, _ in model.s_trunks["acc"].named_parameters(prefix="s_trunks.acc")}
    assert own and own <= set(blocks["proj.s.acc"])
    assert m.share_plan(multi, model)["proj.s.acc"] == Share(group="multimodal")
    out = model(batch(("acc", "gyro")))
    out.heads["synergy"].sum().backward()
    assert all(p.grad is None for p in model.trunks.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.s_trunks.parameters())
    assert m.build_model(uni).s_trunks is None
    assert method().build_model(multi).s_trunks is None


def test_synergy_from_the_raw_input_is_a_linear_map_of_it() -> None:
    """With `plus_synergy_raw` the s slice of a multimodal agent is a linear map of the
    flattened input (no trunk in between; the map travels in proj.s), so with tensor fusion
    the synergy head reads a bilinear form of the inputs; a unimodal agent has no s at all."""
    m = method("method.plus_synergy_raw=true", "method.plus_fusion=tensor")
    multi = agent(("acc", "gyro"), 1)
    model = m.build_model(multi)
    x = {mod: torch.randn(6, *m.input_shapes[mod]) for mod in ("acc", "gyro")}
    out = model(x)
    proj = model.projectors["acc"].s
    assert isinstance(proj, nn.Linear) and proj.in_features == np.prod(m.input_shapes["acc"])
    assert torch.allclose(out.synergy["acc"], proj(x["acc"].flatten(start_dim=1)))
    assert set(param_blocks(model)["proj.s.acc"]) == {
        "projectors.acc.s.weight",
        "projectors.acc.s.bias",
    }
    out.heads["synergy"].sum().backward()
    assert all(p.grad is None for p in model.trunks.parameters())
    assert m.build_model(agent(("acc",), 0)).s_trunks is None


def test_synergy_from_the_raw_input_excludes_an_own_trunk() -> None:
    with pytest.raises(UserError, match="plus_synergy_raw"):
        method("method.plus_synergy_raw=true", "method.plus_synergy_trunk=8")


def test_the_local_head_changes_the_local_protocol_only() -> None:
    """The private correction is trained on detached slices and used only for the local
    protocol: every shared parameter, every global accuracy and every byte are those of the
    run without it, bit for bit; the local accuracies are the corrected model's."""
    sets = ("method.name=parse-plus", "train.rounds=4", "train.eval_every=2")
    sets += ("partition.name=dirichlet", "partition.alpha=0.3")
    runs = {}
    for on in (False, True):
        cfg = quick_config(*sets, f"method.plus_local_head={str(on).lower()}")
        engine = ENGINES["reference"](build_setup(cfg))
        runs[on] = (engine.run(progress=False), engine.agent_models())
    (plain, plain_models), (local, local_models) = runs[False], runs[True]
    assert local.test_accuracy == plain.test_accuracy
    assert (local.bytes_sent == plain.bytes_sent).all()
    for a, b in zip(plain_models, local_models, strict=True):
        pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
        assert set(pb) - set(pa) == {"local_head.weight", "local_head.bias"}
        assert all(torch.equal(pa[n], pb[n]) for n in pa)
        assert float(pb["local_head.weight"].abs().sum()) > 0  # it trained
    assert local.local_test_accuracy != plain.local_test_accuracy
    assert "local" in param_blocks(local_models[0])


def test_residual_heads_learn_what_the_redundant_head_leaves() -> None:
    """With `plus_residual` a unique or synergy head's own loss is CE(its logits + the
    redundant logits held constant): a head whose redundant partner is already right gets
    almost no gradient, and the redundant head's own gradient is the plain one."""
    torch.manual_seed(0)
    x, y = batch(("acc", "gyro"), n=16), torch.randint(0, 4, (16,))
    plain, resid = method(), method("method.plus_residual=true")
    model = plain.build_model(agent(("acc", "gyro")))
    out = model(x)
    heads = out.heads
    expected = F.cross_entropy(heads["redundant"], y) + sum(
        F.cross_entropy(h + heads["redundant"].detach(), y)
        for name, h in heads.items()
        if name != "redundant"
    )
    got = float(resid.head_loss(out, y).detach())
    assert got == pytest.approx(float(expected.detach()), rel=1e-6)
    assert got != pytest.approx(float(plain.head_loss(out, y).detach()))
    grads = {}
    for name, m in (("plain", plain), ("resid", resid)):
        model.zero_grad()
        m.head_loss(model(x), y).backward()
        grads[name] = model.redundant_head.weight.grad.clone()
    # the redundant head is trained by its own CE only, as without the switch
    assert torch.allclose(grads["plain"], grads["resid"])
    # a redundant head that already predicts y leaves the unique heads nothing to learn
    u = heads["unique.acc"].detach().requires_grad_()
    sure = dict(heads, redundant=50.0 * F.one_hot(y, 4).float(), **{"unique.acc": u})
    for m, small in ((resid, True), (plain, False)):
        (g,) = torch.autograd.grad(m.head_loss(replace(out, heads=sure), y), u)
        assert (float(g.abs().max()) < 1e-6) == small


def test_agreement_leaves_r_to_the_alignment() -> None:
    """With `plus_agreement` the r projectors get no gradient from any head (nor from the
    ensemble), only from the alignment; the outputs are the same as without it."""
    torch.manual_seed(0)
    x, y = batch(("acc", "gyro"), n=16), torch.randint(0, 4, (16,))
    a = agent(("acc", "gyro"))
    grads = {}
    for on in (False, True):
        m = method(f"method.plus_agreement={str(on).lower()}", "method.plus_personal_head=true")
        torch.manual_seed(1)
        model = m.build_model(a)
        out = model(x)
        for part, loss in (
            ("label", m.loss(model, x, y) - m.cfg.method.beta * m.alignment(out)),
            ("align", m.alignment(out)),
        ):
            model.zero_grad()
            loss.backward(retain_graph=True)
            w = model.projectors["acc"].r.weight.grad
            grads[on, part] = torch.zeros(1) if w is None else w.clone()
        grads[on, "ensemble"] = out.ensemble.detach()
    assert torch.equal(grads[False, "ensemble"], grads[True, "ensemble"])
    assert float(grads[False, "label"].abs().max()) > 1e-4
    assert float(grads[True, "label"].abs().max()) == 0.0
    assert torch.allclose(grads[False, "align"], grads[True, "align"])
    assert float(grads[True, "align"].abs().max()) > 1e-4


def test_predictability_is_the_squared_correlation_per_unit() -> None:
    torch.manual_seed(0)
    u = torch.randn(256, 4)
    assert float(predictability(3 * u + 1, u)) == pytest.approx(1.0, abs=1e-4)
    assert float(predictability(-u, u)) == pytest.approx(1.0, abs=1e-4)
    assert float(predictability(torch.randn(256, 4), u)) < 0.02
    half = torch.cat([u[:, :2], torch.randn(256, 2)], dim=1)  # two units predicted exactly
    assert float(predictability(half, u)) == pytest.approx(0.5, abs=0.02)
    # the fit's target is standardised and constant: scaling u changes nothing
    p = torch.randn(256, 4, requires_grad=True)
    assert float(predictor_fit(p, u)) == pytest.approx(float(predictor_fit(p, 10 * u)), rel=1e-4)


def test_cross_predictors_are_private_and_split_their_gradients() -> None:
    """The predictors (one per ordered pair of modalities, multimodal agents only, never
    shared) learn from their fit alone; the penalty reaches u_a and never the predictors or
    modality b's slices."""
    m = method("method.plus_cross=1.0")
    multi, uni = agent(("acc", "gyro")), agent(("acc",))
    torch.manual_seed(0)
    model = m.build_model(multi)
    assert set(model.cross) == {"acc_from_gyro", "gyro_from_acc"}
    assert m.share_plan(multi, model)["cross"] is None and "cross" in param_blocks(model)
    single = m.build_model(uni)
    assert single.cross is None and "cross" not in m.share_plan(uni, single)
    x = batch(("acc", "gyro"), n=32)
    out = model(x)
    fit, pen = m.cross_terms(model, out)
    assert 0.0 <= float(pen) <= 1.0
    pred_w = model.cross["acc_from_gyro"].weight
    (g_pred,) = torch.autograd.grad(pen, [pred_w], retain_graph=True, allow_unused=True)
    assert g_pred is None  # the penalty does not train the predictor
    g_u, g_rb = torch.autograd.grad(
        pen, [out.unique["acc"], out.redundant["gyro"]], retain_graph=True, allow_unused=True
    )
    assert g_u is not None and float(g_u.abs().max()) > 0 and g_rb is None
    (g_fit,) = torch.autograd.grad(fit, [out.redundant["gyro"]], allow_unused=True)
    assert g_fit is None  # the predictor reads b's slices as constants
    # with the switch off nothing changes: the same model, the same loss
    torch.manual_seed(0)
    plain = method().build_model(multi)
    mine = dict(model.named_parameters())
    assert all(torch.equal(p, mine[n]) for n, p in plain.named_parameters())
    assert set(mine) - {n for n, _ in plain.named_parameters()} == {
        n for n in mine if n.startswith("cross.")
    }


def test_the_adversary_learns_from_its_fit_and_confuses_through_u_only() -> None:
    """The classifiers (private, multimodal agents only) are trained by their fit alone, on
    constant inputs and targets; the confusion loss reaches u_a, never the classifiers nor
    modality b's slices; a classifier with equal logits leaves u nothing to do."""
    m = method("method.plus_adversary=1.0")
    multi, uni = agent(("acc", "gyro")), agent(("acc",))
    torch.manual_seed(0)
    model = m.build_model(multi)
    assert set(model.adversary) == {"acc_from_gyro", "gyro_from_acc"}
    assert m.share_plan(multi, model)["adversary"] is None
    assert m.build_model(uni).adversary is None
    out = model(batch(("acc", "gyro"), n=32))
    fit, confuse = m.adversary_terms(model, out)
    adv_w = model.adversary["acc_from_gyro"].weight
    (g,) = torch.autograd.grad(confuse, [adv_w], retain_graph=True, allow_unused=True)
    assert g is None
    g_u, g_b = torch.autograd.grad(
        confuse, [out.unique["acc"], out.unique["gyro"]], retain_graph=True, allow_unused=True
    )
    assert g_u is not None and float(g_u.abs().max()) > 0
    assert g_b is not None  # u_gyro is the target of the gyro_from_acc pair ...
    g_fit = torch.autograd.grad(
        fit, [adv_w, out.unique["acc"], out.redundant["gyro"]], allow_unused=True
    )
    assert g_fit[0] is not None and g_fit[1] is None and g_fit[2] is None  # ... never an input
    for adv in model.adversary.values():  # equal logits: the confusion loss is at its floor
        nn.init.zeros_(adv.weight)
        nn.init.zeros_(adv.bias)
    out = model(batch(("acc", "gyro"), n=32))
    _, confuse = m.adversary_terms(model, out)
    (g_u,) = torch.autograd.grad(confuse, [out.unique["acc"]])
    assert float(g_u.abs().max()) == 0.0
    assert float(confuse) == pytest.approx(float(np.log(4)), rel=1e-6)


def test_switched_off_terms_add_nothing() -> None:
    """A zero weight and the switch give the same loss: nothing else hides behind a switch."""
    torch.manual_seed(0)
    x, y = batch(("acc", "gyro"), n=16), torch.randint(0, 4, (16,))
    a = agent(("acc", "gyro"))
    pairs = [
        (("method.plus_decor=none",), ("method.plus_decor=xcov", "method.plus_gamma=0")),
        (("method.align=false",), ("method.beta=0",)),
        (
            ("method.plus_discriminator=true", "method.plus_delta=0"),
            ("method.plus_discriminator=false",),
        ),
    ]
    for off, zero in pairs:
        m_off, m_zero = method(*off), method(*zero)
        torch.manual_seed(1)
        model = m_off.build_model(a)
        loss_off = m_off.loss(model, x, y).detach()
        if isinstance(model, ParsePlusModel) and model.discriminator is not None:
            model.discriminator = None  # the same weights without the discriminator
        loss_zero = m_zero.loss(model, x, y).detach()
        assert float(loss_zero) == pytest.approx(float(loss_off), rel=1e-6)


# --- slice sizes from the PID -----------------------------------------------------------


def test_allocate_split_follows_the_weights_with_a_floor() -> None:
    assert allocate_split(48, (1, 1, 1)) == (16, 16, 16)
    assert allocate_split(48, (0, 0, 0)) == (16, 16, 16)
    u, r, s = allocate_split(192, (0.0, 2.0, 0.0))
    assert (u, r, s) == (24, 144, 24)
    for w in ((0.3, 0.1, 1.7), (5, 0, 0), (0.01, 0.02, 0.0)):
        sizes = allocate_split(100, w)
        assert sum(sizes) == 100 and min(sizes) >= 12


@pytest.mark.filterwarnings("ignore:PID solver stopped")
def test_pid_split_gives_synergy_data_a_wide_synergy_slice() -> None:
    m = method(
        "data.name=synthetic-pid",
        "data.setting=synergy",
        "data.noise=0.5",
        "data.n_samples=2000",
        "agents.mix=a:2,b:2,a+b:2",
        "model.split=[16, 16, 16]",
        "method.plus_split=pid",
    )
    u, r, s = m.split
    assert u + r + s == 48
    assert s > 2 * max(u, r)
    assert m.summary()["pid_bits"]["S"] > 1.0


# --- synergy ----------------------------------------------------------------------------


def _modular_sum(n: int, classes: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """s_a, s_b: noisy one-hot codes padded to `dim`; label (code_a + code_b) mod classes."""
    g = torch.Generator().manual_seed(seed)
    ca = torch.randint(0, classes, (n,), generator=g)
    cb = torch.randint(0, classes, (n,), generator=g)
    s = torch.stack(
        [F.one_hot(ca, classes).float(), F.one_hot(cb, classes).float()], dim=1
    )  # (n, 2, C)
    s = F.pad(s, (0, dim - classes)) + 0.1 * torch.randn(n, 2, dim, generator=g)
    return s, (ca + cb) % classes


@pytest.mark.parametrize(
    "fusion, hidden, fits",
    [("tensor", 16, True), ("tensor", 0, True), ("mlp", 16, True), ("mean", 0, False)],
)
def test_synergy_fusion_fits_a_modular_sum_where_mean_fusion_cannot(
    fusion: str, hidden: int, fits: bool
) -> None:
    """(s_a + s_b) mod C is no sum of per-modality scores: mean fusion with a linear head
    stays near chance (1/C); an interaction fusion with a non-linear head learns it."""
    torch.manual_seed(0)
    classes, dim = 4, 8
    s, y = _modular_sum(1024, classes, dim, seed=0)
    s_val, y_val = _modular_sum(512, classes, dim, seed=1)
    net = nn.Sequential(build_synergy_fusion(fusion, 2, dim, 32), build_head(dim, classes, hidden))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for step in range(600):
        idx = torch.arange(step * 64, step * 64 + 64) % len(y)
        opt.zero_grad()
        F.cross_entropy(net(s[idx]), y[idx]).backward()
        opt.step()
    acc = float((net(s_val).argmax(dim=1) == y_val).float().mean())
    if fits:
        assert acc > 0.9
    else:
        assert acc < 0.45


# --- engines ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "switches",
    [
        ("method.plus_decor=hsic", "method.plus_discriminator=true"),
        (
            "method.plus_personal_head=true",
            "method.plus_personal_weights=true",
            "method.plus_fusion=mlp",
        ),
        ("method.plus_projectors=true", "method.plus_fusion=tensor", "model.ensemble=probs"),
        ("method.plus_local_head=true", "partition.name=dirichlet", "partition.alpha=0.3"),
        ("method.plus_synergy_trunk=8", "method.plus_fusion=tensor"),
        ("method.plus_synergy_raw=true", "method.plus_fusion=tensor"),
        ("method.plus_residual=true", "method.plus_personal_head=true"),
        ("method.plus_agreement=true", "method.plus_residual=true", "agents.mix=acc:2,acc+gyro:2"),
        ("method.plus_cross=1.0", "method.plus_local_head=true"),
        ("method.plus_adversary=1.0", "method.plus_agreement=true"),
        (
            "method.plus_private=true",
            "partition.select_fraction=0.25",
            "method.plus_local_head=true",
        ),
        ("method.plus_private=true", "method.plus_private_choice={acc: private, gyro: mean}"),
        (
            "method.plus_private=true",
            "partition.val_fraction=0.25",
            "partition.select_from=validation",
            "method.plus_private_scope=type",
        ),
    ],
)
def test_batched_engine_matches_reference(switches: tuple[str, ...]) -> None:
    """Registering the method covers its defaults in test_batched_engine.py; these are the
    components that the defaults leave off."""
    assert_same("method.name=parse-plus", *switches)


def test_distributed_engine_matches_reference(tmp_path) -> None:
    """Two torchrun processes end where the reference engine ends (a never-shared personal
    block, a private model chosen on held-out samples and the multimodal-only s projectors
    included)."""
    from parse_dfl.experiments.run import run
    from tests.test_distributed_engine import assert_same as assert_same_runs
    from tests.test_distributed_engine import launch

    sets = (
        "method.name=parse-plus",
        "method.plus_personal_head=true",
        "method.plus_private=true",
        "partition.select_fraction=0.25",
        "train.rounds=4",
        "train.eval_every=2",
        "engine.dtype=float64",
    )
    ref = run(quick_config(*sets, "engine.name=reference"), tmp_path / "ref", progress=False)
    dist = launch(2, tmp_path / "dist", *sets)
    assert_same_runs(tmp_path / "ref", ref, tmp_path / "dist", dist)
