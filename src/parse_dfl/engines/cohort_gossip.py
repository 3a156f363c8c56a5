"""Gossip on a batched engine: each holder group's rows gathered from the cohorts, one
product with the round's W, scattered back.

Per holder group, the holders' rows are gathered into one (holders, numel) matrix and
multiplied once by the round's mixing matrix: dense for small or dense W, scipy CSR on the
CPU otherwise (torch's CPU CSR product is several times slower), torch CSR on other devices.
When a group is exactly one whole cohort, each stacked parameter is mixed in place without
the gather. The checks and the combination are engines/receive.py's, as in every engine: the
holders' blocks are checked once per round (read in place), and a non-finite one is dropped
and its weight returned to the receivers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from parse_dfl.engines.cohort import Cohort
from parse_dfl.engines.receive import combine, inbox, intact_parts
from parse_dfl.engines.setup import BlockGroup, Setup


class Mixer:
    """y = W @ x for one holder group's W, in the cheapest exact form for its size and device."""

    def __init__(self, W: sp.csr_matrix, device: torch.device, dtype: torch.dtype) -> None:
        self.source = W
        W = sp.csr_matrix(W)
        H = W.shape[0]
        self.identity = W.nnz == H and bool(np.all(W.diagonal() == 1.0))
        density = W.nnz / max(1, H * H)
        self.kind = "dense" if (H <= 16 or density >= 0.25) else "sparse"
        if self.kind == "dense":
            self.W = torch.as_tensor(W.toarray(), dtype=dtype, device=device)
        elif device.type == "cpu":
            self.kind = "scipy"
            self.Wsp = W.astype(np.dtype(str(dtype).removeprefix("torch.")))
        else:
            self.W = torch.sparse_csr_tensor(
                torch.as_tensor(W.indptr, dtype=torch.int64),
                torch.as_tensor(W.indices, dtype=torch.int64),
                torch.as_tensor(W.data, dtype=dtype),
                size=W.shape,
            ).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "scipy":
            return torch.from_numpy(self.Wsp @ x.contiguous().numpy())
        return self.W @ x


@dataclass
class Part:
    cohort: int
    rows: torch.Tensor | slice  # rows of the cohort's stacked tensors
    pos: torch.Tensor | slice  # rows of the group's (holders, numel) matrix


@dataclass
class GroupPlan:
    parts: list[Part]
    direct: bool  # the holders are exactly one whole cohort, in order
    offsets: list[tuple[str, int, int]]  # (param, start, end) columns of the block matrix


def as_slice(idx: list[int]) -> slice | None:
    if idx and idx == list(range(idx[0], idx[0] + len(idx))):
        return slice(idx[0], idx[0] + len(idx))
    return None


