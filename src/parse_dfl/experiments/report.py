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
from parse_dfl.experiments.convergence import REACH, convergence, flat_from, rule_text
from parse_dfl.experiments.stats import PairedDifference, paired_by_seed
from parse_dfl.experiments.sweep import slug
from parse_dfl.files import atomic_write_text

REFERENCE_METHODS = {"centralized"}  # upper references: not decentralized, never "best"
MAX_PID_CELLS = 70_000  # dataset PID tables larger than this take minutes: left to `parse-dfl pid`
MAX_PID_PAIRS = 10  # modality pairs decomposed per data config (5 modalities: all 10 pairs)
PID_SHUFFLES = 2  # label shuffles behind each pair's null (a report may hold many pairs)
WILDCARD = "*"  # group value of a reference run that is shown in every group
EXPORT_SUFFIX = ".jsonl.gz"  # a compact export of a sweep's results (experiments/export.py)
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
    variant: str = ""  # what sets this run apart from its method's other runs (variant_keys)

    @property
    def label(self) -> str:
        return self.dir.as_posix() if self.dir != Path(".") else "(the report folder)"

    @property
    def base_method(self) -> str:
        return str(self.res.get("method", self.res.get("config", {}).get("method", {}).get("name")))

    @property
    def method(self) -> str:
        """The row the run is shown in: its method, with its variant if it has one."""
        return f"{self.base_method} ({self.variant})" if self.variant else self.base_method

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
    export: Path | None = None  # the compact export file the runs were read from, if any
    variant_keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # variant_keys()


# ---- reading -------------------------------------------------------------------------------


# Switches added after runs were committed, each with the value that describes a run made
# before it existed (the switch is off by default, and off is how the older code behaved), so
# a table that mixes older and newer runs reads one value for them, not "none". Only keys
# whose default is the older behaviour belong here (topology.holder_graph, whose default
# changed, does not).
ADDED_LATER = {
    "faults.relink": "false",
    "method.plus_residual": "false",
    "method.plus_agreement": "false",
    "method.plus_cross": "0.0",
    "method.plus_adversary": "0.0",
    "method.plus_synergy_trunk": "0",
    "method.plus_local_head": "false",
    "method.plus_local_hidden": "0",
    "method.plus_private": "false",
    "method.plus_private_margin": "0.0",
    "method.plus_private_scope": '"agent"',
    "partition.select_fraction": "0.0",
    "partition.select_from": '"train"',
    "method.plus_private_choice": "{}",
    "method.plus_synergy_raw": "false",
}


def flatten_config(cfg: dict[str, Any]) -> dict[str, str]:
    """{'seed': 0, 'train': {'rounds': 2}} -> {'seed': '0', 'train.rounds': '2'} (JSON values).

    Only sections are opened: a mapping value inside a section (agents.mix) stays one key. A
    switch of ADDED_LATER missing from a run's section gets the value the run ran with.
    """
    flat: dict[str, str] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                flat[f"{k}.{k2}"] = json.dumps(v2)
        else:
            flat[k] = json.dumps(v)
    for key, value in ADDED_LATER.items():
        if isinstance(cfg.get(key.split(".")[0]), dict):
            flat.setdefault(key, value)
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
    """Registered methods in registry order, each followed by its variants; others last."""
    try:
        from parse_dfl.methods import METHODS

        known = list(METHODS)
    except Exception:  # the report must work even if a method module is broken
        known = []
    rank = {m: i for i, m in enumerate(known)}
    return sorted(methods, key=lambda m: (rank.get(base_of(m), len(rank)), base_of(m), m))


def _value_order(values: list[str]) -> list[str]:
    """Distinct values in first-seen order; numbers sorted numerically."""
    distinct = list(dict.fromkeys(values))
    parsed = [json.loads(v) for v in distinct]
    if all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in parsed):
        return [d for _, d in sorted(zip(parsed, distinct, strict=True))]
    return distinct


def collect(root: str | Path) -> Collection:
    """Every results.json under `root`, grouped (see the module docstring); `root` may also
    be a compact export file (experiments/export.py), which holds the same results."""
    root = Path(root)
    if root.is_file() and root.name.endswith(EXPORT_SUFFIX):
        from parse_dfl.experiments.export import read_export

        sweeps_read, runs_read, skipped_read = read_export(root)
        return group_runs(root.parent, runs_read, sweeps_read, skipped_read, export=root)
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
    return group_runs(root, runs, sweeps, skipped)


