"""Fuse the synergistic slices {s_m} of an agent's modalities into one vector s.

All operators take a tensor (B, M, d) (modalities stacked on axis 1, in dataset order) and
return (B, d). The paper's ablation: gated is best, mean is cheapest.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MeanFusion(nn.Module):
    """Average over modalities; no parameters."""

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return s.mean(dim=1)


class ConcatFusion(nn.Module):
    """Concatenate and project back to d."""

    def __init__(self, n_modalities: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(n_modalities * dim, dim)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.proj(s.flatten(start_dim=1))


class GatedFusion(nn.Module):
    """A learned gate per modality, softmax-normalised over modalities, per sample."""

    def __init__(self, n_modalities: int, dim: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(n_modalities, dim))
        self.bias = nn.Parameter(torch.zeros(n_modalities))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        scores = (s * self.gate).sum(dim=-1) + self.bias  # (B, M)
        weights = torch.softmax(scores, dim=1).unsqueeze(-1)
        return (weights * s).sum(dim=1)


class AttentionFusion(nn.Module):
    """One learned query attends over the modality tokens (with modality embeddings)."""

    def __init__(self, n_modalities: int, dim: int) -> None:
        super().__init__()
        self.modality_embedding = nn.Parameter(torch.zeros(n_modalities, dim))
        self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        tokens = s + self.modality_embedding
        scores = self.key(tokens) @ self.query / math.sqrt(s.shape[-1])  # (B, M)
        weights = torch.softmax(scores, dim=1).unsqueeze(-1)
        return (weights * self.value(tokens)).sum(dim=1)


def build_fusion(name: str, n_modalities: int, dim: int) -> nn.Module:
    if name == "mean":
        return MeanFusion()
    if name == "concat":
        return ConcatFusion(n_modalities, dim)
    if name == "gated":
        return GatedFusion(n_modalities, dim)
    if name == "attention":
        return AttentionFusion(n_modalities, dim)
    raise ValueError(f"unknown fusion {name!r}")
