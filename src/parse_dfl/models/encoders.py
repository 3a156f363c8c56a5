"""One encoder per modality kind: x_m -> h_m in R^D.

No BatchNorm anywhere: agent models are run stacked under vmap by the batched engine, and
batch statistics would leak between agents.
"""

from __future__ import annotations

import torch
from torch import nn


class MLPEncoder(nn.Module):
    """Vectors (N, F): two hidden layers."""

    def __init__(self, in_features: int, width: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SeriesEncoder(nn.Module):
    """Time series (N, C, T): three strided 1-D convolutions, mean over time, a linear map."""

    def __init__(self, channels: int, width: int, out_dim: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(channels, width, kernel_size=5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv1d(width, width, kernel_size=5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv1d(width, width, kernel_size=5, stride=2, padding=2),
            nn.ReLU(),
        )
        self.out = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.conv(x).mean(dim=-1))


class ImageEncoder(nn.Module):
    """Small images (N, C, H, W): two 3x3 convolutions with pooling, mean over space."""

    def __init__(self, channels: int, width: int, out_dim: int) -> None:
        super().__init__()
        half = max(1, width // 2)
        self.conv = nn.Sequential(
            nn.Conv2d(channels, half, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(half, width, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.out = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.conv(x).mean(dim=(-2, -1)))


def build_encoder(kind: str, input_shape: tuple[int, ...], width: int, out_dim: int) -> nn.Module:
    """The encoder for a modality of this kind and sample shape."""
    if kind == "vector":
        return MLPEncoder(input_shape[0], width, out_dim)
    if kind == "series":
        return SeriesEncoder(input_shape[0], width, out_dim)
    if kind == "image":
        return ImageEncoder(input_shape[0], width, out_dim)
    raise ValueError(f"no encoder for modality kind {kind!r}")


def build_head(in_dim: int, n_classes: int, hidden: int) -> nn.Module:
    """A small classifier: linear, or one hidden layer when `hidden` > 0."""
    if hidden <= 0:
        return nn.Linear(in_dim, n_classes)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
