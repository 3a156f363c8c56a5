"""Synthetic two-modality data with controlled redundant, unique and synergistic information.

Generative design (C = data.n_classes, D = data.dim, N = data.n_samples):

* Per sample draw five independent discrete latent codes, each uniform in [0, C):
  r (redundant), ua (unique to a), ub (unique to b), s1 and s2 (synergistic halves).
* Modality a observes (r, ua, s1), modality b observes (r, ub, s2):

      x_a = A_r[:, r] + A_u[:, ua] + A_s[:, s1] + noise * e_a
      x_b = B_r[:, r] + B_u[:, ub] + B_s[:, s2] + noise * e_b

  Every prototype matrix (D x C) has independent standard-normal entries, so each prototype
  contributes unit variance per coordinate; a and b have their own matrices (the redundant code r
  gets a different prototype in a than in b). e_a, e_b are standard-normal, scaled by data.noise.
  There is no further nonlinearity: each code is linearly decodable from its modality.
* The label depends on data.setting:

      redundancy  -> r                   (either modality alone suffices)
      uniqueness0 -> ua                  (only a carries it)
      uniqueness1 -> ub                  (only b carries it)
      synergy     -> (s1 + s2) mod C     (each modality alone carries zero information;
                                          both together determine it, non-linearly)

  A '+'-joined combination of distinct settings (e.g. "redundancy+synergy") labels each sample
  with the mixed-radix number of its factors, the first factor most significant:
  label = f_1 * C^(k-1) + ... + f_k, so there are C**k classes.

The data depend only on (N, D, C) and data.noise, never on the run seed: a numpy Generator seeded
with (1234, N, D, C) draws the prototypes, codes and unit noise, so every setting shares the same
inputs and differs only in its labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from parse_dfl.data.base import MultimodalDataset, Source, register
from parse_dfl.errors import UserError

if TYPE_CHECKING:
    from parse_dfl.config import DataConfig

SETTINGS: tuple[str, ...] = ("redundancy", "uniqueness0", "uniqueness1", "synergy")
SEED = 1234


def available() -> tuple[bool, str]:
    return True, ""


def parse_setting(setting: str) -> list[str]:
    """Split a '+'-joined setting into its distinct, known parts."""
    parts = [p.strip() for p in str(setting).split("+")]
    valid = ", ".join(SETTINGS)
    if any(not p for p in parts):
        raise UserError("data.setting", f"'{setting}' has an empty part (valid parts: {valid})")
    unknown = [p for p in parts if p not in SETTINGS]
    if unknown:
        raise UserError(
            "data.setting",
            f"unknown setting {', '.join(repr(p) for p in unknown)} (choose from {valid}, "
            "or join distinct ones with '+', e.g. redundancy+synergy)",
        )
    if len(set(parts)) != len(parts):
        raise UserError("data.setting", f"'{setting}' lists a setting twice")
    return parts


def load(cfg: DataConfig) -> MultimodalDataset:
    parts = parse_setting(cfg.setting)
    n, dim, c = int(cfg.n_samples), int(cfg.dim), int(cfg.n_classes)
    rng = np.random.default_rng([SEED, n, dim, c])
    # Prototypes: a's (redundant, unique, synergy half), then b's.
    a_r, a_u, a_s, b_r, b_u, b_s = (rng.standard_normal((dim, c)) for _ in range(6))
    r, ua, ub, s1, s2 = rng.integers(0, c, size=(5, n))
    e_a = rng.standard_normal((n, dim))
    e_b = rng.standard_normal((n, dim))
    x_a = a_r[:, r].T + a_u[:, ua].T + a_s[:, s1].T + cfg.noise * e_a
    x_b = b_r[:, r].T + b_u[:, ub].T + b_s[:, s2].T + cfg.noise * e_b

    factors = {"redundancy": r, "uniqueness0": ua, "uniqueness1": ub, "synergy": (s1 + s2) % c}
    labels = np.zeros(n, dtype=np.int64)
    for p in parts:
        labels = labels * c + factors[p]
    n_classes = c ** len(parts)
    digits = np.indices((c,) * len(parts)).reshape(len(parts), -1).T  # mixed-radix order
    class_names = ["+".join(f"{p}={d}" for p, d in zip(parts, row, strict=True)) for row in digits]
    return MultimodalDataset(
        name="synthetic-pid",
        modalities={"a": x_a.astype(np.float32), "b": x_b.astype(np.float32)},
        kinds={"a": "vector", "b": "vector"},
        labels=labels,
        n_classes=n_classes,
        groups=None,
        class_names=class_names,
    )


SOURCE = register(
    Source(
        name="synthetic-pid",
        load=load,
        available=available,
        description="synthetic vectors a and b with controlled redundant / unique / synergistic "
        "information about the label (data.setting, n_samples, dim, n_classes, noise)",
        default_modalities=("a", "b"),
    )
)
