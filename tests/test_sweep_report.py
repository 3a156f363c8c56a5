"""Sweeps (one folder per run, resumable, validated up front) and reports built from them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from parse_dfl.cli import main
from parse_dfl.config import load_config
from parse_dfl.errors import UserError
from parse_dfl.experiments.report import collect, write_report
from parse_dfl.experiments.sweep import load_sweep, run_name, run_sweep, select

SMOKE = "configs/sweeps/smoke.yaml"
RUNS = ["method=parse/seed=0", "method=parse/seed=1", "method=local/seed=0", "method=local/seed=1"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, dict]:
    """The smoke sweep (2 methods x 2 seeds, 2 rounds), run once for the module."""
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sweep") / "smoke"
    return out, run_sweep(SMOKE, out=out, progress=False)


def test_sweep_writes_one_folder_per_run_and_skips_finished_ones(smoke) -> None:
    out, first = smoke
    assert (first["runs"], first["ran"], first["skipped"], first["failed"]) == (4, 4, 0, 0)
    for name in RUNS:
        assert (out / name / "results.json").is_file()
        assert (out / name / "models.pt").is_file()
    status = json.loads((out / "sweep.json").read_text())
    assert [r["name"] for r in status["runs"]] == RUNS
    assert {r["status"] for r in status["runs"]} == {"done"}

    mtimes = {n: (out / n / "results.json").stat().st_mtime_ns for n in RUNS}
    again = run_sweep(SMOKE, out=out, progress=False)
    assert (again["ran"], again["skipped"]) == (0, 4)
    assert mtimes == {n: (out / n / "results.json").stat().st_mtime_ns for n in RUNS}

    # a partly written folder (models.pt and config.yaml, no results.json) is run again
    (out / RUNS[2] / "results.json").unlink()
    resumed = run_sweep(SMOKE, out=out, progress=False)
    assert (resumed["ran"], resumed["skipped"], resumed["ran_names"]) == (1, 3, [RUNS[2]])
    assert (out / RUNS[2] / "results.json").is_file()
    assert mtimes[RUNS[0]] == (out / RUNS[0] / "results.json").stat().st_mtime_ns


def test_report_from_the_smoke_sweep(smoke, capsys) -> None:
    out, _ = smoke
    assert main(["report", str(out)]) == 0
    assert "report.md" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    assert "**global protocol**" in text and "**local protocol**" in text
    assert "PARSE − best baseline" in text and "points**" in text
    assert "Gradient conflict" in text and "`enc.acc`" in text
    assert "parse-dfl sweep configs/sweeps/smoke.yaml" in text
    assert "## What the data offers and what PARSE's slices hold" in text
    assert "| `method=parse/seed=0` agent" in text  # the lowest-seed PARSE run is probed
    # basic-motions: every figure says how many samples it rests on, and warns
    assert "| 80 |" in text  # the dataset PID's samples
    assert "samples of the global test set" in text and "t-SNE's neighbourhoods" in text
    assert "- **warning**, dataset PID (all runs; acc, gyro): 80 samples for 10 x 10" in text
    assert "probe accuracies are scored on" in text
    for fig in (
        "curves_all.png",
        "by_type_all.png",
        "tsne_class.png",
        "tsne_slices.png",
        "pid_probe_all.png",
    ):
        assert (out / "figures" / fig).stat().st_size > 1000
        assert f"](figures/{fig})" in text


def test_a_finished_folder_with_another_config_is_refused(smoke, tmp_path) -> None:
    out, _ = smoke
    sweep = tmp_path / "changed.yaml"
    sweep.write_text(
        f"base: {Path('configs/quick.yaml').resolve()}\n"
        "set: [train.rounds=3, train.local_steps=2, train.eval_every=1]\n"
        "grid: {method.name: [parse], seed: [0]}\n"
    )
    with pytest.raises(UserError, match="train.rounds: 2 in the folder, 3 in the sweep"):
        run_sweep(sweep, out=out, progress=False)


def test_only_selects_runs_and_engine_changes_keep_finished_runs(smoke, tmp_path) -> None:
    out, _ = smoke
    sweep = load_sweep(SMOKE, out=out)
    select(sweep, ["seed=1", "method.name=parse", "method.name=local"])
    assert sorted(r.name for r in sweep.runs) == ["method=local/seed=1", "method=parse/seed=1"]
    with pytest.raises(UserError, match="no run of .* matches seed=7"):
        select(load_sweep(SMOKE, out=out), ["seed=7"])
    with pytest.raises(UserError, match="--only train.roundz: no such config key"):
        select(load_sweep(SMOKE, out=out), ["train.roundz=2"])
    # the finished runs were made with the default engine; asking for another engine (the
    # same rounds computed differently) finds them finished instead of refusing the folder
    summary = run_sweep(SMOKE, out=out, progress=False, only=["seed=0", "engine.name=batched"])
    assert summary["runs"] == 2 and summary["skipped"] == 2 and summary["ran"] == 0
    sweep = tmp_path / "reference.yaml"
    sweep.write_text(
        f"base: {Path('configs/quick.yaml').resolve()}\n"
        "set: [train.rounds=2, train.local_steps=2, train.eval_every=1, engine.name=reference]\n"
        "grid: {method.name: [parse, local], seed: [0, 1]}\n"
    )
    summary = run_sweep(sweep, out=out, progress=False, only=["seed=1"])
    assert summary["skipped"] == 2 and summary["ran"] == 0
    # another sweep folder takes the finished runs of the same config instead of rerunning
    other = tmp_path / "other"
    summary = run_sweep(sweep, out=other, progress=False, only=["seed=0"], reuse=[out])
    assert summary["skipped"] == 2 and summary["ran"] == 0
    a = json.loads((out / "method=parse/seed=0/results.json").read_text())
    b = json.loads((other / "method=parse/seed=0/results.json").read_text())
    assert a == b


@pytest.mark.parametrize(
    ("grid", "where"),
    [
        ("{method.name: [parse, nope], seed: [0]}", "run 'method=nope/seed=0'.*method.name"),
        ("{model.fuson: [mean]}", "run 'model.fuson=mean'.*model.fuson: unknown key"),
        ("{agents.mix: ['acc:2,magnet:2']}", "run 'agents.mix=acc-2_magnet-2'"),
        ("{seed: 3}", "grid.seed: must be a non-empty list"),
    ],
)
def test_a_bad_grid_fails_before_anything_runs(tmp_path, capsys, grid, where) -> None:
    sweep = tmp_path / "bad.yaml"
    sweep.write_text(f"base: {Path('configs/quick.yaml').resolve()}\ngrid: {grid}\n")
    out = tmp_path / "out"
    with pytest.raises(UserError, match=where):
        run_sweep(sweep, out=out, progress=False)
    assert not out.exists()
    assert main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("parse-dfl: error: ") and "\n" not in err


def test_run_names_are_readable_and_deterministic(tmp_path) -> None:
    assert run_name([("method.name", "parse"), ("seed", 0)]) == "method=parse/seed=0"
    assert run_name([("model.split", [32, 128, 32])]) == "model.split=32-128-32"
    assert run_name([("agents.mix", "acc:20,gyro:5")]) == "agents.mix=acc-20_gyro-5"
    assert run_name([("agents.mix", {"acc": 20, "gyro": 5})]) == "agents.mix=acc-20_gyro-5"
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "base: ../../configs/quick.yaml\n".replace("../../", str(Path.cwd()) + "/")
        + "grid: {seed: [0, 1]}\n"
        "runs:\n  - {method.name: parse}\n  - [method.name=centralized, topology.name=full]\n"
    )
    names = [r.name for r in load_sweep(sweep).runs]
    assert names == [
        "method=parse/seed=0",
        "method=parse/seed=1",
        "method=centralized/topology=full/seed=0",
        "method=centralized/topology=full/seed=1",
    ]


def _fake_run(root: Path, method: str, seed: int, fusion: str, acc: float, **extra: str) -> None:
    """A results.json as run() writes it, without training (for the report's arithmetic)."""
    overrides = [f"method.name={method}", f"seed={seed}", f"model.fusion={fusion}"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    cfg = load_config("configs/quick.yaml", overrides).model_dump(mode="json")
    types = {"acc": acc - 0.05, "gyro": acc - 0.05, "acc+gyro": acc + 0.1}
    hist: list[dict[str, Any]] = [
        {"round": t, "mean_accuracy": acc * t / 2, "mean_local_accuracy": acc, "conflict": {}}
        for t in (1, 2)
    ]
    if method == "parse":
        hist[1]["conflict"] = {"enc.acc": -0.25 + seed * 0.1}
    res = {
        "method": method,
        "seed": seed,
        "dataset": "basic-motions",
        "rounds": 2,
        "agents": [{"id": 0, "modalities": ["acc", "gyro"], "type": "acc+gyro"}],
        "by_type": types,
        "by_type_local": types,
        "mean_accuracy": acc,
        "mean_local_accuracy": acc,
        "history": hist,
        "wall_seconds": 1.0,
        "bytes_sent_per_round_per_agent": 0.0,
        "config": cfg,
    }
    d = root / "-".join([method, fusion, str(seed), *extra.values()])
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(res))


def test_report_tables_group_by_varying_keys_and_sign_the_gap(tmp_path) -> None:
    for seed in (0, 1):
        for fusion in ("mean", "gated"):
            _fake_run(tmp_path, "parse", seed, fusion, 0.80 if fusion == "mean" else 0.95)
            _fake_run(tmp_path, "local", seed, fusion, 0.90)
        _fake_run(tmp_path, "centralized", seed, "mean", 0.99, **{"topology.name": "full"})
    col = collect(tmp_path)
    assert col.group_keys == ["model.fusion"]
    assert "topology.name" not in col.group_keys  # changes only with the method
    text = write_report(tmp_path).read_text()
    assert "### model.fusion = mean" in text and "### model.fusion = gated" in text
    assert "**-10.0 points**, PARSE behind" in text
    assert "**+5.0 points**, PARSE ahead" in text
    assert (
        "| local | 2 | **85.0 ± 0.0** | **85.0 ± 0.0** | **100.0 ± 0.0** | **90.0 ± 0.0** |" in text
    )
    assert "| centralized * | 2 |" in text and "**99.0" not in text  # reference: never best
    assert "-0.20 ± 0.07" in text  # conflict: mean over seeds of (-0.25, -0.15)
    assert "Skipped: the PARSE runs have no models.pt." in text
    assert (tmp_path / "figures" / "vs_model.fusion.png").is_file()
    assert (tmp_path / "figures" / "curves_model.fusion=mean.png").is_file()


def test_a_killed_sweep_resumes_and_a_failed_run_does_not_stop_the_others(
    tmp_path, monkeypatch
) -> None:
    """With run() faked: stop the sweep during its 2nd run, then resume; one run crashes."""
    import parse_dfl.experiments.run as run_module

    calls: list[str] = []

    def fake_run(cfg, out, progress=True, resume=False):
        calls.append(out.relative_to(tmp_path).as_posix())
        if len(calls) == 2 and not resumed:
            raise KeyboardInterrupt
        if cfg.method.name == "local" and cfg.seed == 1:
            raise RuntimeError("boom")
        res = {"config": cfg.model_dump(mode="json"), "wall_seconds": 0.1}
        res |= {"mean_accuracy": 0.5, "mean_local_accuracy": 0.5}
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(res))
        return res

    monkeypatch.setattr(run_module, "run", fake_run)
    resumed = False
    with pytest.raises(KeyboardInterrupt):
        run_sweep(SMOKE, out=tmp_path, progress=False)
    status = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["status"] for r in status["runs"]] == ["done", "pending", "pending", "pending"]

    resumed, calls[:] = True, []
    summary = run_sweep(SMOKE, out=tmp_path, progress=False)
    assert calls == RUNS[1:]
    assert (summary["ran"], summary["skipped"], summary["failed"]) == (2, 1, 1)
    assert summary["failures"] == {RUNS[3]: "RuntimeError: boom"}
    assert "boom" in (tmp_path / RUNS[3] / "error.txt").read_text()
    status = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["status"] for r in status["runs"]] == ["done", "done", "done", "failed"]


