"""Methods by name. A method = model builder + loss + share plan (see base.py)."""

from __future__ import annotations

from parse_dfl import registry
from parse_dfl.methods.base import Method, Share, SharePlan
from parse_dfl.methods.centralized import CentralizedMethod
from parse_dfl.methods.dsgd import DsgdHybridMethod, DsgdModalityMethod, DsgdTaskMethod
from parse_dfl.methods.harmony import HarmonyMethod
from parse_dfl.methods.local import LocalMethod
from parse_dfl.methods.parse import ParseMethod
from parse_dfl.methods.parse_plus import ParsePlusMethod

METHODS: dict[str, type[Method]] = registry.table("method")
"""The registry's table of methods (see parse_dfl.registry): built-ins, then any registered."""
for _m in (
    ParseMethod,
    ParsePlusMethod,
    LocalMethod,
    DsgdTaskMethod,
    DsgdModalityMethod,
    DsgdHybridMethod,
    HarmonyMethod,
    CentralizedMethod,
):
    registry.register("method", _m.name, _m)

__all__ = ["METHODS", "Method", "Share", "SharePlan"]
