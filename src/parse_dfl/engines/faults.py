"""Who is down, which links fail and which messages are lost, round by round.

Every draw is a pure function of (seed, round, ids) through a counter-based hash, so all
engines (and all processes of a distributed run) see the same faults without talking, and
a resumed run sees the faults it would have seen.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from parse_dfl.config import FaultsConfig
from parse_dfl.graph.topology import derive_seed

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def uniform_hash(*keys: np.ndarray | int) -> np.ndarray:
    """Uniform [0, 1) numbers from integer keys (splitmix64 over the combined key)."""
    with np.errstate(over="ignore"):
        h = np.zeros(np.broadcast(*[np.asarray(k) for k in keys]).shape, dtype=np.uint64)
        for k in keys:
            h = (h ^ np.asarray(k, dtype=np.uint64)) * np.uint64(0x9E3779B97F4A7C15)
            h ^= h >> np.uint64(30)
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(27)
            h *= np.uint64(0x94D049BB133111EB)
            h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class FaultPlan:
    def __init__(self, cfg: FaultsConfig, n_agents: int, seed: int) -> None:
        self.cfg = cfg
        self.n = n_agents
        self.seed = derive_seed(seed, 0xFA17)
        rng = np.random.default_rng(self.seed)
        n_crash = int(round(cfg.crash_fraction * n_agents))
        self.crashing = np.sort(rng.permutation(n_agents)[:n_crash])

    @property
    def active(self) -> bool:
        return self.cfg.active

    def live(self, round_: int) -> np.ndarray:
        """Agents that are up in this round (crashed ones are neither training nor talking)."""
        up = np.ones(self.n, dtype=bool)
        c = self.cfg
        down_until = c.crash_round + c.crash_rounds if c.crash_rounds else None
        if (
            len(self.crashing)
            and round_ >= c.crash_round
            and (down_until is None or round_ < down_until)
        ):
            up[self.crashing] = False
        return up

    def trains(self, round_: int) -> np.ndarray:
        """Agents that take their local steps: live, and not straggling this round."""
        up = self.live(round_)
        if self.cfg.straggler > 0:
            up &= uniform_hash(self.seed, 1, round_, np.arange(self.n)) >= self.cfg.straggler
        return up

    def filter(self, g: nx.Graph, holders: list[int], round_: int, group: int) -> nx.Graph:
        """The holder graph (local ids) without dead holders' links, failed links and lost
        messages (a lost message drops that block's link for the round on both ends, so the
        mixing weights are recomputed over what arrived and the holders' mean is kept)."""
        if not self.active or g.number_of_edges() == 0:
            return g
        edges = np.array(list(g.edges()), dtype=np.int64)
        ids = np.asarray(holders, dtype=np.int64)
        a, b = ids[edges[:, 0]], ids[edges[:, 1]]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        live = self.live(round_)
        keep = live[a] & live[b]
        if self.cfg.link_failure > 0:
            keep &= uniform_hash(self.seed, 2, round_, lo, hi) >= self.cfg.link_failure
        if self.cfg.message_loss > 0:
            keep &= uniform_hash(self.seed, 3, round_, group, lo, hi) >= self.cfg.message_loss
        out = nx.empty_graph(g.number_of_nodes())
        out.add_edges_from(map(tuple, edges[keep].tolist()))
        return out