def test_an_interrupted_run_with_a_checkpoint_is_resumed(tmp_path, monkeypatch) -> None:
    import yaml

    import parse_dfl.experiments.run as run_module
    from parse_dfl.engines.base import CHECKPOINT

    resumed: dict[str, bool] = {}

    def fake_run(cfg, out, progress=True, resume=False):
        resumed[out.relative_to(tmp_path).as_posix()] = resume
        res = {"config": cfg.model_dump(mode="json"), "wall_seconds": 0.1}
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(res))
        return res | {"mean_accuracy": 0.5, "mean_local_accuracy": 0.5}

    monkeypatch.setattr(run_module, "run", fake_run)
    sweep = load_sweep(SMOKE, out=tmp_path)
    for i, r in enumerate(sweep.runs[:2]):  # run 0: this config; run 1: a stale other config
        d = tmp_path / r.name
        d.mkdir(parents=True)
        cfg = r.config.model_dump(mode="json")
        cfg["train"]["rounds"] += i
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        (d / CHECKPOINT).write_bytes(b"")
    run_sweep(SMOKE, out=tmp_path, progress=False)
    assert resumed == {RUNS[0]: True, RUNS[1]: False, RUNS[2]: False, RUNS[3]: False}
    assert json.loads((tmp_path / "sweep.json").read_text())["runs"][0]["resumed"] is True


