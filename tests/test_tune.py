"""`parse-dfl tune` (choose each method's setting on validation data, write a tuned file),
sweeps that apply a tuned file, and the evidence a report draws from the runs: paired
differences over seeds, accuracy for the bytes spent, convergence, and the compact export
read back into the same tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from parse_dfl.cli import main
from parse_dfl.errors import UserError
from parse_dfl.experiments.sweep import load_sweep

QUICK = Path("configs/quick.yaml").resolve()
TUNE = f"""
name: quick-tune
base: {QUICK}
set: [train.rounds=2, train.local_steps=2, train.eval_every=1, partition.val_fraction=0.25]
grid:
  seed: [100, 101]
tune:
  methods: [parse, local]
  grid:
    all: {{train.lr: [0.001, 0.01]}}
    parse: {{method.beta: [0.1, 0.5]}}
  out: tuned/quick.yaml
"""


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> tuple[Path, Path, int]:
    """The tiny tune file, run once: (its folder, its runs' folder, the exit code)."""
    import torch

    torch.set_num_threads(1)
    home = tmp_path_factory.mktemp("tune")
    (home / "tune.yaml").write_text(TUNE)
    runs = home / "runs"
    code = main(["tune", str(home / "tune.yaml"), "--out", str(runs), "--quiet"])
    return home, runs, code


def test_tune_picks_the_best_validation_setting_of_each_method(tuned, capsys) -> None:
    home, runs, code = tuned
    assert code == 0
    text = (home / "tuned" / "quick.yaml").read_text()
    assert "&id" not in text  # plain YAML a person reads and edits: no anchors
    doc = yaml.safe_load(text)
    assert doc["seeds"] == [100, 101] and doc["val_fraction"] == 0.25
    assert set(doc["methods"]) == {"parse", "local"}
    assert len(doc["methods"]["parse"]["candidates"]) == 4
    assert len(doc["methods"]["local"]["candidates"]) == 2
    for method, entry in doc["methods"].items():  # recomputed from the runs' results.json
        scores: dict[str, list[tuple[float, float]]] = {}
        for res_path in runs.glob(f"method={method}/**/results.json"):
            res = json.loads(res_path.read_text())
            setting = {
                k: v
                for k, v in (
                    ("train.lr", res["config"]["train"]["lr"]),
                    ("method.beta", res["config"]["method"]["beta"]),
                )
                if k in entry["set"]
            }
            key = json.dumps(setting, sort_keys=True)
            scores.setdefault(key, []).append(
                (res["mean_val_accuracy"], res["mean_val_local_accuracy"])
            )
        assert all(len(v) == 2 for v in scores.values())  # both seeds of every setting
        means = {k: tuple(np.mean(v, axis=0)) for k, v in scores.items()}
        best = max(means.values())
        assert means[json.dumps(entry["set"], sort_keys=True)] == pytest.approx(best, abs=1e-6)
        assert entry["val_accuracy"] == pytest.approx(best[0], abs=1e-6)


def test_a_sweep_starts_each_method_from_its_tuned_setting(tuned) -> None:
    home, _, _ = tuned
    doc = yaml.safe_load((home / "tuned" / "quick.yaml").read_text())
    sweep_file = home / "use.yaml"
    sweep_file.write_text(
        f"base: {QUICK}\ntuned: tuned/quick.yaml\ngrid:\n  seed: [0]\nruns:\n"
        "  - {method.name: parse}\n  - {method.name: local}\n"
        "  - {method.name: parse, method.beta: 2.0}\n  - {method.name: dsgd-task}\n"
    )
    sweep = load_sweep(sweep_file)
    cfgs = {r.name: r.config for r in sweep.runs}
    parse_set, local_set = doc["methods"]["parse"]["set"], doc["methods"]["local"]["set"]
    assert cfgs["method=parse/seed=0"].train.lr == parse_set["train.lr"]
    assert cfgs["method=parse/seed=0"].method.beta == parse_set["method.beta"]
    assert cfgs["method=local/seed=0"].train.lr == local_set["train.lr"]
    ablation = cfgs["method=parse/method.beta=2.0/seed=0"]  # the sweep's own key wins
    assert ablation.method.beta == 2.0 and ablation.train.lr == parse_set["train.lr"]
    assert cfgs["method=dsgd-task/seed=0"].train.lr == 0.003  # not tuned: the base config
    assert sweep.tuned == (home / "tuned" / "quick.yaml").resolve()


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (("partition.val_fraction=0.25", "partition.val_fraction=0.0"), "run"),  # test only
        # a grid key other than the seed is pooled, but not one the tune grid varies
        (("seed: [100, 101]", "seed: [100]\n  train.lr: [0.1]"), "grid.train.lr"),
        (("out: tuned/quick.yaml", "outt: x"), "tune.outt"),
        (("parse: {method.beta", "dsgd-task: {method.beta"), "tune.grid.dsgd-task"),
    ],
)
def test_bad_tune_files_fail_before_anything_runs(tmp_path, change, where) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(TUNE.replace(*change))
    with pytest.raises(UserError) as err:
        load_sweep(bad)
    assert where in err.value.where
    if where == "run":
        assert "partition.val_fraction" in err.value.problem


