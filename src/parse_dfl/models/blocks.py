"""Blocks: named groups of an agent model's parameters, the unit of sharing.

A model lists its blocks as parameter-name prefixes (`block_prefixes()`); every parameter
must fall in exactly one block, so nothing is shared or kept by accident.
"""

from __future__ import annotations

from torch import nn


def param_blocks(model: nn.Module) -> dict[str, list[str]]:
    """Block name -> the names of its parameters (in `named_parameters` order)."""
    prefixes: dict[str, list[str]] = model.block_prefixes()  # type: ignore[operator]
    out: dict[str, list[str]] = {block: [] for block in prefixes}
    for name, _ in model.named_parameters():
        owners = [b for b, ps in prefixes.items() if any(name.startswith(p + ".") for p in ps)]
        if len(owners) != 1:
            raise RuntimeError(f"parameter {name} belongs to {len(owners)} blocks: {owners}")
        out[owners[0]].append(name)
    return {b: names for b, names in out.items() if names}
