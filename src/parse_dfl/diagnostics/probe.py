"""What PARSE's slices carry: linear probes, PID and cross-modal similarity of a trained run.

PARSE cuts each modality's embedding h_m into a unique slice u_m, a redundant slice r_m and a
synergistic slice s_m. `probe_run` takes one agent of a finished PARSE run, embeds the global
test set (the union of every agent's held-out samples) with that agent's model, and asks three
questions of the slices:

(a) Which slice carries the label? A linear probe (standardised features, multinomial logistic
    regression) trained on one half of the samples and scored on the other half (a fixed
    random split), for every slice of every modality (u_a, r_a, s_a, u_b, ...) and for the
    fused slices: r_fused = mean of the r_m (what the redundant head sees), s_fused =
    concatenation of the s_m. The model's own heads' accuracies are reported beside them.
(b) How do the two modalities' slices of one kind share the label? The BROJA PID
    (diagnostics/pid.py) of (u_a, u_b), (r_a, r_b) and (s_a, s_b) about the label, in bits.
    Ideally R dominates for r, and S (if the data have synergy) for s.
(c) How redundant are r_a and r_b with each other? Mean cosine of r_a and r_b of the same
    sample against random pairs of samples, linear CKA, and canonical correlations (the largest
    and the mean); the same figures for u and s for scale.

A linear probe reads only what is linearly decodable: on synthetic-pid's synergy setting the
label (s1 + s2) mod C is a non-linear function of the two halves, so a linear probe on the
concatenated s slices stays near chance even when the slices hold both halves exactly; the
PID of (s_a, s_b) sees it (S near 2 bits) because it discretises each slice first.
"""

from __future__ import annotations

import warnings
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from parse_dfl.errors import UserError
from parse_dfl.text import text_table

if TYPE_CHECKING:
    from parse_dfl.models.parse import ParseModel
    from parse_dfl.models.parse_plus import ParsePlusModel

__all__ = [
    "MIN_PROBE_SAMPLES",
    "format_probe",
    "linear_cka",
    "linear_probe",
    "probe_run",
    "sample_warnings",
    "similarity",
]

SLICES = ("u", "r", "s")
SLICE_NAMES = {"u": "unique", "r": "redundant", "s": "synergistic"}
MIN_PROBE_SAMPLES = 100
"""Fewest held-out samples a probe accuracy is read from without a warning.

A held-out accuracy from n samples has a binomial standard error of at most 0.5 / sqrt(n); below
100 samples its 95 % interval (1.96 x 0.5 / sqrt(n)) is wider than +-10 points, about the size
of the differences between slices that the probe is asked about (docs/pid.md)."""


def accuracy_halfwidth(n: int) -> float:
    """Worst-case (p = 0.5) half-width of a 95 % binomial interval of an accuracy on n samples."""
    return 1.96 * 0.5 / float(np.sqrt(max(n, 1)))


def sample_warnings(n_test: int, what: str = "probe accuracies") -> list[str]:
    """A warning when `n_test` held-out samples are too few to compare accuracies (see
    MIN_PROBE_SAMPLES), else nothing."""
    if n_test >= MIN_PROBE_SAMPLES:
        return []
    return [
        f"{what} are scored on {n_test} held-out samples (fewer than {MIN_PROBE_SAMPLES}): "
        f"each is uncertain by up to +-{100 * accuracy_halfwidth(n_test):.0f} points (95 %), "
        "so differences below that mean nothing"
    ]


PROBED = ("parse", "parse-plus")  # the methods whose models cut embeddings into u, r, s


MAX_CELLS = 10  # default k-means cells per slice, at most (see probe_run)


def _finished_parse_run(run_dir: Path) -> dict[str, Any]:
    """results.json of a finished PARSE (or parse-plus) run folder, or a UserError saying what
    is wrong."""
    from parse_dfl.experiments.run import read_results

    results = read_results(run_dir)
    if results["method"] not in PROBED:
        raise UserError(
            str(run_dir),
            f"probe needs a {' or '.join(PROBED)} run; this run's method is '{results['method']}'",
        )
    return results


