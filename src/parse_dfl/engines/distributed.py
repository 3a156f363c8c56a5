"""The distributed engine: agents split into contiguous shards, one shard per process of a
`torch.distributed` job (gloo on CPU, nccl on CUDA), launched by `torchrun`.

Inside a process the shard's local steps and evaluation are run by a one-process engine,
`engine.shard_engine`: the batched engine (default: the process's agents stacked in cohorts)
or the reference loop.
Gossip sends only what a neighbour on another process needs: for each holder group, the rows
of holders that have a cross-process edge in this round's mixing matrix. Every process
derives the same topology, faults, attackers, batches and mixing matrices from the seed, so
the two sides of every exchange agree on what is sent without asking, and no coordinator is
needed beyond the rendezvous. Process 0 writes the run folder and the checkpoints.

Agents of other processes exist here only as models on the `meta` device (shapes, no
memory): the holder groups and the common initial values are computed exactly as in one
process.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
from torch import nn

from parse_dfl.engines.base import Engine, EngineResult
from parse_dfl.engines.batched import BatchedEngine
from parse_dfl.engines.cohort_gossip import Mixer
from parse_dfl.engines.receive import intact, receive
from parse_dfl.engines.reference import ReferenceEngine
from parse_dfl.engines.setup import Setup, build_model, common_init
from parse_dfl.errors import UserError


def ensure_process_group(device: torch.device) -> None:
    """Join the job torchrun set up (RANK, WORLD_SIZE, MASTER_ADDR in the environment), or
    start a one-process group so `engine.name: distributed` also runs without torchrun."""
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "WORLD_SIZE" in os.environ:
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # Keys under a prefix of their own per attempt: after torchrun restarts the job,
        # no process may read an address the previous attempt left in the store.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=timedelta(minutes=5),
        )
        dist.init_process_group(
            backend,
            store=dist.PrefixStore(f"parse-dfl/attempt-{attempt}", store),
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
        )
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def shards(n_agents: int, world: int) -> list[range]:
    """Contiguous shards, sizes differing by at most one (the first ones get the extra)."""
    base, extra = divmod(n_agents, world)
    starts = [r * base + min(r, extra) for r in range(world + 1)]
    return [range(starts[r], starts[r + 1]) for r in range(world)]


class _Exchange:
    """Who sends which holder rows to whom in one round: for every pair of processes, the
    (group, holder position) pairs in a fixed order both sides compute alike."""

    def __init__(self, engine: DistributedEngine, round_: int) -> None:
        rank, owner = engine.rank, engine.owner
        self.send: dict[int, list[tuple[int, int]]] = {}
        self.recv: dict[int, list[tuple[int, int]]] = {}
        self.mine: list[np.ndarray] = []  # per group: positions of this process's holders
        self.cols: list[np.ndarray] = []  # per group: positions whose rows this process needs
        self.at: list[np.ndarray] = []  # per group: where `mine` sits in `cols`
        self.theirs: list[np.ndarray] = []  # per group: where the needed neighbours sit in `cols`
        self.W_mine: list[sp.csr_matrix] = []  # per group: W's rows of `mine`, columns `cols`
        for k, g in enumerate(engine.groups):
            W, _ = engine.schedule.mixing(k, round_)
            own = owner[np.asarray(g.holders)]
            self.mine.append(np.flatnonzero(own == rank))
            coo = W.tocoo()
            i, j = coo.row, coo.col
            cross = own[i] != own[j]
            i, j = i[cross], j[cross]
            to_me = own[i] == rank  # I mix row i and need j from its owner
            from_me = own[j] == rank  # the owner of i needs my row j
            needed = np.unique(j[to_me])
            self.cols.append(np.union1d(self.mine[k], needed))
            self.at.append(np.searchsorted(self.cols[k], self.mine[k]))
            self.theirs.append(np.flatnonzero(~np.isin(self.cols[k], self.mine[k])))
            self.W_mine.append(W[self.mine[k]][:, self.cols[k]])  # what this process mixes
            for q in needed:
                self.recv.setdefault(int(own[q]), []).append((k, int(q)))
            for dest, q in sorted(
                set(zip(own[i[from_me]].tolist(), j[from_me].tolist(), strict=True))
            ):
                self.send.setdefault(int(dest), []).append((k, int(q)))
        for lists in (self.send, self.recv):
            for r in lists:
                lists[r].sort()


class DistributedEngine(Engine):
    """The sharding and the exchanges. `DistributedEngine(setup)` makes the variant whose
    shards run `engine.shard_engine` (the classes at the end of this file)."""

    name = "distributed"
    mine: list[int]
    models: list[nn.Module]
    params: list[dict[str, nn.Parameter]]

    def __new__(cls, setup: Setup) -> DistributedEngine:
        if cls is DistributedEngine:
            cls = _SHARD_ENGINES[setup.cfg.engine.shard_engine]
        return super().__new__(cls)

    if TYPE_CHECKING:  # the shard engine's hooks (ReferenceEngine's or BatchedEngine's)

        def reset_local_state(self) -> None: ...
        def train_shard(self, round_: int) -> tuple[float, int]: ...
        def optimizer_state(self, a: int) -> dict[str, Any]: ...
        def load_optimizer_state(self, a: int, osd: dict[str, Any]) -> None: ...

    def __init__(self, setup: Setup) -> None:
        ensure_process_group(setup.device)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        n = len(setup.agents)
        if self.world > n:
            raise UserError("engine", f"{self.world} processes for {n} agents: use at most {n}")
        self.shard = shards(n, self.world)[self.rank]
        self.owner = np.empty(n, dtype=np.int64)
        for r, part in enumerate(shards(n, self.world)):
            self.owner[part.start : part.stop] = r
        self.mine = list(self.shard)
        self.wire_bytes = 0  # bytes this process sent to other processes
        self._static_plan: _Exchange | None = None  # the exchange of a static schedule
        self._blocks: dict[int, torch.Tensor] = {}  # per group: the gossip's working matrix
        super().__init__(setup)

    # --- building: real models for this shard, meta placeholders for the rest ------------
    def _build(self, a: int, real: bool) -> nn.Module:
        meta = None if real else torch.device("meta")
        return build_model(self.setup, self.setup.agents[a], meta)

    def initial_models(self) -> list[nn.Module]:
        n = len(self.setup.agents)
        models = [self._build(a, a in self.shard) for a in range(n)]
        self.regroup(models)
        if self.setup.cfg.method.common_init:
            common_init(
                models,
                self.groups,
                owned=self.shard,
                source=lambda a: models[a] if a in self.shard else self._build(a, True),
            )
        return models

    @property
    def writes_output(self) -> bool:
        return self.rank == 0

    def plan_models(self) -> list[nn.Module]:
        return self.models

    def regroup(self, models: list[nn.Module]) -> None:
        super().regroup(models)
        self._static_plan = None  # new holder groups: who sends what changes

    def _replan(self) -> None:
        """The batched engine's in-process gossip plans: not used here (gossip crosses
        processes, below)."""

    # --- collectives ------------------------------------------------------------------
    def _gather_states(self, everyone: bool) -> list[Any] | None:
        """Every agent's (model, optimiser) state, in agent order: on every process, or on
        process 0 only (None elsewhere)."""
        mine = {
            a: (
                {k: v.detach().cpu() for k, v in self.models[a].state_dict().items()},
                self.optimizer_state(a),
            )
            for a in self.shard
        }
        parts: list[Any] = [None] * self.world
        if everyone:
            dist.all_gather_object(parts, mine)
        else:
            dist.gather_object(mine, parts if self.rank == 0 else None, dst=0)
            if self.rank != 0:
                return None
        merged: dict[int, Any] = {}
        for p in parts:
            merged.update(p)
        return [merged[a] for a in range(len(self.setup.agents))]

    def _materialise(self, states: list[Any]) -> list[nn.Module]:
        """Real modules for every agent from gathered states (own ones are kept as they are)."""
        out = []
        for a, (sd, _) in enumerate(states):
            if a in self.shard:
                out.append(self.models[a])
                continue
            m = self._build(a, True)
            m.load_state_dict(sd)
            out.append(m)
        return out

    def _drop_remote(self, models: list[nn.Module]) -> list[nn.Module]:
        return [m if a in self.shard else self._build(a, False) for a, m in enumerate(models)]

    # --- the round --------------------------------------------------------------------
    def enter_stage(self, stage: int) -> None:
        """A stage change sees every agent's model (e.g. clustering over all agents): gather
        them everywhere, let the method act exactly as in one process, keep the own shard."""
        s = self.setup
        states = self._gather_states(everyone=True)
        assert states is not None
        models = self._materialise(states)
        s.method.enter_stage(stage, s.agents, models)
        self.regroup(models)
        self.models = self._drop_remote(models)
        self.params = [dict(m.named_parameters()) for m in self.models]
        self.reset_local_state()

    def local_round(self, round_: int) -> float:
        loss, steps = self.train_shard(round_)
        total = torch.tensor([loss, float(steps)], dtype=torch.float64)
        dist.all_reduce(total)
        return float(total[0] / max(1.0, float(total[1])))

    def _exchange_plan(self, round_: int) -> _Exchange:
        if not self.schedule.static:
            return _Exchange(self, round_)
        if self._static_plan is None:
            self._static_plan = _Exchange(self, round_)
        return self._static_plan

    def _row(self, k: int, a: int) -> torch.Tensor:
        g = self.groups[k]
        return torch.cat([self.params[a][n].detach().reshape(-1) for n in g.params])

    def block_rows(self, k: int) -> torch.Tensor:
        """This process's holders' rows of group k (in holder order)."""
        g = self.groups[k]
        mine = np.array([q for q, a in enumerate(g.holders) if a in self.shard], dtype=np.int64)
        if not len(mine):
            return torch.empty(0, g.numel, device=self.setup.device)
        return self.own_rows(k, mine)

    def _block(self, k: int, rows: int, numel: int) -> torch.Tensor:
        """Group k's working matrix, kept from round to round: a fresh allocation of this
        size (hundreds of MB at 1,000 agents) costs its page faults again every round."""
        block = self._blocks.get(k)
        if block is None or block.shape != (rows, numel) or block.dtype != self._dtype:
            block = torch.empty(rows, numel, dtype=self._dtype, device=self.setup.device)
            self._blocks[k] = block
        return block

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.models[self.shard.start].parameters()).dtype

    def own_rows(
        self, k: int, positions: np.ndarray, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Rows of group k of the holders at `positions` (this process's), stacked (into
        `out` when given)."""
        g = self.groups[k]
        return torch.stack([self._row(k, g.holders[q]) for q in positions.tolist()], out=out)

    @torch.no_grad()
    def write_own_rows(self, k: int, positions: np.ndarray, new: torch.Tensor) -> None:
        """Row i of `new` becomes group k's block of the holder at positions[i]."""
        g = self.groups[k]
        for i, q in enumerate(positions.tolist()):
            a, offset = g.holders[q], 0
            for n in g.params:
                p = self.params[a][n]
                p.copy_(new[i, offset : offset + p.numel()].view_as(p))
                offset += p.numel()

    def _swap(
        self, plan: _Exchange, outgoing: dict[tuple[int, int], torch.Tensor]
    ) -> tuple[dict[tuple[int, int], torch.Tensor], set[tuple[int, int]]]:
        """Send every peer its rows in one message, receive ours: isend/irecv pairs.

        Each message's length goes first, so a message whose size does not match what the
        sender's plan says is detected and its rows dropped, never read into the wrong rows.
        Returns the received rows and the (group, holder) rows that arrived unusable."""
        dev = self.setup.device
        sizes = [g.numel for g in self.groups]
        dtype = self._dtype
        bufs = {
            peer: torch.cat([outgoing[item] for item in items]).contiguous()
            for peer, items in plan.send.items()
        }
        lengths = {peer: torch.zeros(1, dtype=torch.int64, device=dev) for peer in plan.recv}
        ops = [
            dist.P2POp(dist.isend, torch.tensor([buf.numel()], device=dev), peer)
            for peer, buf in bufs.items()
        ]
        ops += [dist.P2POp(dist.irecv, n, peer) for peer, n in lengths.items()]
        self._wait(ops)
        ops, inbox = [], {}
        for peer, buf in bufs.items():
            self.wire_bytes += buf.numel() * buf.element_size()
            ops.append(dist.P2POp(dist.isend, buf, peer))
        for peer, items in plan.recv.items():
            expected = sum(sizes[k] for k, _ in items)
            n = int(lengths[peer])
            if not 0 <= n <= 2 * expected + 1024:
                raise RuntimeError(
                    f"process {peer} announced a message of {n} values where {expected} were "
                    "expected: the processes do not run the same code or config"
                )
            inbox[peer] = torch.empty(n, dtype=dtype, device=dev)
            ops.append(dist.P2POp(dist.irecv, inbox[peer], peer))
        self._wait(ops)
        got: dict[tuple[int, int], torch.Tensor] = {}
        broken: set[tuple[int, int]] = set()
        for peer, items in plan.recv.items():
            if inbox[peer].numel() != sum(sizes[k] for k, _ in items):
                broken.update(items)
                continue
            offset = 0
            for k, q in items:
                got[(k, q)] = inbox[peer][offset : offset + sizes[k]]
                offset += sizes[k]
        return got, broken

    @staticmethod
    def _wait(ops: list[Any]) -> None:
        if ops:
            for req in dist.batch_isend_irecv(ops):
                req.wait()

    @torch.no_grad()
    def gossip(self, round_: int) -> None:
        """Send what neighbours on other processes need, then each own holder receives
        through engines/receive.py (checks, weights returned for dropped messages, rule)."""
        plan = self._exchange_plan(round_)
        # per group: (holders this process mixes or needs, numel), own rows written in place
        blocks: dict[int, torch.Tensor] = {}
        outgoing: dict[tuple[int, int], torch.Tensor] = {}
        for k, g in enumerate(self.groups):
            mine, cols = plan.mine[k], plan.cols[k]
            if not len(mine):
                continue
            at = plan.at[k]
            block = self._block(k, len(cols), g.numel)
            run = slice(int(at[0]), int(at[-1]) + 1)
            if at[-1] - at[0] + 1 == len(at):  # a contiguous shard: gathered straight in
                self.own_rows(k, mine, out=block[run])
            else:
                block[torch.as_tensor(at, device=block.device)] = self.own_rows(k, mine)
            blocks[k] = block
            if self.plain_gossip:
                for i, q in enumerate(mine.tolist()):
                    outgoing[(k, q)] = block[int(at[i])]  # a view: only sent rows are copied
                continue
            # what an attacker sends: corrupt() over all holders with the shared seed, so its
            # noise is the noise it would draw in one process
            rows = block[torch.as_tensor(at, device=block.device)]
            full = rows.new_zeros(len(g.holders), g.numel)
            full[torch.as_tensor(mine, device=rows.device)] = rows
            sent = self.sent(k, round_, full)[torch.as_tensor(mine, device=rows.device)]
            for i, q in enumerate(mine.tolist()):
                outgoing[(k, q)] = sent[i]
        got, broken = self._swap(plan, outgoing)
        dropped = 0
        for k, g in enumerate(self.groups):
            mine, cols = plan.mine[k], plan.cols[k]
            if not len(mine):
                continue
            own = blocks[k]
            keys = [(k, q) for q in cols.tolist()]
            for i in plan.theirs[k].tolist():  # a neighbour's row: received, or 0
                row = got.get(keys[i])
                own[i] = row if row is not None else 0.0
            if self.plain_gossip:
                sent = own
            else:
                blank = own.new_zeros(g.numel)
                sent = torch.stack([outgoing.get(key, got.get(key, blank)) for key in keys])
            ok = intact(sent) & np.array([key not in broken for key in keys])
            new, d = receive(
                own,
                sent,
                plan.W_mine[k],
                self.setup.cfg.robust,
                me=plan.at[k],
                ok=ok,
                matmul=_product,
            )
            dropped += d
            self.write_own_rows(k, mine, new)
        total = torch.tensor([dropped], dtype=torch.int64, device=self.setup.device)
        dist.all_reduce(total)
        self.dropped += int(total)

    def conflicts(self, before: dict[int, torch.Tensor]) -> dict[str, float]:
        """The mean cosine over (unimodal, multimodal) pairs is <sum of unit unimodal
        updates, sum of unit multimodal updates> / (pairs): two sums per block suffice."""
        agents = self.setup.agents
        out: dict[str, float] = {}
        for k, rows in before.items():
            g = self.groups[k]
            multi_all = np.array([len(agents[a].modalities) > 1 for a in g.holders])
            if multi_all.all() or not multi_all.any():
                continue
            mine = [a for a in g.holders if a in self.shard]
            sums = torch.zeros(2, g.numel, dtype=torch.float64)
            if mine:
                delta = torch.nn.functional.normalize(
                    (self.block_rows(k) - rows).double().cpu(), dim=1
                )
                multi = torch.tensor([len(agents[a].modalities) > 1 for a in mine])
                sums[0] = delta[~multi].sum(0)
                sums[1] = delta[multi].sum(0)
            dist.all_reduce(sums)
            pairs = float((~multi_all).sum() * multi_all.sum())
            out[g.label] = float(sums[0] @ sums[1]) / pairs
        return out

    def evaluate(self) -> tuple[list[float], list[float]]:
        s = self.setup
        glob, loc = super().evaluate()  # type: ignore[safe-super]  # the shard engine's
        mine = {a: (glob[a], loc[a]) for a in self.shard}
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, mine)
        merged: dict[int, tuple[float, float]] = {}
        for p in parts:
            merged.update(p)
        n = len(s.agents)
        return [merged[a][0] for a in range(n)], [merged[a][1] for a in range(n)]

    # --- state: the reference engine's format, gathered on process 0 -----------------------
    def state_dict(self) -> dict[str, Any]:
        states = self._gather_states(everyone=False)
        if states is None:
            return {}
        return {"models": [sd for sd, _ in states], "optimizers": [o for _, o in states]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for a in self.shard:
                self.models[a].load_state_dict(state["models"][a])
        self.reset_local_state()
        for a in self.shard:
            self.load_optimizer_state(a, state["optimizers"][a])

    def save_checkpoint(self, path: Path, round_: int, loop: dict[str, Any]) -> None:
        """Process 0 writes one checkpoint of every agent (the reference engine's format, so
        a run may resume on any engine); the others wait until it is on disk."""
        wire = torch.tensor([self.wire_bytes], dtype=torch.int64)
        dist.all_reduce(wire)
        loop = {**loop, "wire_bytes": int(wire)}
        if self.rank == 0:
            super().save_checkpoint(path, round_, loop)
        else:
            self.state_dict()  # take part in the gather
        dist.barrier()

    def load_checkpoint(self, path: Path) -> tuple[int, dict[str, Any]]:
        round_, loop = super().load_checkpoint(path)
        # the bytes sent before the restart, counted once (the total is summed over processes)
        self.wire_bytes = int(loop.pop("wire_bytes", 0)) if self.rank == 0 else 0
        return round_, loop

    def agent_models(self) -> list[nn.Module]:
        """Every agent's model on process 0 (collective); elsewhere the own shard's only."""
        states = self._gather_states(everyone=False)
        if states is None:
            return [self.models[a] for a in self.shard]
        return self._materialise(states)

    def run(
        self, progress: bool = True, checkpoint_dir: Path | None = None, resume: bool = False
    ) -> EngineResult:
        res = super().run(
            progress=progress and self.rank == 0, checkpoint_dir=checkpoint_dir, resume=resume
        )
        wire = torch.tensor([self.wire_bytes], dtype=torch.int64)
        dist.all_reduce(wire)
        rounds = self.setup.cfg.train.rounds
        res.extra.update(
            {
                "processes": self.world,
                "restarts": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
                "bytes_between_processes": int(wire),
                "bytes_between_processes_per_round": float(int(wire) / rounds),
                "bytes_between_agents_per_round": float(res.bytes_sent.sum() / rounds),
            }
        )
        return res


def _product(W: sp.csr_matrix, x: torch.Tensor) -> torch.Tensor:
    """W @ x in the cheapest exact form (a ring's W has 3 entries a row: a dense product
    of 1,000 holders would do 300 times the arithmetic)."""
    return Mixer(W, x.device, x.dtype)(x)


class _ReferenceShards(DistributedEngine, ReferenceEngine):
    """Each process runs its agents with the reference loop (`engine.shard_engine: reference`)."""


class _BatchedShards(DistributedEngine, BatchedEngine):
    """Each process runs its agents with the batched engine (`engine.shard_engine: batched`):
    a group's own rows are gathered from, and written back to, the cohorts' stacked tensors
    in a few slices instead of one copy per agent and parameter."""

    def _replan(self) -> None:
        self._own_plans: dict[tuple[int, bytes], Any] = {}

    def _own_plan(self, k: int, positions: np.ndarray) -> Any:
        key = (k, positions.tobytes())
        if key not in self._own_plans:
            g = self.groups[k]
            self._own_plans[key] = self._plan(g, [g.holders[q] for q in positions.tolist()])
        return self._own_plans[key]

    def own_rows(
        self, k: int, positions: np.ndarray, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        plan = self._own_plan(k, positions)
        return self._gather_plan(plan, len(positions), plan.offsets, out=out)

    @torch.no_grad()
    def write_own_rows(self, k: int, positions: np.ndarray, new: torch.Tensor) -> None:
        plan = self._own_plan(k, positions)
        self._scatter_plan(plan, plan.offsets, new)


_SHARD_ENGINES: dict[str, type[DistributedEngine]] = {
    "reference": _ReferenceShards,
    "batched": _BatchedShards,
}
