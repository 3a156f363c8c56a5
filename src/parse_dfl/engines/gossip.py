"""Which mixing matrix each holder group uses in a round, and what that costs in bytes.

Engines differ in how they apply W to the holders' parameters; they share this schedule, so
every engine mixes with exactly the same matrices.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import scipy.sparse as sp

from parse_dfl.config import FaultsConfig
from parse_dfl.engines.faults import FaultPlan
from parse_dfl.engines.setup import BlockGroup
from parse_dfl.graph import Topology, components, mixing_matrix, neighbour_counts


class GossipSchedule:
    def __init__(
        self,
        topology: Topology,
        groups: list[BlockGroup],
        rule: str,
        faults: FaultPlan | None = None,
    ) -> None:
        self.topology = topology
        self.groups = groups
        self.rule = rule
        self.faults = faults or FaultPlan(FaultsConfig(), topology.n, 0)
        self.static = not topology.time_varying and not self.faults.active
        self._cache: dict[int, tuple[sp.csr_matrix, np.ndarray]] = {}
        self._relinked: dict[tuple[int, tuple[int, ...]], nx.Graph] = {}

    def mixing(self, k: int, round_: int) -> tuple[sp.csr_matrix, np.ndarray]:
        """(W over the holders of group k, number of neighbours of each holder) in this round.

        Links to crashed agents, failed links and lost messages are gone from the holder graph
        before the weights are computed, so nothing waits on a dead peer."""
        if self.static and k in self._cache:
            return self._cache[k]
        g = self.groups[k]
        graph = self.faults.filter(self.holder_graph(k, round_), g.holders, round_, k)
        W = mixing_matrix(graph, self.rule)
        out = (W, neighbour_counts(W))
        if self.static:
            self._cache[k] = out
        return out

    def holder_graph(self, k: int, round_: int) -> nx.Graph:
        """Group k's graph on local ids in this round, before links fail. With faults.relink,
        while some holders are down the graph is drawn over the live holders alone (they
        notice the silence and re-link, as a peer-to-peer membership protocol would)."""
        g = self.groups[k]
        if not self.faults.cfg.relink or self.faults.cfg.crash_fraction <= 0:
            return self.topology.holder_graph(g.holders, g.tags, round_)
        live = self.faults.live(round_)
        up = [i for i, a in enumerate(g.holders) if live[a]]
        if len(up) == len(g.holders):
            return self.topology.holder_graph(g.holders, g.tags, round_)
        key = (k, tuple(up))
        out = None if self.topology.time_varying else self._relinked.get(key)
        if out is None:
            tags = None if g.tags is None else [g.tags[i] for i in up]
            sub = self.topology.holder_graph([g.holders[i] for i in up], tags, round_)
            out = nx.empty_graph(len(g.holders))
            out.add_edges_from((up[a], up[b]) for a, b in sub.edges())
            if not self.topology.time_varying:  # a new graph every round: nothing to keep
                self._relinked[key] = out = nx.freeze(out)
        return out

    def bytes_sent(self, round_: int, n_agents: int) -> np.ndarray:
        """Bytes each agent sends in this round: every block to every holder-graph neighbour."""
        sent = np.zeros(n_agents, dtype=np.int64)
        for k, g in enumerate(self.groups):
            _, deg = self.mixing(k, round_)
            np.add.at(sent, np.asarray(g.holders), deg * g.nbytes)
        return sent

    def describe(self) -> dict[str, dict[str, int]]:
        """Holders, links and connected components of each holder graph (round 1); with a
        crash configured, also the holders still up once it has happened and the components
        they fall into (a crash can cut a ring of holders into pieces that never agree
        again)."""
        out = {}
        crash = self.faults.cfg.crash_fraction > 0
        after = max(1, self.faults.cfg.crash_round)
        live = self.faults.live(after)
        for k, g in enumerate(self.groups):
            graph = self.topology.holder_graph(g.holders, g.tags, 1)
            out[g.label] = {
                "holders": len(g.holders),
                "links": graph.number_of_edges(),
                "components": components(graph),
                "numel": g.numel,
            }
            if crash:
                up = [i for i, a in enumerate(g.holders) if live[a]]
                out[g.label]["live_holders"] = len(up)
                relinked = self.holder_graph(k, after)
                out[g.label]["live_components"] = components(relinked.subgraph(up))
        return out
