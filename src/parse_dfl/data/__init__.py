"""Data sources (one module each, registered by name) and the loader that prepares them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from parse_dfl import registry
from parse_dfl.data import basic_motions, mfeat, npz, synthetic_pid, watch  # noqa: F401 (register)
from parse_dfl.data.base import SOURCES, Kind, MultimodalDataset, Source, register
from parse_dfl.errors import UserError

if TYPE_CHECKING:
    from parse_dfl.config import DataConfig

__all__ = ["SOURCES", "Kind", "MultimodalDataset", "Source", "load_dataset", "register"]


def _standardize(x: np.ndarray, kind: Kind) -> np.ndarray:
    """z-score per feature (vector), per channel (series, image); constant features stay 0."""
    axes = {"vector": (0,), "series": (0, 2), "image": (0, 2, 3)}[kind]
    mean = x.mean(axis=axes, keepdims=True)
    std = x.std(axis=axes, keepdims=True)
    return ((x - mean) / np.where(std > 1e-8, std, 1.0)).astype(np.float32)


def load_dataset(cfg: DataConfig) -> MultimodalDataset:
    """Load the configured source, keep the configured modalities, standardize."""
    source: Source = registry.resolve("source", cfg.name, "data.name")
    ok, why = source.available()
    if not ok:
        raise UserError("data.name", f"source '{cfg.name}' is not available: {why}")
    ds = source.load(cfg)
    mods = list(cfg.modalities) if cfg.modalities else list(source.default_modalities)
    if not mods:
        mods = list(ds.modalities)
    if len(set(mods)) != len(mods):
        raise UserError("data.modalities", f"a modality is listed twice: {mods}")
    missing = [m for m in mods if m not in ds.modalities]
    if missing:
        raise UserError(
            "data.modalities",
            f"'{cfg.name}' has no modality {', '.join(repr(m) for m in missing)} "
            f"(it has {', '.join(ds.modalities)})",
        )
    ds = ds.select(mods)
    if cfg.standardize:
        ds.modalities = {m: _standardize(x, ds.kinds[m]) for m, x in ds.modalities.items()}
    else:
        ds.modalities = {m: x.astype(np.float32, copy=False) for m, x in ds.modalities.items()}
    return ds
