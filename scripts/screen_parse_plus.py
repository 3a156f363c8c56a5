"""Screen PARSE-plus's components on VALIDATION data, one switch at a time.

Every agent's training split is cut in two (seeded): a validation part (`--val-fraction`) and
the rest, on which the run trains. Global accuracy is measured on the union of every agent's
validation part, local accuracy on its own part. Test splits are never touched, so the
defaults chosen from this table are not fitted to the test data. (If the partition has its own
validation split, `AgentSpec.val_idx`, that is used instead.)

    OMP_NUM_THREADS=1 .venv/bin/python scripts/screen_parse_plus.py \\
        --settings redundancy,uniqueness0,synergy,watch --seeds 0

Prints one table (validation accuracy in %, global / local protocol, bytes per agent per
round) and, with --json, writes every number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from parse_dfl.config import Config, load_config
from parse_dfl.data import load_dataset
from parse_dfl.data.partition import AgentSpec, partition
from parse_dfl.engines import ENGINES
from parse_dfl.engines.setup import Setup, build_setup
from parse_dfl.methods.parse_plus import allocate_split, pid_terms

ROOT = Path(__file__).resolve().parent.parent

SYNTHETIC = [
    "data.name=synthetic-pid",
    "agents.mix=a:10,b:10,a+b:10",
    "agents.width=32",
    "model.split=[16, 16, 16]",
    "train.batch_size=16",
]
SETTINGS: dict[str, tuple[str, list[str]]] = {
    # name: (base config, overrides); synthetic as configs/paper/synthetic-pid.yaml
    "redundancy": ("configs/quick.yaml", [*SYNTHETIC, "data.setting=redundancy"]),
    "uniqueness0": ("configs/quick.yaml", [*SYNTHETIC, "data.setting=uniqueness0"]),
    "synergy": ("configs/quick.yaml", [*SYNTHETIC, "data.setting=synergy"]),
    # both a redundant and a unique factor in the label (16 classes): for the slice probes
    "red+uniq0": ("configs/quick.yaml", [*SYNTHETIC, "data.setting=redundancy+uniqueness0"]),
    "watch": ("configs/watch.yaml", []),
    "watch-dir0.5": ("configs/watch.yaml", ["partition.name=dirichlet", "partition.alpha=0.5"]),
    # synergy that the federation can learn: less noise, a complete graph, more rounds
    "synergy-easy": (
        "configs/quick.yaml",
        [*SYNTHETIC, "data.setting=synergy", "data.noise=1.0", "topology.name=full"],
    ),
}
ROUNDS = {"synergy-easy": 200}  # settings whose rounds are not --rounds / --watch-rounds

SCREEN_BASE = [
    "method.plus_projectors=false",
    "method.plus_decor=none",
    "method.plus_fusion=tensor",
    "method.plus_synergy_hidden=-1",
    "method.plus_personal_weights=false",
    "method.plus_personal_head=false",
    "method.plus_split=fixed",
]
"""The parse-plus configuration every variant below changes one thing of: the one the
screening in docs/method.md was run against (pinned here, so that the table reproduces
whatever the method's defaults are now)."""

VARIANTS: dict[str, list[str]] = {
    # name: overrides on top of method.name=parse-plus and SCREEN_BASE; "parse" and "local"
    # are the reference methods, "defaults" is parse-plus with the defaults chosen from the
    # screening (pinned). Each other name says what changes from SCREEN_BASE.
    "defaults": [
        "method.plus_decor=xcov",
        "method.plus_gamma=1.0",
        "method.plus_fusion=mean",
        "method.plus_synergy_hidden=0",
    ],
    "parse": ["method.name=parse"],
    "local": ["method.name=local"],
    "plus": [],
    "+projectors": ["method.plus_projectors=true"],
    "+decor xcov": ["method.plus_decor=xcov", "method.plus_gamma=0.1"],
    "+decor xcov gamma=1": ["method.plus_decor=xcov", "method.plus_gamma=1.0"],
    "+decor hsic": ["method.plus_decor=hsic", "method.plus_gamma=0.1"],
    "+projectors +decor xcov gamma=1": [
        "method.plus_projectors=true",
        "method.plus_decor=xcov",
        "method.plus_gamma=1.0",
    ],
    "+discriminator": ["method.plus_discriminator=true"],
    "-align": ["method.align=false"],
    "fusion=mean+lin": ["method.plus_fusion=mean", "method.plus_synergy_hidden=0"],
    "fusion=mlp": ["method.plus_fusion=mlp"],
    "+personal weights": ["method.plus_personal_weights=true"],
    "+personal head": ["method.plus_personal_head=true"],
    "+personal head+weights": [
        "method.plus_personal_head=true",
        "method.plus_personal_weights=true",
    ],
    "split=pid": ["method.plus_split=pid"],
    "unique heads local": ["method.share_unique_heads=false"],
    # no head shared with unimodal agents (what lets the federation learn synergy)
    "heads apart": ["method.share_unique_heads=false", "method.redundant_head_scope=type"],
    "heads apart|mean+lin": [
        "method.share_unique_heads=false",
        "method.redundant_head_scope=type",
        "method.plus_fusion=mean",
        "method.plus_synergy_hidden=0",
    ],
    "heads apart|mlp": [
        "method.share_unique_heads=false",
        "method.redundant_head_scope=type",
        "method.plus_fusion=mlp",
    ],
    "parse|heads apart": [
        "method.name=parse",
        "method.share_unique_heads=false",
        "method.redundant_head_scope=type",
    ],
}


def carve_validation(
    agents: list[AgentSpec], fraction: float, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) indices per agent: a seeded `fraction` of its training samples
    (at least one, leaving at least one to train on) is held out for validation."""
    out = []
    for a in agents:
        val = getattr(a, "val_idx", None)
        if val is not None and len(val) > 0:
            out.append((np.asarray(a.train_idx), np.asarray(val)))
            continue
        rng = np.random.default_rng([seed, 7919, a.id])
        perm = rng.permutation(a.train_idx)
        k = min(max(1, int(round(fraction * len(perm)))), len(perm) - 1)
        out.append((np.sort(perm[k:]), np.sort(perm[:k])))
    return out


def validation_setup(setup: Setup, split: list[tuple[np.ndarray, np.ndarray]]) -> Setup:
    """The same setup, training on the train part and 'testing' on the validation part."""
    dev = setup.device
    agents = [
        replace(a, train_idx=tr, test_idx=va)
        for a, (tr, va) in zip(setup.agents, split, strict=True)
    ]
    val_all = np.sort(np.concatenate([va for _, va in split]))
    return replace(
        setup,
        agents=agents,
        global_test=torch.from_numpy(val_all).to(dev),
        train_idx=[torch.from_numpy(tr).to(dev) for tr, _ in split],
        test_idx=[torch.from_numpy(va).to(dev) for _, va in split],
    )


def pid_overrides(cfg: Config, fraction: float) -> list[str]:
    """`plus_split: pid`, but with the PID of the screening *train* part only (the method's
    own pid_split would also see the validation samples): a fixed split from it."""
    ds = load_dataset(cfg.data)
    split = carve_validation(partition(ds, cfg), fraction, cfg.seed)
    train = np.sort(np.concatenate([tr for tr, _ in split]))
    pid = pid_terms(cfg, ds, train)
    sizes = allocate_split(sum(cfg.model.split), (pid["U"], pid["R"], pid["S"]))
    return ["method.plus_split=fixed", f"model.split=[{sizes[0]}, {sizes[1]}, {sizes[2]}]"]


def screen_one(
    setting: str,
    variant: str,
    seed: int,
    rounds: int,
    fraction: float,
    engine: str,
    probe: bool = False,
) -> dict[str, Any]:
    base, over = SETTINGS[setting]
    common = [
        *over,
        f"seed={seed}",
        f"train.rounds={rounds}",
        f"train.eval_every={rounds}",
        "engine.threads=1",
        f"engine.name={engine}",
        "method.name=parse-plus",
        *SCREEN_BASE,
    ]
    overrides = common + VARIANTS[variant]
    cfg = load_config(ROOT / base, overrides)
    if cfg.method.plus_split == "pid" and cfg.method.name == "parse-plus":
        overrides += pid_overrides(cfg, fraction)
        cfg = load_config(ROOT / base, overrides)
    start = time.perf_counter()
    setup = build_setup(cfg)
    setup = validation_setup(setup, carve_validation(setup.agents, fraction, seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        eng = ENGINES[cfg.engine.name](setup)
        res = eng.run(progress=False)
    n = len(setup.agents)
    multi = [i for i, a in enumerate(setup.agents) if len(a.modalities) >= 2]
    return {
        "setting": setting,
        "variant": variant,
        "seed": seed,
        "rounds": rounds,
        "split": list(getattr(setup.method, "split", cfg.model.split)),
        "val_global": float(np.mean(res.test_accuracy)),
        "val_local": float(np.mean(res.local_test_accuracy)),
        "val_global_multi": float(np.mean([res.test_accuracy[i] for i in multi]))
        if multi
        else None,
        "bytes_per_round_per_agent": float(res.bytes_sent.sum() / n / rounds),
        "seconds": time.perf_counter() - start,
        **(probe_slices(setup, eng) if probe else {}),
    }


def latent_codes(cfg: Config) -> dict[str, np.ndarray]:
    """synthetic-pid's latent codes per sample (r, ua, ub, s1, s2), drawn as
    data/synthetic_pid.py draws them (the same generator and order)."""
    from parse_dfl.data.synthetic_pid import SEED

    n, dim, c = int(cfg.data.n_samples), int(cfg.data.dim), int(cfg.data.n_classes)
    rng = np.random.default_rng([SEED, n, dim, c])
    for _ in range(6):
        rng.standard_normal((dim, c))
    r, ua, ub, s1, s2 = rng.integers(0, c, size=(5, n))
    return {"r": r, "ua": ua, "ub": ub, "s1": s1, "s2": s2}


@torch.no_grad()
def probe_slices(setup: Setup, engine: Any) -> dict[str, Any]:
    """What the first multimodal agent's slices hold, on the validation samples: linear-probe
    accuracy of the label (and, on synthetic-pid, of every latent code) from each slice, and
    the top canonical correlation between two slices of one modality (1.0: one is a linear
    image of the other, as in PARSE)."""
    from parse_dfl.diagnostics.probe import linear_probe, similarity

    multi = [i for i, a in enumerate(setup.agents) if len(a.modalities) >= 2]
    if not multi:
        return {}
    model = engine.agent_models()[multi[0]]
    model.eval()
    idx = setup.global_test
    out = model({m: setup.x[m][idx] for m in model.modalities})
    if not hasattr(out, "unique"):  # not a sliced model (local, dsgd-*)
        return {}
    slices = {
        f"{k}_{m}": v.float().cpu().numpy()
        for k, part in (("u", out.unique), ("r", out.redundant), ("s", out.synergy))
        for m, v in part.items()
    }
    targets = {"label": setup.y[idx].cpu().numpy()}
    if setup.cfg.data.name == "synthetic-pid":
        codes = latent_codes(setup.cfg)
        targets |= {k: v[idx.cpu().numpy()] for k, v in codes.items()}
    acc = {
        f"{name}->{t}": linear_probe(x, y)[0]
        for name, x in slices.items()
        for t, y in targets.items()
    }
    cca = {
        f"{p}_{m},{q}_{m}": similarity(slices[f"{p}_{m}"], slices[f"{q}_{m}"])["cca_top"]
        for m in model.modalities
        for p, q in (("u", "r"), ("u", "s"), ("r", "s"))
    }
    return {"agent": multi[0], "probe": acc, "cca_top": cca}


def table(rows: list[dict[str, Any]], settings: list[str], variants: list[str]) -> str:
    """Markdown: one row per variant, global / local validation accuracy per setting
    (mean over seeds), and the bytes per agent per round relative to parse."""
    cell: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        cell.setdefault((r["setting"], r["variant"]), []).append(r)
    head = ["variant"] + [f"{s} (global / local)" for s in settings] + ["bytes vs parse"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants:
        out = [v.replace("|", "\\|")]
        ratios = []
        for s in settings:
            rs = cell.get((s, v), [])
            if not rs:
                out.append("-")
                continue
            g = 100 * np.mean([r["val_global"] for r in rs])
            loc = 100 * np.mean([r["val_local"] for r in rs])
            out.append(f"{g:.1f} / {loc:.1f}")
            ref = cell.get((s, "parse"), [])
            if ref and ref[0]["bytes_per_round_per_agent"] > 0:
                ratios.append(
                    rs[0]["bytes_per_round_per_agent"] / ref[0]["bytes_per_round_per_agent"]
                )
        out.append(f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-")
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", default="redundancy,uniqueness0,synergy,watch")
    ap.add_argument(
        "--variants",
        default="parse,local,defaults,plus,+projectors,+decor xcov,+decor xcov gamma=1,"
        "+decor hsic,+discriminator,-align,fusion=mean+lin,fusion=mlp,+personal weights,"
        "+personal head,split=pid",
        help="comma-separated names (see VARIANTS)",
    )
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--rounds", type=int, default=20, help="rounds of the synthetic settings")
    ap.add_argument("--watch-rounds", type=int, default=15)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--engine", default="batched")
    ap.add_argument("--probe", action="store_true", help="probe the slices (see probe_slices)")
    ap.add_argument("--json", type=Path, help="append every result as a JSON line here")
    ap.add_argument(
        "--custom",
        action="append",
        default=[],
        help="an extra variant NAME=key=value;key=value (overrides on SCREEN_BASE)",
    )
    args = ap.parse_args(argv)
    for spec in args.custom:
        name, _, body = spec.partition("=")
        VARIANTS[name] = [o for o in body.split(";") if o]
    settings = [s for s in args.settings.split(",") if s]
    variants = [v for v in args.variants.split(",") if v] + [
        c.partition("=")[0] for c in args.custom
    ]
    unknown = [s for s in settings if s not in SETTINGS] + [
        v for v in variants if v not in VARIANTS
    ]
    if unknown:
        ap.error(f"unknown setting or variant: {', '.join(unknown)}")
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    if args.json and args.json.is_file():  # resume: keep what was already screened
        rows = [json.loads(line) for line in args.json.read_text().splitlines() if line.strip()]
    done = {(r["setting"], r["variant"], r["seed"]) for r in rows}
    for seed in (int(s) for s in args.seeds.split(",")):
        for s in settings:
            rounds = ROUNDS.get(s, args.watch_rounds if s.startswith("watch") else args.rounds)
            for v in variants:
                if (s, v, seed) in done:
                    continue
                r = screen_one(s, v, seed, rounds, args.val_fraction, args.engine, args.probe)
                rows.append(r)
                print(
                    f"{s:12s} {v:20s} seed {seed}: global {100 * r['val_global']:.1f} "
                    f"(multimodal {100 * (r['val_global_multi'] or 0):.1f}) "
                    f"local {100 * r['val_local']:.1f}  {r['bytes_per_round_per_agent'] / 1e3:.1f} "
                    f"KB/agent/round  split {r['split']}  {r['seconds']:.0f} s",
                    flush=True,
                )
                if args.json:
                    with args.json.open("a") as f:
                        f.write(json.dumps(r) + "\n")
    print()
    print(table(rows, settings, variants))
    return 0


if __name__ == "__main__":
    sys.exit(main())
