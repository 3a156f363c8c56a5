"""Can parse-plus learn synergy when nothing is federated? (docs/method.md, "Synergy")

One multimodal (a+b) agent's parse-plus model is trained centrally on pooled samples of
synthetic-pid's synergy setting (label (s_a + s_b) mod C: nothing in one modality), with
the method's whole objective or with the synergy head's cross-entropy alone, with and
without the synergy slice's own trunk (`method.plus_synergy_trunk`) or the raw input
(`method.plus_synergy_raw`). Test accuracy on 1,000
held-out samples; the same samples and initial values for every variant.

    .venv/bin/python scripts/synergy_central.py --samples 800 --epochs 100
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from parse_dfl.config import load_config
from parse_dfl.data import load_dataset
from parse_dfl.data.partition import AgentSpec
from parse_dfl.methods import METHODS

VARIANTS = [  # (label, overrides, objective)
    ("shared trunk, synergy CE only", [], "synergy"),
    ("shared trunk, parse-plus objective", [], "method"),
    ("own synergy trunk (16), synergy CE only", ["method.plus_synergy_trunk=16"], "synergy"),
    ("own synergy trunk (16), parse-plus objective", ["method.plus_synergy_trunk=16"], "method"),
    ("s from the raw input, synergy CE only", ["method.plus_synergy_raw=true"], "synergy"),
    ("s from the raw input, parse-plus objective", ["method.plus_synergy_raw=true"], "method"),
]
BASE = [
    "data.name=synthetic-pid",
    "data.setting=synergy",
    "agents.mix=a+b:1",
    "agents.width=32",
    "model.split=[16, 16, 16]",
    "method.name=parse-plus",
    "method.plus_fusion=tensor",
    "method.plus_synergy_hidden=-1",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=800, help="pooled training samples")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", default="", help="run only the variants whose label has this")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{args.samples} training samples, {args.epochs} epochs, lr {args.lr}, test 1,000")
    print("accuracy (%) of the synergy head / the ensemble, one pair per seed, then the mean")
    for label, overrides, objective in VARIANTS:
        if args.only not in label:
            continue
        accs = [run(overrides, objective, args, seed) for seed in args.seeds]
        mean = np.mean(accs, axis=0)
        cells = "  ".join(f"{100 * s:4.1f}/{100 * e:4.1f}" for s, e in accs)
        print(f"{label:46s} {cells}   mean {100 * mean[0]:4.1f}/{100 * mean[1]:4.1f}", flush=True)


def run(
    overrides: list[str], objective: str, args: argparse.Namespace, seed: int
) -> tuple[float, float]:
    """Test accuracy of the synergy head and of the ensemble after central training."""
    cfg = load_config("configs/quick.yaml", BASE + overrides)
    ds = load_dataset(cfg.data)
    x = {m: torch.tensor(v, dtype=torch.float32) for m, v in ds.modalities.items()}
    y = torch.as_tensor(ds.labels)
    order = np.random.default_rng(seed).permutation(len(y))
    test, train = order[:1000], order[1000 : 1000 + args.samples]
    torch.manual_seed(seed)
    method = METHODS["parse-plus"](cfg, ds)
    model = method.build_model(AgentSpec(0, ("a", "b"), 32, train, test))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(args.epochs):
        perm = torch.as_tensor(train)[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(perm), args.batch):
            b = perm[i : i + args.batch]
            xb = {m: v[b] for m, v in x.items()}
            if objective == "method":
                loss = method.loss(model, xb, y[b])
            else:
                loss = F.cross_entropy(model(xb).heads["synergy"], y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        out = model({m: v[test] for m, v in x.items()})
    return (
        (out.heads["synergy"].argmax(1) == y[test]).float().mean().item(),
        (out.ensemble.argmax(1) == y[test]).float().mean().item(),
    )


if __name__ == "__main__":
    main()
