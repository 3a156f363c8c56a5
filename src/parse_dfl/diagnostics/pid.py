"""Partial information decomposition (PID) of two modalities about the label.

For two sources X1, X2 and a target Y, a PID splits the joint mutual information

    I(X1,X2;Y) = R + U1 + U2 + S,   I(X1;Y) = R + U1,   I(X2;Y) = R + U2

into redundancy R, uniqueness U1 and U2, and synergy S (all in bits). We use the BROJA definition
(Bertschinger, Rauh, Olbrich, Jost & Ay, 2014), the one Liang et al. (2023) estimate for
multimodal datasets. Let Delta_P be the distributions q(x1, x2, y) with the same pair marginals
q(x1, y) = p(x1, y) and q(x2, y) = p(x2, y) as the data. Every q in Delta_P has the same
I(X1;Y) and I(X2;Y); what changes is how much the *pair* tells about Y. Then

    U1 = min_{q in Delta_P} I_q(X1;Y|X2),   U2 = min_{q in Delta_P} I_q(X2;Y|X1),
    R  = I(X1;Y) - U1,                      S  = I_p(X1,X2;Y) - min_{q in Delta_P} I_q(X1,X2;Y).

The three minimisations share one minimiser q*, the q in Delta_P with the least joint information
about Y (equivalently the largest H_q(Y|X1,X2), since H(Y) is fixed), so with
I* = I_q*(X1,X2;Y): U1 = I* - I(X2;Y), U2 = I* - I(X1;Y), R = I(X1;Y) + I(X2;Y) - I*,
S = I_p(X1,X2;Y) - I*.

Solver (`pid_discrete`). Minimising I_q(X1,X2;Y) over Delta_P is convex. We solve its dual,

    max_{lam, mu}  sum p(x1,y) lam(x1,y) + sum p(x2,y) mu(x2,y)
    s.t.  log sum_y exp(lam(x1,y) + mu(x2,y)) <= 0   for every pair (x1, x2),

a geometric program with (|X1| + |X2|) |Y| variables, by a log-barrier interior-point method
(damped Newton steps on dense Hessians of at most a few thousand rows). At the barrier's central
point the constraint multipliers give the primal minimiser,
q*(x1,x2,y) = s(x1,x2) exp(lam(x1,y) + mu(x2,y)); a few Sinkhorn scalings per y remove the last
rounding error in its marginals. The dual objective is a certified lower bound of min_q, so the
returned `gap` (primal minus dual, in bits) bounds the solver error of every PID term. It is
typically below 1e-9 bits; a plain alternating-projection (Blahut-Arimoto-like) scheme needed
thousands of iterations for 1e-5 on sparse empirical tables, and an SLSQP/cvxpy solution would
add cost or a dependency for no gain in accuracy.

Estimator (`pid_estimate`). Continuous, high-dimensional modalities are first made discrete:
each modality is flattened, standardised (and reduced by PCA to `pca_dim` components when it has
more features), then clustered by k-means into `clusters` cells; the label is already discrete.
The empirical joint histogram of (cell of x1, cell of x2, y) is the plug-in estimate of
p(x1, x2, y), handed to `pid_discrete`. Two biases pull in opposite directions:

* Discretisation (downwards, and it moves mass between terms). The PID is that of the *cells*,
  so whatever k-means merges is invisible. Too few cells do not just shrink the total: when the
  cells of x1 and of x2 keep *different* parts of a shared factor, the shared information shows
  up as U1 + U2 instead of R; and synergy needs cells fine enough that each modality's cell still
  pins its own half of the label. On synthetic-pid with C = 4 every modality is a mixture of
  C**3 = 64 latent codes: 10 cells lose most synergy (S = 0.14 of 2 bits) and split redundancy
  into R ~ U1 ~ U2, while 64 cells recover each setting almost exactly (docs/pid.md). So
  `clusters` should be at least the number of distinguishable states of each modality that the
  label may depend on.
* Sampling (upwards). Plug-in mutual information from N samples over K1 K2 joint cells and |Y|
  labels is biased upwards by about (K1 K2 - 1)(|Y| - 1) / (2 N ln 2) bits when the variables are
  independent (Miller, 1955); a single modality's term by (K - 1)(|Y| - 1) / (2 N ln 2). The joint
  term inflates most and it feeds S (and, through I*, the others a little). Rule of thumb: keep
  N >= 10 K1 K2 |Y| (about ten samples per cell), or read S against the same estimate with the
  labels shuffled. `pid_estimate` reports `bias_joint` (the Miller figure) and, with `shuffles`,
  the shuffled-label estimate `null`. Both are worst cases: when the cells nearly determine the
  label the actual bias is far smaller (synthetic-pid with 64 cells: bias_joint 0.54 bits, yet
  S = 0.006 in the redundancy setting), so do not subtract them blindly.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve
from scipy.special import logsumexp

from parse_dfl.text import text_table

if TYPE_CHECKING:
    from parse_dfl.config import Config

LN2 = float(np.log(2.0))
ESTIMATOR = "broja"
TERMS = ("R", "U1", "U2", "S", "I")

DEFAULT_SHUFFLES = 5
"""Label shuffles `parse-dfl pid` runs unless told otherwise: the null printed beside each term."""
MIN_SAMPLES_PER_CELL = 1.0
"""Below one sample per cell of the (x1, x2, y) table the plug-in estimate is not to be read.

