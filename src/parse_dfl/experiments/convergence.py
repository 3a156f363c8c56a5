"""Has a run's learning curve flattened, and how fast did it get there?

A comparison of methods after R rounds says who is ahead *at R*; if a curve is still
climbing, more rounds could reorder the methods. The rule here is stated, fixed and applied
to every run alike: the curve is the mean accuracy over agents at each evaluation; smoothed,
it is the mean of the last `last` evaluations up to a round. The run has **flattened** when
the smoothed curve at the final round gains less than `tol` points over its value `window`
rounds earlier. It is **too short to tell** when fewer than `last` evaluations lie at or
before that earlier round (with `train.eval_every: 1`, a run needs window + last rounds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

LAST = 5  # evaluations averaged into one smoothed point
WINDOW = 20  # rounds between the two smoothed points compared
TOL = 0.3  # points (%): a smaller gain over WINDOW rounds counts as flat
REACH = 0.95  # share of the final (smoothed) accuracy whose first round is reported


@dataclass(frozen=True)
class Convergence:
    """What one curve says: flat (None: too short to tell), the gain in points over the last
    `window` rounds, the smoothed final accuracy (%), and the first evaluated round at which
    the accuracy reached `REACH` of it (None: no evaluation)."""

    flat: bool | None
    gain: float
    final: float
    rounds_to_reach: int | None


def rule_text(last: int = LAST, window: int = WINDOW, tol: float = TOL) -> str:
    """The rule in words, for the report."""
    return (
        f"flattened = the mean over the last {last} evaluations gains less than {tol} points "
        f"over the same mean {window} rounds earlier; too short to tell when fewer than "
        f"{last} evaluations precede that earlier round"
    )


def _smoothed(rounds: Sequence[int], acc: Sequence[float], upto: float, last: int) -> float:
    """Mean of the last `last` evaluations at or before round `upto` (nan if fewer)."""
    seen = [a for t, a in zip(rounds, acc, strict=True) if t <= upto]
    return math.fsum(seen[-last:]) / last if len(seen) >= last else math.nan


def convergence(
    history: Sequence[dict[str, Any]],
    key: str = "mean_accuracy",
    last: int = LAST,
    window: int = WINDOW,
    tol: float = TOL,
) -> Convergence:
    """Apply the rule (module docstring) to `history[i][key]` (accuracy as a fraction)."""
    points = sorted((int(h["round"]), 100.0 * float(h[key])) for h in history if key in h)
    if not points:
        return Convergence(None, math.nan, math.nan, None)
    rounds = [t for t, _ in points]
    acc = [a for _, a in points]
    end = rounds[-1]
    final = _smoothed(rounds, acc, end, min(last, len(acc)))
    earlier = _smoothed(rounds, acc, end - window, last)
    enough = len(acc) >= last and not math.isnan(earlier)
    gain = _smoothed(rounds, acc, end, last) - earlier if enough else math.nan
    reach = next((t for t, a in points if a >= REACH * final), None)
    return Convergence(gain < tol if enough else None, gain, final, reach)


def flat_from(
    history: Sequence[dict[str, Any]],
    key: str = "mean_accuracy",
    last: int = LAST,
    window: int = WINDOW,
    tol: float = TOL,
) -> int | None:
    """The first evaluated round R such that the curve cut at R, and at every later
    evaluation, is flat by the rule: from R on, more rounds would not have changed the
    verdict. None when the whole curve is not flat (or too short to tell)."""
    seen = sorted((int(h["round"]), h) for h in history if key in h)
    first = None
    for i in range(len(seen) - 1, -1, -1):
        if not convergence([h for _, h in seen[: i + 1]], key, last, window, tol).flat:
            break
        first = seen[i][0]
    return first


def smooth_finals(res: dict[str, Any], last: int) -> None:
    """Replace a run's final accuracies (mean and per agent type, both protocols) by their
    mean over the last `last` evaluations of its history, in place: with a rate that makes
    the curve swing between evaluations, one evaluation is a noisy final. Fewer evaluations
    than `last`: the mean of those there are."""
    hist = [h for h in res.get("history", []) if "mean_accuracy" in h][-last:]
    if not hist:
        return
    for key in ("mean_accuracy", "mean_local_accuracy"):
        vals = [float(h[key]) for h in hist if key in h]
        if vals:
            res[key] = math.fsum(vals) / len(vals)
    for key in ("by_type", "by_type_local"):
        per_type: dict[str, list[float]] = {}
        for h in hist:
            for t, v in h.get(key, {}).items():
                if v is not None:
                    per_type.setdefault(t, []).append(float(v))
        if per_type:
            res[key] = {t: math.fsum(v) / len(v) for t, v in per_type.items()}
