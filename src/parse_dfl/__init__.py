"""parse-dfl: multimodal decentralized federated learning with PARSE and its baselines.

The library API (see README, "From Python"): `run`, `sweep`, `load_run`, `report`, and the
result types `RunResult`, `SweepResult`. They are loaded on first use (PEP 562), so
`import parse_dfl` stays fast and does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AgentResult",
    "Config",
    "RunResult",
    "SweepResult",
    "UserError",
    "load_run",
    "report",
    "run",
    "sweep",
]

_LAZY = {
    "AgentResult": "parse_dfl.api",
    "RunResult": "parse_dfl.api",
    "SweepResult": "parse_dfl.api",
    "load_run": "parse_dfl.api",
    "report": "parse_dfl.api",
    "run": "parse_dfl.api",
    "sweep": "parse_dfl.api",
    "Config": "parse_dfl.config",
    "UserError": "parse_dfl.errors",
}

if TYPE_CHECKING:
    from parse_dfl.api import AgentResult, RunResult, SweepResult, load_run, report, run, sweep
    from parse_dfl.config import Config
    from parse_dfl.errors import UserError


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'parse_dfl' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute lookup
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
