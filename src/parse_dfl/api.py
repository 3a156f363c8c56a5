"""The library's front door: run, sweep, load and report from Python, with typed results.

Everything here is a thin layer over experiments/ (run.py, sweep.py, report.py), the code
the CLI runs, so a result from `parse_dfl.run` is the very dict `parse-dfl run` writes to
results.json, with typed fields on top. Like `experiments.run.run`, nothing is written
unless `out` is given; bad input is a `parse_dfl.errors.UserError`, raised before training.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parse_dfl.config import Config, apply_overrides, build_config, load_config
from parse_dfl.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

    from parse_dfl.engines.setup import Setup

ConfigLike = str | os.PathLike[str] | Mapping[str, Any] | Config
"""A config: a YAML file, a mapping shaped like one, or a validated Config."""


@dataclass(frozen=True)
class AgentResult:
    """One agent's outcome under both protocols (global: everyone's test samples; local: its
    own test split)."""

    id: int
    type: str
    modalities: tuple[str, ...]
    test_accuracy: float
    local_test_accuracy: float
    n_train: int
    n_test: int
    bytes_sent: int


@dataclass(frozen=True)
class RunResult:
    """One finished run. `to_dict()` is its results.json; the fields are typed views of it.

    `by_type` / `by_agent` are global accuracies, `by_type_local` / `by_agent_local` the local
    ones (see README, "Evaluation: two protocols"). A result read from a run folder (or
    written to one with `out=`) can also rebuild the trained models: `models()`, `setup()`.
    """

    method: str
    dataset: str
    seed: int
    rounds: int
    agents: tuple[AgentResult, ...]
    by_type: dict[str, float]
    by_type_local: dict[str, float]
    mean_accuracy: float
    mean_local_accuracy: float
    history: list[dict[str, Any]]
    bytes_sent: int
    wall_seconds: float
    config: Config
    path: Path | None = field(default=None, compare=False)  # where it is, not what it is
    _raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(
        cls, results: Mapping[str, Any], path: str | os.PathLike[str] | None = None
    ) -> RunResult:
        """A result from a results.json dict (as `experiments.run.run` returns it)."""
        raw = copy.deepcopy(dict(results))
        try:
            agents = tuple(
                AgentResult(
                    id=int(a["id"]),
                    type=str(a.get("type") or "+".join(a["modalities"])),
                    modalities=tuple(a["modalities"]),
                    test_accuracy=float(a["test_accuracy"]),
                    local_test_accuracy=float(a["local_test_accuracy"]),
                    n_train=int(a["n_train"]),
                    n_test=int(a["n_test"]),
                    bytes_sent=int(a["bytes_sent"]),
                )
                for a in raw["agents"]
            )
            return cls(
                method=str(raw["method"]),
                dataset=str(raw["dataset"]),
                seed=int(raw["seed"]),
                rounds=int(raw["rounds"]),
                agents=agents,
                by_type=dict(raw["by_type"]),
                by_type_local=dict(raw["by_type_local"]),
                mean_accuracy=float(raw["mean_accuracy"]),
                mean_local_accuracy=float(raw["mean_local_accuracy"]),
                history=copy.deepcopy(raw["history"]),
                bytes_sent=int(raw["bytes_sent"]),
                wall_seconds=float(raw["wall_seconds"]),
                config=build_config(raw["config"]),
                path=None if path is None else Path(path),
                _raw=raw,
            )
        except (KeyError, TypeError, ValueError) as e:
            where = str(Path(path) / "results.json") if path is not None else "results"
            raise UserError(where, f"not the results of a run ({type(e).__name__}: {e})") from None

    @property
    def by_agent(self) -> dict[int, float]:
        """Agent id -> global test accuracy."""
        return {a.id: a.test_accuracy for a in self.agents}

    @property
    def by_agent_local(self) -> dict[int, float]:
        """Agent id -> local test accuracy."""
        return {a.id: a.local_test_accuracy for a in self.agents}

    def to_dict(self) -> dict[str, Any]:
        """The results.json dict (a copy: changing it leaves this result as it was)."""
        return copy.deepcopy(self._raw)

    def to_frame(self) -> pd.DataFrame:
        """One row per agent: id, type, modalities, both accuracies, samples, bytes sent."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "RunResult.to_frame needs pandas, which is not installed: `pip install pandas` "
                "(or use to_dict() / .agents)"
            ) from None
        rows = [
            {
                "method": self.method,
                "seed": self.seed,
                "id": a.id,
                "type": a.type,
                "modalities": "+".join(a.modalities),
                "test_accuracy": a.test_accuracy,
                "local_test_accuracy": a.local_test_accuracy,
                "n_train": a.n_train,
                "n_test": a.n_test,
                "bytes_sent": a.bytes_sent,
            }
            for a in self.agents
        ]
        return pd.DataFrame(rows).set_index("id")

    def models(self) -> list[nn.Module]:
        """The trained models, one per agent in id order, rebuilt from the run folder (loaded
        on the first call: it loads the data and the config's method)."""
        return list(self._load()[1])

    def setup(self) -> Setup:
        """The run's data, agents and method (what `models()` were trained with)."""
        return self._load()[0]  # type: ignore[no-any-return]

    def _load(self) -> tuple[Any, list[nn.Module]]:
        if "models" not in self._loaded:
            if self.path is None:
                raise UserError(
                    "models", "this run was not saved: run it with out=FOLDER to keep its models"
                )
            from parse_dfl.experiments.run import load_run as load_run_folder

            _, setup, models = load_run_folder(self.path)
            self._loaded.update(setup=setup, models=models)
        return self._loaded["setup"], self._loaded["models"]


