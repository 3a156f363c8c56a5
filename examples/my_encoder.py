"""An encoder written outside parse-dfl: a small temporal convolution network.

Use it with `model.encoder: my_encoder:TinyTCN` and this folder on PYTHONPATH (see
docs/plugins.md). parse-dfl builds it as `TinyTCN(input_shape, out_dim, width=...)` for every
modality, so it must map (N, *input_shape) to (N, out_dim); here input_shape is (channels,
time), as for the watch and basic-motions series.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyTCN(nn.Module):
    """Two dilated 1-D convolutions with GroupNorm (no BatchNorm: agents are run stacked
    under vmap), then the mean and the max over time, then a linear map."""

    def __init__(self, input_shape: tuple[int, ...], out_dim: int, width: int = 32) -> None:
        super().__init__()
        if len(input_shape) != 2:
            raise ValueError(f"TinyTCN reads series (channels, time), not shape {input_shape}")
        channels, _time = input_shape
        self.conv = nn.Sequential(
            nn.Conv1d(channels, width, kernel_size=3, padding=1),
            nn.GroupNorm(1, width),
            nn.GELU(),
            nn.Conv1d(width, width, kernel_size=3, padding=2, dilation=2),
            nn.GroupNorm(1, width),
            nn.GELU(),
        )
        self.out = nn.Linear(2 * width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.out(torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1))
