"""A report from a folder of finished runs: report.md with tables, plus PNG figures.

Every results.json under the folder (at any depth) is one run. Runs are grouped by every
config key that differs between them, except the method and the seed (and keys that only
change together with the method, such as `topology.name: full` for `centralized`): one
table per group, rows = methods, mean ± std over seeds (sample std), under both protocols.

- Best per column (bold) and "PARSE - best baseline" are taken over decentralized methods
  only: `centralized` is an upper reference (pooled data), shown but never marked best.
- The gap is signed: positive = PARSE ahead of the best baseline, negative = behind.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parse_dfl.errors import UserError
from parse_dfl.experiments.sweep import slug
from parse_dfl.files import atomic_write_text

REFERENCE_METHODS = {"centralized"}  # upper references: not decentralized, never "best"
MAX_PID_CELLS = 70_000  # dataset PID tables larger than this take minutes: left to `parse-dfl pid`
WILDCARD = "*"  # group value of a reference run that is shown in every group
# Not settings of an experiment: engines compute the same rounds (see sweep._what)
IGNORED_KEYS = {
    "method.name",
    "seed",
    "engine.name",
    "engine.device",
    "engine.threads",
    "checkpoint.every",
}
PROTOCOLS = (
    ("global", "by_type", "mean_accuracy"),
    ("local", "by_type_local", "mean_local_accuracy"),
)


@dataclass
class RunRecord:
    """One finished run: its folder (relative to the report root) and results."""

    dir: Path
    res: dict[str, Any]
    flat: dict[str, str]  # dotted config key -> canonical JSON of its value
    group: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.dir.as_posix() if self.dir != Path(".") else "(the report folder)"

    @property
    def method(self) -> str:
        return str(self.res.get("method", self.res.get("config", {}).get("method", {}).get("name")))

    @property
    def seed(self) -> int:
        return int(self.res.get("seed", 0))


@dataclass
class Collection:
    root: Path
    runs: list[RunRecord]
    group_keys: list[str]
    method_bound: dict[str, dict[str, list[str]]]  # key -> method -> values (tied to the method)
    fixed: dict[str, str]
    values: dict[str, list[str]] = field(default_factory=dict)  # group key -> ordered values
    sweeps: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


# ---- reading -------------------------------------------------------------------------------


def flatten_config(cfg: dict[str, Any]) -> dict[str, str]:
    """{'seed': 0, 'train': {'rounds': 2}} -> {'seed': '0', 'train.rounds': '2'} (JSON values).

    Only sections are opened: a mapping value inside a section (agents.mix) stays one key.
    """
    flat: dict[str, str] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                flat[f"{k}.{k2}"] = json.dumps(v2)
        else:
            flat[k] = json.dumps(v)
    return flat


def show_value(canon: str) -> str:
    """Canonical JSON -> a short human form (mixes as acc:10,gyro:10; lists as [a, b])."""
    v = json.loads(canon)
    if isinstance(v, dict):
        if not v:
            return "{}"
        return ",".join(f"{k}:{x}" for k, x in v.items())
    if isinstance(v, list):
        return "[" + ", ".join(str(x) for x in v) + "]"
    if v is None:
        return "none"
    return str(v)


def method_order(methods: set[str]) -> list[str]:
    try:
        from parse_dfl.methods import METHODS

        known = [m for m in METHODS if m in methods]
    except Exception:  # the report must work even if a method module is broken
        known = []
    return known + sorted(methods - set(known))


def _value_order(values: list[str]) -> list[str]:
    """Distinct values in first-seen order; numbers sorted numerically."""
    distinct = list(dict.fromkeys(values))
    parsed = [json.loads(v) for v in distinct]
    if all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in parsed):
        return [d for _, d in sorted(zip(parsed, distinct, strict=True))]
    return distinct


def collect(root: str | Path) -> Collection:
    """Every results.json under `root`, grouped (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(str(root), "not a folder")
    sweeps = []
    order: dict[Path, int] = {}
    for sj in sorted(root.rglob("sweep.json")):
        try:
            doc = json.loads(sj.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        doc["_path"] = str(sj.relative_to(root))
        sweeps.append(doc)
        for r in doc.get("runs", []):
            order.setdefault((sj.parent / r["dir"]).resolve(), len(order))
    runs: list[RunRecord] = []
    skipped: list[str] = []
    for path in sorted(root.rglob("results.json")):
        rel = path.parent.relative_to(root)
        try:
            res = json.loads(path.read_text())
            flat = flatten_config(res["config"])
            res["by_type"], res["mean_accuracy"]  # noqa: B018 (required keys)
        except (json.JSONDecodeError, OSError, KeyError, TypeError) as e:
            skipped.append(f"{rel}: {type(e).__name__}: {e}")
            continue
        runs.append(RunRecord(rel, res, flat))
    if not runs:
        raise UserError(str(root), "no finished runs (no readable results.json) in this folder")
    runs.sort(key=lambda r: (order.get((root / r.dir).resolve(), math.inf), str(r.dir)))

    keys = list(dict.fromkeys(k for r in runs for k in r.flat))
    varying = [k for k in keys if len({r.flat.get(k, "null") for r in runs}) > 1]
    # Groups come from the decentralized runs; a reference run (centralized) whose value of a
    # grouping key is its own (topology.name: full) is shown in every group of that key.
    main = [r for r in runs if r.method not in REFERENCE_METHODS] or runs
    methods = {r.method for r in main}
    method_bound: dict[str, dict[str, list[str]]] = {}
    group_keys: list[str] = []
    for k in varying:
        if k in IGNORED_KEYS:
            continue
        per_method: dict[str, set[str]] = defaultdict(set)
        for r in main:
            per_method[r.method].add(r.flat.get(k, "null"))
        main_values = set().union(*per_method.values())
        if len(main_values) > 1 and not (
            len(methods) > 1 and all(len(v) == 1 for v in per_method.values())
        ):
            group_keys.append(k)
            continue
        for r in runs:
            per_method[r.method].add(r.flat.get(k, "null"))
        method_bound[k] = {m: sorted(v) for m, v in per_method.items()}
    fixed = {k: runs[0].flat[k] for k in keys if k not in varying and k in runs[0].flat}
    values = {k: _value_order([r.flat.get(k, "null") for r in main]) for k in group_keys}
    for r in runs:
        r.group = tuple(
            r.flat.get(k, "null") if r.flat.get(k, "null") in values[k] else WILDCARD
            for k in group_keys
        )
    return Collection(root, runs, group_keys, method_bound, fixed, values, sweeps, skipped)


def _matches(group: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    return all(p in (WILDCARD, g) for g, p in zip(group, pattern, strict=True))


def groups_of(col: Collection) -> list[tuple[tuple[str, ...], list[RunRecord]]]:
    """(group values, its runs) in the order of the values; reference runs with a value of
    their own (WILDCARD) join every group they match."""
    found: dict[tuple[str, ...], list[RunRecord]] = defaultdict(list)
    for r in col.runs:
        if WILDCARD not in r.group:
            found[r.group].append(r)
    for r in col.runs:
        if WILDCARD in r.group:
            targets = [g for g in found if _matches(g, r.group)]
            if not targets:
                found[r.group].append(r)
            for g in targets:
                found[g].append(r)
    index = {k: {v: i for i, v in enumerate(col.values[k])} for k in col.group_keys}
    return sorted(
        found.items(),
        key=lambda kv: tuple(
            index[k].get(v, -1) for k, v in zip(col.group_keys, kv[0], strict=True)
        ),
    )


def vs_key_selection(col: Collection, key: str) -> tuple[list[RunRecord], str]:
    """The runs to plot against `key`, and how they were chosen.

    A full grid over the varying settings: every run (mean over the other settings). Else (one
    setting changed at a time, as in ablations): the other settings held at their most common
    value, so no point mixes several changes.
    """
    pos = col.group_keys.index(key)
    others = [i for i in range(len(col.group_keys)) if i != pos]
    if not others:
        return col.runs, "Mean over seeds"
    present = {r.group for r in col.runs if WILDCARD not in r.group}
    if len(present) == math.prod(len(v) for v in col.values.values()):
        names = ", ".join(f"`{col.group_keys[i]}`" for i in others)
        return col.runs, f"Mean over seeds and over {names} (the runs form a full grid)"
    held: dict[int, str] = {}
    for i in others:
        counts: dict[str, int] = defaultdict(int)
        for r in col.runs:
            if r.group[i] != WILDCARD:
                counts[r.group[i]] += 1
        values = col.values[col.group_keys[i]]
        held[i] = max(values, key=lambda v: (counts[v], -values.index(v)))
    runs = [r for r in col.runs if all(r.group[i] in (held[i], WILDCARD) for i in others)]
    desc = ", ".join(f"`{col.group_keys[i]}` = {show_value(v)}" for i, v in held.items())
    return runs, f"Mean over seeds, the other settings held at their most common value ({desc})"


def group_label(col: Collection, group: tuple[str, ...]) -> str:
    if not col.group_keys:
        return "all runs"
    return ", ".join(f"{k} = {show_value(v)}" for k, v in zip(col.group_keys, group, strict=True))


def group_slug(col: Collection, group: tuple[str, ...]) -> str:
    if not col.group_keys:
        return "all"
    parts = [f"{k}={show_value(v)}" for k, v in zip(col.group_keys, group, strict=True)]
    return slug("__".join(parts), limit=100)


# ---- statistics ----------------------------------------------------------------------------


def mean_std(xs: list[float]) -> tuple[float, float, int]:
    """Mean, sample std (nan for one value) and count of the finite values."""
    a = np.asarray([x for x in xs if x is not None and np.isfinite(x)], dtype=float)
    if len(a) == 0:
        return math.nan, math.nan, 0
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else math.nan, len(a)


def agent_types(runs: list[RunRecord]) -> list[str]:
    return list(dict.fromkeys(t for r in runs for t in r.res.get("by_type", {})))


@dataclass
class Table:
    """Accuracy (%) of each method in one group under one protocol."""

    protocol: str
    columns: list[str]  # agent types + "mean"
    rows: dict[str, list[tuple[float, float, int]]]  # method -> per column (mean, std, n)

    def best(self, col: int) -> float:
        vals = [v[col][0] for m, v in self.rows.items() if m not in REFERENCE_METHODS and v[col][2]]
        return max(vals) if vals else math.nan

    def gap(self, col: int) -> tuple[float, str | None]:
        """PARSE minus the best decentralized baseline in column `col` (points), and who."""
        if "parse" not in self.rows or not self.rows["parse"][col][2]:
            return math.nan, None
        rivals = {
            m: v[col][0]
            for m, v in self.rows.items()
            if m != "parse" and m not in REFERENCE_METHODS and v[col][2]
        }
        if not rivals:
            return math.nan, None
        who = max(rivals, key=lambda m: rivals[m])
        return self.rows["parse"][col][0] - rivals[who], who


def accuracy_table(runs: list[RunRecord], protocol: str) -> Table:
    _, type_key, mean_key = next(p for p in PROTOCOLS if p[0] == protocol)
    types = agent_types(runs)
    rows: dict[str, list[tuple[float, float, int]]] = {}
    for m in method_order({r.method for r in runs}):
        mine = [r for r in runs if r.method == m]
        cells = [
            mean_std([100 * r.res.get(type_key, {}).get(t, math.nan) for r in mine]) for t in types
        ]
        cells.append(mean_std([100 * r.res.get(mean_key, math.nan) for r in mine]))
        rows[m] = cells
    return Table(protocol, [*types, "mean"], rows)


def conflict_table(runs: list[RunRecord]) -> tuple[list[str], dict[str, list[tuple]]]:
    """Per method, per shared block: mean over evaluation rounds per run, then mean ± std
    over runs (seeds) of the cosine between unimodal and multimodal holders' updates."""
    blocks: list[str] = []
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        sums: dict[str, list[float]] = defaultdict(list)
        for h in r.res.get("history", []):
            for b, v in (h.get("conflict") or {}).items():
                sums[b].append(float(v))
        for b, vs in sums.items():
            if b not in blocks:
                blocks.append(b)
            per[r.method][b].append(float(np.mean(vs)))
    rows = {
        m: [mean_std(per[m].get(b, [])) for b in blocks]
        for m in method_order({r.method for r in runs})
    }
    return blocks, rows


def curves(runs: list[RunRecord], key: str) -> tuple[list[int], list[float], list[float]]:
    """Accuracy (%) per evaluation round: mean and std over the runs, at rounds all share."""
    per_run = [{h["round"]: h.get(key) for h in r.res.get("history", [])} for r in runs]
    rounds = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    mean, std = [], []
    for t in rounds:
        m, s, _ = mean_std([100 * p[t] for p in per_run if p[t] is not None])
        mean.append(m)
        std.append(0.0 if math.isnan(s) else s)
    return rounds, mean, std


# ---- markdown ------------------------------------------------------------------------------


def _fmt(cell: tuple[float, float, int], digits: int = 1) -> str:
    m, s, n = cell
    if not n:
        return "–"
    return f"{m:.{digits}f}" if math.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}"


def _signed(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.1f}"


def method_label(m: str) -> str:
    return f"{m} *" if m in REFERENCE_METHODS else m


def table_markdown(t: Table) -> list[str]:
    head = ["method", "seeds", *t.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, cells in t.rows.items():
        ns = sorted({c[2] for c in cells if c[2]})
        out = [method_label(m), "/".join(str(n) for n in ns) or "0"]
        for i, c in enumerate(cells):
            text = _fmt(c)
            best = t.best(i)
            if m not in REFERENCE_METHODS and c[2] and abs(c[0] - best) < 1e-9:
                text = f"**{text}**"
            out.append(text)
        lines.append("| " + " | ".join(out) + " |")
    if "parse" in t.rows:
        gaps = []
        for i in range(len(t.columns)):
            g, who = t.gap(i)
            gaps.append("n/a" if who is None else f"{_signed(g)} (vs {who})")
        lines.append("| *PARSE − best baseline* | | " + " | ".join(gaps) + " |")
    return lines


def gap_sentence(t: Table) -> str:
    i = len(t.columns) - 1
    g, who = t.gap(i)
    if who is None:
        return (
            f"- {t.protocol}: no PARSE - baseline gap "
            f"({'no parse runs' if 'parse' not in t.rows else 'no decentralized baseline'})."
        )
    p = t.rows["parse"][i][0]
    b = t.rows[who][i][0]
    verdict = "ahead of" if g > 0 else ("level with" if g == 0 else "behind")
    return (
        f"- {t.protocol}: PARSE {p:.1f} % vs best baseline {who} {b:.1f} % (mean over agents): "
        f"**{_signed(g)} points**, PARSE {verdict} the best baseline."
    )


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _link(path: Path, start: Path) -> str:
    return _rel(path, start).replace(" ", "%20")


# ---- the report ----------------------------------------------------------------------------


def write_report(
    root: str | Path,
    out: str | Path | None = None,
    tsne: bool = True,
    max_points: int = 1500,
    figures: str | Path | None = None,
    pid: bool = True,
) -> Path:
    """Write report.md (or `out`) and the figures (under `root`/figures, or `figures`);
    returns the report's path."""
    from parse_dfl.experiments import plots

    start = time.perf_counter()
    col = collect(root)
    root = col.root
    out_path = Path(out) if out is not None else root / "report.md"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig_dir = Path(figures) if figures is not None else root / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    here = out_path.parent
    groups = groups_of(col)
    methods = method_order({r.method for r in col.runs})
    seeds = sorted({r.seed for r in col.runs})

    def img(path: Path | None, alt: str) -> str:
        return f"![{alt}]({_link(path, here)})" if path is not None else f"*({alt}: no data)*"

    md: list[str] = []
    title = col.sweeps[0]["name"] if len(col.sweeps) == 1 else root.name
    md += [f"# Report: {title}", ""]
    md += [
        f"Written by `parse-dfl report {root}` on {time.strftime('%Y-%m-%d %H:%M')} from "
        f"{len(col.runs)} finished runs under `{root}`.",
        "",
    ]
    md += _setting_section(col, methods, seeds)
    md += [
        "Accuracy in % (mean ± sample std over seeds). Two protocols, both always reported:",
        "",
        "- **global**: every agent on the union of all agents' held-out samples, using only "
        "its own modalities (did the agent learn the task?);",
        "- **local**: every agent on its own held-out samples (personalisation).",
        "",
        "Columns are agent types (mean over the agents of that type) and the mean over all "
        "agents. **Bold**: best decentralized method per column. `*`: upper reference "
        "(centralized = pooled data, not decentralized), never marked best and not in the gap. "
        "The last row is PARSE minus the best other decentralized method in that column, in "
        "points: positive = PARSE ahead, negative = PARSE behind.",
        "",
    ]

    # accuracy tables, curves and bars per group
    md += ["## Accuracy", ""]
    gaps_summary: list[str] = []
    for group, runs in groups:
        label = group_label(col, group)
        gslug = group_slug(col, group)
        if col.group_keys:
            md += [f"### {label}", ""]
        for protocol, _, _ in PROTOCOLS:
            t = accuracy_table(runs, protocol)
            md += [f"**{protocol} protocol** ({label})", ""]
            md += table_markdown(t)
            md += [""]
            sentence = gap_sentence(t)
            gaps_summary.append(f"{sentence[:2]}[{label}] {sentence[2:]}")
        md += _cost_table(runs)
        cur = plots.curves_figure(
            {m: [r for r in runs if r.method == m] for m in method_order({r.method for r in runs})},
            fig_dir / f"curves_{gslug}.png",
            title=label,
        )
        bars = plots.by_type_figure(
            {p: accuracy_table(runs, p) for p, _, _ in PROTOCOLS},
            fig_dir / f"by_type_{gslug}.png",
            title=label,
        )
        md += [img(cur, f"accuracy per round, {label}"), "", img(bars, f"by agent type, {label}")]
        md += [""]

    md += ["## PARSE against the best baseline", ""]
    md += gaps_summary + [""]
    if len(groups) > 1:
        md += _overview(col, groups)

    # accuracy vs each varying key
    if col.group_keys:
        md += ["## Accuracy against each varying setting", ""]
        md += ["Mean accuracy over agents; error bars: std over the pooled runs.", ""]
        for key in col.group_keys:
            runs, how = vs_key_selection(col, key)
            path = plots.vs_key_figure(col, key, runs, fig_dir / f"vs_{slug(key)}.png")
            md += [f"### {key}", "", f"{how}.", "", img(path, f"accuracy vs {key}"), ""]

    md += _robustness_section(col, groups)
    md += _conflict_section(col, groups)
    md += _tsne_section(col, groups, fig_dir, here, tsne, max_points)
    if pid:
        md += _pid_section(col, groups, fig_dir, here)
    md += _runs_section(col, here)
    md += _time_section(col, methods)
    md += [f"Report written in {time.perf_counter() - start:.0f} s.", ""]
    atomic_write_text(out_path, "\n".join(md))
    return out_path


def _setting_section(col: Collection, methods: list[str], seeds: list[int]) -> list[str]:
    md = ["## Setting", ""]
    if col.sweeps:
        for s in col.sweeps:
            md += [
                f"- sweep `{s.get('name')}` (`{s['_path']}`), sweep file `{s.get('sweep_file')}`, "
                f"base config `{s.get('base')}`",
                f"  - command: `{s.get('command')}`",
            ]
            if s.get("set"):
                md += [f"  - set on every run: {', '.join(f'`{x}`' for x in s['set'])}"]
            if s.get("grid"):
                grid = "; ".join(f"`{k}`: {v}" for k, v in s["grid"].items())
                md += [f"  - grid: {grid}"]
            variants = [v for v in s.get("runs_variants", []) if v]
            if variants:
                md += [
                    "  - variants (each crossed with the grid): "
                    + "; ".join("`" + " ".join(v) + "`" for v in variants)
                ]
    else:
        md += ["- no sweep.json found: runs gathered from their results.json alone"]

    def distinct(get: Any) -> str:
        return ", ".join(sorted({str(get(r)) for r in col.runs}))

    md += [
        f"- methods: {', '.join(methods)}; seeds: {', '.join(str(s) for s in seeds)}",
        f"- datasets: {distinct(lambda r: r.res.get('dataset'))}; agents per run: "
        f"{distinct(lambda r: len(r.res.get('agents', [])))}; rounds: "
        f"{distinct(lambda r: r.res.get('rounds'))}",
    ]
    if col.group_keys:
        md += [
            "- settings that vary (one table per combination): "
            + "; ".join(
                f"`{k}` ∈ {{{', '.join(show_value(v) for v in col.values[k])}}}"
                for k in col.group_keys
            )
        ]
    else:
        md += ["- no setting varies besides the method and the seed: one table"]
    for k, per in col.method_bound.items():
        md += [
            f"- `{k}` changes only together with the method ("
            + ", ".join(f"{m}: {' / '.join(show_value(x) for x in v)}" for m, v in per.items())
            + "): not a grouping key"
        ]
    for i, k in enumerate(col.group_keys):
        own = [r for r in col.runs if r.group[i] == WILDCARD]
        if own:
            who = ", ".join(sorted({r.method for r in own}))
            vals = ", ".join(sorted({show_value(r.flat.get(k, "null")) for r in own}))
            md += [f"- {who} (reference) runs with their own `{k}` ({vals}) are in every table"]
    if col.skipped:
        md += [f"- unreadable results skipped: {', '.join(col.skipped)}"]
    md += ["", "<details><summary>settings common to all runs</summary>", ""]
    md += ["| key | value |", "|---|---|"]
    md += [f"| `{k}` | `{show_value(v)}` |" for k, v in col.fixed.items()]
    md += ["", "</details>", ""]
    return md


def _overview(col: Collection, groups: list) -> list[str]:
    """One row per group, one column per method: mean accuracy over agents, both protocols."""
    methods = method_order({r.method for _, runs in groups for r in runs})
    md = ["## Overview: mean accuracy over agents, per setting", ""]
    md += [
        "Rows: the tables above; bold: best decentralized method per row; last column: PARSE "
        "minus the best other decentralized method (points).",
        "",
    ]
    for protocol, _, _ in PROTOCOLS:
        head = ["setting", *map(method_label, methods)]
        if "parse" in methods:
            head.append("PARSE − best")
        md += [f"**{protocol} protocol**", "", "| " + " | ".join(head) + " |"]
        md += ["|" + "---|" * len(head)]
        for group, runs in groups:
            t = accuracy_table(runs, protocol)
            i = len(t.columns) - 1
            best = t.best(i)
            cells = []
            for m in methods:
                c = t.rows.get(m, [(math.nan, math.nan, 0)] * len(t.columns))[i]
                text = _fmt(c)
                if m not in REFERENCE_METHODS and c[2] and abs(c[0] - best) < 1e-9:
                    text = f"**{text}**"
                cells.append(text)
            if "parse" in methods:
                g, who = t.gap(i)
                cells.append("n/a" if who is None else f"{_signed(g)} (vs {who})")
            md.append(f"| {group_label(col, group)} | " + " | ".join(cells) + " |")
        md += [""]
    return md


def _cost_table(runs: list[RunRecord]) -> list[str]:
    md = ["| method | KB sent per round per agent | wall seconds per run |", "|---|---|---|"]
    for m in method_order({r.method for r in runs}):
        mine = [r for r in runs if r.method == m]
        kb = mean_std([r.res.get("bytes_sent_per_round_per_agent", math.nan) / 1e3 for r in mine])
        sec = mean_std([r.res.get("wall_seconds", math.nan) for r in mine])
        md.append(f"| {method_label(m)} | {_fmt(kb)} | {_fmt(sec)} |")
    return md + [""]


def _disturbed(r: RunRecord) -> bool:
    faults = r.res.get("faults", {})
    return bool(
        faults.get("crashed_agents")
        or any(faults.get(k) for k in ("link_failure", "straggler", "message_loss"))
        or r.res.get("attack", {}).get("attackers")
        or r.res.get("attack", {}).get("robust_rule", "mean") != "mean"
    )


def _robustness_section(col: Collection, groups: list) -> list[str]:
    """Under faults or attacks, the agents that matter are the live and the honest ones."""
    if not any(_disturbed(r) for r in col.runs):
        return []
    md = ["## Faults and attacks: live and honest agents", ""]
    md += [
        "Global-protocol accuracy in % (mean ± std over seeds) of all agents, of the agents "
        "live at the end (crashed ones never come back), and of the honest agents (attackers "
        "excluded); messages dropped by the receivers' checks (shape, dtype, finite values) "
        "over the run.",
        "",
        "| setting | method | all agents | live agents | honest agents | crashed | attackers "
        "| dropped messages |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for group, runs in groups:
        for m in method_order({r.method for r in runs}):
            mine = [r for r in runs if r.method == m]
            cells = [
                _fmt(mean_std([100 * r.res.get(k, math.nan) for r in mine]))
                for k in ("mean_accuracy", "mean_accuracy_live", "mean_accuracy_honest")
            ]
            crashed = mean_std(
                [len(r.res.get("faults", {}).get("crashed_agents", [])) for r in mine]
            )
            bad = mean_std([len(r.res.get("attack", {}).get("attackers", [])) for r in mine])
            dropped = mean_std([r.res.get("dropped_messages", 0) for r in mine])
            md.append(
                f"| {group_label(col, group)} | {method_label(m)} | {' | '.join(cells)} "
                f"| {crashed[0]:.0f} | {bad[0]:.0f} | {dropped[0]:.0f} |"
            )
    return md + [""]


def _pid_section(col: Collection, groups: list, fig_dir: Path, here: Path) -> list[str]:
    """Per setting: the dataset's PID next to what each slice of a trained PARSE agent
    carries (first multimodal agent of the lowest-seed PARSE run)."""
    from parse_dfl.config import build_config
    from parse_dfl.diagnostics import dataset_pid, probe_run
    from parse_dfl.diagnostics.pid import default_clusters
    from parse_dfl.experiments import plots

    md: list[str] = []
    skipped: list[str] = []
    cache: dict[str, dict[str, Any]] = {}
    rows = []
    for group, runs in groups:
        parse_runs = sorted((r for r in runs if r.method == "parse"), key=lambda r: r.seed)
        if not parse_runs:
            continue
        r = parse_runs[0]
        cfg = build_config(r.res["config"])
        if len(cfg.data.modalities or r.res.get("modalities", [])) < 2:
            continue
        key = cfg.data.model_dump_json()
        if key not in cache:
            k = default_clusters(cfg)
            n_cells = k * k * int(r.res.get("n_classes", 0))
            if n_cells > MAX_PID_CELLS:
                skipped.append(
                    f"{group_label(col, group)}: {k} x {k} cells x {r.res.get('n_classes')} "
                    f"classes is too large a table for the report (`parse-dfl pid` computes it)"
                )
                continue
            cache[key] = dataset_pid(cfg, shuffles=2)
        data_pid = cache[key]
        data_pid["null_S"] = data_pid.get("null", {}).get("S")
        try:
            probe = probe_run(col.root / r.dir)
        except UserError:
            continue
        label = group_label(col, group)
        path = plots.pid_probe_figure(
            data_pid, probe, fig_dir / f"pid_probe_{group_slug(col, group)}.png", label
        )
        rows.append((label, r, data_pid, probe, path))
    if not rows:
        return []
    md += ["## What the data offers and what PARSE's slices hold", ""]
    md += [
        "Left of each figure: the dataset's partial information decomposition about the label "
        "(bits; `parse-dfl pid`, docs/pid.md): R what both modalities know, U1 / U2 what only "
        "one knows, S what needs both. Right: linear-probe accuracy of each slice of one "
        "trained PARSE agent on the global test set (`parse-dfl probe`): u unique, r redundant, "
        "s synergistic, per modality, and the fused r and s. If the slices held what their names "
        "say, r would carry the label where R is large, u where U is, s where S is.",
        "",
    ]
    acc_keys = sorted({k for *_, p, _ in rows for k in p["probe"]["accuracy"]})
    head = ["setting", "run", "R", "U1", "U2", "S", *acc_keys]
    md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r, d, p, _ in rows:
        acc = p["probe"]["accuracy"]
        cells = [f"{d[k]:.2f}" for k in ("R", "U1", "U2", "S")]
        cells += [f"{100 * acc[k]:.1f}" if k in acc else "–" for k in acc_keys]
        md.append(f"| {label} | `{r.label}` agent {p['agent']} | " + " | ".join(cells) + " |")
    md += [""]
    for label, *_, path in rows:
        md += [f"![PID and slice probes, {label}]({_link(path, here)})", ""]
    md += [f"- not shown: {note}" for note in skipped]
    return md + ([""] if skipped else [])


def _conflict_section(col: Collection, groups: list) -> list[str]:
    md = ["## Gradient conflict on shared blocks", ""]
    md += [
        "At every evaluation round, for each shared block held by both unimodal and multimodal "
        "agents: the mean cosine between the local updates (the change over one round's local "
        "steps) of its unimodal and its multimodal holders; then the mean over evaluation rounds, "
        "and mean ± std over seeds. **Positive**: both kinds of agent push the block the same way "
        "(sharing helps both); **near 0**: unrelated directions; **negative**: they pull the "
        "block apart (gradient conflict, what PARSE claims to remove). `–`: the method does not "
        "share that block between uni- and multimodal agents (nothing to conflict).",
        "",
    ]
    any_rows = False
    for group, runs in groups:
        blocks, rows = conflict_table(runs)
        if not blocks:
            continue
        any_rows = True
        if col.group_keys:
            md += [f"**{group_label(col, group)}**", ""]
        md += ["| method | " + " | ".join(f"`{b}`" for b in blocks) + " |"]
        md += ["|---|" + "---|" * len(blocks)]
        for m, cells in rows.items():
            md.append(f"| {method_label(m)} | " + " | ".join(_fmt(c, 2) for c in cells) + " |")
        md += [""]
    if not any_rows:
        md += ["No run shares a block between unimodal and multimodal agents.", ""]
    return md


def _tsne_section(
    col: Collection, groups: list, fig_dir: Path, here: Path, tsne: bool, max_points: int
) -> list[str]:
    from parse_dfl.experiments import plots

    md = ["## PARSE's slices in two dimensions (t-SNE)", ""]
    if not tsne:
        return md + ["Skipped (`--no-tsne`).", ""]
    candidates = [
        r
        for _, runs in groups
        for r in runs
        if r.method == "parse" and any(len(a["modalities"]) > 1 for a in r.res.get("agents", []))
    ]
    if not candidates:
        return md + ["Skipped: no PARSE run with a multimodal agent.", ""]
    with_models = [r for r in candidates if (col.root / r.dir / "models.pt").is_file()]
    if not with_models:
        return md + ["Skipped: the PARSE runs have no models.pt.", ""]
    r = with_models[0]
    try:
        info = plots.tsne_figures(col.root / r.dir, fig_dir, max_points=max_points)
    except Exception as e:  # the report must not fail on the optional figure
        return md + [f"Skipped: could not embed run `{r.dir}` ({type(e).__name__}: {e}).", ""]
    md += [
        f"Run `{r.label}`, agent {info['agent']} ({info['type']}; global accuracy "
        f"{100 * info['global_accuracy']:.1f} %), {info['samples']} samples of the global test "
        f"set, {info['points']} points: each sample gives one point per modality and slice "
        f"(unique u, redundant r, synergistic s){info['note']}.",
        "",
        img_line(fig_dir / "tsne_class.png", here, "t-SNE coloured by class"),
        "",
        img_line(fig_dir / "tsne_slices.png", here, "t-SNE coloured by modality and slice"),
        "",
    ]
    if info["cosines"]:
        md += [
            "Mean cosine between two modalities' slices of the same sample (and of two different "
            "samples, for scale); alignment should make the redundant slices agree most:",
            "",
            "| slice | same sample | different samples |",
            "|---|---|---|",
        ]
        md += [f"| {k} | {v[0]:.2f} | {v[1]:.2f} |" for k, v in info["cosines"].items()]
        md += [""]
    return md


def img_line(path: Path, here: Path, alt: str) -> str:
    return f"![{alt}]({_link(path, here)})"


def _runs_section(col: Collection, here: Path) -> list[str]:
    md = ["## Runs", ""]
    md += ["| run folder | method | seed | global | local | seconds |", "|---|---|---|---|---|---|"]
    for r in col.runs:
        link = _link(col.root / r.dir / "results.json", here)
        md.append(
            f"| [{r.label}]({link}) | {r.method} | {r.seed} | "
            f"{100 * r.res['mean_accuracy']:.1f} | "
            f"{100 * r.res.get('mean_local_accuracy', math.nan):.1f} | "
            f"{r.res.get('wall_seconds', math.nan):.0f} |"
        )
    return md + [""]


def _time_section(col: Collection, methods: list[str]) -> list[str]:
    total = sum(r.res.get("wall_seconds", 0.0) for r in col.runs)
    per = {
        m: sum(r.res.get("wall_seconds", 0.0) for r in col.runs if r.method == m) for m in methods
    }
    md = ["## Wall time", ""]
    md += [
        f"Total over {len(col.runs)} runs: {total:.0f} s ({total / 3600:.2f} h; the sum of the "
        "runs' own wall times, parallel runs overlap). Per method: "
        + ", ".join(f"{m} {s:.0f} s" for m, s in per.items())
        + ".",
        "",
    ]
    return md
