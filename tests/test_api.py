"""The library API (parse_dfl.run / sweep / load_run / report): typed results that are the
CLI's results.json, nothing written without `out`, and a fast `import parse_dfl`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from torch import nn

import parse_dfl
from parse_dfl.cli import main
from parse_dfl.config import load_config, read_yaml
from parse_dfl.errors import UserError
from parse_dfl.evaluation import accuracy
from parse_dfl.experiments.run import run as run_config

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "configs/quick.yaml")
SETS = ["train.rounds=2", "train.eval_every=1"]
TIMES = ("wall_seconds", "train_seconds", "seconds")


def untimed(x: Any) -> Any:
    """A results dict without its clock readings (the only part two runs may differ in)."""
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if k not in TIMES}
    if isinstance(x, list):
        return [untimed(v) for v in x]
    return x


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[parse_dfl.RunResult, Path]:
    """One API run written to a folder, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("api") / "run"
    return parse_dfl.run(QUICK, out=out, overrides=SETS, progress=False), out


def test_a_result_is_the_cli_results_json(saved, tmp_path: Path) -> None:
    result, out = saved
    assert (
        main(["run", QUICK, *[f"--set={s}" for s in SETS], "--out", str(tmp_path), "--quiet"]) == 0
    )
    cli = json.loads((tmp_path / "results.json").read_text())
    assert untimed(result.to_dict()) == untimed(cli)
    assert result.to_dict() == json.loads((out / "results.json").read_text())
    # ... and the dict experiments.run.run returns for the same config
    assert untimed(run_config(load_config(QUICK, SETS), progress=False)) == untimed(cli)


def test_typed_fields_under_both_protocols(saved) -> None:
    result, out = saved
    d = result.to_dict()
    assert isinstance(result, parse_dfl.RunResult) and result.path == out
    assert (result.method, result.dataset, result.rounds) == ("parse", "basic-motions", 2)
    assert result.by_type == d["by_type"] and result.by_type_local == d["by_type_local"]
    assert result.by_agent == {a["id"]: a["test_accuracy"] for a in d["agents"]}
    assert result.by_agent_local == {a["id"]: a["local_test_accuracy"] for a in d["agents"]}
    assert result.agents[0] == parse_dfl.AgentResult(
        id=0,
        type=d["agents"][0]["type"],
        modalities=tuple(d["agents"][0]["modalities"]),
        test_accuracy=d["agents"][0]["test_accuracy"],
        local_test_accuracy=d["agents"][0]["local_test_accuracy"],
        n_train=d["agents"][0]["n_train"],
        n_test=d["agents"][0]["n_test"],
        bytes_sent=d["agents"][0]["bytes_sent"],
    )
    assert [h["round"] for h in result.history] == [1, 2]
    assert result.bytes_sent == d["bytes_sent"] > 0 and result.wall_seconds > 0
    assert result.config == load_config(QUICK, SETS)


def test_to_dict_round_trips(saved) -> None:
    result, _ = saved
    d = result.to_dict()
    again = parse_dfl.RunResult.from_dict(json.loads(json.dumps(d)))
    assert again == result and again.to_dict() == d
    d["mean_accuracy"] = -1.0  # a copy: the result does not change with it
    assert result.to_dict()["mean_accuracy"] == result.mean_accuracy != -1.0


def test_to_frame_has_one_row_per_agent(saved, monkeypatch) -> None:
    pytest.importorskip("pandas")
    result, _ = saved
    frame = result.to_frame()
    assert list(frame.index) == [a.id for a in result.agents]
    assert frame["test_accuracy"].to_dict() == result.by_agent
    assert frame["local_test_accuracy"].to_dict() == result.by_agent_local
    assert set(frame["type"]) == set(result.by_type)
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if it were not installed
    with pytest.raises(ImportError, match="needs pandas.*pip install pandas"):
        result.to_frame()


def test_load_run_gives_the_result_and_its_models(saved) -> None:
    result, out = saved
    loaded = parse_dfl.load_run(out)
    assert loaded == result and loaded.to_dict() == result.to_dict()
    models = loaded.models()
    assert len(models) == len(result.agents) and all(isinstance(m, nn.Module) for m in models)
    s = loaded.setup()
    for agent, model in zip(s.agents, models, strict=True):  # the trained models, not new ones
        acc = accuracy(s.method, model, agent.modalities, s.x, s.y, s.global_test)
        assert acc == pytest.approx(result.by_agent[agent.id])


def test_config_as_path_mapping_or_config(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # whatever happens, it happens here
    cfg = load_config(QUICK, ["train.rounds=1"])
    from_dict = parse_dfl.run(read_yaml(QUICK), overrides=["train.rounds=1"], progress=False)
    from_cfg = parse_dfl.run(cfg, progress=False)
    assert from_dict.config == from_cfg.config == cfg
    assert untimed(from_dict.to_dict()) == untimed(from_cfg.to_dict())
    assert list(tmp_path.iterdir()) == []  # without out, nothing is written
    with pytest.raises(UserError, match="not saved"):
        from_cfg.models()


def test_bad_input_is_a_user_error_before_training(saved, tmp_path: Path) -> None:
    _, out = saved
    with pytest.raises(UserError) as err:
        parse_dfl.run({"train": {"rounds": 0}}, progress=False)
    assert err.value.where == "train.rounds"
    with pytest.raises(UserError, match="already holds a finished run"):
        parse_dfl.run(QUICK, out=out, overrides=SETS, progress=False)
    with pytest.raises(UserError, match="no such run folder"):
        parse_dfl.load_run(tmp_path / "nothing")
    with pytest.raises(TypeError, match="sequence"):
        parse_dfl.run(QUICK, overrides="train.rounds=1")  # type: ignore[arg-type]


def test_sweep_and_report(tmp_path: Path) -> None:
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(
        f"base: {QUICK}\nset: [train.rounds=1]\ngrid:\n  method.name: [parse, local]\n"
    )
    done = parse_dfl.sweep(sweep_file, out=tmp_path / "sw", progress=False)
    assert (done.runs, done.ran, done.skipped, done.failed) == (2, 2, 0, 0)
    results = done.results()
    assert sorted(r.method for r in results.values()) == ["local", "parse"]
    assert all(isinstance(r, parse_dfl.RunResult) and r.path for r in results.values())
    again = parse_dfl.sweep(sweep_file, out=tmp_path / "sw", progress=False)
    assert (again.ran, again.skipped) == (0, 2)  # finished runs are kept
    path = parse_dfl.report(tmp_path / "sw", tsne=False, pid=False)
    assert path == tmp_path / "sw" / "report.md" and "parse" in path.read_text()


def test_import_is_lazy_and_exports_the_api() -> None:
    code = (
        "import sys, parse_dfl; print(int('torch' in sys.modules), int('parse_dfl.api' in "
        "sys.modules)); print(parse_dfl.run.__module__, sorted(parse_dfl.__all__))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.splitlines()
    assert out[0] == "0 0"  # import parse_dfl loads neither torch nor the API
    assert out[1].startswith("parse_dfl.api ")
    for name in parse_dfl.__all__:
        assert getattr(parse_dfl, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        parse_dfl.nonsense  # noqa: B018
