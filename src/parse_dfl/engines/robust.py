"""Hostile peers: who attacks and what an attacker sends.

What receivers do with it (checks, robust rules) is `engines/receive.py`, the same path as
plain gossip.
"""

from __future__ import annotations

import numpy as np
import torch

from parse_dfl.config import AttackConfig, RobustConfig
from parse_dfl.graph.topology import derive_seed


def attackers(cfg: AttackConfig, n_agents: int, seed: int) -> np.ndarray:
    """Boolean mask of attacking agents (none when the attack is off)."""
    mask = np.zeros(n_agents, dtype=bool)
    if cfg.kind != "none" and cfg.fraction > 0:
        rng = np.random.default_rng(derive_seed(seed, 0xBAD))
        mask[rng.permutation(n_agents)[: int(round(cfg.fraction * n_agents))]] = True
    return mask


def corrupt(rows: torch.Tensor, bad: torch.Tensor, cfg: AttackConfig, seed: int) -> torch.Tensor:
    """What each holder sends: its rows, corrupted where `bad` (holders x numel)."""
    if cfg.kind in ("none", "label-flip") or not bool(bad.any()):
        return rows
    sent = rows.clone()
    if cfg.kind == "sign-flip":
        sent[bad] = -rows[bad]
    elif cfg.kind == "scale":
        sent[bad] = cfg.scale * rows[bad]
    elif cfg.kind == "nan":  # a broken or malicious peer: receivers must drop it
        sent[bad] = float("nan")
    elif cfg.kind == "noise":
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(int(bad.sum()), rows.shape[1], generator=gen) * cfg.noise
        sent[bad] = rows[bad] + noise.to(rows)
    return sent


def trim_is_void(cfg: RobustConfig, neighbour_counts: np.ndarray) -> bool:
    """Whether trimmed-mean trims nothing for some holder: with d neighbours it sees d + 1
    values per coordinate and cuts int(trim * (d + 1)) from each end, which is 0 on a ring at
    the default trim 0.2, so the rule is then the plain mean."""
    if cfg.rule != "trimmed-mean" or not len(neighbour_counts):
        return False
    return bool((np.floor(cfg.trim * (neighbour_counts[neighbour_counts > 0] + 1)) == 0).any())
