"""Accuracy under both protocols, summarised per agent type.

- global: every agent on the union of all agents' held-out samples, with its own modalities;
- local: every agent on its own held-out samples.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from parse_dfl.data.partition import AgentSpec

if TYPE_CHECKING:
    from parse_dfl.methods import Method


@torch.no_grad()
def accuracy(
    method: Method,
    model: nn.Module,
    modalities: Sequence[str],
    x: dict[str, torch.Tensor],
    y: torch.Tensor,
    idx: torch.Tensor,
    chunk: int = 4096,
    local: bool = False,
) -> float:
    """Share of samples `idx` that the agent's model classifies correctly (`local`: with
    the method's local-protocol scores, `Method.local_logits`)."""
    was_training = model.training
    model.eval()
    correct = 0
    score = method.local_logits if local else method.logits
    for start in range(0, len(idx), chunk):
        part = idx[start : start + chunk]
        logits = score(model, {m: x[m][part] for m in modalities})
        correct += int((logits.argmax(dim=-1) == y[part]).sum())
    model.train(was_training)
    return correct / max(1, len(idx))


def stratified_subsample(idx: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` of the sample indices `idx` (sorted), each class keeping its share (largest
    remainders round), drawn with `seed`: the same subsample in every engine and process."""
    if n <= 0 or n >= len(idx):
        return idx
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels[idx], return_counts=True)
    want = counts * n / len(idx)
    take = np.floor(want).astype(int)
    order = np.argsort(-(want - take), kind="stable")
    take[order[: n - int(take.sum())]] += 1
    keep = [
        rng.choice(idx[labels[idx] == c], size=k, replace=False)
        for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(keep))


def type_order(agents: Sequence[AgentSpec], modalities: Sequence[str]) -> list[str]:
    """Agent types sorted by size, then by the config order of their modalities."""
    types = {a.type: a.modalities for a in agents}
    return sorted(types, key=lambda t: (len(types[t]), [modalities.index(m) for m in types[t]]))


def by_type(
    agents: Sequence[AgentSpec], values: Sequence[float], modalities: Sequence[str]
) -> dict[str, float]:
    """Mean of a per-agent value for each agent type (keys like 'acc+gyro')."""
    groups: dict[str, list[float]] = defaultdict(list)
    for a, v in zip(agents, values, strict=True):
        groups[a.type].append(float(v))
    return {t: float(np.mean(groups[t])) for t in type_order(agents, modalities)}


def update_conflict(uni: torch.Tensor, multi: torch.Tensor) -> float:
    """Mean cosine over all (unimodal, multimodal) pairs of local updates to one block."""
    u = torch.nn.functional.normalize(uni.double(), dim=1)
    m = torch.nn.functional.normalize(multi.double(), dim=1)
    return float((u @ m.T).mean())
