"""Diagnostics of trained runs: PARSE slice probes, and accuracy with a modality missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from parse_dfl.cli import main
from parse_dfl.config import load_config
from parse_dfl.diagnostics import missing_modality_accuracy, probe_run
from parse_dfl.errors import UserError
from parse_dfl.experiments.run import run
from parse_dfl.methods.harmony import HarmonyModel
from parse_dfl.models.monolithic import FusionClassifier
from parse_dfl.models.parse import ParseModel

SYNTHETIC = [
    "data.name=synthetic-pid",
    "data.setting=redundancy",
    "data.noise=1",
    "data.n_samples=800",
    "agents.mix=a:2,b:2,a+b:2",
]


def _train(root: Path, name: str, *overrides: str) -> Path:
    torch.set_num_threads(1)
    cfg = load_config("configs/quick.yaml", ["train.rounds=5", *overrides])
    out = root / name
    run(cfg, out, progress=False)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "synthetic-parse": _train(root, "synthetic-parse", *SYNTHETIC),
        "parse": _train(root, "parse"),
        "dsgd-modality": _train(root, "dsgd-modality", "method.name=dsgd-modality"),
        "synthetic-plus": _train(root, "synthetic-plus", *SYNTHETIC, "method.name=parse-plus"),
    }


# --- probe -------------------------------------------------------------------------------


def test_probe_keys_and_ranges(runs: dict[str, Path]) -> None:
    res = probe_run(runs["synthetic-parse"])
    agents = json.loads((runs["synthetic-parse"] / "results.json").read_text())["agents"]
    first_multi = next(a["id"] for a in agents if len(a["modalities"]) >= 2)
    assert res["agent"] == first_multi
    assert res["modalities"] == ["a", "b"]
    acc = res["probe"]["accuracy"]
    expected = {f"{s}_{m}" for s in "urs" for m in "ab"} | {"r_fused", "s_fused"}
    assert set(acc) == expected
    assert all(0.0 <= v <= 1.0 for v in acc.values())
    assert res["probe"]["n_train"] + res["probe"]["n_test"] == res["n_samples"] == 200
    assert set(res["heads"]) == {"unique.a", "unique.b", "redundant", "synergy", "ensemble"}
    assert all(0.0 <= v <= 1.0 for v in res["heads"].values())
    pair = res["pid"]["pairs"]["a,b"]
    for s in "urs":
        assert {"R", "U1", "U2", "S", "I", "null"} <= set(pair[s])
        assert all(pair[s][t] >= 0 for t in ("R", "U1", "U2", "S"))
        sim = res["similarity"]["a,b"][s]
        assert {"cos_same", "cos_random", "cka", "cca_top", "cca_mean"} == set(sim)
        assert 0.0 <= sim["cka"] <= 1.0 + 1e-9 and 0.0 <= sim["cca_mean"] <= sim["cca_top"] <= 1
    assert set(res["within"]["a"]) == {"u,r", "u,s", "r,s"}
    json.dumps(res)  # serialisable as it is
    a_only = next(a["id"] for a in agents if a["modalities"] == ["a"])
    uni = probe_run(runs["synthetic-parse"], agent=a_only)
    assert uni["modalities"] == ["a"] and uni["pid"]["pairs"] == {}
    assert set(uni["probe"]["accuracy"]) == {"u_a", "r_a", "s_a", "r_fused", "s_fused"}


def test_probe_reads_parse_plus_slices(runs: dict[str, Path], capsys) -> None:
    """parse-plus cuts its embeddings into u, r, s as PARSE does (with its own projectors):
    the same probe applies, and says which method it read."""
    res = probe_run(runs["synthetic-plus"])
    assert res["method"] == "parse-plus" and res["modalities"] == ["a", "b"]
    assert set(res["probe"]["accuracy"]) == {f"{s}_{m}" for s in "urs" for m in "ab"} | {
        "r_fused",
        "s_fused",
    }
    assert {"unique.a", "unique.b", "redundant", "synergy", "ensemble"} <= set(res["heads"])
    assert set(res["within"]["b"]) == {"u,r", "u,s", "r,s"}
    assert main(["probe", str(runs["synthetic-plus"])]) == 0
    assert capsys.readouterr().out.startswith("parse-plus agent ")


def test_probe_caps_the_default_cells_per_slice(tmp_path: Path) -> None:
    """A label with many classes (16 here) would make each slice PID a classes x classes x
    classes problem; the default number of cells stops at MAX_CELLS."""
    from parse_dfl.diagnostics.probe import MAX_CELLS

    many = [*SYNTHETIC, "data.n_samples=600", "data.setting=redundancy+uniqueness0"]
    res = probe_run(_train(tmp_path, "sixteen", *many, "train.rounds=2"))
    assert res["n_classes"] == 16 > MAX_CELLS == res["pid"]["clusters"]


def test_probe_refuses(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UserError, match="method is 'dsgd-modality'"):
        probe_run(runs["dsgd-modality"])
    with pytest.raises(UserError, match="not a finished run"):
        probe_run(tmp_path)
    with pytest.raises(UserError, match="no agent 17"):
        probe_run(runs["synthetic-parse"], agent=17)


def test_probe_cli(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "probe.json"
    assert main(["probe", str(runs["parse"]), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "linear-probe accuracy" in text and "PID of (acc, gyro)" in text
    assert json.loads(out.read_text())["modalities"] == ["acc", "gyro"]
    assert main(["probe", str(runs["dsgd-modality"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("parse-dfl: error:")
    assert main(["probe", str(tmp_path / "nothing")]) == 2


def test_probe_says_how_many_samples_and_warns_below_the_threshold(
    runs: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    from parse_dfl.diagnostics.probe import MIN_PROBE_SAMPLES, sample_warnings

    assert sample_warnings(MIN_PROBE_SAMPLES) == []
    assert "+-10 points" in sample_warnings(MIN_PROBE_SAMPLES - 1)[0]
    assert probe_run(runs["synthetic-parse"])["probe"]["n_test"] == 100  # at the threshold
    res = probe_run(runs["parse"])  # basic-motions: a global test set of about 20 samples
    assert res["probe"]["n_test"] < MIN_PROBE_SAMPLES
    assert any("held-out samples" in w for w in res["warnings"])
    assert any(w.startswith("slice PIDs of (acc, gyro): ") for w in res["warnings"])  # 4x4x4
    assert main(["probe", str(runs["parse"])]) == 0
    out = capsys.readouterr().out
    assert f"score on {res['probe']['n_test']})" in out
    assert f"warning: probe accuracies are scored on {res['probe']['n_test']} held-out" in out


# --- missing modality at test time ---------------------------------------------------------


@pytest.mark.parametrize("name", ["parse", "dsgd-modality"])
def test_missing_modality_accuracy(runs: dict[str, Path], name: str) -> None:
    res = missing_modality_accuracy(runs[name])
    assert res["method"] == name
    results = json.loads((runs[name] / "results.json").read_text())
    multi = [a for a in results["agents"] if len(a["modalities"]) >= 2]
    assert [a["id"] for a in res["agents"]] == [a["id"] for a in multi]
    for row, a in zip(res["agents"], multi, strict=True):
        assert set(row["dropped"]) == set(a["modalities"]) == {"acc", "gyro"}
        assert row["all"] == pytest.approx(a["test_accuracy"])  # same models, same protocol
        assert all(0.0 <= v <= 1.0 for v in [row["all"], *row["dropped"].values()])
    assert set(res["mean"]["dropped"]) == {"acc", "gyro"}
    assert 0.0 <= res["mean"]["all"] <= 1.0
    assert set(res["unimodal"]) == {"acc", "gyro"}


def test_a_tuning_run_is_diagnosed_on_its_validation_set(tmp_path: Path) -> None:
    """With partition.val_fraction the probes and the failed-sensor figures read the
    validation samples (what a tuning choice may look at), never the test split."""
    out = _train(tmp_path, "tune", *SYNTHETIC, "partition.val_fraction=0.25")
    results = json.loads((out / "results.json").read_text())
    miss = missing_modality_accuracy(out)
    assert miss["samples"] == "validation"
    assert miss["global_test_size"] == results["val_global_size"] != results["global_test_size"]
    multi = [a for a in results["agents"] if len(a["modalities"]) >= 2]
    for row, a in zip(miss["agents"], multi, strict=True):
        assert row["all"] == pytest.approx(a["val_accuracy"])  # the validation protocol
    assert results["missing_modality"]["mean"] == miss["mean"]  # as the run wrote it
    probe = probe_run(out)
    assert probe["samples"] == "validation" and probe["n_samples"] == results["val_global_size"]
    assert probe_run(_train(tmp_path, "final", *SYNTHETIC))["samples"] == "test"


def test_missing_cli(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "missing.json"
    argv = ["missing", str(runs["parse"]), str(runs["dsgd-modality"]), "--json", str(out)]
    assert main(argv) == 0
    assert "without acc" in capsys.readouterr().out
    assert [r["method"] for r in json.loads(out.read_text())] == ["parse", "dsgd-modality"]
    assert main(["missing", str(tmp_path / "nothing")]) == 2


def test_missing_reads_a_sweep_folder_as_report_does(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(runs["parse"], sweep / "method=parse" / "seed=0")
    shutil.copytree(runs["dsgd-modality"], sweep / "method=dsgd-modality" / "seed=0")
    unimodal = _train(
        sweep / "method=local",
        "seed=0",
        "method.name=local",
        "train.rounds=1",
        "agents.mix=acc:2,gyro:2",
    )
    out = tmp_path / "missing.json"
    assert main(["missing", str(sweep), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"passed over (no multimodal agent): {unimodal}" in text
    assert [r["method"] for r in json.loads(out.read_text())] == ["dsgd-modality", "parse"]
    assert main(["missing", str(unimodal)]) == 2  # named on its own: refused, one line
    assert "no multimodal agent" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["missing", str(tmp_path / "empty")]) == 2


# --- the models with a modality absent ------------------------------------------------------


def _old_parse_forward(model: ParseModel, x: dict[str, torch.Tensor]):
    """ParseModel.forward as it was before absent modalities were allowed, written out."""
    d_u, d_r, _ = model.split
    u, r, s = {}, {}, {}
    for m in model.modalities:
        h = model.encoders[m](x[m])
        u[m], r[m], s[m] = h[:, :d_u], h[:, d_u : d_u + d_r], h[:, d_u + d_r :]
    heads = {f"unique.{m}": model.unique_heads[m](u[m]) for m in model.modalities}
    rm = torch.stack([r[m] for m in model.modalities], dim=1).mean(dim=1)
    heads["redundant"] = model.redundant_head(rm)
    if model.multimodal:
        fused = model.fusion(torch.stack([s[m] for m in model.modalities], dim=1))
        heads["synergy"] = model.synergy_head(fused)
    stacked = torch.stack(list(heads.values()), dim=0)
    if model.ensemble_rule == "probs":
        ens = torch.log(torch.softmax(stacked, dim=-1).mean(dim=0).clamp_min(1e-12))
    else:
        ens = stacked.mean(dim=0)
    return ens, heads, u, r, s


def _parse_model(fusion: str = "mean", ensemble: str = "logits", mods=("a", "b", "c")):
    torch.manual_seed(0)
    shapes = {"a": (5,), "b": (7,), "c": (3,)}
    return ParseModel(
        mods,
        dict.fromkeys(mods, "vector"),
        {m: shapes[m] for m in mods},
        8,
        (3, 4, 5),
        3,
        fusion=fusion,
        ensemble=ensemble,
    )


def _x(mods=("a", "b", "c")) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    shapes = {"a": (5,), "b": (7,), "c": (3,)}
    return {m: torch.randn(6, *shapes[m], generator=g) for m in mods}


@pytest.mark.parametrize("fusion", ["mean", "concat", "gated", "attention"])
@pytest.mark.parametrize("ensemble", ["logits", "probs"])
@pytest.mark.parametrize("mods", [("a", "b"), ("a", "b", "c"), ("a",)])
def test_parse_forward_all_present_unchanged(fusion: str, ensemble: str, mods) -> None:
    model = _parse_model(fusion, ensemble, mods)
    x = _x(mods)
    out = model(x)
    ens, heads, u, r, s = _old_parse_forward(model, x)
    assert torch.equal(out.ensemble, ens)
    assert list(out.heads) == list(heads)
    assert all(torch.equal(out.heads[k], heads[k]) for k in heads)
    for new, old in ((out.unique, u), (out.redundant, r), (out.synergy, s)):
        assert list(new) == list(old) and all(torch.equal(new[k], old[k]) for k in old)


def test_parse_forward_with_a_modality_absent() -> None:
    model = _parse_model("mean", "logits", ("a", "b", "c"))
    x = _x()
    with torch.no_grad():
        one = model({"b": x["b"]})
        assert list(one.heads) == ["unique.b", "redundant"]  # no synergy with one modality
        h = model.encoders["b"](x["b"])
        assert torch.equal(one.heads["redundant"], model.redundant_head(h[:, 3:7]))
        two = model({"a": x["a"], "c": x["c"]})
        assert list(two.heads) == ["unique.a", "unique.c", "redundant", "synergy"]
        s_mean = torch.stack([two.synergy["a"], two.synergy["c"]], dim=1).mean(dim=1)
        assert torch.allclose(two.heads["synergy"], model.synergy_head(s_mean), atol=1e-6)
        r_mean = torch.stack([two.redundant["a"], two.redundant["c"]], dim=1).mean(dim=1)
        assert torch.allclose(two.heads["redundant"], model.redundant_head(r_mean))
        for fusion in ("concat", "gated", "attention"):  # shapes still fit
            assert _parse_model(fusion)({"a": x["a"], "c": x["c"]}).ensemble.shape == (6, 3)
    with pytest.raises(ValueError, match="none of the model's modalities"):
        model({"d": x["a"]})


def test_fusion_classifier_absent_modality() -> None:
    torch.manual_seed(0)
    kinds, shapes = {"a": "vector", "b": "vector"}, {"a": (5,), "b": (7,)}
    model = FusionClassifier(("a", "b"), kinds, shapes, 8, 6, 3, missing="zero")
    x = _x(("a", "b"))
    with torch.no_grad():
        ea, eb = model.encoders["a"](x["a"]), model.encoders["b"](x["b"])
        zero_b = model.encoders["b"](torch.zeros(6, 7))
        # Training behaviour (held unknown): an absent modality is zero-filled (dsgd-task).
        assert torch.equal(model.embed(x), torch.stack([ea, eb], 1).mean(1))
        assert torch.equal(model.embed({"a": x["a"]}), torch.stack([ea, zero_b], 1).mean(1))
        model.held = frozenset({"a"})  # dsgd-task agent holding only a: b still zero-filled
        assert torch.equal(model.embed({"a": x["a"]}), torch.stack([ea, zero_b], 1).mean(1))
        model.held = frozenset({"a", "b"})  # b held but failed: left out of the mean
        assert torch.equal(model.embed({"a": x["a"]}), ea)
        assert torch.equal(model.embed(x), torch.stack([ea, eb], 1).mean(1))


def test_harmony_fused_logits_fall_back_to_unimodal_heads() -> None:
    torch.manual_seed(0)
    kinds, shapes = {"a": "vector", "b": "vector"}, {"a": (5,), "b": (7,)}
    model = HarmonyModel(("a", "b"), kinds, shapes, 8, 6, 3)
    x = _x(("a", "b"))
    with torch.no_grad():
        full = model.classifier(torch.cat([model.encoders[m](x[m]) for m in "ab"], dim=1))
        assert torch.equal(model.fused_logits(x), full)
        only_a = model.heads["a"](model.encoders["a"](x["a"]))
        assert torch.equal(model.fused_logits({"a": x["a"]}), only_a)
        assert list(model.unimodal_logits({"b": x["b"]})) == ["b"]
