"""What a holder does with the blocks it receives in a round: check them, then combine them.

Every engine, for plain and robust gossip alike, goes through these three steps for every
holder group and round; they differ only in how they gather rows and multiply matrices.

1. `intact(sent)`: which senders' blocks are usable (every value finite). The distributed
   engine also drops a message whose size does not match what the sender's plan says.
2. `inbox(W, ok)`: the round's weights with every dropped message's weight returned to its
   receiver (rows still sum to what they summed to), and the number of dropped messages.
3. `combine(own, sent, box, rule)`: each receiver's new copy from its own copy and what it
   kept, by the robust rule:

   - mean:          x_i <- W_ii x_i + sum_j W_ij m_j                (plain gossip)
   - clip:          x_i <- x_i + sum_j W_ij clip(m_j - x_i, radius)  (self-centred clipping)
   - trimmed-mean:  per coordinate, the mean of {x_i, m_j} without the `trim` share at each end
   - median:        per coordinate, the median of {x_i, m_j}

Rows and columns: `W` is (receivers x senders). Row r belongs to the holder whose own copy is
column `me[r]` (the identity when receivers and senders are the same holders, as in one
process; a process of the distributed engine receives for its own holders only).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from parse_dfl.config import RobustConfig

Matmul = Callable[[sp.csr_matrix, torch.Tensor], torch.Tensor]


def intact(sent: torch.Tensor) -> np.ndarray:
    """Which rows of `sent` (senders x numel) may be used: all values finite.

    A row's sum is non-finite whenever one of its values is (NaN and inf propagate), and is
    25x cheaper to compute than a per-value test; only rows whose sum is non-finite (a bad
    value, or finite values so large that their sum overflows) get the exact test."""
    return intact_parts([sent])


def intact_parts(parts: list[torch.Tensor]) -> np.ndarray:
    """`intact` of rows split column-wise into pieces (e.g. one per parameter tensor)."""
    flat = [p.reshape(p.shape[0], -1) for p in parts]
    if not flat or flat[0].shape[0] == 0:
        return np.ones(flat[0].shape[0] if flat else 0, dtype=bool)
    total = flat[0].sum(dim=1)
    for p in flat[1:]:
        total = total + p.sum(dim=1)
    ok = torch.isfinite(total)
    if not bool(ok.all()):
        suspect = torch.nonzero(~ok).flatten()
        exact = torch.ones(len(suspect), dtype=torch.bool, device=total.device)
        for p in flat:
            exact &= torch.isfinite(p[suspect]).all(dim=1)
        ok[suspect] = exact
    return ok.cpu().numpy()


def dense_matmul(W: sp.csr_matrix, x: torch.Tensor) -> torch.Tensor:
    """W @ x with W densified (the reference engine's product)."""
    return torch.as_tensor(W.toarray(), dtype=x.dtype, device=x.device) @ x


@dataclass
class Inbox:
    """One group's weights for one round after the checks."""

    W: sp.csr_matrix  # receivers x senders, dropped messages' weights moved to the receiver
    me: np.ndarray  # column of each receiver's own copy
    ok: np.ndarray | None  # senders kept (None: all)
    dropped: int  # messages dropped (receiver, sender) pairs

    @property
    def clean(self) -> bool:
        return self.ok is None

    @functools.cached_property
    def split(self) -> tuple[sp.csr_matrix, np.ndarray]:
        """(W without each receiver's own entry, the own entries): computed once per round
        and group, however many column pieces the engine combines."""
        coo = self.W.tocoo()
        own = coo.col == self.me[coo.row]
        diag = np.zeros(self.W.shape[0])
        np.add.at(diag, coo.row[own], coo.data[own])
        off = sp.csr_matrix((coo.data[~own], (coo.row[~own], coo.col[~own])), shape=self.W.shape)
        return off, diag


def inbox(W: sp.csr_matrix, ok: np.ndarray | None, me: np.ndarray | None = None) -> Inbox:
    """The round's weights after dropping the messages of senders that are not `ok`.

    A dropped message's weight goes back to its receiver, so a row of W keeps its sum and
    the receiver leans on its own copy instead of a bad one."""
    me = np.arange(W.shape[0]) if me is None else np.asarray(me)
    if ok is None or ok.all():
        return Inbox(W, me, None, 0)
    W = sp.csr_matrix(W, copy=True)
    rows = np.repeat(np.arange(W.shape[0]), np.diff(W.indptr))
    bad = ~ok[W.indices] & (W.indices != me[rows]) & (W.data != 0)
    dropped = int(bad.sum())
    if dropped:
        back = np.bincount(rows[bad], weights=W.data[bad], minlength=W.shape[0])
        W.data[bad] = 0.0
        W = W + sp.csr_matrix((back, (np.arange(W.shape[0]), me)), shape=W.shape)
        W.eliminate_zeros()
        W = sp.csr_matrix(W)
        W.sort_indices()
    return Inbox(W, me, ok, dropped)


def combine(
    own: torch.Tensor,
    sent: torch.Tensor,
    box: Inbox,
    rule: RobustConfig,
    matmul: Matmul = dense_matmul,
) -> torch.Tensor:
    """New copies of the receivers (rows of `box.W`) from the senders' own copies `own` and
    what they sent `sent` (both senders x numel; the same tensor when nobody lies)."""
    if rule.rule == "mean":
        if box.clean and sent is own:  # plain gossip, nothing dropped: one product
            return matmul(box.W, own)
        off, diag = box.split
        kept = sent if box.ok is None else sent.masked_fill(_col(~box.ok, sent), 0.0)
        d = torch.as_tensor(diag, dtype=own.dtype, device=own.device)[:, None]
        return matmul(off, kept) + d * own[torch.as_tensor(box.me, device=own.device)]
    return _robust(own, sent, box, rule)


def _col(mask: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(mask, device=like.device)[:, None]


def _robust(
    own: torch.Tensor,
    sent: torch.Tensor,
    box: Inbox,
    rule: RobustConfig,
    chunk_bytes: int = 64 << 20,
) -> torch.Tensor:
    """The non-linear rules, vectorised over receivers: each receiver's kept messages are
    gathered into a (receivers, most neighbours, numel) block padded with NaN (ignored by
    nanmedian, sorted last, masked out of means), in chunks of receivers of bounded size."""
    W = box.W
    R, numel = W.shape[0], own.shape[1]
    coo = W.tocoo()
    keep = coo.col != box.me[coo.row]
    if box.ok is not None:
        keep &= box.ok[coo.col]
    rows, cols, weights = coo.row[keep], coo.col[keep], coo.data[keep]
    order = np.lexsort((cols, rows))
    rows, cols, weights = rows[order], cols[order], weights[order]
    count = np.bincount(rows, minlength=R)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(count) - count, count)
    D = int(count.max()) if len(rows) else 0
    out = own[torch.as_tensor(box.me, device=own.device)].clone()
    if D == 0:
        return out
    dev = own.device
    nbr = np.zeros((R, D), dtype=np.int64)
    wgt = np.zeros((R, D))
    nbr[rows, slot], wgt[rows, slot] = cols, weights
    has = np.zeros((R, D), dtype=bool)
    has[rows, slot] = True
    step = max(1, chunk_bytes // max(1, (D + 1) * numel * own.element_size()))
    for lo in range(0, R, step):
        hi = min(R, lo + step)
        live = torch.as_tensor(has[lo:hi], device=dev)
        if not bool(live.any()):
            continue
        mine = out[lo:hi]
        msgs = sent[torch.as_tensor(nbr[lo:hi], device=dev)]  # (r, D, numel)
        if rule.rule == "clip":
            w = torch.as_tensor(wgt[lo:hi], dtype=own.dtype, device=dev)
            diff = msgs - mine[:, None, :]
            norms = diff.norm(dim=2, keepdim=True).clamp_min(1e-12)
            clipped = diff * torch.clamp(rule.radius / norms, max=1.0)
            out[lo:hi] = mine + torch.einsum("rd,rdn->rn", w, clipped)
            continue
        values = torch.cat([mine[:, None, :], msgs.masked_fill(~live[:, :, None], float("nan"))], 1)
        if rule.rule == "median":
            out[lo:hi] = values.nanmedian(dim=1).values
            continue
        n = torch.as_tensor(count[lo:hi] + 1, device=dev)  # values per receiver
        k = (rule.trim * n.to(torch.float64)).floor().long()  # cut at each end
        srt = values.sort(dim=1).values  # NaN padding sorts last
        pos = torch.arange(D + 1, device=dev)[None, :]
        kept = (pos >= k[:, None]) & (pos < (n - k)[:, None])
        total = srt.masked_fill(~kept[:, :, None], 0.0).sum(dim=1)
        out[lo:hi] = total / (n - 2 * k)[:, None].to(own.dtype)
    return out


def receive(
    own: torch.Tensor,
    sent: torch.Tensor,
    W: sp.csr_matrix,
    rule: RobustConfig,
    me: np.ndarray | None = None,
    ok: np.ndarray | None = None,
    matmul: Matmul = dense_matmul,
) -> tuple[torch.Tensor, int]:
    """Check, then combine: (the receivers' new rows, messages dropped).

    `ok` may be given when the caller has already checked the senders (e.g. over a block
    that it mixes in column pieces)."""
    box = inbox(W, intact(sent) if ok is None else ok, me)
    return combine(own, sent, box, rule, matmul), box.dropped
