"""Do the slices specialise? One table over a sweep's PARSE and parse-plus runs.

For every finished parse / parse-plus run under a sweep folder, `probe_run` (parse-dfl probe)
on the first multimodal agent, on the samples a diagnostic of that run may read (the
validation set of a tuning run, else the test set); per (setting, method) the mean over
seeds of:
- the run's global accuracy (%) on those samples;
- linear-probe accuracy (%) of u_a, r_a, s_a: which slice carries the label;
- u_a vs r_a within modality a: linear CKA and mean canonical correlation (PARSE's slices are
  linear images of one hidden vector: CCA near 1 says the fission is not real);
- r_a vs r_b and u_a vs u_b across modalities: cosine of the same sample minus that of a
  random pairing (alignment where the names say: r high, u near 0);
- PID synergy S of (s_a, s_b) minus its label-shuffled null, in bits.
A run's variant (the sweep folders other than its setting and seed, e.g.
`method.plus_residual=true`) is named beside its method.

    .venv/bin/python scripts/probe_table.py runs/synthetic-pid-tuned --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from parse_dfl.diagnostics import probe_run

COLUMNS = [  # (header, function of a probe result)
    ("accuracy %", lambda r: 100 * r["accuracy"]),
    ("u_a %", lambda r: 100 * r["probe"]["accuracy"]["u_a"]),
    ("r_a %", lambda r: 100 * r["probe"]["accuracy"]["r_a"]),
    ("s_a %", lambda r: 100 * r["probe"]["accuracy"]["s_a"]),
    ("CKA u_a,r_a", lambda r: r["within"]["a"]["u,r"]["cka"]),
    ("CCA u_a,r_a", lambda r: r["within"]["a"]["u,r"]["cca_mean"]),
    (
        "r align",
        lambda r: (
            r["similarity"]["a,b"]["r"]["cos_same"] - r["similarity"]["a,b"]["r"]["cos_random"]
        ),
    ),
    (
        "u align",
        lambda r: (
            r["similarity"]["a,b"]["u"]["cos_same"] - r["similarity"]["a,b"]["u"]["cos_random"]
        ),
    ),
    (
        "S(s) - null",
        lambda r: r["pid"]["pairs"]["a,b"]["s"]["S"] - r["pid"]["pairs"]["a,b"]["s"]["null"]["S"],
    ),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweep", type=Path, help="a sweep folder of synthetic-pid runs")
    ap.add_argument("--methods", nargs="+", default=["parse", "parse-plus"])
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="default: every seed")
    ap.add_argument("--json", type=Path, help="also write every probe figure here")
    ap.add_argument("--max-clusters", type=int, default=8, help="k-means cells per slice, at most")
    args = ap.parse_args()

    rows: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    raw = []
    samples: set[str] = set()
    for res_path in sorted(args.sweep.rglob("results.json")):
        results = json.loads(res_path.read_text())
        cfg = results.get("config", {})
        method, seed = results.get("method"), cfg.get("seed")
        if method not in args.methods or (args.seeds is not None and seed not in args.seeds):
            continue
        setting = cfg.get("data", {}).get("setting", "?")
        # a variant of a method (a sweep's `runs` entry) is named by its folders
        extra = [
            p
            for p in res_path.parent.relative_to(args.sweep).parts
            if not p.startswith(("data.setting=", "seed=", "method="))
        ]
        method = " ".join([method, *extra])
        print(f"probing {res_path.parent}", file=sys.stderr, flush=True)
        # k-means cells per slice: the number of classes (probe_run's default), at most
        # --max-clusters (a 64-class label would make each slice PID a 64x64x64 problem)
        res = probe_run(res_path.parent, clusters=min(int(results["n_classes"]), args.max_clusters))
        # the run's own accuracy on the samples the probe read (validation on a tuning run)
        key = "mean_val_accuracy" if res["samples"] == "validation" else "mean_accuracy"
        res["accuracy"] = float(results[key])
        samples.add(res["samples"])
        rows[(setting, method)].append([f(res) for _, f in COLUMNS])
        raw.append(
            {
                "setting": setting,
                "method": method,
                "seed": seed,
                "samples": res["samples"],
                **{h: f(res) for h, f in COLUMNS},
            }
        )
    if not rows:
        raise SystemExit(f"no finished {'/'.join(args.methods)} runs under {args.sweep}")
    print(f"samples: global {' and '.join(sorted(samples))} set (accuracy: the run's, global)")
    head = ["setting", "method", "seeds"] + [h for h, _ in COLUMNS]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (setting, method), vals in sorted(rows.items()):
        mean = np.mean(np.asarray(vals), axis=0)
        cells = [
            f"{v:.1f}" if h.endswith("%") else f"{v:.2f}"
            for (h, _), v in zip(COLUMNS, mean, strict=True)
        ]
        print(f"| {setting} | {method} | {len(vals)} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
