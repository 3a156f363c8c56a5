"""How fast can a cohort of agents run their own convolutions? Candidates side by side.

Run by hand (not a test):

    .venv/bin/python benchmarks/bench_conv.py                 # the watch encoder's layers
    .venv/bin/python benchmarks/bench_conv.py --agents 10,30,100 --threads 1

Each agent has its own weights; a cohort of A agents runs one mini-batch each. Forward and
backward (input and weight gradients) of one convolution layer are timed for:

  plain      one convolution of the whole A*B batch with ONE weight: the rate the hardware
             gives a convolution of that total size (the ceiling; not per-agent maths)
  loop       A plain convolutions, one per agent (the reference engine)
  vmap       torch.func.vmap of F.conv1d: a grouped convolution with A groups
  unfold     im2col: x unfolded to (A, B*L, C*K) patches, one batched matmul with the
             (A, C*K, O) weights (bmm), as autograd sees it
  unfold-vmap  the same im2col written per agent and vmapped (what an encoder written with
             unfold + matmul runs as under the batched engine)

All candidates compute the same numbers (checked to 1e-4 relative against `loop`).
Printed: milliseconds per call and GFLOP/s (2 * MACs, forward + 2x backward), and each
candidate's speed relative to `loop`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import vmap

LAYERS = {  # the watch SeriesEncoder: (in channels, out channels, length), kernel 5 stride 2
    "conv1 3->64 T100": (3, 64, 100),
    "conv2 64->64 T50": (64, 64, 50),
    "conv3 64->64 T25": (64, 64, 25),
}
K, STRIDE, PAD = 5, 2, 2


def unfold_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """conv1d of one agent's batch (B, C, T) as im2col + matmul."""
    cols = F.pad(x, (PAD, PAD)).unfold(2, K, STRIDE)  # (B, C, L, K)
    cols = cols.permute(0, 2, 1, 3).reshape(x.shape[0], -1, x.shape[1] * K)  # (B, L, C*K)
    out = cols @ w.reshape(w.shape[0], -1).t() + b  # (B, L, O)
    return out.transpose(1, 2)


def unfold_bmm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """conv1d of A agents' batches (A, B, C, T) with their weights (A, O, C, K)."""
    A, B, C, _ = x.shape
    cols = F.pad(x, (PAD, PAD)).unfold(3, K, STRIDE)  # (A, B, C, L, K)
    L = cols.shape[3]
    cols = cols.permute(0, 1, 3, 2, 4).reshape(A, B * L, C * K)
    out = torch.baddbmm(b[:, None, :], cols, w.reshape(A, w.shape[1], -1).transpose(1, 2))
    return out.view(A, B, L, -1).transpose(2, 3)


def candidates(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor
) -> dict[str, Callable[[], torch.Tensor]]:
    """Every way of computing the cohort's convolution, as a call."""
    A, _, C, T = x.shape

    def one(xx: torch.Tensor, ww: torch.Tensor, bb: torch.Tensor) -> torch.Tensor:
        return F.conv1d(xx, ww, bb, stride=STRIDE, padding=PAD)

    return {
        "plain": lambda: one(x.reshape(-1, C, T), w[0], b[0]),
        "loop": lambda: torch.stack([one(x[a], w[a], b[a]) for a in range(A)]),
        "vmap": lambda: vmap(one)(x, w, b),
        "unfold": lambda: unfold_bmm(x, w, b),
        "unfold-vmap": lambda: vmap(unfold_conv)(x, w, b),
    }


def timed(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    fn().sum().backward()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn().sum().backward()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--agents", default="10,30,100")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for name, (C, out_ch, T) in LAYERS.items():
        for A in [int(a) for a in args.agents.split(",")]:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(A, args.batch, C, T, generator=gen, requires_grad=True)
            w = torch.randn(A, out_ch, C, K, generator=gen).mul_(0.1).requires_grad_()
            b = torch.randn(A, out_ch, generator=gen).requires_grad_()
            L = (T + 2 * PAD - K) // STRIDE + 1
            flops = 3 * 2 * A * args.batch * out_ch * C * K * L  # forward + two backward products
            cands = candidates(x, w, b)
            want = cands["loop"]().detach()
            for cand in ("vmap", "unfold", "unfold-vmap"):
                got = cands[cand]().detach()
                err = float((got - want).abs().max() / want.abs().max())
                assert err < 1e-4, f"{cand} differs from loop by {err:.1e}"
            times = {c: timed(f, args.repeats) for c, f in cands.items()}
            line = "  ".join(
                f"{c} {1e3 * t:7.2f} ms {flops / t / 1e9:5.1f} GF/s x{times['loop'] / t:4.2f}"
                for c, t in times.items()
            )
            print(f"{name:18} A={A:<4} {line}", flush=True)


if __name__ == "__main__":
    main()
