"""Plug-ins by import path (model.encoder, method.name + method.options) and the registry's
layering: config.py imports nothing above it, engines never import the methods."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import parse_dfl
from parse_dfl import registry
from parse_dfl.cli import main
from parse_dfl.data.partition import AgentSpec
from parse_dfl.engines.setup import build_models, build_setup
from parse_dfl.errors import UserError
from parse_dfl.methods import METHODS, Method, Share, SharePlan
from parse_dfl.methods.local import MonolithicMethod
from parse_dfl.models.encoders import ImageEncoder, MLPEncoder, SeriesEncoder
from tests.conftest import quick_config

ROOT = Path(__file__).resolve().parents[1]
HERE = __name__  # the import path prefix of the plug-ins below (tests.test_plugins)


class MeanPoolEncoder(nn.Module):
    """A user's encoder for any shape: flatten everything but the first axis, one layer."""

    def __init__(self, input_shape: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        size = 1
        for n in input_shape:
            size *= n
        self.proj = nn.Linear(size, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(x.flatten(1)))


class WrongWidthEncoder(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(input_shape[-1], out_dim + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1)[:, : self.proj.in_features])


def not_an_encoder(input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    return nn.Identity()


class SmoothOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    smoothing: float = Field(0.1, ge=0, lt=1, description="label smoothing of the CE loss")
    share: bool = Field(True, description="average every block among all agents")


class SmoothedMethod(MonolithicMethod):
    """A user's method: the baselines' model, label-smoothed CE, everything shared or not."""

    name = "smoothed"
    description = "label-smoothed CE; shares everything (options.share)"
    Options = SmoothOptions
    options: SmoothOptions

    def loss(self, model: nn.Module, x: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, label_smoothing=self.options.smoothing)

    def share_plan(self, agent: AgentSpec, model: nn.Module) -> SharePlan:
        blocks = model.block_prefixes()  # type: ignore[operator]
        return {b: Share() if self.options.share else None for b in blocks}


class HalfMethod(Method):  # abstract: no loss, logits, share_plan
    def build_model(self, agent: AgentSpec) -> nn.Module:
        return nn.Identity()


def _fresh_modules(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return json.loads(out.stdout)


LIST_MODULES = (
    "import json, sys; print(json.dumps([m for m in sys.modules if m.startswith('parse_dfl')]))"
)


def test_config_imports_nothing_above_it() -> None:
    mods = _fresh_modules(f"import parse_dfl.config; {LIST_MODULES}")
    assert "parse_dfl.config" in mods
    above = [
        m
        for m in mods
        if m.split(".")[1:2]
        and m.split(".")[1] in ("data", "methods", "engines", "models", "graph", "experiments")
    ]
    assert above == [], above


def test_engines_do_not_import_the_methods() -> None:
    mods = _fresh_modules(f"import parse_dfl.engines; {LIST_MODULES}")
    assert "parse_dfl.engines.batched" in mods
    assert [m for m in mods if m.startswith("parse_dfl.methods")] == []
    # and no function-level import either (TYPE_CHECKING-only imports are allowed)
    for path in sorted((ROOT / "src/parse_dfl/engines").glob("*.py")):
        tree = ast.parse(path.read_text())
        typing_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
            for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom | ast.Import) and id(node) not in typing_only:
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
                assert not any(n.startswith("parse_dfl.methods") for n in names), (path, names)


def test_the_registry_serves_every_kind() -> None:
    assert registry.names("method")[0] == "parse" and "local" in registry.names("method")
    assert set(registry.names("engine")) >= {"reference", "batched", "distributed"}
    assert "basic-motions" in registry.names("source")
    assert set(registry.names("encoder")) >= {"mlp", "conv1d", "conv2d"}
    assert "ring" in registry.names("topology")
    assert registry.resolve("method", "parse", "method.name") is METHODS["parse"]
    assert registry.resolve("method", f"{HERE}:SmoothedMethod", "method.name") is SmoothedMethod
    assert registry.resolve("encoder", "torch.nn:Identity", "model.encoder") is nn.Identity


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_plugin_encoder_reaches_every_method(method: str) -> None:
    """Every modality of every agent is encoded by the plug-in, and no built-in is left."""
    cfg = quick_config(f"method.name={method}", f"model.encoder={HERE}:MeanPoolEncoder")
    setup = build_setup(cfg)
    for agent, model in zip(setup.agents, build_models(setup), strict=True):
        mods = list(model.modules())
        assert sum(isinstance(m, MeanPoolEncoder) for m in mods) >= len(agent.modalities)
        assert not any(isinstance(m, MLPEncoder | SeriesEncoder | ImageEncoder) for m in mods)


def test_the_example_encoder_runs_parse_alike_on_both_engines(monkeypatch) -> None:
    """examples/my_encoder.py on configs/quick.yaml: the reference engine (the specification)
    and the batched one (vmapped, not its per-agent fallback) give the same accuracies."""
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    got = {}
    for engine in ("reference", "batched"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = parse_dfl.run(
                "configs/quick.yaml",
                overrides=[
                    "train.rounds=2",
                    "model.encoder=my_encoder:TinyTCN",
                    f"engine.name={engine}",
                    "engine.dtype=float64",
                ],
                progress=False,
            )
        assert not [w for w in caught if "per agent" in str(w.message)], "batched fell back"
        assert r.config.model.encoder == "my_encoder:TinyTCN"
        got[engine] = (r.by_agent, r.by_agent_local)
    assert got["reference"] == got["batched"]
    setup = build_setup(quick_config("model.encoder=my_encoder:TinyTCN"))
    assert type(build_models(setup)[0].encoders["acc"]).__name__ == "TinyTCN"  # type: ignore[index]


def test_a_plugin_method_with_options(tmp_path: Path) -> None:
    path = f"{HERE}:SmoothedMethod"
    cfg = quick_config(f"method.name={path}", "method.options={smoothing: 0.2}")
    assert cfg.method.options == {"smoothing": 0.2, "share": True}  # defaults filled in
    r = parse_dfl.run(cfg, overrides=["train.rounds=2"], out=tmp_path / "run", progress=False)
    assert r.method == path and r.config.method.options["smoothing"] == 0.2
    assert r.bytes_sent > 0  # share: true -> every block averaged
    method = r.setup().method
    assert isinstance(method, SmoothedMethod) and method.options.smoothing == 0.2
    local = parse_dfl.run(
        cfg, overrides=["train.rounds=1", "method.options.share=false"], progress=False
    )
    assert local.bytes_sent == 0


@pytest.mark.parametrize(
    ("override", "where", "words"),
    [
        ("method.options.bogus=1", "method.options.bogus", "unknown key"),
        ("method.options.smoothing=2", "method.options.smoothing", "less than 1"),
        ("method.options.smoothing=abc", "method.options.smoothing", "number"),
    ],
)
def test_bad_plugin_options_name_the_key(override: str, where: str, words: str) -> None:
    with pytest.raises(UserError) as err:
        quick_config(f"method.name={HERE}:SmoothedMethod", override)
    assert err.value.where == where and words in err.value.problem, str(err.value)
    assert "\n" not in str(err.value)


def test_builtin_methods_take_no_options() -> None:
    with pytest.raises(UserError) as err:
        quick_config("method.options={lambda_h: 1}")
    assert err.value.where == "method.options.lambda_h"


@pytest.mark.parametrize(
    ("override", "where", "words"),
    [
        ("model.encoder=no_such_module_xyz:Enc", "model.encoder", "no module named"),
        (f"model.encoder={HERE}:Missing", "model.encoder", "has no 'Missing'"),
        (f"model.encoder={HERE}:not_an_encoder", "model.encoder", "not a subclass of torch.nn"),
        ("model.encoder=nowhere", "model.encoder", "unknown 'nowhere'"),
        ("method.name=torch.nn:Linear", "method.name", "not a subclass of parse_dfl.methods"),
        (f"method.name={HERE}:HalfMethod", "method.name", "abstract"),
        (f"method.name={HERE}:SmoothOptions", "method.name", "not a subclass"),
        ("engine.name=torch.nn:Linear", "engine.name", "not a subclass of parse_dfl.engines"),
        ("data.name=os.path:join", "data.name", "not a parse_dfl.data.Source"),
    ],
)
def test_bad_import_paths_are_one_line(override: str, where: str, words: str) -> None:
    with pytest.raises(UserError) as err:
        quick_config(override)
    assert err.value.where == where and words in err.value.problem, str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("encoder", "words"),
    [
        (f"{HERE}:WrongWidthEncoder", "not (N, 48)"),
        ("torch.nn:Linear", "failed: TypeError"),
    ],
)
def test_an_encoder_of_the_wrong_shape_is_refused_before_training(
    encoder: str, words: str, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    code = main(
        ["run", "configs/quick.yaml", "--set", f"model.encoder={encoder}", "--out", str(out)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("parse-dfl: error: model.encoder: ") and words in err, err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_cli_runs_the_documented_plugin_example(tmp_path: Path) -> None:
    """docs/plugins.md: the example module is found through PYTHONPATH (plain Python imports),
    and without it the run stops with one line naming the field."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [
        sys.executable, "-m", "parse_dfl.cli", "run", "examples/plugin-encoder.yaml",
        "--set", "train.rounds=1", "--set", "agents.mix=acc:1,gyro:1,acc+gyro:1", "--quiet",
    ]  # fmt: skip

    def cli(out: Path, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cmd, "--out", str(out)],
            cwd=ROOT,
            env={**env, "OMP_NUM_THREADS": "1", **extra},
            capture_output=True,
            text=True,
            timeout=300,
        )

    bad = cli(tmp_path / "a")
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.startswith("parse-dfl: error: model.encoder: cannot import 'my_encoder:")
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    ok = cli(tmp_path / "b", PYTHONPATH="examples")
    assert ok.returncode == 0, ok.stderr
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["config"]["model"]["encoder"] == "my_encoder:TinyTCN"
    assert len(results["agents"]) == 3
