"""Paired differences over seeds (known values, scipy's paired t-test, the verdict words)
and the convergence rule of a learning curve."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from parse_dfl.experiments.convergence import convergence, flat_from, smooth_finals
from parse_dfl.experiments.stats import paired_by_seed, paired_difference


def test_a_constant_difference_has_a_zero_width_interval() -> None:
    d = paired_difference([2.0, 3.0, 4.0, 5.0, 6.0], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert (d.mean, d.low, d.high, d.n, d.sd) == (1.0, 1.0, 1.0, 5, 0.0)
    assert d.verdict == "win"


def test_known_interval() -> None:
    """Differences 1, 2, 3: mean 2, sd 1, half-width t(0.975, 2) / sqrt(3) = 2.4841."""
    d = paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert d.mean == pytest.approx(2.0)
    assert d.high - d.mean == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert d.verdict == "inside the noise"  # [-0.48, 4.48] holds 0


@pytest.mark.parametrize("seed", range(5))
def test_the_interval_agrees_with_scipys_paired_t_test(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(80, 2, size=5)
    b = a - rng.normal(0.5, 1.0, size=5)
    d = paired_difference(a.tolist(), b.tolist())
    test = stats.ttest_rel(a, b)
    ci = test.confidence_interval(0.95)
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    # the interval excludes 0 exactly when the two-sided test rejects at 5 %
    assert (d.verdict in ("win", "loss")) == (test.pvalue < 0.05)


def test_words_follow_the_interval_not_the_sign() -> None:
    assert paired_difference([0.0, 0.0, 0.0], [1.0, 1.1, 0.9]).verdict == "loss"
    assert paired_difference([1.0, -0.5, 0.8], [0.0, 0.0, 0.0]).verdict == "inside the noise"
    one = paired_difference([1.0], [0.0])
    assert one.verdict == "n/a" and math.isnan(one.low) and one.mean == 1.0


def test_pairs_are_matched_by_seed() -> None:
    d = paired_by_seed({0: 5.0, 1: 6.0, 2: 7.0, 9: 100.0}, {2: 6.0, 1: 5.0, 0: 4.0})
    assert (d.mean, d.sd, d.n) == (1.0, 0.0, 3)
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])


def _history(values: list[float], every: int = 1) -> list[dict[str, float]]:
    return [{"round": every * (i + 1), "mean_accuracy": v} for i, v in enumerate(values)]


def test_a_climbing_curve_has_not_flattened() -> None:
    c = convergence(_history([0.01 * t for t in range(1, 41)]))  # +1 point per round
    assert c.flat is False
    assert c.gain == pytest.approx(20.0)  # mean of rounds 36-40 minus mean of rounds 16-20
    assert c.final == pytest.approx(38.0)
    assert c.rounds_to_reach == 37  # first round at or above 0.95 x 38 = 36.1 points


def test_a_plateau_has_flattened_and_small_gains_count_as_flat() -> None:
    plateau = [min(0.8, 0.1 * t) for t in range(1, 41)]
    c = convergence(_history(plateau))
    assert c.flat is True and c.gain == pytest.approx(0.0) and c.rounds_to_reach == 8
    creeping = [0.8 + 0.0001 * t for t in range(1, 41)]  # +0.2 points over 20 rounds
    assert convergence(_history(creeping)).flat is True
    assert convergence(_history([0.8 + 0.0002 * t for t in range(1, 41)])).flat is False


def test_a_run_too_short_for_the_rule_says_so() -> None:
    """40 rounds evaluated every 5: the point 20 rounds before the end has only 4
    evaluations behind it, so the rule cannot be applied."""
    c = convergence(_history([0.5 + 0.01 * i for i in range(8)], every=5))
    assert c.flat is None and math.isnan(c.gain)
    assert c.final == pytest.approx(100 * np.mean([0.5 + 0.01 * i for i in range(3, 8)]))
    assert convergence([]).flat is None


def test_flat_from_is_the_first_round_after_which_the_curve_stays_flat() -> None:
    """A curve that climbs 1 point a round until round 30 and is level after: cut at round
    R it is flat once the mean of rounds R-24..R-20 is within 0.3 points of the plateau:
    R = 53 (rounds 29..33 average 29.8 against the plateau's 30: a gain of 0.2), not R = 52
    (rounds 28..32: 29.4, a gain of 0.6); a late bump makes it start over."""
    plateau = [min(0.3, 0.01 * t) for t in range(1, 81)]
    assert flat_from(_history(plateau)) == 53
    assert convergence(_history(plateau[:52])).flat is False
    bumped = plateau[:70] + [0.32] * 10  # +2 points at round 71: not flat at the end
    assert flat_from(_history(bumped)) is None
    assert flat_from(_history([0.01 * t for t in range(1, 41)])) is None  # still climbing
    assert flat_from([]) is None


def _record(method: str, seed: int, acc: float, history: list[tuple[int, float]] | None = None):
    """A finished run as the report holds it: 2 agents, one type, global = local = acc."""
    from parse_dfl.experiments.report import RunRecord

    res = {
        "method": method,
        "seed": seed,
        "agents": [{}, {}],
        "by_type": {"acc": acc},
        "by_type_local": {"acc": acc},
        "mean_accuracy": acc,
        "mean_local_accuracy": acc,
        "bytes_sent": 2 * (history[-1][0] if history else 0),
        "history": [
            {"round": i + 1, "bytes_sent": 2 * b, "mean_accuracy": a, "mean_local_accuracy": a}
            for i, (b, a) in enumerate(history or [])
        ],
    }
    return RunRecord(Path(f"{method}/{seed}"), res, {})


def test_smoothed_finals_are_the_mean_of_the_last_evaluations() -> None:
    hist = [
        {
            "round": 10 * i,
            "mean_accuracy": a,
            "mean_local_accuracy": a / 2,
            "by_type": {"x": a, "y": 1 - a},
            "by_type_local": {"x": a},
        }
        for i, a in enumerate([0.1, 0.5, 0.6, 0.8])
    ]
    res = {"history": hist, "mean_accuracy": 0.8, "mean_local_accuracy": 0.4, "by_type": {}}
    smooth_finals(res, 3)
    assert res["mean_accuracy"] == pytest.approx((0.5 + 0.6 + 0.8) / 3)
    assert res["mean_local_accuracy"] == pytest.approx((0.5 + 0.6 + 0.8) / 6)
    assert res["by_type"]["y"] == pytest.approx(1 - (0.5 + 0.6 + 0.8) / 3)
    assert res["by_type_local"] == {"x": pytest.approx((0.5 + 0.6 + 0.8) / 3)}
    smooth_finals(res, 10)  # more than there are: all of them
    assert res["mean_accuracy"] == pytest.approx(0.5)
    smooth_finals(res, 1)  # the last evaluation
    assert res["mean_accuracy"] == pytest.approx(0.8)


def test_paired_cells_pick_the_best_baseline_and_pair_by_seed() -> None:
    from parse_dfl.experiments.report import paired_cells

    runs = [_record("parse", s, 0.80 + 0.01 * s) for s in range(5)]
    runs += [_record("dsgd-task", s, 0.79 + 0.01 * s) for s in range(5)]  # best baseline
    runs += [_record("local", s, 0.70) for s in range(5)]
    runs += [_record("centralized", s, 0.95) for s in range(5)]  # a reference, not a rival
    cells = paired_cells(runs)
    assert {(c.protocol, c.column) for c in cells} == {
        (p, c) for p in ("global", "local") for c in ("acc", "mean")
    }
    for c in cells:
        assert c.method == "parse" and c.baseline == "dsgd-task"
        assert (c.diff.mean, c.diff.n) == (pytest.approx(1.0), 5)
        assert (c.diff.low, c.diff.high) == (pytest.approx(1.0), pytest.approx(1.0))
        assert c.diff.verdict == "win"


def test_accuracy_at_equal_bytes() -> None:
    from parse_dfl.experiments.report import accuracy_at_bytes, byte_budget

    points = [(100.0, 50.0), (200.0, 60.0), (300.0, 64.0)]
    assert accuracy_at_bytes(points, 150.0) == pytest.approx(55.0)
    assert accuracy_at_bytes(points, 300.0) == 64.0
    assert accuracy_at_bytes(points, 1e9) == 64.0  # never spends that much: its final
    assert accuracy_at_bytes(points, 50.0) is None  # first evaluation already costs more
    flat = [(0.0, 30.0), (0.0, 40.0)]  # sends nothing (local): its last accuracy
    assert accuracy_at_bytes(flat, 150.0) == 40.0
    runs = [
        _record("parse", 0, 0.8, [(100, 0.5), (200, 0.8)]),
        _record("dsgd-task", 0, 0.8, [(300, 0.5), (600, 0.8)]),
        _record("local", 0, 0.7, [(0, 0.6), (0, 0.7)]),
        _record("centralized", 0, 0.9, [(50, 0.9), (100, 0.9)]),  # a reference: no budget
    ]
    assert byte_budget(runs) == (200.0, "parse")


def test_the_missing_sensor_table_pairs_ours_with_the_best_baseline_per_column() -> None:
    """PARSE keeps 70 % without gyro where dsgd-task (the better baseline there) keeps
    60 + seed: a win of 10 - seed on average; with every modality dsgd-task is ahead."""
    from parse_dfl.experiments.report import Collection, _missing_section

    def with_missing(method: str, seed: int, full: float, no_acc: float, no_gyro: float):
        r = _record(method, seed, full)
        r.res["missing_modality"] = {
            "mean": {"all": full, "dropped": {"acc": no_acc, "gyro": no_gyro}},
            "by_type": {},
            "unimodal": {},
        }
        return r

    runs = [with_missing("parse", s, 0.80, 0.75, 0.70) for s in range(5)]
    runs += [with_missing("dsgd-task", s, 0.82, 0.50, 0.60 + 0.01 * s) for s in range(5)]
    runs += [with_missing("local", s, 0.70, 0.60, 0.40) for s in range(5)]
    runs.append(_record("harmony", 0, 0.9))  # no missing_modality: not in the table
    col = Collection(root=Path("."), runs=runs, group_keys=[], method_bound={}, fixed={})
    md = "\n".join(_missing_section(col, [((), runs)]))
    assert "| method | every modality | without acc | without gyro |" in md
    assert "harmony" not in md
    row = next(line for line in md.splitlines() if line.startswith("| parse − best baseline"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert cells[0].startswith("-2.0 [-2.0, -2.0] **loss** vs dsgd-task")
    assert cells[1].startswith("+15.0 [+15.0, +15.0] **win** vs local")
    assert cells[2].startswith("+8.0 [") and cells[2].endswith("**win** vs dsgd-task")