def test_parallel_jobs(tmp_path) -> None:
    sweep = tmp_path / "par.yaml"
    sweep.write_text(
        f"base: {Path('configs/quick.yaml').resolve()}\n"
        "set: [train.rounds=1, train.local_steps=1, method.name=local]\n"
        "grid: {seed: [0, 1]}\n"
    )
    summary = run_sweep(sweep, out=tmp_path / "out", jobs=2, progress=False)
    assert (summary["ran"], summary["failed"]) == (2, 0)
    assert (tmp_path / "out" / "seed=1" / "results.json").is_file()


def test_a_reference_run_with_its_own_topology_joins_every_topology_table(tmp_path) -> None:
    for topo, acc in (("ring", 0.7), ("chordal-ring", 0.8)):
        for method in ("parse", "local"):
            _fake_run(tmp_path, method, 0, "mean", acc, **{"topology.name": topo})
    _fake_run(tmp_path, "centralized", 0, "mean", 0.99, **{"topology.name": "full"})
    col = collect(tmp_path)
    assert col.group_keys == ["topology.name"]
    from parse_dfl.experiments.report import groups_of

    groups = groups_of(col)
    assert sorted(g for g, _ in groups) == [('"chordal-ring"',), ('"ring"',)]
    assert all("centralized" in {r.method for r in runs} for _, runs in groups)


