"""Paired differences over seeds, with a t confidence interval, and the word they earn.

Two methods run with the same seed share the data split, the graph and the initial values,
so the difference of their accuracies on that seed removes what the seed alone does; over n
seeds, the mean difference has the t interval mean ± t(n-1) · sd / √n (the interval of the
paired t-test). A difference is called a win or a loss only when that interval excludes 0;
otherwise it is inside the noise, whatever its sign.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True)
class PairedDifference:
    """Mean of the per-seed differences a - b, its confidence interval, and how many pairs."""

    mean: float
    low: float
    high: float
    n: int
    sd: float  # sample std of the differences (nan below 2 pairs)

    @property
    def verdict(self) -> str:
        """'win' / 'loss' when the interval excludes 0, 'inside the noise' when it holds 0,
        'n/a' below 2 pairs (no interval)."""
        if self.n < 2 or math.isnan(self.low):
            return "n/a"
        if self.low > 0:
            return "win"
        if self.high < 0:
            return "loss"
        return "inside the noise"


def paired_difference(
    a: Sequence[float], b: Sequence[float], level: float = LEVEL
) -> PairedDifference:
    """Mean of a[i] - b[i] with its two-sided `level` t interval (scipy.stats.t). A constant
    difference has a zero-width interval; fewer than two pairs give an interval of nan."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length ({len(a)} and {len(b)})")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, 0, math.nan)
    mean = float(d.mean())
    if n < 2:
        return PairedDifference(mean, math.nan, math.nan, n, math.nan)
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return PairedDifference(mean, mean - half, mean + half, n, sd)


def paired_by_seed(
    a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL
) -> PairedDifference:
    """`paired_difference` over the seeds both have (seed -> value): an unpaired seed says
    nothing about the difference, so it is left out."""
    seeds = sorted(set(a) & set(b))
    return paired_difference([a[s] for s in seeds], [b[s] for s in seeds], level)