def group_runs(
    root: Path,
    runs: list[RunRecord],
    sweeps: list[dict[str, Any]],
    skipped: list[str],
    export: Path | None = None,
) -> Collection:
    """Group runs that are read already (from folders or from an export), in their order."""
    keys = list(dict.fromkeys(k for r in runs for k in r.flat))
    varying = [k for k in keys if len({r.flat.get(k, "null") for r in runs}) > 1]
    variants = variant_keys(runs, [k for k in varying if k not in IGNORED_KEYS])
    for r in runs:
        r.variant = ", ".join(
            f"{option_name(k)}={show_value(r.flat.get(k, 'null'))}"
            for k, (m, common) in variants.items()
            if r.base_method == m and r.flat.get(k, "null") != common
        )
    varying = [k for k in varying if k not in variants]
    # Groups come from the decentralized runs; a reference run (centralized) whose value of a
    # grouping key is its own (topology.name: full) is shown in every group of that key.
    main = [r for r in runs if not is_reference(r.method)] or runs
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
    return Collection(
        root, runs, group_keys, method_bound, fixed, values, sweeps, skipped, export, variants
    )


def variant_keys(runs: list[RunRecord], varying: list[str]) -> dict[str, tuple[str, str]]:
    """Keys that only one method varies while every other method runs at one value, which
    that method also runs at (method.plus_synergy_raw among parse-plus runs beside other
    methods at its default): key -> (that method, the common value). Its runs off the common
    value are rows of their own ("parse-plus (plus_synergy_raw=true)"), compared with every
    baseline, instead of splitting every table in two. With one method only, nothing is a
    variant: the key groups the tables, as in an ablation."""
    out: dict[str, tuple[str, str]] = {}
    if len({r.base_method for r in runs}) < 2:
        return out
    for k in varying:
        per_method: dict[str, set[str]] = defaultdict(set)
        for r in runs:
            per_method[r.base_method].add(r.flat.get(k, "null"))
        multi = [m for m, v in per_method.items() if len(v) > 1]
        if len(multi) != 1:
            continue
        others = set().union(*(v for m, v in per_method.items() if m != multi[0]))
        if len(others) == 1 and others <= per_method[multi[0]]:
            out[k] = (multi[0], next(iter(others)))
    return out


def option_name(key: str) -> str:
    """method.plus_synergy_raw -> plus_synergy_raw: a method's own options need no section."""
    return key.split(".", 1)[1] if key.startswith("method.") else key


def base_of(method: str) -> str:
    """The method of a row label ("parse-plus (plus_fusion=tensor)" -> "parse-plus")."""
    return method.split(" (", 1)[0]


def is_reference(method: str) -> bool:
    return base_of(method) in REFERENCE_METHODS


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
        vals = [v[col][0] for m, v in self.rows.items() if not is_reference(m) and v[col][2]]
        return max(vals) if vals else math.nan

    def gap(self, col: int) -> tuple[float, str | None]:
        """PARSE minus the best decentralized baseline in column `col` (points), and who
        (parse-plus, ours too, is no baseline)."""
        if "parse" not in self.rows or not self.rows["parse"][col][2]:
            return math.nan, None
        rivals = {m: v[col][0] for m, v in self.rows.items() if is_baseline(m) and v[col][2]}
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
    return f"{m} *" if is_reference(m) else m


