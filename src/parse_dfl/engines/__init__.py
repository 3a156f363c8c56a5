"""Engines by name: how rounds are executed (methods say what is shared)."""

from __future__ import annotations

from parse_dfl.engines.base import Engine, EngineResult
from parse_dfl.engines.batched import BatchedEngine
from parse_dfl.engines.distributed import DistributedEngine
from parse_dfl.engines.reference import ReferenceEngine

ENGINES: dict[str, type[Engine]] = {
    e.name: e for e in (ReferenceEngine, BatchedEngine, DistributedEngine)
}

__all__ = ["ENGINES", "Engine", "EngineResult"]
