"""The in-memory form every data source produces, and the registry that names the sources.

A source is a function `load(cfg: DataConfig) -> MultimodalDataset`. Every sample carries every
modality; the partitioner later decides which modalities each agent may see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from parse_dfl import registry
from parse_dfl.errors import UserError

if TYPE_CHECKING:
    from parse_dfl.config import DataConfig

# How an encoder reads a modality: vector (N, D), series (N, C, T), image (N, C, H, W).
Kind = Literal["vector", "series", "image"]
EXPECTED_NDIM: dict[str, int] = {"vector": 2, "series": 3, "image": 4}


@dataclass
class MultimodalDataset:
    """All samples of one dataset: one float32 array per modality, int64 labels, optional groups."""

    name: str
    modalities: dict[str, np.ndarray]
    kinds: dict[str, Kind]
    labels: np.ndarray
    n_classes: int
    groups: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_samples(self) -> int:
        return int(self.labels.shape[0])

    def input_shape(self, modality: str) -> tuple[int, ...]:
        """Shape of one sample of `modality` (without the sample axis)."""
        return tuple(self.modalities[modality].shape[1:])

    def validate(self, where: str = "data") -> None:
        """Refuse data a model cannot learn from: bad ranks, mismatched counts, NaN, bad labels."""
        if not self.modalities:
            raise UserError(where, "the dataset has no modalities")
        n = self.labels.shape[0]
        if self.labels.ndim != 1:
            raise UserError(where, f"labels must be one-dimensional, got shape {self.labels.shape}")
        if n == 0:
            raise UserError(where, "the dataset has no samples")
        for m, x in self.modalities.items():
            kind = self.kinds.get(m)
            if kind not in EXPECTED_NDIM:
                raise UserError(where, f"modality '{m}' has unknown kind {kind!r}")
            if x.ndim != EXPECTED_NDIM[kind]:
                raise UserError(
                    where,
                    f"modality '{m}' ({kind}) must have {EXPECTED_NDIM[kind]} axes, got {x.shape}",
                )
            if x.shape[0] != n:
                raise UserError(
                    where, f"modality '{m}' has {x.shape[0]} samples but there are {n} labels"
                )
            if not np.isfinite(x).all():
                raise UserError(where, f"modality '{m}' contains NaN or infinite values")
        if self.labels.min() < 0 or self.labels.max() >= self.n_classes:
            raise UserError(
                where,
                f"labels must lie in [0, {self.n_classes}), found [{self.labels.min()}, "
                f"{self.labels.max()}]",
            )
        if self.groups is not None and self.groups.shape != (n,):
            raise UserError(where, f"groups must have shape ({n},), got {self.groups.shape}")

    def select(self, modalities: list[str]) -> MultimodalDataset:
        """The same samples restricted to `modalities` (in that order)."""
        return MultimodalDataset(
            name=self.name,
            modalities={m: self.modalities[m] for m in modalities},
            kinds={m: self.kinds[m] for m in modalities},
            labels=self.labels,
            n_classes=self.n_classes,
            groups=self.groups,
            class_names=self.class_names,
        )


@dataclass(frozen=True)
class Source:
    """A named data source: how to load it, and how to tell whether it can be loaded here."""

    name: str
    load: Callable[[DataConfig], MultimodalDataset]
    available: Callable[[], tuple[bool, str]]
    description: str
    default_modalities: tuple[str, ...]


SOURCES: dict[str, Source] = registry.table("source")
"""The registry's table of sources (see parse_dfl.registry)."""


def register(source: Source) -> Source:
    return registry.register("source", source.name, source)  # type: ignore[no-any-return]