Miller's bias formula is a first-order expansion that holds when every cell has several
expected counts; with fewer samples than cells most cells are empty or hold one sample, the
plug-in information is biased up by an amount no formula predicts (Paninski 2003), and the
terms say more about N than about the data. See docs/pid.md."""
MAX_NULL_SHARE = 0.25
"""Warn when shuffled labels (or, without shuffles, Miller's bias) give more than this share
of the measured I(X1,X2;Y): any term may then be inflated by as much as a quarter of the total."""
NEAR_NULL = 2.0
"""A term below this multiple of its shuffled-label value is marked as not clearly above it."""

__all__ = [
    "DEFAULT_SHUFFLES",
    "assess",
    "dataset_pid",
    "default_clusters",
    "format_pid",
    "pid_discrete",
    "pid_estimate",
]


@contextmanager
def _single_threaded() -> Iterator[None]:
    """Run BLAS and OpenMP (k-means) on one thread.

    The factorisations here are small (a few hundred rows) and k-means runs on a few thousand
    points: thread start-up and contention cost far more than they save, 30x on a busy 2-core
    machine.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        yield
        return
    with threadpool_limits(limits=1):
        yield


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x * log(y) with 0 log 0 = 0 (natural log)."""
    pos = x > 0
    out = np.zeros(np.broadcast(x, y).shape)
    out[pos] = np.broadcast_to(x, out.shape)[pos] * np.log(np.broadcast_to(y, out.shape)[pos])
    return out


def _mi_bits(pxy: np.ndarray) -> float:
    """I(X;Y) in bits of a 2-D joint distribution."""
    px = pxy.sum(1, keepdims=True)
    py = pxy.sum(0, keepdims=True)
    return float(_xlogy(pxy, pxy / np.where(px * py > 0, px * py, 1.0)).sum() / LN2)


def _cond_neg_entropy(q: np.ndarray) -> float:
    """sum q log q(y|x1,x2) = -H_q(Y|X1,X2), in nats."""
    s = q.sum(2, keepdims=True)
    return float(_xlogy(q, q / np.where(s > 0, s, 1.0)).sum())


def _sinkhorn(q: np.ndarray, p1: np.ndarray, p2: np.ndarray, iters: int = 200) -> np.ndarray:
    """Scale q(., ., y) for every y to the marginals p1(x1, y) and p2(x2, y)."""
    for _ in range(iters):
        r = q.sum(1)
        q = q * np.divide(p1, r, out=np.zeros_like(r), where=r > 0)[:, None, :]
        c = q.sum(0)
        q = q * np.divide(p2, c, out=np.zeros_like(c), where=c > 0)[None, :, :]
        if np.abs(q.sum(1) - p1).max() < 1e-15:
            break
    return q


def _broja_dual(
    p: np.ndarray, tol: float = 1e-9, growth: float = 20.0, max_newton: int = 500
) -> tuple[np.ndarray, float, int]:
    """min_{q in Delta_P} sum q log q(y|x1,x2) by a log-barrier method on the dual.

    Returns (q*, dual objective value in nats, Newton steps). `p` must be normalised.
    """
    n1, n2, ny = p.shape
    p1, p2 = p.sum(1), p.sum(0)
    # Cells a member of Delta_P may occupy; pairs (x1, x2) with at least one such cell.
    mask = (p1[:, None, :] > 0) & (p2[None, :, :] > 0)
    blocks = mask.any(2)
    n_blocks = int(blocks.sum())
    # Free dual variables: lam(x1,y) with p1 > 0, mu(x2,y) with p2 > 0 except one per y, since
    # adding c to lam(., y) and subtracting it from mu(., y) changes nothing (gauge).
    free2 = p2 > 0
    free2[np.argmax(p2, axis=0), np.arange(ny)] = False
    keep = np.concatenate([np.flatnonzero((p1 > 0).ravel()), n1 * ny + np.flatnonzero(free2)])
    lam = np.full((n1, ny), -(np.log(ny) + 1.0))  # strictly feasible start
    mu = np.zeros((n2, ny))
    diag = np.arange(ny)
    rows1, rows2 = np.arange(n1), np.arange(n2)

    def lse(lam: np.ndarray, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = np.where(mask, lam[:, None, :] + mu[None, :, :], -np.inf)
        with np.errstate(divide="ignore"):
            return z, logsumexp(z, axis=2)

    def linear(lam: np.ndarray, mu: np.ndarray) -> float:
        return float(
            (p1 * np.where(p1 > 0, lam, 0.0)).sum() + (p2 * np.where(p2 > 0, mu, 0.0)).sum()
        )

    def barrier(lam: np.ndarray, mu: np.ndarray, t: float) -> float:
        lb = lse(lam, mu)[1][blocks]
        if not np.all(lb < 0):
            return np.inf
        return -t * linear(lam, mu) - float(np.log(-lb).sum())

    t, newton = 1.0, 0
    while True:
        for _ in range(100):  # centering: damped Newton on the barrier problem
            z, big_l = lse(lam, mu)
            ls = np.where(blocks, big_l, -1.0)
            pi = np.where(mask, np.exp(z - ls[:, :, None]), 0.0)  # softmax over y
            w = np.where(blocks, -1.0 / ls, 0.0)  # barrier multiplier of each pair, / t = s
            wp = w[:, :, None] * pi
            grad = np.concatenate([(wp.sum(1) - t * p1).ravel(), (wp.sum(0) - t * p2).ravel()])
            # Per-pair Hessian in z = lam + mu: w (diag(pi) - pi pi^T) + w^2 pi pi^T.
            blk = (w * w - w)[:, :, None, None] * pi[:, :, :, None] * pi[:, :, None, :]
            blk[:, :, diag, diag] += wp
            h11 = np.zeros((n1, ny, n1, ny))
            h11[rows1, :, rows1, :] = blk.sum(1)
            h22 = np.zeros((n2, ny, n2, ny))
            h22[rows2, :, rows2, :] = blk.sum(0)
            h12 = blk.transpose(0, 2, 1, 3).reshape(n1 * ny, n2 * ny)
            hess = np.block(
                [[h11.reshape(n1 * ny, n1 * ny), h12], [h12.T, h22.reshape(n2 * ny, n2 * ny)]]
            )[np.ix_(keep, keep)]
            g = grad[keep]
            hd = np.diag(hess)
            hess[np.diag_indices_from(hess)] += 1e-13 * hd.max()  # variables whose exp underflows
            scale = 1.0 / np.sqrt(np.maximum(np.diag(hess), 1e-300))
            try:
                step = -scale * cho_solve(
                    cho_factor(hess * scale[:, None] * scale[None, :]), g * scale
                )
            except LinAlgError:
                step = -np.linalg.lstsq(hess, g, rcond=None)[0]
            decrement = float(-(g @ step))
            newton += 1
            # decrement / t bounds the centering error of the dual objective.
            if decrement < 1e-6 or newton >= max_newton:
                break
            full = np.zeros((n1 + n2) * ny)
            full[keep] = step
            d_lam, d_mu = full[: n1 * ny].reshape(n1, ny), full[n1 * ny :].reshape(n2, ny)
            f0, a = barrier(lam, mu, t), 1.0
            if decrement < 0.1:  # quadratic phase: full step unless it leaves the domain
                while a > 1e-14 and not np.isfinite(barrier(lam + a * d_lam, mu + a * d_mu, t)):
                    a *= 0.5
            else:
                while (
                    a > 1e-14
                    and barrier(lam + a * d_lam, mu + a * d_mu, t) > f0 - 0.25 * a * decrement
                ):
                    a *= 0.5
            if a <= 1e-14:
                break  # no progress possible at this t
            lam, mu = lam + a * d_lam, mu + a * d_mu
        if n_blocks / t < tol or newton >= max_newton:
            break
        t *= growth
    z, big_l = lse(lam, mu)
    ls = np.where(blocks, big_l, -1.0)
    pi = np.where(mask, np.exp(z - ls[:, :, None]), 0.0)
    q = np.where(blocks, -1.0 / (t * ls), 0.0)[:, :, None] * pi
    return _sinkhorn(q, p1, p2), linear(lam, mu), newton


def pid_discrete(p: np.ndarray, tol: float = 1e-9) -> dict[str, Any]:
    """BROJA partial information decomposition of a joint distribution p[x1, x2, y], in bits.

    `p` is any non-negative array of shape (|X1|, |X2|, |Y|) (counts are fine; it is normalised).
    Returns R, U1, U2, S, I = I(X1,X2;Y), plus I1 = I(X1;Y), I2 = I(X2;Y), `gap` (a certified
    bound on the solver's error, bits), `newton` (Newton steps) and `estimator` ("broja").
    Tiny negative terms from rounding are clipped to 0, so the identities hold to ~1e-9.
    """
    p = np.asarray(p, dtype=float)
    if p.ndim != 3:
        raise ValueError(f"p must be a 3-D array p[x1, x2, y], got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError("p must be finite, non-negative and not all zero")
    p = p / p.sum()
    # Entries below 1e-13 cannot change any term by more than ~1e-11 bits but make the dual
    # badly scaled; drop them.
    p = np.where(p > 1e-13, p, 0.0)
    p = p / p.sum()
    p1, p2, py = p.sum(1), p.sum(0), p.sum((0, 1))
    i_joint = _mi_bits(p.reshape(-1, p.shape[2]))
    i1, i2 = _mi_bits(p1), _mi_bits(p2)
    if (
        np.count_nonzero(py) <= 1
        or min(np.count_nonzero(p1.sum(1)), np.count_nonzero(p2.sum(1))) <= 1
    ):
        # Y constant, or a source constant: q* = p (Delta_P is a single point or I is fixed).
        q, dual, newton = p, _cond_neg_entropy(p), 0
    else:
        with _single_threaded():
            q, dual, newton = _broja_dual(p, tol=tol)
    h_y = float(-_xlogy(py, py).sum() / LN2)
    i_star = h_y + _cond_neg_entropy(q) / LN2  # min_q I_q(X1,X2;Y)
    # I* can never exceed I(X1,X2;Y) (p is in Delta_P) nor fall below max(I1, I2).
    i_star = float(np.clip(i_star, max(i1, i2), max(i_joint, max(i1, i2))))
    gap = max(0.0, (_cond_neg_entropy(q) - dual) / LN2)
    if gap > 1e-6:
        warnings.warn(
            f"PID solver stopped after {newton} Newton steps {gap:.1e} bits from the optimum",
            RuntimeWarning,
            stacklevel=2,
        )
    return {
        "R": max(0.0, i1 + i2 - i_star),
        "U1": max(0.0, i_star - i2),
        "U2": max(0.0, i_star - i1),
        "S": max(0.0, i_joint - i_star),
        "I": i_joint,
        "I1": i1,
        "I2": i2,
        "gap": gap,
        "newton": newton,
        "estimator": ESTIMATOR,
    }


def _discretise(x: np.ndarray, clusters: int, seed: int, pca_dim: int | None) -> np.ndarray:
    """k-means cell of every sample of one modality (flattened, standardised, maybe PCA)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)
    if pca_dim is not None and x.shape[1] > pca_dim:
        x = PCA(n_components=pca_dim, random_state=seed).fit_transform(x)
    k = min(int(clusters), len(np.unique(x, axis=0)))
    if k <= 1:
        return np.zeros(len(x), dtype=np.int64)
    km = KMeans(n_clusters=k, n_init=4, random_state=seed)
    return km.fit_predict(x).astype(np.int64)


def pid_estimate(
    x1: np.ndarray,
    x2: np.ndarray,
    y: np.ndarray,
    clusters: int = 10,
    seed: int = 0,
    pca_dim: int | None = 32,
    shuffles: int = 0,
) -> dict[str, Any]:
    """Plug-in BROJA PID of two continuous modalities about a discrete label, in bits.

    Each modality (N, ...) is flattened, standardised, reduced to `pca_dim` principal components
    if wider (None: never), and clustered by k-means (`clusters` cells, seeded by `seed`); the
    histogram of (cell of x1, cell of x2, y) is decomposed by `pid_discrete`. Besides its keys,
    returns `clusters`, `n_samples`, `n_classes`, `bias_joint` (Miller's first-order estimate of
    the plug-in upward bias of I(X1,X2;Y) if X1, X2 and Y were independent, bits),
    `samples_per_cell` (N / (K1 K2 |Y|)), `cells` [K1, K2, |Y|] and `seconds`. With `shuffles`
    > 0 it also returns `null`: the mean R, U1, U2, S, I over that many random permutations of y
    (same cells), the values an estimate shows when there is no information at all; read S
    against null["S"]. `warnings` and `near_null` are what `assess` finds (why: a plug-in
    estimate from too few samples looks as precise as a good one).
    """
    start = time.perf_counter()
    y = np.asarray(y).reshape(-1)
    n = len(y)
    if len(x1) != n or len(x2) != n:
        raise ValueError(
            f"x1, x2 and y need the same number of samples ({len(x1)}, {len(x2)}, {n})"
        )
    if n == 0:
        raise ValueError("no samples")
    if clusters < 1:
        raise ValueError("clusters must be at least 1")
    _, yi = np.unique(y, return_inverse=True)
    with _single_threaded():
        c1 = _discretise(x1, clusters, seed, pca_dim)
        c2 = _discretise(x2, clusters, seed + 1, pca_dim)
    k1, k2, ky = int(c1.max()) + 1, int(c2.max()) + 1, int(yi.max()) + 1

    def table(labels: np.ndarray) -> np.ndarray:
        flat = (c1 * k2 + c2) * ky + labels
        return np.bincount(flat, minlength=k1 * k2 * ky).reshape(k1, k2, ky).astype(float)

    counts = table(yi)
    out = pid_discrete(counts)
    # Occupied cells approximate the support sizes in Miller's correction.
    occ12 = int(np.count_nonzero(counts.sum(2)))
    out.update(
        estimator=f"broja+kmeans{clusters}",
        clusters=int(clusters),
        n_samples=int(n),
        n_classes=ky,
        bias_joint=float(max(0, occ12 - 1) * (ky - 1) / (2 * n * LN2)),
        samples_per_cell=float(n / (k1 * k2 * ky)),
        cells=[k1, k2, ky],
    )
    if shuffles > 0:
        rng = np.random.default_rng(seed)
        # The null needs no solver precision: a gap of 1e-3 bits on a sparse shuffled table
        # (it happens at 64 x 64 x 4 cells) is kept in null["gap"], not warned about.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            runs = [pid_discrete(table(rng.permutation(yi))) for _ in range(int(shuffles))]
        out["null"] = {k: float(np.mean([r[k] for r in runs])) for k in TERMS}
        out["null"]["gap"] = float(max(r["gap"] for r in runs))
        out["shuffles"] = int(shuffles)
    out["warnings"], out["near_null"] = assess(out)
    out["seconds"] = time.perf_counter() - start
    return out


def assess(res: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(warnings, terms near their null) for one `pid_estimate` result.

    Warnings: fewer than MIN_SAMPLES_PER_CELL samples per cell of the table, or shuffled labels
    (without shuffles: Miller's `bias_joint`) giving more than MAX_NULL_SHARE of the measured
    I. Near null: the terms (R, U1, U2, S, I) below NEAR_NULL times their shuffled-label value
    (only with shuffles). Thresholds and why: docs/pid.md, "When to distrust an estimate".
    """
    warns: list[str] = []
    n, spc = int(res["n_samples"]), float(res["samples_per_cell"])
    k1, k2, ky = res.get("cells") or (res["clusters"], res["clusters"], res["n_classes"])
    if spc < MIN_SAMPLES_PER_CELL:
        k_max = int(np.sqrt(n / ky))
        fix = (
            f"at most {k_max} cells per modality (--clusters) give one sample per cell"
            if k_max >= 2
            else "too few samples for this estimate at any resolution"
        )
        warns.append(
            f"{n} samples for {k1} x {k2} x {ky} = {k1 * k2 * ky} cells ({spc:.2g} per cell, "
            f"fewer than {MIN_SAMPLES_PER_CELL:g}): the plug-in table is mostly empty cells and "
            f"single counts, biased up by an unknown amount (Miller's first-order figure "
            f"{res['bias_joint']:.2f} bits no longer holds); {fix}"
        )
    total = float(res["I"])
    null = res.get("null")
    level, what = (
        (null["I"], f"shuffled labels give I = {null['I']:.2f} bits")
        if null
        else (float(res["bias_joint"]), f"Miller's bias estimate is {res['bias_joint']:.2f} bits")
    )
    if level > MAX_NULL_SHARE * total:
        share = level / total if total > 0 else float("inf")
        warns.append(
            f"{what}, {share:.0%} of the measured I(X1,X2;Y) = {total:.2f}: any term may be "
            f"inflated by that much; read only terms well above {'their null' if null else 'it'}"
        )
    near = [t for t in TERMS if null and res[t] < NEAR_NULL * null[t]]
    return warns, near


def default_clusters(cfg: Config) -> int:
    """k-means cells per modality that `dataset_pid` uses when none is given.

    synthetic-pid: data.n_classes ** 3, the number of latent code combinations (r, u, s) each
    modality is a mixture of, so that the cells can resolve every code; with fewer cells k-means
    mixes the codes and redundancy and synergy leak into the other terms (docs/pid.md).
    Any other source: 10.
    """
    if cfg.data.name == "synthetic-pid":
        return int(cfg.data.n_classes) ** 3
    return 10


def dataset_pid(
    cfg: Config,
    clusters: int | None = None,
    seed: int | None = None,
    shuffles: int = 0,
    modalities: Sequence[str] | None = None,
) -> dict[str, Any]:
    """PID of two of the configured dataset's modalities about its label, in bits.

    Loads `cfg.data` with parse_dfl.data.load_dataset (so `data.modalities` picks and orders the
    modalities, and features are standardised as configured). `modalities`: the pair [m1, m2]
    (any two the source has, configured or not); default: the first two configured ones.
    Returns `pid_estimate(...)` plus `modalities` [m1, m2], `pair_given` (whether the pair was
    chosen by the caller), `configured` (without a pair: every modality the config selects, of
    which the first two were taken; else None) and `dataset`.
    `clusters` defaults to `default_clusters(cfg)`, `seed` to cfg.seed; `shuffles` as in
    `pid_estimate`. A pair that is not two distinct modalities of the source is a UserError at
    `modalities`.
    """
    from parse_dfl.data import load_dataset
    from parse_dfl.errors import UserError

    if modalities is not None:
        pair = [str(m).strip() for m in modalities]
        if len(pair) != 2 or len(set(pair)) != 2 or not all(pair):
            raise UserError("modalities", f"give two different modalities, got {pair}")
        try:
            ds = load_dataset(cfg.data.model_copy(update={"modalities": pair}))
        except UserError as e:
            if e.where != "data.modalities":
                raise
            raise UserError("modalities", e.problem) from None
    else:
        ds = load_dataset(cfg.data)
    mods = list(ds.modalities)
    if len(mods) < 2:
        raise UserError("data.modalities", f"PID needs two modalities, '{ds.name}' has {mods}")
    m1, m2 = mods[:2]
    out = pid_estimate(
        ds.modalities[m1],
        ds.modalities[m2],
        ds.labels,
        clusters=default_clusters(cfg) if clusters is None else clusters,
        seed=cfg.seed if seed is None else seed,
        shuffles=shuffles,
    )
    out.update(
        modalities=[m1, m2],
        pair_given=modalities is not None,
        configured=None if modalities is not None else mods,
        dataset=ds.name,
        n_samples=ds.n_samples,
    )
    return out


def format_pid(res: dict[str, Any]) -> str:
    """`dataset_pid`'s result as `parse-dfl pid` prints it: which pair and why, one row per
    term with its null and a mark where it is not clearly above it, then the warnings."""
    m1, m2 = res["modalities"]
    k1, k2, ky = res["cells"]
    if res.get("pair_given"):
        which = "chosen with --modalities"
    else:
        which = f"the first two of the configured {', '.join(res['configured'])}"
        which += "; --modalities a,b for another pair"
    lines = [
        f"PID of ({m1}, {m2}) about the label on '{res['dataset']}' ({which})",
        f"{res['n_samples']} samples, {ky} classes, {k1} x {k2} k-means cells "
        f"({res['samples_per_cell']:.2g} samples per cell), estimator {res['estimator']}; bits",
    ]
    null = res.get("null")
    head = ["term", "estimate"]
    if null:
        head += [f"null ({res['shuffles']} label shuffles)", ""]
    rows = [head]
    names = {
        "R": "R (redundant)",
        "U1": f"U1 (unique {m1})",
        "U2": f"U2 (unique {m2})",
        "S": "S (synergy)",
        "I": "I(X1,X2;Y)",
    }
    for t, name in names.items():
        row = [name, f"{res[t]:.3f}"]
        if null:
            row += [f"{null[t]:.3f}", "not clearly above null" if t in res["near_null"] else ""]
        rows.append(row)
    lines.append(text_table(rows))
    if not null:
        lines.append("no null: --shuffles 0 (compare the terms with Miller's bias instead)")
    if res["near_null"]:
        lines.append(
            "not clearly above null: below twice the value with the labels shuffled "
            "(same cells): read it as no measurable information"
        )
    lines += [f"warning: {w}" for w in res["warnings"]]
    return "\n".join(lines)
