"""Methods by name. A method = model builder + loss + share plan (see base.py)."""

from __future__ import annotations

from parse_dfl.methods.base import Method, Share, SharePlan
from parse_dfl.methods.centralized import CentralizedMethod
from parse_dfl.methods.dsgd import DsgdHybridMethod, DsgdModalityMethod, DsgdTaskMethod
from parse_dfl.methods.harmony import HarmonyMethod
from parse_dfl.methods.local import LocalMethod
from parse_dfl.methods.parse import ParseMethod

METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (
        ParseMethod,
        LocalMethod,
        DsgdTaskMethod,
        DsgdModalityMethod,
        DsgdHybridMethod,
        HarmonyMethod,
        CentralizedMethod,
    )
}

__all__ = ["METHODS", "Method", "Share", "SharePlan"]