@dataclass(frozen=True)
class SweepResult:
    """What a sweep did (`parse-dfl sweep` prints the same); `results()` reads its runs."""

    name: str
    out: Path
    runs: int
    ran: int
    skipped: int
    failed: int
    failures: dict[str, str]
    seconds: float

    def results(self) -> dict[str, RunResult]:
        """Run name -> result, for every finished run of the sweep (in the sweep's order)."""
        status = json.loads((self.out / "sweep.json").read_text())
        found: dict[str, RunResult] = {}
        for r in status.get("runs", []):
            folder = self.out / r.get("dir", r["name"])
            if (folder / "results.json").is_file():
                found[r["name"]] = load_run(folder)
        return found


def resolve_config(config: ConfigLike, overrides: Sequence[str] = ()) -> Config:
    """A validated Config from a file path, a mapping or a Config, with `--set`-style
    overrides (`"train.rounds=3"`) applied."""
    if isinstance(overrides, str):
        raise TypeError("overrides is a sequence of 'key=value' strings, not one string")
    if isinstance(config, Config):
        if not overrides:
            return config
        return build_config(apply_overrides(config.model_dump(mode="json"), list(overrides)))
    if isinstance(config, Mapping):
        return build_config(apply_overrides(copy.deepcopy(dict(config)), list(overrides)))
    if isinstance(config, str | os.PathLike):
        return load_config(Path(config), list(overrides))
    raise TypeError(f"config is a path, a mapping or a Config, not {type(config).__name__}")


def run(
    config: ConfigLike,
    *,
    out: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    overwrite: bool = False,
) -> RunResult:
    """Train one config to the end and return its results.

    With `out`, the run folder is written as by `parse-dfl run --out` (results.json,
    models.pt, config.yaml; a folder that already holds a run is refused unless `overwrite`).
    Without it, nothing is written."""
    from parse_dfl.experiments.run import check_run_folder
    from parse_dfl.experiments.run import run as run_config

    cfg = resolve_config(config, overrides)
    folder = None if out is None else Path(out)
    if folder is not None:
        check_run_folder(folder, overwrite=overwrite)
    return RunResult.from_dict(run_config(cfg, folder, progress=progress), path=folder)


def sweep(
    path: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    jobs: int = 1,
    progress: bool = True,
    only: Sequence[str] = (),
    reuse: Sequence[str | os.PathLike[str]] = (),
) -> SweepResult:
    """Run a sweep file (see docs/experiments.md): finished runs are skipped, so calling it
    again resumes. `only` and `reuse` are `parse-dfl sweep --only / --reuse`."""
    from parse_dfl.experiments.sweep import run_sweep

    summary = run_sweep(
        Path(path),
        out=None if out is None else Path(out),
        jobs=jobs,
        progress=progress,
        only=list(only) or None,
        reuse=[Path(p) for p in reuse] or None,
    )
    return SweepResult(
        name=summary["name"],
        out=Path(summary["out"]),
        runs=summary["runs"],
        ran=summary["ran"],
        skipped=summary["skipped"],
        failed=summary["failed"],
        failures=dict(summary["failures"]),
        seconds=summary["seconds"],
    )


def load_run(run_dir: str | os.PathLike[str]) -> RunResult:
    """A finished run folder's results; its models load on the first `.models()`."""
    from parse_dfl.experiments.run import read_results

    return RunResult.from_dict(read_results(Path(run_dir)), path=run_dir)


def report(
    root: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    figures: str | os.PathLike[str] | None = None,
    tsne: bool = True,
    pid: bool = True,
) -> Path:
    """Write the report of every finished run under `root` (report.md and figures/, as
    `parse-dfl report`); returns the report's path."""
    from parse_dfl.experiments.report import write_report

    return write_report(
        Path(root),
        out=None if out is None else Path(out),
        figures=None if figures is None else Path(figures),
        tsne=tsne,
        pid=pid,
    )