# --- dry run, invocations, what the report shows -------------------------------------------


def test_a_dry_run_validates_and_costs_without_writing(smoke, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["sweep", SMOKE, "--out", str(out), "--dry-run", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "dry run of sweep smoke: 4 runs, every config valid; 0 finished before, 4 to run" in text
    # quick.yaml: 6 agents; the smoke sweep: 2 rounds of 2 local steps, 4 runs
    assert [line.split() for line in text.splitlines() if line.startswith("total")] == [
        ["total", "4", "48", "96"]
    ]
    assert "--time" in text and not out.exists()
    assert main(["sweep", SMOKE, "--out", str(out), "--dry-run", "--time", "--jobs", "2"]) == 0
    text = capsys.readouterr().out
    assert "estimated seconds" in text and "an ESTIMATE from one timed round" in text
    assert "with --jobs 2" in text and not out.exists()
    done, _ = smoke
    assert main(["sweep", SMOKE, "--out", str(done), "--dry-run", "--only", "seed=0"]) == 0
    assert "2 runs, every config valid; 2 finished before, 0 to run" in capsys.readouterr().out
    assert main(["sweep", SMOKE, "--time"]) == 2
    assert "--time: only with --dry-run" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {Path('configs/quick.yaml').resolve()}\ngrid: {{model.fuson: [x]}}\n")
    assert main(["sweep", str(bad), "--out", str(out), "--dry-run"]) == 2
    assert "model.fuson: unknown key" in capsys.readouterr().err and not out.exists()


def test_every_invocation_is_recorded_and_reported(smoke, tmp_path) -> None:
    done, _ = smoke
    out = tmp_path / "parts"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"command": "parse-dfl sweep (an old one)"}))
    run_sweep(SMOKE, out=out, progress=False, only=["seed=0"], reuse=[done])
    run_sweep(SMOKE, out=out, progress=False, reuse=[done])
    calls = json.loads((out / "sweep.json").read_text())["invocations"]
    assert [c["command"] for c in calls][0] == "parse-dfl sweep (an old one)"
    assert "--only seed=0 --reuse" in calls[1]["command"] and "--only" not in calls[2]["command"]
    assert (calls[1]["runs"], calls[1]["to_run"], calls[2]["runs"], calls[2]["to_run"]) == (
        2,
        0,
        4,
        0,
    )  # every run was copied from the smoke sweep before it could run
    text = write_report(out, tsne=False, pid=False).read_text()
    assert "  - 3 invocations:" in text
    for c in calls:
        assert f"`{c['command']}`" in text