def linear_probe(
    x: np.ndarray, y: np.ndarray, seed: int = 0, max_iter: int = 500
) -> tuple[float, int, int]:
    """Held-out accuracy of a linear classifier reading y from x.

    Standardised features and a multinomial logistic regression (L2, C = 1), trained on a
    random half of the samples (fixed by `seed`) and scored on the other half. Returns
    (accuracy, n_train, n_test).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y).reshape(-1)
    perm = np.random.default_rng(seed).permutation(len(y))
    half = len(y) // 2
    tr, te = perm[:half], perm[half:]
    if len(tr) == 0 or len(te) == 0:
        raise ValueError("a linear probe needs at least two samples")
    if len(np.unique(y[tr])) < 2:  # nothing to learn: predict the only training class
        return float(np.mean(y[te] == y[tr][0])), len(tr), len(te)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x[tr], y[tr])
        acc = float(clf.score(x[te], y[te]))
    return acc, len(tr), len(te)


def _center(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return x - x.mean(axis=0)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centred kernel alignment of two representations of the same samples (0..1)."""
    x, y = _center(x), _center(y)
    num = np.linalg.norm(y.T @ x) ** 2
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(num / den) if den > 0 else 0.0


def canonical_correlations(x: np.ndarray, y: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """Canonical correlations of two representations (descending), with a small ridge on
    each covariance so that constant or collinear units do not break the whitening."""
    x, y = _center(x), _center(y)
    n = max(1, len(x) - 1)

    def inv_sqrt(c: np.ndarray) -> np.ndarray:
        c = c + ridge * max(float(np.trace(c)) / len(c), 1e-12) * np.eye(len(c))
        w, v = np.linalg.eigh(c)
        return (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T

    cxy = x.T @ y / n
    m = inv_sqrt(x.T @ x / n) @ cxy @ inv_sqrt(y.T @ y / n)
    return np.clip(np.linalg.svd(m, compute_uv=False), 0.0, 1.0)


def similarity(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict[str, float]:
    """How alike two modalities' slices of the same samples are.

    cos_same: mean cosine of a and b of the same sample; cos_random: the same for a random
    pairing of samples (a derangement, fixed by `seed`); cka: linear CKA; cca_top / cca_mean:
    the largest and the mean canonical correlation.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)

    def cos(u: np.ndarray, v: np.ndarray) -> float:
        norms = np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)
        return float(((u * v).sum(axis=1) / np.maximum(norms, 1e-12)).mean())

    out: dict[str, float] = {"cka": linear_cka(a, b)}
    if a.shape[1] == b.shape[1]:
        n = len(a)
        perm = np.random.default_rng(seed).permutation(n)
        shift = perm[(np.argsort(perm) + 1) % n] if n > 1 else perm  # no sample meets itself
        out["cos_same"] = cos(a, b)
        out["cos_random"] = cos(a, b[shift])
    cc = canonical_correlations(a, b)
    out["cca_top"] = float(cc[0]) if len(cc) else 0.0
    out["cca_mean"] = float(cc.mean()) if len(cc) else 0.0
    return out


@torch.no_grad()
def _embed(
    model: ParseModel | ParsePlusModel, x: dict[str, torch.Tensor], idx: torch.Tensor
) -> dict:
    """Slices and head logits of `model` on samples `idx`, in chunks, as numpy arrays."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {}
    try:
        for start in range(0, len(idx), 4096):
            part = idx[start : start + 4096]
            out = model({m: x[m][part] for m in model.modalities})
            found = {
                **{f"u_{m}": v for m, v in out.unique.items()},
                **{f"r_{m}": v for m, v in out.redundant.items()},
                **{f"s_{m}": v for m, v in out.synergy.items()},
                **{f"head:{k}": v for k, v in out.heads.items()},
                "head:ensemble": out.ensemble,
            }
            for k, v in found.items():
                parts.setdefault(k, []).append(v.detach().float().cpu().numpy())
    finally:
        model.train(was_training)
    return {k: np.concatenate(v) for k, v in parts.items()}


def probe_run(
    run_dir: str | Path,
    agent: int | None = None,
    clusters: int | None = None,
    seed: int = 0,
    shuffles: int = 2,
) -> dict[str, Any]:
    """Linear probes, PID and cross-modal similarity of one PARSE (or parse-plus) agent's
    slices.

    `agent`: the agent id (default: the first agent with two or more modalities, else agent 0).
    `clusters`: k-means cells per slice for the PID (default: the number of classes, at most
    MAX_CELLS; a slice trained for the label should have about that many states, the global
    test set is small, so finer cells mostly add plug-in bias, and the solver's cost grows
    with cells x cells x classes: 64 cells for a 64-class label take many minutes a pair).
    `seed` fixes the probe split, the random pairing and k-means; `shuffles` label
    permutations give the PID's null figures.

    The samples are the global test set, or the validation set of a tuning run
    (partition.val_fraction > 0; `samples` says which).

    Returns a dict: run_dir, method, dataset, agent, type, modalities, n_samples, samples,
    n_classes,
    split, chance (share of the commonest class), warnings (too few held-out samples for the
    probes, too few per cell for the slice PIDs), probe {accuracy: {u_<m>, r_<m>, s_<m>, ...,
    r_fused, s_fused}, n_train, n_test, seed}, heads {unique.<m>, redundant, synergy,
    ensemble: the model's own heads' accuracies on all samples}, pid {clusters, shuffles,
    pairs: {"<a>,<b>": {u|r|s: pid_estimate(...) of that slice pair}}}, similarity
    {"<a>,<b>": {u|r|s: similarity(...)}} and within {<m>: {"u,r"|"u,s"|"r,s": similarity of
    two slices of one modality}}. A unimodal agent has empty pairs and similarity.

    Raises UserError for a folder that is not a finished run or whose method is neither parse
    nor parse-plus.
    """
    from parse_dfl.diagnostics.pid import pid_estimate
    from parse_dfl.engines.setup import held_out
    from parse_dfl.experiments.run import load_run
    from parse_dfl.models.parse import ParseModel
    from parse_dfl.models.parse_plus import ParsePlusModel

    run_dir = Path(run_dir)
    _finished_parse_run(run_dir)
    results, setup, models = load_run(run_dir)
    agents = results["agents"]
    if agent is None:
        multi = [i for i, a in enumerate(agents) if len(a["modalities"]) >= 2]
        agent = multi[0] if multi else 0
    if not 0 <= agent < len(models):
        raise UserError("--agent", f"no agent {agent} in this run (agents 0..{len(models) - 1})")
    model = models[agent]
    if not isinstance(model, ParseModel | ParsePlusModel):
        raise UserError(str(run_dir), "the run's models are not PARSE or parse-plus models")
    mods = list(model.modalities)
    idx, samples = held_out(setup)
    emb = _embed(model, setup.x, idx)
    y = setup.y[idx].cpu().numpy()
    n_classes = int(setup.data.n_classes)

    feats: dict[str, np.ndarray] = {f"{s}_{m}": emb[f"{s}_{m}"] for m in mods for s in SLICES}
    feats["r_fused"] = np.mean([emb[f"r_{m}"] for m in mods], axis=0)
    feats["s_fused"] = np.concatenate([emb[f"s_{m}"] for m in mods], axis=1)
    probe: dict[str, float] = {}
    n_train = n_test = 0
    for name, f in feats.items():
        probe[name], n_train, n_test = linear_probe(f, y, seed=seed)
    heads = {
        k.split(":", 1)[1]: float(np.mean(v.argmax(axis=1) == y))
        for k, v in emb.items()
        if k.startswith("head:")
    }

    k = int(clusters) if clusters is not None else max(2, min(n_classes, MAX_CELLS))
    if k < 1:
        raise UserError("--clusters", "must be at least 1")
    pairs: dict[str, dict[str, Any]] = {}
    sims: dict[str, dict[str, Any]] = {}
    for a, b in combinations(mods, 2):
        key = f"{a},{b}"
        pairs[key] = {
            s: pid_estimate(
                emb[f"{s}_{a}"], emb[f"{s}_{b}"], y, clusters=k, seed=seed, shuffles=shuffles
            )
            for s in SLICES
        }
        sims[key] = {s: similarity(emb[f"{s}_{a}"], emb[f"{s}_{b}"], seed=seed) for s in SLICES}
    # Slices of one modality against each other: an encoder ends in one linear map of its
    # last hidden layer, so when that layer is no wider than a slice, every slice is a linear
    # image of the same hidden vector and canonical correlations near 1 say so.
    within = {
        m: {
            f"{p},{q}": similarity(emb[f"{p}_{m}"], emb[f"{q}_{m}"], seed=seed)
            for p, q in combinations(SLICES, 2)
        }
        for m in mods
    }
    counts = np.bincount(y, minlength=n_classes)
    notes = sample_warnings(n_test)
    for key, pid in pairs.items():
        notes += _pid_notes(key, pid)
    return {
        "run_dir": str(run_dir),
        "method": results["method"],
        "dataset": results.get("dataset"),
        "agent": int(agent),
        "type": agents[agent]["type"],
        "modalities": mods,
        "n_samples": int(len(y)),
        "samples": samples,
        "n_classes": n_classes,
        "split": list(model.split),
        "chance": float(counts.max() / max(1, counts.sum())),
        "probe": {"accuracy": probe, "n_train": n_train, "n_test": n_test, "seed": seed},
        "heads": heads,
        "pid": {"clusters": k, "shuffles": int(shuffles), "pairs": pairs},
        "similarity": sims,
        "within": within,
        "warnings": list(dict.fromkeys(notes)),
    }


def _pid_notes(key: str, pid: dict[str, dict[str, Any]]) -> list[str]:
    """At most two lines for the three slice PIDs of one modality pair (why: they share the
    samples and the cells, so one warning each of `assess`'s kinds says it all)."""
    from parse_dfl.diagnostics.pid import MAX_NULL_SHARE, MIN_SAMPLES_PER_CELL

    pair = key.replace(",", ", ")
    sparse = [s for s in SLICES if pid[s]["samples_per_cell"] < MIN_SAMPLES_PER_CELL]
    notes = []
    if sparse:
        p = pid[sparse[0]]
        k1, k2, ky = p["cells"]
        notes.append(
            f"slice PIDs of ({pair}): {p['n_samples']} samples for {k1} x {k2} x {ky} cells "
            f"({p['samples_per_cell']:.2g} per cell, fewer than {MIN_SAMPLES_PER_CELL:g}): "
            "mostly sampling bias; fewer --clusters, or read only the probes"
        )
    shares = {
        s: pid[s]["null"]["I"] / pid[s]["I"]
        for s in SLICES
        if pid[s].get("null")
        and pid[s]["I"] > 0
        and pid[s]["null"]["I"] > MAX_NULL_SHARE * pid[s]["I"]
    }
    if shares:
        notes.append(
            f"slice PIDs of ({pair}): shuffled labels give {min(shares.values()):.0%}"
            + (f"-{max(shares.values()):.0%}" if len(shares) > 1 else "")
            + f" of the measured I for {', '.join(shares)}: read only terms well above their null"
        )
    return notes


def format_probe(res: dict[str, Any]) -> str:
    """The probe result as readable tables."""
    mods = res["modalities"]
    acc = res["probe"]["accuracy"]
    lines = [
        f"{res['method']} agent {res['agent']} ({res['type']}) of {res['run_dir']} on the "
        f"global {res.get('samples', 'test')} set ({res['n_samples']} samples, "
        f"{res['n_classes']} classes, chance "
        f"{100 * res['chance']:.1f} %, slices u/r/s = {'/'.join(map(str, res['split']))} units)",
        "",
        f"(a) linear-probe accuracy in % (train on {res['probe']['n_train']}, score on "
        f"{res['probe']['n_test']}); fused: mean of r, concatenation of s",
    ]
    rows = [["slice", *mods, "fused", "model head"]]
    head_of = {"u": None, "r": "redundant", "s": "synergy"}
    for s in SLICES:
        row = [SLICE_NAMES[s] + f" ({s})"]
        row += [f"{100 * acc[f'{s}_{m}']:.1f}" for m in mods]
        row.append(f"{100 * acc[f'{s}_fused']:.1f}" if f"{s}_fused" in acc else "-")
        h = head_of[s]
        if h is None:
            row.append(
                " / ".join(
                    f"{100 * res['heads'][f'unique.{m}']:.1f}"
                    for m in mods
                    if f"unique.{m}" in res["heads"]
                )
            )
        else:
            row.append(f"{100 * res['heads'][h]:.1f}" if h in res["heads"] else "-")
        rows.append(row)
    lines.append(text_table(rows))
    lines.append(f"ensemble of the model's heads: {100 * res['heads']['ensemble']:.1f} %")
    if not res["pid"]["pairs"]:
        lines += ["", "(unimodal agent: no slice pairs of two modalities to compare)"]
    for key, pid in res["pid"]["pairs"].items():
        a, b = key.split(",")
        null = res["pid"]["shuffles"] > 0
        lines += [
            "",
            f"(b) PID of ({a}, {b}) slice pairs about the label, bits "
            f"({res['pid']['clusters']} k-means cells per slice"
            + (f"; null = mean over {res['pid']['shuffles']} label shuffles" if null else "")
            + ")",
        ]
        rows = [["pair", "R", f"U1 ({a})", f"U2 ({b})", "S", "I"]]
        if null:
            rows[0] += ["null S", "null I"]
        for s in SLICES:
            p = pid[s]
            row = [f"{s}_{a}, {s}_{b}"] + [f"{p[t]:.3f}" for t in ("R", "U1", "U2", "S", "I")]
            if null:
                row += [f"{p['null']['S']:.3f}", f"{p['null']['I']:.3f}"]
            rows.append(row)
        lines.append(text_table(rows))
        sim = res["similarity"][key]
        lines += ["", f"(c) similarity of {a}'s and {b}'s slices (same samples)"]
        rows = [["pair", "cos same", "cos random", "linear CKA", "CCA top", "CCA mean"]]
        for s in SLICES:
            m = sim[s]
            rows.append(
                [
                    f"{s}_{a}, {s}_{b}",
                    f"{m['cos_same']:.3f}" if "cos_same" in m else "-",
                    f"{m['cos_random']:.3f}" if "cos_random" in m else "-",
                    f"{m['cka']:.3f}",
                    f"{m['cca_top']:.3f}",
                    f"{m['cca_mean']:.3f}",
                ]
            )
        lines.append(text_table(rows))
    lines += [
        "",
        "slices of one modality against each other (canonical correlations near 1: the "
        "slices are linear images of one another)",
    ]
    rows = [["modality", "pair", "linear CKA", "CCA top", "CCA mean"]]
    for m, pairs in res.get("within", {}).items():
        for key, v in pairs.items():
            p, q = key.split(",")
            rows.append(
                [
                    m,
                    f"{p}_{m}, {q}_{m}",
                    f"{v['cka']:.3f}",
                    f"{v['cca_top']:.3f}",
                    f"{v['cca_mean']:.3f}",
                ]
            )
    if len(rows) > 1:
        lines.append(text_table(rows))
    lines += [f"warning: {w}" for w in res.get("warnings", [])]
    return "\n".join(lines)
