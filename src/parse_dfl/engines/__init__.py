"""Engines by name: how rounds are executed (methods say what is shared)."""

from __future__ import annotations

from parse_dfl import registry
from parse_dfl.engines.base import Engine, EngineResult
from parse_dfl.engines.batched import BatchedEngine
from parse_dfl.engines.distributed import DistributedEngine
from parse_dfl.engines.reference import ReferenceEngine

ENGINES: dict[str, type[Engine]] = registry.table("engine")
"""The registry's table of engines (see parse_dfl.registry)."""
for _e in (ReferenceEngine, BatchedEngine, DistributedEngine):
    registry.register("engine", _e.name, _e)

__all__ = ["ENGINES", "Engine", "EngineResult"]
