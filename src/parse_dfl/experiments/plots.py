"""The report's figures (PNG, matplotlib without pyplot: no display, no global state)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from parse_dfl.experiments.report import Collection, RunRecord, Table

PROTOCOL_KEYS = (("global", "mean_accuracy"), ("local", "mean_local_accuracy"))
MIN_TSNE_SAMPLES = 100
"""Fewest samples a t-SNE figure is drawn from without a warning. t-SNE (perplexity 30) keeps
3 x 30 + 1 = 91 neighbours per point; with fewer samples than about that, each sample's
neighbourhood within its own slice spans nearly all the others, and the clusters on the figure
say as much about the perplexity as about the data."""


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _style(m: str) -> dict[str, Any]:
    return {"linestyle": "--"} if m == "centralized" else {}


def curves_figure(
    by_method: dict[str, list[RunRecord]], path: Path, title: str = ""
) -> Path | None:
    """Accuracy per round, one line per method (mean over seeds, band = std), both protocols."""
    from parse_dfl.experiments.report import curves

    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2, sharey=True)
    drawn = False
    for ax, (protocol, key) in zip(axes, PROTOCOL_KEYS, strict=True):
        for m, runs in by_method.items():
            rounds, mean, std = curves(runs, key)
            if not rounds:
                continue
            drawn = True
            line = ax.plot(rounds, mean, marker="o", markersize=3, label=m, **_style(m))[0]
            lo = np.asarray(mean) - np.asarray(std)
            hi = np.asarray(mean) + np.asarray(std)
            ax.fill_between(rounds, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_title(f"{protocol} protocol")
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if not drawn:
        return None
    axes[0].set_ylabel("mean accuracy over agents (%)")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Accuracy per round ({title})" if title else "Accuracy per round")
    return _save(fig, path)


def by_type_figure(tables: dict[str, Table], path: Path, title: str = "") -> Path | None:
    """Grouped bars: agent types (and the mean) on x, one bar per method, both protocols."""
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (protocol, t) in zip(axes, tables.items(), strict=True):
        methods = list(t.rows)
        x = np.arange(len(t.columns))
        width = 0.8 / max(1, len(methods))
        for i, m in enumerate(methods):
            mean = [c[0] if c[2] else math.nan for c in t.rows[m]]
            err = [0.0 if math.isnan(c[1]) else c[1] for c in t.rows[m]]
            hatch = "//" if m == "centralized" else None
            offset = (i - (len(methods) - 1) / 2) * width
            ax.bar(x + offset, mean, width, yerr=err, label=m, capsize=2, hatch=hatch)
        ax.set_xticks(x, t.columns)
        ax.set_title(f"{protocol} protocol")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Accuracy by agent type ({title})" if title else "Accuracy by agent type")
    return _save(fig, path)


def vs_key_figure(col: Collection, key: str, runs: list[RunRecord], path: Path) -> Path | None:
    """Mean accuracy of `runs` against the values of one varying key, one line per method."""
    from parse_dfl.experiments.report import WILDCARD, mean_std, method_order, show_value

    values = col.values[key]
    pos = col.group_keys.index(key)
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2, sharey=True)
    x = np.arange(len(values))
    for ax, (protocol, mkey) in zip(axes, PROTOCOL_KEYS, strict=True):
        shown = method_order({r.method for r in runs})
        for j, m in enumerate(shown):
            shift = (j - (len(shown) - 1) / 2) * 0.04  # side by side, so error bars stay visible
            stats = [
                mean_std(
                    [
                        100 * r.res.get(mkey, math.nan)
                        for r in runs
                        if r.method == m and r.group[pos] in (v, WILDCARD)
                    ]
                )
                for v in values
            ]
            mean = [s[0] for s in stats]
            err = [0.0 if math.isnan(s[1]) else s[1] for s in stats]
            ax.errorbar(x + shift, mean, yerr=err, marker="o", capsize=3, label=m, **_style(m))
        ax.set_xticks(x, [show_value(v) for v in values], rotation=20 if len(values) > 4 else 0)
        ax.set_xlabel(key)
        ax.set_title(f"{protocol} protocol")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean accuracy over agents (%)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Accuracy vs {key}")
    return _save(fig, path)


def _palette(n: int) -> list[Any]:
    if n <= 10:
        return [f"C{k}" for k in range(n)]
    cmap = colormaps["tab20" if n <= 20 else "turbo"]
    return [cmap(k / max(1, n - 1)) if n > 20 else cmap(k) for k in range(n)]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na, 1e-12)


def tsne_figures(run_dir: Path, fig_dir: Path, max_points: int = 1500) -> dict[str, Any]:
    """t-SNE of the unique / redundant / synergistic slices of one multimodal PARSE agent on
    the global test set; writes tsne_class.png and tsne_slices.png. Returns what it embedded."""
    import torch
    from sklearn.manifold import TSNE

    from parse_dfl.experiments.run import load_run

    results, setup, models = load_run(run_dir)
    agents = results["agents"]
    multi = [i for i, a in enumerate(agents) if len(a["modalities"]) > 1]
    if not multi:
        raise ValueError("no multimodal agent")
    i = max(multi, key=lambda j: (len(agents[j]["modalities"]), -j))
    agent = agents[i]
    mods = list(agent["modalities"])
    model = models[i]
    idx = setup.global_test
    n = min(len(idx), max(1, max_points // (3 * len(mods))))
    if n < len(idx):
        pick = np.sort(np.random.default_rng(0).choice(len(idx), size=n, replace=False))
        idx = idx[torch.from_numpy(pick).to(idx.device)]
    model.eval()
    with torch.no_grad():
        out = model({m: setup.x[m][idx] for m in mods})
    if not all(hasattr(out, k) for k in ("unique", "redundant", "synergy")):
        raise ValueError("the model does not expose slices (not a PARSE model)")
    y = setup.y[idx].cpu().numpy()
    slices = {"u": out.unique, "r": out.redundant, "s": out.synergy}
    arrays = {(m, s): slices[s][m].float().cpu().numpy() for m in mods for s in slices}
    dim = max(a.shape[1] for a in arrays.values())
    note = ""
    if len({a.shape[1] for a in arrays.values()}) > 1:
        note = f"; slices of unequal size are zero-padded to {dim} units"
    points, cls, cat = [], [], []
    for (m, s), a in arrays.items():
        points.append(np.pad(a, ((0, 0), (0, dim - a.shape[1]))))
        cls.append(y)
        cat += [f"{s}: {m}"] * len(a)
    X = np.concatenate(points)
    classes = np.concatenate(cls)
    perplexity = float(min(30.0, max(2.0, (len(X) - 1) / 3)))
    emb = TSNE(2, perplexity=perplexity, init="pca", random_state=0).fit_transform(X)

    markers = {"u": "o", "r": "^", "s": "s"}
    kinds = np.array([c.split(":")[0] for c in cat])
    n_classes = setup.data.n_classes
    names = list(setup.data.class_names) or [str(c) for c in range(n_classes)]
    palette = _palette(n_classes)
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    for s, mk in markers.items():
        for c in range(n_classes):
            sel = (kinds == s) & (classes == c)
            if sel.any():
                ax.scatter(emb[sel, 0], emb[sel, 1], s=10, marker=mk, color=palette[c])
    handles = [
        Line2D([], [], linestyle="", marker="o", color=palette[c], label=names[c])
        for c in range(n_classes)
    ]
    handles += [
        Line2D([], [], linestyle="", marker=mk, color="grey", label=f"slice {s}")
        for s, mk in markers.items()
    ]
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(f"PARSE agent {i} ({agent['type']}): slices by class")
    ax.set_xticks([])
    ax.set_yticks([])
    _save(fig, fig_dir / "tsne_class.png")

    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    cats = list(dict.fromkeys(cat))
    cat_arr = np.array(cat)
    colors = [f"C{k % 10}" for k in range(len(cats))]
    for label, color in zip(cats, colors, strict=True):
        sel = cat_arr == label
        mk = markers[label[0]]
        ax.scatter(emb[sel, 0], emb[sel, 1], s=10, color=color, marker=mk, label=label)
    ax.legend(fontsize=8, markerscale=2)
    ax.set_title(f"PARSE agent {i} ({agent['type']}): slices by modality and kind")
    ax.set_xticks([])
    ax.set_yticks([])
    _save(fig, fig_dir / "tsne_slices.png")

    cosines: dict[str, tuple[float, float]] = {}
    if len(mods) >= 2:
        shift = np.roll(np.arange(len(y)), 1)
        slice_names = {"u": "unique", "r": "redundant", "s": "synergistic"}
        for s in slices:
            same, other = [], []
            for a_i in range(len(mods)):
                for b_i in range(a_i + 1, len(mods)):
                    a, b = arrays[(mods[a_i], s)], arrays[(mods[b_i], s)]
                    if a.shape[1] != b.shape[1]:
                        continue
                    same.append(_cos(a, b).mean())
                    other.append(_cos(a, b[shift]).mean())
            if same:
                cosines[slice_names[s]] = (float(np.mean(same)), float(np.mean(other)))
    warns = []
    if len(y) < MIN_TSNE_SAMPLES:
        warns.append(
            f"only {len(y)} samples (fewer than {MIN_TSNE_SAMPLES}): t-SNE's neighbourhoods "
            "(perplexity 30, 91 neighbours) then span nearly every sample, so read no cluster "
            "structure into the figure"
        )
    return {
        "agent": i,
        "type": agent["type"],
        "global_accuracy": agent.get("test_accuracy", math.nan),
        "samples": len(y),
        "global_test_size": int(len(setup.global_test)),
        "points": len(X),
        "note": note,
        "cosines": cosines,
        "warnings": warns,
    }


def pid_probe_figure(pid: dict[str, Any], probe: dict[str, Any], path: Path, title: str) -> Path:
    """Left: the dataset's PID (what the data offers). Right: what each slice of a trained
    PARSE agent carries (linear-probe accuracy), with chance as a line."""
    fig = Figure(figsize=(10, 3.4))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
    m1, m2 = pid["modalities"]
    names = ["R", f"U1 ({m1})", f"U2 ({m2})", "S"]
    values = [pid[k] for k in ("R", "U1", "U2", "S")]
    colours = ["#4477aa", "#66ccee", "#228833", "#ee6677"]
    ax1.bar(names, values, color=colours)
    if pid.get("null_S") is not None:
        ax1.axhline(pid["null_S"], color="grey", ls=":", lw=1, label="S, shuffled labels")
        ax1.legend(fontsize=7, loc="upper right")
    ax1.set_ylabel("bits")
    ax1.set_title(
        f"dataset PID ({pid['n_samples']} samples, {pid['clusters']} cells per modality)",
        fontsize=9,
    )
    ax1.tick_params(axis="x", labelsize=8)

    acc = probe["probe"]["accuracy"]
    mods = probe["modalities"]
    slice_colour = {"r": "#4477aa", "u": "#66ccee", "s": "#ee6677"}
    labels, heights, cols = [], [], []
    for m in mods:
        for s in ("u", "r", "s"):
            labels.append(f"{s}_{m}")
            heights.append(100 * acc[f"{s}_{m}"])
            cols.append(slice_colour[s])
    for fused, s in (("r_fused", "r"), ("s_fused", "s")):
        if fused in acc:
            labels.append(fused)
            heights.append(100 * acc[fused])
            cols.append(slice_colour[s])
    ax2.bar(labels, heights, color=cols)
    ax2.axhline(100 * probe["chance"], color="grey", ls=":", lw=1, label="commonest class")
    ax2.set_ylim(0, 100)
    ax2.set_ylabel("linear-probe accuracy (%)")
    ax2.set_title(
        f"slices of agent {probe['agent']} ({probe['type']}), probes scored on "
        f"{probe['probe']['n_test']} held-out samples",
        fontsize=9,
    )
    ax2.tick_params(axis="x", labelsize=8, rotation=30)
    ax2.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def bytes_figure(
    by_method: dict[str, list[RunRecord]], path: Path, budget: float | None, title: str = ""
) -> Path | None:
    """Mean accuracy against the bytes each agent has sent so far (mean over seeds at each
    evaluation), both protocols; the dotted line is the equal-bytes budget of the report's
    table. A method that sends nothing (local) is a level line at its final accuracy."""
    from parse_dfl.experiments.report import bytes_curve

    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2, sharey=True)
    drawn = False
    for ax, (protocol, key) in zip(axes, PROTOCOL_KEYS, strict=True):
        for m, runs in by_method.items():
            kb, acc = bytes_curve(runs, key)
            if not kb:
                continue
            drawn = True
            if max(kb) == 0:  # a vertical streak at 0 would hide the others: its final level
                ax.axhline(acc[-1], ls="-.", lw=1, color="grey", label=f"{m} (sends nothing)")
                continue
            ax.plot(kb, acc, marker="o", markersize=3, label=m, **_style(m))
        if budget is not None:
            ax.axvline(budget / 1e3, color="grey", ls=":", lw=1)
        ax.set_title(f"{protocol} protocol")
        ax.set_xlabel("KB sent per agent so far")
        ax.grid(alpha=0.3)
    if not drawn:
        return None
    axes[0].set_ylabel("mean accuracy over agents (%)")
    axes[1].legend(fontsize=8, loc="lower right")
    name = "Accuracy for the bytes spent"
    fig.suptitle(f"{name} ({title})" if title else name)
    return _save(fig, path)