def _table_lines(text: str) -> list[str]:
    """Every table row of a report but the run list (whose links point at the source)."""
    body = text.split("## Runs")[0]
    return [line for line in body.splitlines() if line.startswith("|")]


def test_the_report_shows_paired_intervals_bytes_and_convergence(tuned) -> None:
    _, runs, _ = tuned
    assert main(["report", str(runs), "--no-tsne", "--no-pid"]) == 0
    text = (runs / "report.md").read_text()
    paired = text.split("## Ours minus the best baseline, paired over seeds")[1].split("\n## ")[0]
    rows = [line for line in paired.splitlines() if line.startswith("| parse |")]
    assert rows, "no paired row for parse"
    for row in rows:  # 2 seeds each: an interval and its word in every cell
        cells = row.split(" | ")[3:]
        assert all("[" in c and " vs local" in c for c in cells)
        assert all(any(w in c for w in ("**win**", "**loss**", "inside the noise")) for c in cells)
    assert "## Accuracy for the bytes spent" in text and "Budget:" in text
    assert "## Convergence" in text and "too short" in text  # 2 rounds cannot show a plateau


def test_final_last_smooths_the_tables_and_says_so(tuned, tmp_path) -> None:
    _, runs, _ = tuned
    base = ["report", str(runs), "--no-tsne", "--no-pid"]
    assert main([*base, "--out", str(tmp_path / "a.md")]) == 0
    assert main([*base, "--out", str(tmp_path / "b.md"), "--final-last", "2"]) == 0
    a, b = (tmp_path / "a.md").read_text(), (tmp_path / "b.md").read_text()
    assert "last 2 evaluations" in b and "last 2 evaluations" not in a
    accuracy = lambda t: t.split("## Accuracy\n")[1].split("## PARSE against")[0]  # noqa: E731
    assert [x for x in _table_lines(accuracy(a)) if "%" not in x] != [
        x for x in _table_lines(accuracy(b)) if "%" not in x
    ]
    assert main([*base, "--final-last", "0"]) == 2


def test_an_export_reads_back_into_the_same_tables(tuned, tmp_path) -> None:
    _, runs, _ = tuned
    assert (
        main(["report", str(runs), "--no-tsne", "--no-pid", "--out", str(tmp_path / "a.md")]) == 0
    )
    assert main(["report", str(runs), "--export", str(tmp_path / "x")]) == 0
    export = tmp_path / "x" / "quick-tune.jsonl.gz"
    assert export.is_file() and not list((tmp_path / "x").glob("*.pt"))
    first = export.read_bytes()
    assert main(["report", str(runs), "--export", str(tmp_path / "x")]) == 0
    assert export.read_bytes() == first  # no time stamp inside: a rerun is the same file
    assert main(["report", str(export), "--no-tsne", "--no-pid"]) == 0
    again = (tmp_path / "x" / "quick-tune.md").read_text()
    assert (tmp_path / "x" / "quick-tune").is_dir()  # the figures, beside the report
    original = (tmp_path / "a.md").read_text()
    assert len(_table_lines(original)) > 20
    assert _table_lines(again) == _table_lines(original)


