"""PARSE's alignment terms on the redundant slices.

Slices may have different sizes (the split is an option); to compare them they are
zero-padded to a common width before normalising, which leaves every cosine unchanged for
equal sizes and keeps the terms defined for any split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _unit(x: torch.Tensor, dim: int) -> torch.Tensor:
    if x.shape[-1] < dim:
        x = F.pad(x, (0, dim - x.shape[-1]))
    return F.normalize(x, dim=-1)


def info_nce(
    r_a: torch.Tensor, r_b: torch.Tensor, hard: list[torch.Tensor], tau: float
) -> torch.Tensor:
    """Symmetric InfoNCE between two modalities' redundant slices (B, d_r).

    Positive: the same sample's (r_a, r_b). Negatives: the other samples' slices of the other
    modality, plus hard negatives `hard` (each (B, d)): the sample's own u and s slices.
    """
    dim = max([r_a.shape[-1], *[h.shape[-1] for h in hard]])
    za, zb = _unit(r_a, dim), _unit(r_b, dim)
    target = torch.arange(za.shape[0], device=za.device)
    terms = []
    for anchor, other in ((za, zb), (zb, za)):
        logits = anchor @ other.T
        if hard:
            negs = torch.stack([_unit(h, dim) for h in hard], dim=1)  # (B, k, dim)
            logits = torch.cat([logits, torch.einsum("bd,bkd->bk", anchor, negs)], dim=1)
        terms.append(F.cross_entropy(logits / tau, target))
    return (terms[0] + terms[1]) / 2


def separation(r: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine between a unimodal agent's redundant and unique slices."""
    dim = max(r.shape[-1], u.shape[-1])
    return (_unit(r, dim) * _unit(u, dim)).sum(dim=-1).pow(2).mean()