def test_the_common_settings_list_only_the_data_keys_of_the_source(tmp_path) -> None:
    for method in ("parse", "local"):
        _fake_run(tmp_path, method, 0, "mean", 0.8)
    text = write_report(tmp_path, tsne=False, pid=False).read_text()
    assert "| `data.name` | `basic-motions` |" in text and "| `data.standardize` |" in text
    assert "| `data.window` |" not in text and "| `data.path` |" not in text
    assert "Not shown: data keys that `basic-motions` does not read (data.setting," in text


def test_the_report_decomposes_every_modality_pair(tmp_path, monkeypatch) -> None:
    import torch

    from parse_dfl.experiments import report
    from parse_dfl.experiments.run import run

    torch.set_num_threads(1)
    cfg = load_config(
        "configs/quick.yaml",
        [
            "data.name=mfeat",
            "data.modalities=[fou,kar,zer]",
            "agents.mix=fou:1,kar:1,zer:1,fou+kar+zer:1",
            "train.rounds=1",
        ],
    )
    run(cfg, tmp_path / "parse", progress=False)
    monkeypatch.setattr(report, "MAX_PID_PAIRS", 2)
    text = write_report(tmp_path, tsne=False).read_text()
    assert "| all runs | fou, kar | 2000 |" in text and "| all runs | fou, zer | 2000 |" in text
    assert "| all runs | kar, zer |" not in text
    assert "3 modalities make 3 pairs; the first 2 are shown" in text
    assert "| all runs | `parse` agent 3 | 250 / 250 |" in text  # the fou+kar+zer agent


def test_a_switch_added_later_reads_as_the_value_older_runs_ran_with() -> None:
    from parse_dfl.config import Config
    from parse_dfl.experiments.report import ADDED_LATER, flatten_config

    new = Config().model_dump(mode="json")
    current = flatten_config(new)
    for key, value in ADDED_LATER.items():
        assert current[key] == value, key  # the backfilled value is the switch's default
    old = json.loads(json.dumps(new))
    del old["faults"]["relink"], old["method"]["plus_adversary"]
    assert flatten_config(old) == current  # an older run and a newer one at the default agree
    assert "faults.relink" not in flatten_config({"seed": 0})  # no section: nothing invented