def table_markdown(t: Table) -> list[str]:
    head = ["method", "seeds", *t.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, cells in t.rows.items():
        ns = sorted({c[2] for c in cells if c[2]})
        out = [method_label(m), "/".join(str(n) for n in ns) or "0"]
        for i, c in enumerate(cells):
            text = _fmt(c)
            best = t.best(i)
            if not is_reference(m) and c[2] and abs(c[0] - best) < 1e-9:
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
    final_last: int = 1,
    group_figures: bool = True,
) -> Path:
    """Write report.md (or `out`) and the figures (under `root`/figures, or `figures`);
    returns the report's path. `final_last` > 1: every final accuracy in the tables is the
    mean of the run's last `final_last` evaluations. `group_figures` False: no curves, bars
    or bytes figure per table (a report of many tables stays small; the tables stay)."""
    from parse_dfl.experiments import plots
    from parse_dfl.experiments.convergence import smooth_finals

    if final_last < 1:
        raise UserError("--final-last", f"must be 1 or more, got {final_last}")
    start = time.perf_counter()
    col = collect(root)
    if final_last > 1:
        for r in col.runs:
            smooth_finals(r.res, final_last)
    root = col.root
    default_out, default_figures = root / "report.md", root / "figures"
    if col.export is not None:  # docs/results/NAME.jsonl.gz -> NAME.md and NAME/ beside it
        stem = col.export.name[: -len(EXPORT_SUFFIX)]
        default_out, default_figures = root / f"{stem}.md", root / stem
    out_path = Path(out) if out is not None else default_out
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig_dir = Path(figures) if figures is not None else default_figures
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
        f"Written by `parse-dfl report {col.export or root}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')} from {len(col.runs)} finished runs "
        f"{'in' if col.export else 'under'} `{col.export or root}`.",
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
    if final_last > 1:
        md += [
            f"**Final accuracy here is the mean of each run's last {final_last} evaluations** "
            f"(`--final-last {final_last}`), not the last evaluation alone; the missing-sensor "
            "table is measured once, at the end.",
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
        if not group_figures:
            continue
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
    md += _paired_section(col, groups)
    md += _bytes_section(col, groups, fig_dir if group_figures else None, here)
    md += _convergence_section(col, groups)
    md += _missing_section(col, groups)

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
            ]
            md += _invocation_lines(s)
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
    for k, (m, common) in col.variant_keys.items():
        md += [
            f"- `{k}` varies only among {m} runs (every other method: {show_value(common)}): "
            f"{m}'s runs at another value are rows of their own"
        ]
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
    shown, hidden = _applicable(col)
    md += ["", "<details><summary>settings common to all runs</summary>", ""]
    md += ["| key | value |", "|---|---|"]
    md += [f"| `{k}` | `{show_value(v)}` |" for k, v in col.fixed.items() if k not in hidden]
    if hidden:
        md += ["", f"Not shown: data keys that {shown} does not read ({', '.join(hidden)})."]
    md += ["", "</details>", ""]
    return md


def _invocation_lines(sweep: dict[str, Any]) -> list[str]:
    """Every command that ran this sweep, oldest first (sweep.json `invocations`; an older
    sweep.json has only the last `command`)."""
    calls = sweep.get("invocations") or [{"command": sweep.get("command")}]
    if len(calls) == 1:
        return [f"  - command: `{calls[0].get('command')}`"]
    md = [f"  - {len(calls)} invocations:"]
    for c in calls:
        when = f"{c['started']}: " if c.get("started") else ""
        size = f" ({c['to_run']} of {c['runs']} runs to run)" if "to_run" in c else ""
        md.append(f"    - {when}`{c.get('command')}`{size}")
    return md


def _applicable(col: Collection) -> tuple[str, list[str]]:
    """(the data sources, as words; the common data keys none of them reads): a report on npz
    data need not list data.window (DataConfig.keys_for)."""
    from parse_dfl.config import DataConfig

    sources = sorted({json.loads(r.flat.get("data.name", '"?"')) for r in col.runs})
    keep = {k for src in sources for k in DataConfig.keys_for(str(src))}
    hidden = [k for k in col.fixed if k.startswith("data.") and k.split(".", 1)[1] not in keep]
    return " / ".join(f"`{x}`" for x in sources), hidden


