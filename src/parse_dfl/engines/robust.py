"""Hostile peers and robust gossip.

Attackers (a seeded share of agents) corrupt what they send; every received block is checked
(shape, dtype, finite values) and a bad one is dropped and counted, its weight returned to
the receiver. A holder then combines its own copy with what it received by a rule:

- mean:          x_i <- W_ii x_i + sum_j W_ij m_j                (plain gossip)
- clip:          x_i <- x_i + sum_j W_ij clip(m_j - x_i, radius)  (self-centred clipping)
- trimmed-mean:  per coordinate, the mean of {x_i, m_j} without the `trim` share at each end
- median:        per coordinate, the median of {x_i, m_j}
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
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


def valid(message: torch.Tensor, like: torch.Tensor) -> bool:
    """A received block is used only if it has the expected shape and dtype, all finite."""
    return (
        message.shape == like.shape
        and message.dtype == like.dtype
        and bool(torch.isfinite(message).all())
    )


def robust_mix(
    rows: torch.Tensor,
    sent: torch.Tensor,
    W: sp.csr_matrix,
    cfg: RobustConfig,
    only: list[int] | None = None,
) -> tuple[torch.Tensor, int]:
    """New rows after one gossip step with checks and a robust rule; (rows, dropped count).

    Row i depends only on rows[i] and on what its neighbours sent; `only` mixes just those
    rows (a process mixing its own agents) and leaves the others as they are."""
    out = rows.clone() if only is not None else torch.empty_like(rows)
    dropped = 0
    for i in range(rows.shape[0]) if only is None else only:
        lo, hi = W.indptr[i], W.indptr[i + 1]
        cols, weights = W.indices[lo:hi], W.data[lo:hi]
        own = rows[i]
        msgs, ws = [], []
        self_w = 0.0
        for j, w in zip(cols.tolist(), weights.tolist(), strict=True):
            if j == i:
                self_w += w
            elif valid(sent[j], own):
                msgs.append(sent[j])
                ws.append(w)
            else:
                dropped += 1
                self_w += w  # the dropped message's weight goes back to the receiver
        if not msgs:
            out[i] = own
            continue
        m = torch.stack(msgs)
        w_t = torch.tensor(ws, dtype=rows.dtype, device=rows.device)
        if cfg.rule == "mean":
            out[i] = self_w * own + w_t @ m
        elif cfg.rule == "clip":
            diff = m - own
            norms = diff.norm(dim=1, keepdim=True).clamp_min(1e-12)
            out[i] = own + w_t @ (diff * torch.clamp(cfg.radius / norms, max=1.0))
        else:
            values = torch.cat([own[None], m])
            if cfg.rule == "median":
                out[i] = values.median(dim=0).values
            else:
                k = int(cfg.trim * values.shape[0])
                srt = values.sort(dim=0).values
                out[i] = srt[k : values.shape[0] - k].mean(dim=0)
    return out, dropped