def test_a_setting_only_one_method_varies_makes_a_row_of_its_own(tmp_path) -> None:
    """parse-plus run with and without a switch, beside baselines that run at its default:
    the switched runs are a row of their own, compared with the baselines as ours, and the
    tables are not split by the switch."""
    for seed in (0, 1):
        _fake_run(tmp_path, "parse-plus", seed, "mean", 0.80)
        _fake_run(
            tmp_path,
            "parse-plus",
            seed,
            "mean",
            0.90 + seed / 100,
            **{"method.plus_synergy_raw": "true"},
        )
        _fake_run(tmp_path, "local", seed, "mean", 0.85)
    col = collect(tmp_path)
    assert col.group_keys == []
    assert col.variant_keys == {"method.plus_synergy_raw": ("parse-plus", "false")}
    assert {r.method for r in col.runs} == {
        "parse-plus",
        "parse-plus (plus_synergy_raw=True)",
        "local",
    }
    text = write_report(tmp_path).read_text()
    assert "`method.plus_synergy_raw` varies only among parse-plus runs" in text
    row = "| parse-plus (plus_synergy_raw=True) | global | 2 |"
    assert row in text and "+5.5 [" in text.split(row)[1].split("\n")[0]  # vs local: ours
    assert "| parse-plus | global | 2 |" in text


def test_with_one_method_a_switch_still_splits_the_tables(tmp_path) -> None:
    for raw in ("false", "true"):
        _fake_run(tmp_path, "parse-plus", 0, "mean", 0.8, **{"method.plus_synergy_raw": raw})
    col = collect(tmp_path)
    assert col.group_keys == ["method.plus_synergy_raw"] and not col.variant_keys


def test_checking_a_sweep_does_not_estimate_the_pid(tmp_path, monkeypatch) -> None:
    """A `plus_split: pid` run's PID takes tens of seconds; the check before the first run
    builds the method without it (the run itself still estimates it)."""
    import parse_dfl.methods.parse_plus as pp
    from parse_dfl.data import load_dataset
    from parse_dfl.experiments.sweep import check_runs

    calls: list[int] = []

    def counted(cfg: Any, ds: Any) -> tuple[tuple[int, int, int], dict[str, float]]:
        calls.append(1)
        return (4, 4, 4), {}

    monkeypatch.setattr(pp, "pid_split", counted)
    sweep = tmp_path / "pid.yaml"
    sweep.write_text(
        f"base: {Path('configs/quick.yaml').resolve()}\n"
        "set: [method.name=parse-plus, method.plus_split=pid]\ngrid: {seed: [0, 1]}\n"
    )
    spec = load_sweep(sweep, out=tmp_path / "out")
    assert check_runs(spec) == [] and calls == []
    cfg = spec.runs[0].config
    assert pp.ParsePlusMethod(cfg, load_dataset(cfg.data)).split == (4, 4, 4)
    assert calls == [1]


def test_a_report_without_group_figures_keeps_its_tables(tmp_path) -> None:
    for seed in (0, 1):
        for fusion in ("mean", "gated"):
            _fake_run(tmp_path, "parse", seed, fusion, 0.8)
            _fake_run(tmp_path, "local", seed, fusion, 0.9)
    assert main(["report", str(tmp_path), "--no-tsne", "--no-group-figures"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "### model.fusion = gated" in text and "| local | 2 |" in text
    assert "## Accuracy for the bytes spent" in text
    figures = {p.name for p in (tmp_path / "figures").glob("*.png")}
    assert not any(n.startswith(("curves_", "by_type_", "bytes_")) for n in figures)
    assert "vs_model.fusion.png" in figures