class CohortGossip:
    """The gossip half of the batched engine (mixed into BatchedEngine)."""

    setup: Setup
    cohorts: list[Cohort]
    groups: list[BlockGroup]
    where: np.ndarray
    plain_gossip: bool
    dropped: int
    schedule: Any
    gossip_bytes: int = 64 << 20  # largest gathered (holders, columns) piece mixed at once
    receive_group: Any  # Engine.receive_group: one group's step over all its holders' rows

    def _replan(self) -> None:
        self._plans = [self._plan(g) for g in self.groups]
        self._mixers: dict[int, tuple[Any, Mixer]] = {}

    def _plan(self, g: Any, holders: list[int] | None = None) -> GroupPlan:
        """Where group g's rows live in the cohorts: of all its holders, or of `holders` (a
        subset, in that order: row i of the gathered matrix is holders[i])."""
        per: dict[int, tuple[list[int], list[int]]] = {}
        for pos, a in enumerate(g.holders if holders is None else holders):
            ci, r = self.where[a]
            rows, poss = per.setdefault(int(ci), ([], []))
            rows.append(int(r))
            poss.append(pos)
        dev = self.setup.device
        parts = []
        for ci, (rows, poss) in per.items():
            r_sl, p_sl = as_slice(rows), as_slice(poss)
            parts.append(
                Part(
                    ci,
                    r_sl if r_sl is not None else torch.tensor(rows, device=dev),
                    p_sl if p_sl is not None else torch.tensor(poss, device=dev),
                )
            )
        direct = (
            len(parts) == 1
            and isinstance(parts[0].rows, slice)
            and parts[0].rows == slice(0, self.cohorts[parts[0].cohort].n)
            and isinstance(parts[0].pos, slice)
        )
        c = self.cohorts[parts[0].cohort]
        offsets, off = [], 0
        for n in g.params:
            k = c.P[n][0].numel()
            offsets.append((n, off, off + k))
            off += k
        return GroupPlan(parts, direct, offsets)

    def _mixer(self, k: int, round_: int) -> Mixer:
        W, _ = self.schedule.mixing(k, round_)
        cached = self._mixers.get(k)
        if cached is not None and cached[0] is W:
            return cached[1]
        c = self.cohorts[self._plans[k].parts[0].cohort]
        dtype = c.P[self.groups[k].params[0]].dtype
        mixer = Mixer(W, self.setup.device, dtype)
        self._mixers[k] = (W, mixer)
        return mixer

    def _gather(self, k: int, offsets: list[tuple[str, int, int]]) -> torch.Tensor:
        """The holders' rows of some of group k's parameters, side by side: (holders, width)."""
        return self._gather_plan(self._plans[k], len(self.groups[k].holders), offsets)

    def _gather_plan(
        self,
        plan: GroupPlan,
        n_rows: int,
        offsets: list[tuple[str, int, int]],
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The rows a plan names, of some of its group's parameters: (n_rows, width), into
        `out` when given."""
        first = self.cohorts[plan.parts[0].cohort].P[offsets[0][0]]
        base = offsets[0][1]
        if out is None:
            shape = (n_rows, offsets[-1][2] - base)
            out = torch.empty(shape, dtype=first.dtype, device=first.device)
        with torch.no_grad():
            for part in plan.parts:
                c = self.cohorts[part.cohort]
                for n, lo, hi in offsets:
                    out[part.pos, lo - base : hi - base] = c.P[n].view(c.n, -1)[part.rows]
        return out

    def block_rows(self, k: int) -> torch.Tensor:
        return self._gather(k, self._plans[k].offsets)

    def _segments(self, k: int) -> list[list[tuple[str, int, int]]]:
        """Group k's parameters in runs of at most `gossip_bytes` of gathered rows (a larger
        parameter alone): W acts on each column alike, so mixing in pieces is the same maths
        as one product over the whole block, with a bounded temporary."""
        H = len(self.groups[k].holders)
        segs: list[list[tuple[str, int, int]]] = [[]]
        width = 0
        for n, lo, hi in self._plans[k].offsets:
            if segs[-1] and (width + hi - lo) * H * 4 > self.gossip_bytes:
                segs.append([])
                width = 0
            segs[-1].append((n, lo, hi))
            width += hi - lo
        return segs

    def _scatter(self, k: int, offsets: list[tuple[str, int, int]], mixed: torch.Tensor) -> None:
        """Write (holders, width) rows of some of group k's parameters back to the cohorts."""
        self._scatter_plan(self._plans[k], offsets, mixed)

    def _scatter_plan(
        self, plan: GroupPlan, offsets: list[tuple[str, int, int]], mixed: torch.Tensor
    ) -> None:
        """Write the rows a plan names (some of its group's parameters) back to the cohorts."""
        base = offsets[0][1]
        mixed = mixed.to(self.setup.device)
        for part in plan.parts:
            c = self.cohorts[part.cohort]
            for n, lo, hi in offsets:
                flat = c.P[n].view(c.n, -1)
                src = mixed[part.pos, lo - base : hi - base]
                if isinstance(part.rows, slice):
                    flat[part.rows] = src
                else:
                    flat.index_copy_(0, part.rows, src)

    def _intact(self, k: int) -> np.ndarray:
        """Which holders of group k hold a usable block (all values finite), read from the
        cohorts' stacked tensors without gathering the block."""
        plan = self._plans[k]
        ok = np.ones(len(self.groups[k].holders), dtype=bool)
        for part in plan.parts:
            c = self.cohorts[part.cohort]
            pos = part.pos if isinstance(part.pos, slice) else part.pos.cpu().numpy()
            ok[pos] = intact_parts([c.P[n].view(c.n, -1)[part.rows] for n, _, _ in plan.offsets])
        return ok

    @torch.no_grad()
    def gossip(self, round_: int) -> None:
        rule = self.setup.cfg.robust
        for k, g in enumerate(self.groups):
            plan = self._plans[k]
            if not self.plain_gossip:  # attacks / robust rules: every holder's whole block
                new = self.receive_group(k, round_, self.block_rows(k))
                self._scatter(k, plan.offsets, new)
                continue
            mix = self._mixer(k, round_)
            if mix.identity:
                continue  # nobody sends anything
            box = inbox(mix.source, self._intact(k))
            self.dropped += box.dropped

            def matmul(W: sp.csr_matrix, x: torch.Tensor, mix: Mixer = mix) -> torch.Tensor:
                return (mix if W is mix.source else Mixer(W, x.device, x.dtype))(x)

            if plan.direct:  # one whole cohort: mix its stacked tensors in place
                c = self.cohorts[plan.parts[0].cohort]
                for n in g.params:
                    flat = c.P[n].view(c.n, -1)
                    flat.copy_(combine(flat, flat, box, rule, matmul))
                continue
            for seg in self._segments(k):
                rows = self._gather(k, seg)
                self._scatter(k, seg, combine(rows, rows, box, rule, matmul))