@pytest.mark.parametrize(
    ("name", "final", "rounds", "methods"),
    [
        ("watch", "watch-main", 160, 8),
        ("mfeat-two", "mfeat-two", 300, 8),
        ("mfeat-three", "mfeat-three", 320, 8),
        ("watch-subjects", "watch-subjects", 160, 8),
        ("mfeat-two-overlay", "mfeat-two-overlay", 300, 8),
        ("mfeat-three-overlay", "mfeat-three-overlay", 320, 8),
        ("watch-overlay-160", "watch-main-overlay-160", 160, 5),
        ("watch-overlay", "watch-main-overlay", 320, 7),
        ("watch-subjects-overlay", "watch-subjects-overlay", 320, 7),
    ],
)
def test_every_tune_file_gives_every_method_the_same_budget(
    name: str, final: str, rounds: int, methods: int
) -> None:
    sweep = load_sweep(f"configs/tune/{name}.yaml")
    per_method: dict[str, int] = {}
    for r in sweep.runs:
        per_method[r.config.method.name] = per_method.get(r.config.method.name, 0) + 1
        assert r.config.partition.val_fraction > 0 and r.config.seed == 100
    assert set(per_method.values()) == {3}, per_method  # 3 learning rates x 1 seed each
    assert "parse" in per_method and "harmony" in per_method and len(per_method) == methods
    assert {r.config.train.rounds for r in sweep.runs} == {rounds}
    # the final runs of the benchmark run exactly as long as the tuning runs did, on the
    # same split and holder graphs (a share held out for a method's own choices,
    # partition.select_fraction, belongs to that variant, not to the benchmark's split)
    final_runs = load_sweep(f"configs/paper/{final}-tuned.yaml").runs
    assert {r.config.train.rounds for r in final_runs} == {rounds}
    own = {"name", "select_fraction"}
    for key in ("partition", "topology"):
        tuned = {getattr(r.config, key).model_dump_json(exclude=own) for r in sweep.runs}
        assert {getattr(r.config, key).model_dump_json(exclude=own) for r in final_runs} == (
            {x.replace('"val_fraction":0.2', '"val_fraction":0.0') for x in tuned}
        )


def test_other_grid_keys_of_a_tune_file_are_pooled_like_seeds(tmp_path) -> None:
    """A benchmark with several settings (synthetic-pid's data settings) gets one choice per
    method, judged on the mean over every setting and seed; choose_tuned is checked against
    hand-written results."""
    from parse_dfl.experiments.sweep import choose_tuned

    path = tmp_path / "tune.yaml"
    path.write_text(
        TUNE.replace("seed: [100, 101]", "seed: [100]\n  partition.val_fraction: [0.2, 0.3]")
        .replace("partition.val_fraction=0.25", "train.eval_every=2")
        .replace("    parse: {method.beta: [0.1, 0.5]}\n", "")
    )
    sweep = load_sweep(path, out=tmp_path / "runs")
    assert len(sweep.runs) == 2 * 2 * 2  # (parse, local) x 2 rates x 2 pooled values
    # lr 0.01 is better at one pooled value and worse on the mean over both
    val = {(0.001, 0.2): 0.6, (0.001, 0.3): 0.6, (0.01, 0.2): 0.7, (0.01, 0.3): 0.4}
    for r in sweep.runs:
        key = (r.config.train.lr, r.config.partition.val_fraction)
        folder = sweep.out / r.name
        folder.mkdir(parents=True)
        res = {"mean_val_accuracy": val[key], "mean_val_local_accuracy": 0.5}
        (folder / "results.json").write_text(json.dumps(res))
    doc = choose_tuned(sweep)
    assert doc["pooled"] == {"partition.val_fraction": [0.2, 0.3]}
    for method in ("parse", "local"):
        assert doc["methods"][method]["set"] == {"train.lr": 0.001}
        assert doc["methods"][method]["val_accuracy"] == pytest.approx(0.6)
        assert len(doc["methods"][method]["candidates"]) == 2


def test_paired_exports_pairs_two_methods_on_one_agent_type(tuned, tmp_path) -> None:
    """scripts/paired_exports.py --any-method --agent-type reads exactly the runs' own
    per-type figures (it is how results.md compares parse-plus with local training)."""
    import importlib.util

    _, runs, _ = tuned
    assert main(["report", str(runs), "--export", str(tmp_path)]) == 0
    spec = importlib.util.spec_from_file_location("paired", "scripts/paired_exports.py")
    assert spec is not None and spec.loader is not None
    paired = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paired)
    export = tmp_path / "quick-tune.jsonl.gz"
    where = ["method.name=local", "train.lr=0.01"]
    for metric, key in (("mean_accuracy", "by_type"), ("mean_local_accuracy", "by_type_local")):
        got = paired.by_method(export, [], metric, where, agent_type="acc+gyro", any_method=True)
        want = {}
        for res_path in runs.glob("method=local/**/results.json"):
            res = json.loads(res_path.read_text())
            if res["config"]["train"]["lr"] == 0.01:
                want[res["config"]["seed"]] = 100 * res[key]["acc+gyro"]
        assert got == {("*",): pytest.approx(want)} and len(want) == 2
    both = paired.by_method(export, [], "mean_accuracy", ["train.lr=0.01"], any_method=True)
    assert list(both) == [("*",)]  # every method under one name
