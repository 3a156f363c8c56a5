"""Partial information decomposition: textbook gates, identities, a reference solver, data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from parse_dfl.config import load_config
from parse_dfl.diagnostics import dataset_pid, default_clusters, pid_discrete, pid_estimate
from parse_dfl.diagnostics.pid import DEFAULT_SHUFFLES
from parse_dfl.diagnostics.pid import assess as pid_assess

TERMS = ("R", "U1", "U2", "S")


def gate(f, n1: int = 2, n2: int = 2, ny: int = 2) -> np.ndarray:
    """p[x1, x2, y] of uniform independent X1, X2 and Y = f(X1, X2)."""
    p = np.zeros((n1, n2, ny))
    for a in range(n1):
        for b in range(n2):
            p[a, b, f(a, b)] += 1.0
    return p / p.sum()


def mi(pxy: np.ndarray) -> float:
    px, py = pxy.sum(1, keepdims=True), pxy.sum(0, keepdims=True)
    nz = pxy > 0
    return float((pxy[nz] * np.log2(pxy[nz] / (px * py)[nz])).sum())


def min_info_alternating(p: np.ndarray, iters: int = 3000) -> float:
    """min over Delta_P of I_q(X1,X2;Y) by alternating I-projections (an independent algorithm).

    min_q I_q(X1,X2;Y) = min_q min_s KL(q || s(x1,x2) p(y)); alternately set s = q(x1, x2) and
    I-project s p(y) onto Delta_P (Sinkhorn scaling per y). Slow (sublinear) but simple.
    """
    p1, p2, py = p.sum(1), p.sum(0), p.sum((0, 1))
    q = p1[:, None, :] * p2[None, :, :] / py
    for _ in range(iters):
        k = np.broadcast_to(q.sum(2, keepdims=True), q.shape) * (q > 0)
        for _ in range(50):
            k = k * (p1 / np.maximum(k.sum(1), 1e-300))[:, None, :]
            k = k * (p2 / np.maximum(k.sum(0), 1e-300))[None, :, :]
        q = k
    s = q.sum(2, keepdims=True)
    nz = q > 0
    return float(-(py * np.log2(py)).sum() + (q[nz] * np.log2((q / s)[nz])).sum())


def min_info_brute_force_2x2x2(p: np.ndarray) -> float:
    """min over Delta_P of I_q(X1,X2;Y) for binary X1, X2, Y: a convex 2-parameter problem.

    For each y, q(., ., y) is a 2x2 table with fixed margins, q(0, 0, y) = a_y in an interval;
    the objective is convex in (a_0, a_1), so nested bounded scalar minimisation is exact.
    """
    p1, p2, py = p.sum(1), p.sum(0), p.sum((0, 1))

    def table(a: tuple[float, float]) -> np.ndarray:
        q = np.zeros((2, 2, 2))
        for y in range(2):
            q[0, 0, y] = a[y]
            q[0, 1, y] = p1[0, y] - a[y]
            q[1, 0, y] = p2[0, y] - a[y]
            q[1, 1, y] = p1[1, y] - p2[0, y] + a[y]
        return np.maximum(q, 0.0)

    def info(a: tuple[float, float]) -> float:
        q = table(a)
        s = q.sum(2, keepdims=True)
        nz = q > 0
        return float(-(py * np.log2(py)).sum() + (q[nz] * np.log2((q / s)[nz])).sum())

    bounds = [
        (max(0.0, p2[0, y] - p1[1, y]), min(p1[0, y], p2[0, y])) for y in range(2)
    ]  # every cell >= 0

    def inner(a0: float) -> float:
        res = minimize_scalar(
            lambda a1: info((a0, a1)), bounds=bounds[1], method="bounded", options={"xatol": 1e-12}
        )
        return float(res.fun)

    return float(
        minimize_scalar(inner, bounds=bounds[0], method="bounded", options={"xatol": 1e-12}).fun
    )


def assert_terms(out: dict, **expected: float) -> None:
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, abs=1e-6), (key, out)


def test_xor_is_pure_synergy() -> None:
    out = pid_discrete(gate(lambda a, b: a ^ b))
    assert_terms(out, R=0.0, U1=0.0, U2=0.0, S=1.0, I=1.0)


def test_copy_is_pure_redundancy() -> None:
    p = np.zeros((2, 2, 2))
    p[0, 0, 0] = p[1, 1, 1] = 0.5  # X1 = X2 = Y, a uniform bit
    assert_terms(pid_discrete(p), R=1.0, U1=0.0, U2=0.0, S=0.0, I=1.0)


def test_unique_information_of_each_source() -> None:
    # Y = X1, X2 independent noise (and the mirror image).
    assert_terms(pid_discrete(gate(lambda a, b: a)), R=0.0, U1=1.0, U2=0.0, S=0.0, I=1.0)
    assert_terms(pid_discrete(gate(lambda a, b: b)), R=0.0, U1=0.0, U2=1.0, S=0.0, I=1.0)


def test_and_gate_matches_the_broja_values() -> None:
    out = pid_discrete(gate(lambda a, b: a & b))
    # Bertschinger et al. (2014): R = I(X1;Y) = 1.5 - 0.75 log2 3 = 0.3113, S = 0.5, U = 0.
    r = 1.5 - 0.75 * np.log2(3.0)
    assert_terms(out, R=r, U1=0.0, U2=0.0, S=0.5, I=r + 0.5)
    assert out["estimator"] == "broja"


def test_two_bit_copy_splits_into_unique_parts() -> None:
    # Y = (X1, X2) for independent bits: each source carries 1 bit of its own (BROJA: U1=U2=1).
    p = np.zeros((2, 2, 4))
    for a in range(2):
        for b in range(2):
            p[a, b, 2 * a + b] = 0.25
    assert_terms(pid_discrete(p), R=0.0, U1=1.0, U2=1.0, S=0.0, I=2.0)


def test_matches_brute_force_on_binary_tables() -> None:
    rng = np.random.default_rng(0)
    for alpha in (1.0, 1.0, 0.3, 0.3):
        p = rng.dirichlet(np.full(8, alpha)).reshape(2, 2, 2)
        out = pid_discrete(p)
        assert out["I"] - out["S"] == pytest.approx(min_info_brute_force_2x2x2(p), abs=1e-7)


@pytest.mark.parametrize("shape", [(3, 2, 2), (3, 3, 2), (2, 3, 3)])
def test_matches_alternating_projections(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for _ in range(2):
        p = rng.dirichlet(np.ones(np.prod(shape))).reshape(shape)
        out = pid_discrete(p)
        i_star = out["I"] - out["S"]
        reference = min_info_alternating(p)
        # The reference is a feasible point, so the optimum can only be lower; both agree.
        assert i_star <= reference + 1e-9
        assert i_star == pytest.approx(reference, abs=1e-5)


@pytest.mark.parametrize("shape", [(4, 5, 3), (10, 10, 4), (8, 6, 10)])
def test_identities_on_random_distributions(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(7)
    for alpha in (1.0, 0.1):  # dense and sparse tables
        p = rng.dirichlet(np.full(np.prod(shape), alpha)).reshape(shape)
        out = pid_discrete(p)
        assert all(out[k] >= 0 for k in TERMS)
        assert out["R"] + out["U1"] + out["U2"] + out["S"] == pytest.approx(out["I"], abs=1e-8)
        assert out["R"] + out["U1"] == pytest.approx(mi(p.sum(1)), abs=1e-8)
        assert out["R"] + out["U2"] == pytest.approx(mi(p.sum(0)), abs=1e-8)
        assert out["I"] == pytest.approx(mi(p.reshape(-1, shape[2])), abs=1e-10)
        assert out["gap"] < 1e-7
        # Swapping the sources swaps the unique terms.
        swapped = pid_discrete(p.transpose(1, 0, 2))
        for a, b in (("R", "R"), ("U1", "U2"), ("U2", "U1"), ("S", "S")):
            assert swapped[a] == pytest.approx(out[b], abs=1e-7)


def test_counts_degenerate_tables_and_bad_input() -> None:
    counts = gate(lambda a, b: a ^ b) * 40  # unnormalised counts are fine
    assert pid_discrete(counts)["S"] == pytest.approx(1.0, abs=1e-6)
    constant_y = np.ones((3, 2, 1))
    assert_terms(pid_discrete(constant_y), R=0.0, U1=0.0, U2=0.0, S=0.0, I=0.0)
    constant_x1 = np.array([[[0.25, 0.25], [0.5, 0.0]]])  # |X1| = 1: Y depends on X2 only
    out = pid_discrete(constant_x1)
    assert_terms(out, R=0.0, U1=0.0, S=0.0)
    assert out["U2"] == pytest.approx(out["I"]) and out["I"] > 0.3
    with pytest.raises(ValueError):
        pid_discrete(-np.ones((2, 2, 2)))
    with pytest.raises(ValueError):
        pid_discrete(np.ones((2, 2)))


def test_estimate_recovers_xor_from_noisy_samples() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    b1, b2 = rng.integers(0, 2, n), rng.integers(0, 2, n)
    x1 = b1[:, None] * 4.0 + rng.normal(0, 0.3, (n, 3))  # well-separated bits in 3-D
    x2 = b2[:, None] * 4.0 + rng.normal(0, 0.3, (n, 5))
    out = pid_estimate(x1, x2, b1 ^ b2, clusters=2, shuffles=2)
    assert out["S"] == pytest.approx(1.0, abs=0.01)
    assert max(out["R"], out["U1"], out["U2"]) < 0.01
    assert out["null"]["S"] < 0.01 and out["null"]["I"] < 0.01
    assert out["n_samples"] == n and out["n_classes"] == 2 and out["clusters"] == 2
    assert out["bias_joint"] == pytest.approx(3 / (2 * n * np.log(2)))
    with pytest.raises(ValueError):
        pid_estimate(x1, x2[:-1], b1)


@pytest.mark.parametrize(
    ("setting", "term"),
    [("redundancy", "R"), ("uniqueness0", "U1"), ("uniqueness1", "U2"), ("synergy", "S")],
)
def test_synthetic_pid_dominant_term(setting: str, term: str) -> None:
    # Each modality is a mixture of C**3 = 64 blobs (codes r, u, s); the default clusters of
    # dataset_pid resolve them. The label carries log2(4) = 2 bits.
    cfg = load_config(
        None,
        [
            "data.name=synthetic-pid",
            f"data.setting={setting}",
            "data.n_samples=3000",
            "data.noise=1.0",
        ],
    )
    assert default_clusters(cfg) == 64
    out = dataset_pid(cfg)
    assert out["modalities"] == ["a", "b"] and out["n_samples"] == 3000
    assert out[term] > 1.6, out
    for other in TERMS:
        if other != term:
            assert out[other] < 0.2, (other, out)
    assert sum(out[k] for k in TERMS) == pytest.approx(out["I"], abs=1e-8)


# --- when an estimate is not to be read --------------------------------------------------------


def test_too_few_samples_per_cell_warn_and_terms_at_the_null_are_marked() -> None:
    rng = np.random.default_rng(1)
    n = 60
    y = rng.integers(0, 4, n)
    x1 = y[:, None] + rng.normal(0, 0.3, (n, 2))  # x1 knows y; x2 is noise
    x2 = rng.normal(size=(n, 2))
    out = pid_estimate(x1, x2, y, clusters=8, shuffles=3)
    assert out["samples_per_cell"] == pytest.approx(n / (8 * 8 * 4))
    assert out["cells"] == [8, 8, 4]
    assert any("per cell, fewer than 1" in w for w in out["warnings"])
    assert "S" in out["near_null"] and "U1" not in out["near_null"]
    assert pid_assess(out) == (out["warnings"], out["near_null"])


def test_a_well_sampled_estimate_has_no_warning() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    b1, b2 = rng.integers(0, 2, n), rng.integers(0, 2, n)
    x1 = b1[:, None] * 4.0 + rng.normal(0, 0.3, (n, 3))
    x2 = b2[:, None] * 4.0 + rng.normal(0, 0.3, (n, 3))
    out = pid_estimate(x1, x2, b1 ^ b2, clusters=2, shuffles=2)
    assert out["warnings"] == []
    assert out["near_null"] == ["R", "U1", "U2"]  # all zero: no information in them
    # Without shuffles the Miller figure stands in for the null, and nothing is marked.
    noise = pid_estimate(rng.normal(size=(300, 2)), rng.normal(size=(300, 2)), b1[:300], 6)
    assert "null" not in noise and noise["near_null"] == []
    assert any("Miller's bias estimate" in w for w in noise["warnings"])


def test_pid_command_prints_the_null_and_warns_on_basic_motions(capsys) -> None:
    from parse_dfl.cli import build_parser, main

    assert build_parser().parse_args(["pid", "any.yaml"]).shuffles == DEFAULT_SHUFFLES
    assert main(["pid", "configs/quick.yaml"]) == 0
    out = capsys.readouterr().out
    assert "the first two of the configured acc, gyro; --modalities a,b" in out
    assert f"null ({DEFAULT_SHUFFLES} label shuffles)" in out
    assert "not clearly above null" in out
    assert "warning: 80 samples for 10 x 10 x 4 = 400 cells (0.2 per cell" in out
    assert "at most 4 cells per modality (--clusters)" in out

    assert main(["pid", "configs/quick.yaml", "--modalities", "gyro,acc", "--shuffles", "0"]) == 0
    out = capsys.readouterr().out
    assert "PID of (gyro, acc)" in out and "chosen with --modalities" in out
    assert "null (" not in out and "no null: --shuffles 0" in out
    for bad in ("gyro", "acc,acc", "acc,magnet"):
        assert main(["pid", "configs/quick.yaml", "--modalities", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("parse-dfl: error: --modalities:"), err


def test_dataset_pid_of_a_chosen_pair_outside_the_configured_ones() -> None:
    cfg = load_config(None, ["data.name=mfeat"])  # configured: fou, zer (the default pair)
    out = dataset_pid(cfg, modalities=["kar", "fou"], clusters=4)
    assert out["modalities"] == ["kar", "fou"] and out["pair_given"]
    assert out["configured"] is None
    assert dataset_pid(cfg, clusters=4)["configured"] == ["fou", "zer"]