def _overview(col: Collection, groups: list) -> list[str]:
    """One row per group, one column per method: mean accuracy over agents, both protocols."""
    methods = method_order({r.method for _, runs in groups for r in runs})
    md = ["## Overview: mean accuracy over agents, per setting", ""]
    md += [
        "Rows: the tables above; bold: best decentralized method per row; last column: PARSE "
        "minus the best baseline (points; parse-plus is ours, not a baseline).",
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
                if not is_reference(m) and c[2] and abs(c[0] - best) < 1e-9:
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


def _pid_cell(d: dict[str, Any], term: str) -> str:
    """A PID term in bits, in italics when it is not clearly above its shuffled-label value."""
    text = f"{d[term]:.2f}"
    return f"*{text}*" if term in d.get("near_null", []) else text


def _pid_section(col: Collection, groups: list, fig_dir: Path, here: Path) -> list[str]:
    """Per setting: the dataset's PID of every modality pair (at most MAX_PID_PAIRS) next to
    what each slice of a trained PARSE agent carries (first multimodal agent of the
    lowest-seed PARSE run), with the sample counts and the warnings of both."""
    from itertools import combinations

    from parse_dfl.config import build_config
    from parse_dfl.diagnostics import dataset_pid, probe_run
    from parse_dfl.diagnostics.pid import default_clusters
    from parse_dfl.experiments import plots

    skipped: list[str] = []
    notes: list[str] = []
    cache: dict[str, dict[str, dict[str, Any]]] = {}
    rows = []
    for group, runs in groups:
        parse_runs = sorted((r for r in runs if r.method == "parse"), key=lambda r: r.seed)
        if not parse_runs:
            continue
        r = parse_runs[0]
        cfg = build_config(r.res["config"])
        mods = list(r.res.get("modalities") or cfg.data.modalities or [])
        if len(mods) < 2:
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
            pairs = list(combinations(mods, 2))
            if len(pairs) > MAX_PID_PAIRS:
                notes.append(
                    f"{group_label(col, group)}: {len(mods)} modalities make {len(pairs)} pairs; "
                    f"the first {MAX_PID_PAIRS} are shown (`parse-dfl pid --modalities a,b` "
                    "for the others)"
                )
            cache[key] = {
                f"{a},{b}": dataset_pid(cfg, shuffles=PID_SHUFFLES, modalities=[a, b])
                for a, b in pairs[:MAX_PID_PAIRS]
            }
        pids = cache[key]
        data_pid = dict(next(iter(pids.values())))
        data_pid["null_S"] = data_pid.get("null", {}).get("S")
        try:
            probe = probe_run(col.root / r.dir)
        except UserError:
            continue
        label = group_label(col, group)
        path = plots.pid_probe_figure(
            data_pid, probe, fig_dir / f"pid_probe_{group_slug(col, group)}.png", label
        )
        rows.append((label, r, pids, probe, path))
    if not rows:
        return []
    md = ["## What the data offers and what PARSE's slices hold", ""]
    md += [
        "First table: the dataset's partial information decomposition about the label for every "
        "pair of modalities (bits; `parse-dfl pid`, docs/pid.md): R what both modalities know, "
        "U1 / U2 what only the first / second knows, S what needs both, I their sum; null: the "
        f"same estimate with the labels shuffled (mean of {PID_SHUFFLES}); *italic*: a term "
        "below twice its null, i.e. no measurable information. Second table and figures: "
        "linear-probe accuracy of each slice of one trained PARSE agent on the global test set "
        "(`parse-dfl probe`): u unique, r redundant, s synergistic, per modality, and the fused "
        "r and s. If the slices held what their names say, r would carry the label where R is "
        "large, u where U is, s where S is. The figures show the first pair.",
        "",
    ]
    head = ["setting", "pair", "samples", "R", "U1", "U2", "S", "I", "null S / I"]
    md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    warns: list[str] = []
    seen: set[int] = set()
    for label, _, pids, _, _ in rows:
        for pair, d in pids.items():
            null = d.get("null") or {}
            nulls = f"{null['S']:.2f} / {null['I']:.2f}" if null else "–"
            cells = [_pid_cell(d, t) for t in ("R", "U1", "U2", "S", "I")]
            md.append(
                f"| {label} | {pair.replace(',', ', ')} | {d['n_samples']} | "
                + " | ".join(cells)
                + f" | {nulls} |"
            )
            if id(d) not in seen:  # a data config shared by several settings: warned once
                seen.add(id(d))
                where = f"dataset PID ({label}; {pair.replace(',', ', ')})"
                warns += [f"{where}: {w}" for w in d.get("warnings", [])]
    md += [""]
    acc_keys = sorted({k for *_, p, _ in rows for k in p["probe"]["accuracy"]})
    head = ["setting", "run", "probe train / test samples", *acc_keys]
    md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r, _, p, _ in rows:
        acc = p["probe"]["accuracy"]
        cells = [f"{p['probe']['n_train']} / {p['probe']['n_test']}"]
        cells += [f"{100 * acc[k]:.1f}" if k in acc else "–" for k in acc_keys]
        md.append(f"| {label} | `{r.label}` agent {p['agent']} | " + " | ".join(cells) + " |")
        warns += [f"slices of `{r.label}` ({label}): {w}" for w in p.get("warnings", [])]
    md += [""]
    md += [f"- **warning**, {w}" for w in warns]
    md += [f"- {note}" for note in notes]
    md += [""] if warns or notes else []
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
        f"{100 * info['global_accuracy']:.1f} %), {info['samples']} of the "
        f"{info.get('global_test_size', info['samples'])} samples of the global test set "
        f"(at most `max_points` / (3 x modalities)), {info['points']} points: each sample "
        f"gives one point per modality and slice (unique u, redundant r, synergistic s)"
        f"{info['note']}.",
        "",
        *[f"- **warning**: {w}" for w in info.get("warnings", [])],
        *([""] if info.get("warnings") else []),
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
        link = _link(col.export or col.root / r.dir / "results.json", here)
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


# ---- evidence: paired differences, accuracy for the bytes spent, convergence ----------------

OURS = ("parse", "parse-plus")  # this repository's methods; other decentralized ones: baselines


def is_baseline(method: str) -> bool:
    """A decentralized method we compare against (local, dsgd-*, harmony, plugins)."""
    return base_of(method) not in OURS and not is_reference(method)


def per_seed(runs: list[RunRecord], method: str, protocol: str, column: str) -> dict[int, float]:
    """seed -> accuracy (%) of `method` in one column (an agent type, or 'mean' over agents)."""
    _, type_key, mean_key = next(p for p in PROTOCOLS if p[0] == protocol)
    found: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        if r.method != method:
            continue
        v = r.res.get(mean_key) if column == "mean" else r.res.get(type_key, {}).get(column)
        if v is not None and math.isfinite(float(v)):
            found[r.seed].append(100 * float(v))
    return {s: float(np.mean(v)) for s, v in found.items()}


@dataclass
class PairedCell:
    """Ours minus the best baseline in one column under one protocol, paired over seeds."""

    method: str
    protocol: str
    column: str
    baseline: str | None
    diff: PairedDifference


def paired_cells(runs: list[RunRecord]) -> list[PairedCell]:
    """For each of our methods, protocol and column: the baseline with the highest mean over
    the seeds both ran, and the paired difference against it."""
    methods = method_order({r.method for r in runs})
    cells: list[PairedCell] = []
    for ours in (m for m in methods if base_of(m) in OURS):
        for protocol, _, _ in PROTOCOLS:
            for column in [*agent_types(runs), "mean"]:
                mine = per_seed(runs, ours, protocol, column)
                best: tuple[float, str, dict[int, float]] | None = None
                for b in (m for m in methods if is_baseline(m)):
                    theirs = per_seed(runs, b, protocol, column)
                    common = sorted(set(mine) & set(theirs))
                    if common:
                        mean = float(np.mean([theirs[s] for s in common]))
                        if best is None or mean > best[0]:
                            best = (mean, b, theirs)
                diff = (
                    paired_by_seed(mine, best[2])
                    if best
                    else PairedDifference(math.nan, math.nan, math.nan, 0, math.nan)
                )
                cells.append(PairedCell(ours, protocol, column, best[1] if best else None, diff))
    return cells


def paired_text(cell: PairedCell) -> str:
    """'+1.2 [+0.3, +2.1] **win** vs dsgd-hybrid', or why there is no interval."""
    d = cell.diff
    if cell.baseline is None:
        return "no baseline"
    if d.n < 2:
        return f"{_signed(d.mean)} (1 seed: no interval) vs {cell.baseline}"
    word = {"win": "**win**", "loss": "**loss**"}.get(d.verdict, d.verdict)
    return f"{_signed(d.mean)} [{_signed(d.low)}, {_signed(d.high)}] {word} vs {cell.baseline}"


def _paired_section(col: Collection, groups: list) -> list[str]:
    """Ours minus the best baseline per setting, paired over seeds, with 95 % t intervals."""
    tables: list[tuple[str, list[PairedCell]]] = []
    for group, runs in groups:
        cells = paired_cells(runs)
        if any(c.diff.n >= 2 for c in cells):
            tables.append((group_label(col, group), cells))
    md = ["## Ours minus the best baseline, paired over seeds", ""]
    if not tables:
        return md + [
            "No setting has two or more seeds of one of our methods (parse, parse-plus) and of "
            "a baseline: no paired interval to show.",
            "",
        ]
    md += [
        "In each column, the best baseline is the decentralized baseline (every method but "
        "ours and the `*` reference) with the highest mean over the seeds it shares with ours. "
        "A cell is the mean over those seeds of (ours − that baseline) on the same seed (same "
        "data split, graph and initial values), in points, with its 95 % t interval "
        "([low, high], t with n − 1 degrees of freedom). **win** / **loss**: the interval "
        "excludes 0; *inside the noise*: it holds 0. The best baseline is picked on the same "
        "numbers, which favours it: a win is if anything understated, a loss overstated.",
        "",
    ]
    tally: dict[str, int] = defaultdict(int)
    for label, cells in tables:
        columns = list(dict.fromkeys(c.column for c in cells))
        md += [f"**{label}**", "", "| method | protocol | seeds | " + " | ".join(columns) + " |"]
        md += ["|" + "---|" * (len(columns) + 3)]
        for (m, protocol), row in _rows_of(cells).items():
            seeds = max(c.diff.n for c in row)
            md.append(
                f"| {m} | {protocol} | {seeds} | " + " | ".join(paired_text(c) for c in row) + " |"
            )
            mean_cell = row[-1]
            if mean_cell.diff.n >= 2:
                tally[mean_cell.diff.verdict] += 1
        md += [""]
    total = sum(tally.values())
    md += [
        f"Mean over all agents, over the {total} (method, protocol, setting) rows with an "
        f"interval: {tally['win']} win(s), {tally['loss']} loss(es), "
        f"{tally['inside the noise']} inside the noise.",
        "",
    ]
    return md


def _rows_of(cells: list[PairedCell]) -> dict[tuple[str, str], list[PairedCell]]:
    rows: dict[tuple[str, str], list[PairedCell]] = {}
    for c in cells:
        rows.setdefault((c.method, c.protocol), []).append(c)
    return rows


def _bytes_by_round(r: RunRecord, key: str) -> dict[int, tuple[float, float]]:
    """round -> (bytes sent per agent so far, accuracy %) at each evaluation of one run."""
    n = max(1, len(r.res.get("agents", [])))
    return {
        int(h["round"]): (h["bytes_sent"] / n, 100 * h[key])
        for h in r.res.get("history", [])
        if "bytes_sent" in h and h.get(key) is not None
    }


def _bytes_points(r: RunRecord, key: str) -> list[tuple[float, float]]:
    """(bytes per agent, accuracy %) of one run in round order."""
    by_round = _bytes_by_round(r, key)
    return [by_round[t] for t in sorted(by_round)]


def bytes_curve(runs: list[RunRecord], key: str) -> tuple[list[float], list[float]]:
    """KB per agent and accuracy (%) at each evaluation round all `runs` share, mean over runs."""
    per_run = [_bytes_by_round(r, key) for r in runs]
    if not per_run:
        return [], []
    rounds = sorted(set.intersection(*(set(p) for p in per_run)))
    kb = [float(np.mean([p[t][0] for p in per_run])) / 1e3 for t in rounds]
    acc = [float(np.mean([p[t][1] for p in per_run])) for t in rounds]
    return kb, acc


def accuracy_at_bytes(points: list[tuple[float, float]], budget: float) -> float | None:
    """Accuracy after spending at most `budget` bytes per agent: linear between the last
    evaluation within the budget and the next one; a run that never spends that much keeps
    its final accuracy; None when its first evaluation comes after the budget."""
    within = [i for i, (b, _) in enumerate(points) if b <= budget]
    if not within:
        return None
    j = within[-1]
    if j + 1 == len(points):
        return points[j][1]
    (b0, a0), (b1, a1) = points[j], points[j + 1]
    return a0 + (a1 - a0) * (budget - b0) / (b1 - b0)


def byte_budget(runs: list[RunRecord]) -> tuple[float | None, str | None]:
    """The equal-bytes budget: the final bytes per agent (mean over seeds) of the cheapest
    decentralized method that sends anything, and that method."""
    finals: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        if not is_reference(r.method) and r.res.get("agents"):
            finals[r.method].append(r.res.get("bytes_sent", 0) / len(r.res["agents"]))
    spent = {m: float(np.mean(v)) for m, v in finals.items() if np.mean(v) > 0}
    if not spent:
        return None, None
    who = min(spent, key=lambda m: spent[m])
    return spent[who], who


def _bytes_section(col: Collection, groups: list, fig_dir: Path | None, here: Path) -> list[str]:
    """Per setting: accuracy against cumulative bytes per agent, and accuracy at equal bytes
    (`fig_dir` None: the tables without the figures)."""
    from parse_dfl.experiments import plots

    md = ["## Accuracy for the bytes spent", ""]
    md += [
        "Bytes per agent = the bytes all agents have sent so far / the number of agents "
        "(history `bytes_sent`). The budget is the final bytes per agent of the cheapest "
        "decentralized method that sends anything (mean over seeds); *at budget* is each "
        "run's accuracy once it had spent that much, linear between its two evaluations "
        "around it (a method that never spends it: its final accuracy; `–`: its first "
        "evaluation already costs more), then mean ± std over seeds, in %.",
        "",
    ]
    for group, runs in groups:
        label = group_label(col, group)
        budget, cheapest = byte_budget(runs)
        methods = method_order({r.method for r in runs})
        path = (
            plots.bytes_figure(
                {m: [r for r in runs if r.method == m] for m in methods},
                fig_dir / f"bytes_{group_slug(col, group)}.png",
                budget,
                title=label,
            )
            if fig_dir is not None
            else None
        )
        if col.group_keys:
            md += [f"**{label}**", ""]
        if budget is None:
            md += ["No decentralized method sends anything here: no budget.", ""]
        else:
            md += [f"Budget: {budget / 1e3:,.1f} KB per agent ({cheapest}).", ""]
            md += [
                "| method | KB per agent (final) | global at budget | local at budget "
                "| global final | local final |",
                "|---|---|---|---|---|---|",
            ]
            for m in methods:
                mine = [r for r in runs if r.method == m]
                kb = mean_std(
                    [r.res.get("bytes_sent", 0) / max(1, len(r.res["agents"])) / 1e3 for r in mine]
                )
                cells = [_fmt(kb)]
                for key in ("mean_accuracy", "mean_local_accuracy"):
                    got = [accuracy_at_bytes(_bytes_points(r, key), budget) for r in mine]
                    known = [g for g in got if g is not None]
                    cells.append(_fmt(mean_std(known)) if len(known) == len(got) else "–")
                for key in ("mean_accuracy", "mean_local_accuracy"):
                    cells.append(_fmt(mean_std([100 * r.res.get(key, math.nan) for r in mine])))
                md.append(f"| {method_label(m)} | " + " | ".join(cells) + " |")
            md += [""]
        if path is not None:
            md += [img_line(path, here, f"accuracy for the bytes spent, {label}"), ""]
    return md


def _missing_by_seed(runs: list[RunRecord], method: str, column: str) -> dict[int, float]:
    """seed -> mean accuracy (%) of `method`'s multimodal agents, with every modality
    (column 'all') or without one (column = that modality), from results.json
    `missing_modality` (train.eval_missing)."""
    found: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        mm = r.res.get("missing_modality")
        if r.method != method or not mm:
            continue
        v = mm["mean"]["all"] if column == "all" else mm["mean"]["dropped"].get(column)
        if v is not None:
            found[r.seed].append(100 * float(v))
    return {seed: float(np.mean(v)) for seed, v in found.items()}


def _missing_section(col: Collection, groups: list) -> list[str]:
    """A sensor fails at test time: the multimodal agents' global accuracy with every modality
    and with each one absent, per method over seeds; ours minus the best baseline, paired."""
    md: list[str] = []
    for group, runs in groups:
        have = [r for r in runs if r.res.get("missing_modality")]
        if not have:
            continue
        mods = list(
            dict.fromkeys(m for r in have for m in r.res["missing_modality"]["mean"]["dropped"])
        )
        columns = ["all", *mods]
        heads = ["every modality", *[f"without {m}" for m in mods]]
        methods = method_order({r.method for r in have})
        if not md:
            md = [
                "## A sensor fails at test time",
                "",
                "Global-protocol accuracy (%) of the multimodal agents with every modality and "
                "with one absent at test time (nothing retrained; results.json "
                "`missing_modality`, `train.eval_missing`), mean ± std over seeds. Below each "
                "table: ours minus the best baseline in that column, paired over seeds, with "
                "its 95 % t interval, as in the paired section.",
                "",
            ]
        md += [f"**{group_label(col, group)}**", "", "| method | " + " | ".join(heads) + " |"]
        md += ["|---|" + "---|" * len(heads)]
        table = {m: {c: _missing_by_seed(have, m, c) for c in columns} for m in methods}
        for m in methods:
            cells = [_fmt(mean_std(list(table[m][c].values()))) for c in columns]
            md.append(f"| {method_label(m)} | " + " | ".join(cells) + " |")
        for ours in (m for m in methods if base_of(m) in OURS):
            cells = []
            for c in columns:
                best = max(
                    (b for b in methods if is_baseline(b) and table[b][c]),
                    key=lambda b: float(np.mean(list(table[b][c].values()))),
                    default=None,
                )
                if best is None:
                    cells.append("no baseline")
                    continue
                d = paired_by_seed(table[ours][c], table[best][c])
                cell = PairedCell(ours, "global", c, best, d)
                cells.append(paired_text(cell))
            md.append(f"| {ours} − best baseline | " + " | ".join(cells) + " |")
        md += [""]
    return md


def _convergence_cells(runs: list[RunRecord], key: str) -> tuple[str, str, str]:
    """(how many runs flattened, gain over the window, rounds to REACH of final) of one
    method under one protocol, over its seeds."""
    found = [convergence(r.res.get("history", []), key) for r in runs]
    told = [c for c in found if c.flat is not None]
    if not told:
        flat = "too short"
    else:
        flat = f"{sum(bool(c.flat) for c in told)} of {len(told)}"
        if len(told) < len(found):
            flat += f" ({len(found) - len(told)} too short)"
    gain = _fmt(mean_std([c.gain for c in told]), 2) if told else "–"
    reach = mean_std([float(c.rounds_to_reach) for c in found if c.rounds_to_reach is not None])
    return flat, gain, _fmt(reach, 0)


def _flat_from_cell(runs: list[RunRecord], key: str) -> str:
    """The latest round from which a method's curve stays flat, over its seeds ("not yet"
    when some seed's curve has not flattened; "–" when no run has the curve)."""
    curves = [r.res.get("history", []) for r in runs]
    curves = [h for h in curves if any(key in e for e in h)]
    if not curves:
        return "–"
    found = [flat_from(h, key) for h in curves]
    return "not yet" if any(f is None for f in found) else str(max(f for f in found if f))


def _flat_from_lines(col: Collection, groups: list) -> list[str]:
    """Per setting: from which round every method's curve stays flat, on the validation
    curves when the runs have them (how a benchmark's number of rounds is chosen without
    the test split), else on the test curves."""
    val = any(
        "mean_val_accuracy" in e
        for _, runs in groups
        for r in runs
        for e in r.res.get("history", [])
    )
    keys = (
        ("mean_val_accuracy", "mean_val_local_accuracy")
        if val
        else (
            "mean_accuracy",
            "mean_local_accuracy",
        )
    )
    what = "validation" if val else "test"
    md = [
        f"Flat from (on the {what} curves): the first round from which the curve, cut there "
        "or at any later evaluation, is flat by the rule (the latest over seeds; not yet: a "
        "seed's curve is not flat at its end).",
        "",
        f"| setting | method | flat from, {what} global | flat from, {what} local |",
        "|---|---|---|---|",
    ]
    for group, runs in groups:
        worst: list[list[int | None]] = [[], []]  # per column: global, local
        for m in method_order({r.method for r in runs}):
            mine = [r for r in runs if r.method == m]
            cells = [_flat_from_cell(mine, k) for k in keys]
            for col_worst, c in zip(worst, cells, strict=True):
                if c != "–":
                    col_worst.append(int(c) if c.isdigit() else None)
            md.append(
                f"| {group_label(col, group)} | {method_label(m)} | {cells[0]} | {cells[1]} |"
            )

        def every(found: list[int | None]) -> str:
            if not found:
                return "–"
            if None in found:
                return "not every curve"
            return f"every curve from {max(f for f in found if f is not None)}"

        md.append(
            f"| {group_label(col, group)} | **all** | {every(worst[0])} | {every(worst[1])} |"
        )
    return md + [""]


def _convergence_section(col: Collection, groups: list) -> list[str]:
    """Per setting and method: has the curve flattened (a stated rule), and how fast it rose."""
    md = ["## Convergence", ""]
    md += [
        f"Rule (experiments/convergence.py): {rule_text()}. Gain: that difference in points "
        f"(mean ± std over the seeds it applies to). Rounds to {int(100 * REACH)} %: the first "
        f"evaluated round at or above {REACH} × the final accuracy (the mean of the last "
        f"evaluations), mean ± std over seeds. A comparison is only as final as its curves: "
        "where a method has not flattened, more rounds may change the order.",
        "",
        "| setting | method | flattened, global | flattened, local | gain, global | gain, local "
        f"| rounds to {int(100 * REACH)} %, global | rounds to {int(100 * REACH)} %, local |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for group, runs in groups:
        for m in method_order({r.method for r in runs}):
            mine = [r for r in runs if r.method == m]
            g = _convergence_cells(mine, "mean_accuracy")
            lo = _convergence_cells(mine, "mean_local_accuracy")
            md.append(
                f"| {group_label(col, group)} | {method_label(m)} | {g[0]} | {lo[0]} | {g[1]} "
                f"| {lo[1]} | {g[2]} | {lo[2]} |"
            )
    return md + [""] + _flat_from_lines(col, groups)
