"""Encoders x_m -> h_m in R^D: one built-in per modality kind, or a user's own.

Every encoder is built as `Class(input_shape, out_dim)` and maps (N, *input_shape) to
(N, out_dim); one that also takes a `width` keyword gets the agent's encoder width. The
built-ins are registered as mlp, conv1d and conv2d; `model.encoder: auto` picks by kind, any
other value (a registered name or package.module:Class) is used for every modality.

No BatchNorm anywhere: agent models are run stacked under vmap by the batched engine, and
batch statistics would leak between agents.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from parse_dfl import registry
from parse_dfl.errors import UserError


class MLPEncoder(nn.Module):
    """Vectors (N, F): two hidden layers."""

    def __init__(self, input_shape: tuple[int, ...], out_dim: int, width: int = 64) -> None:
        super().__init__()
        (in_features,) = input_shape
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

    def __init__(self, input_shape: tuple[int, ...], out_dim: int, width: int = 64) -> None:
        super().__init__()
        channels, _length = input_shape
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

    def __init__(self, input_shape: tuple[int, ...], out_dim: int, width: int = 64) -> None:
        super().__init__()
        channels, _height, _width = input_shape
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


registry.register("encoder", "mlp", MLPEncoder)
registry.register("encoder", "conv1d", SeriesEncoder)
registry.register("encoder", "conv2d", ImageEncoder)
BY_KIND = {"vector": "mlp", "series": "conv1d", "image": "conv2d"}
"""What `model.encoder: auto` builds for each modality kind."""

_checked: set[tuple[Any, tuple[int, ...], int]] = set()


def build_encoder(
    kind: str, input_shape: tuple[int, ...], width: int, out_dim: int, encoder: str = "auto"
) -> nn.Module:
    """The encoder of one modality: every model builds its encoders here, so `model.encoder`
    reaches every method. A user's encoder that cannot be built, or maps to the wrong
    shape, is a UserError naming model.encoder (not a traceback deep in training)."""
    if encoder == "auto":
        if kind not in BY_KIND:
            raise ValueError(f"no encoder for modality kind {kind!r}")
        cls = registry.resolve("encoder", BY_KIND[kind], "model.encoder")
        return cls(tuple(input_shape), out_dim, width=width)  # type: ignore[no-any-return]
    cls = registry.resolve("encoder", encoder, "model.encoder")
    shape = tuple(int(n) for n in input_shape)
    kwargs = {"width": width} if "width" in _parameters(cls) else {}
    try:
        module = cls(shape, out_dim, **kwargs)
    except Exception as e:
        raise UserError(
            "model.encoder", f"{encoder}{(shape, out_dim)} failed: {type(e).__name__}: {e}"
        ) from None
    if not isinstance(module, nn.Module):
        raise UserError("model.encoder", f"{encoder}(...) returned a {type(module).__name__}")
    key = (cls, shape, out_dim)
    if key not in _checked:
        _check_output(module, encoder, shape, out_dim)
        _checked.add(key)
    return module


def _parameters(cls: Any) -> set[str]:
    try:
        return set(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return set()


def _check_output(module: nn.Module, encoder: str, shape: tuple[int, ...], out_dim: int) -> None:
    """One forward pass on two zero samples, in eval mode, with the random state restored
    (why: a check must not change what the run draws next)."""
    param = next(module.parameters(), None)
    x = torch.zeros((2, *shape), device=param.device if param is not None else None)
    if param is not None:
        x = x.to(param.dtype)
    was_training = module.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            module.eval()
            out = module(x)
    except Exception as e:
        raise UserError(
            "model.encoder",
            f"{encoder} fails on a batch of shape {tuple(x.shape)}: {type(e).__name__}: {e}",
        ) from None
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, out_dim):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(
            "model.encoder",
            f"{encoder} maps (N, *{shape}) to {got} for N=2, not (N, {out_dim})",
        )


def build_head(in_dim: int, n_classes: int, hidden: int) -> nn.Module:
    """A small classifier: linear, or one hidden layer when `hidden` > 0."""
    if hidden <= 0:
        return nn.Linear(in_dim, n_classes)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
