"""Which mixing matrix each holder group uses in a round, and what that costs in bytes.

Engines differ in how they apply W to the holders' parameters; they share this schedule, so
every engine mixes with exactly the same matrices.
"""

from __future__ import annotations

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

    def mixing(self, k: int, round_: int) -> tuple[sp.csr_matrix, np.ndarray]:
        """(W over the holders of group k, number of neighbours of each holder) in this round.

        Links to crashed agents, failed links and lost messages are gone from the holder graph
        before the weights are computed, so nothing waits on a dead peer."""
        if self.static and k in self._cache:
            return self._cache[k]
        g = self.groups[k]
        graph = self.topology.holder_graph(g.holders, g.tags, round_)
        graph = self.faults.filter(graph, g.holders, round_, k)
        W = mixing_matrix(graph, self.rule)
        out = (W, neighbour_counts(W))
        if self.static:
            self._cache[k] = out
        return out

    def bytes_sent(self, round_: int, n_agents: int) -> np.ndarray:
        """Bytes each agent sends in this round: every block to every holder-graph neighbour."""
        sent = np.zeros(n_agents, dtype=np.int64)
        for k, g in enumerate(self.groups):
            _, deg = self.mixing(k, round_)
            np.add.at(sent, np.asarray(g.holders), deg * g.nbytes)
        return sent

    def describe(self) -> dict[str, dict[str, int]]:
        """Holders, links and connected components of each holder graph (round 1)."""
        out = {}
        for g in self.groups:
            graph = self.topology.holder_graph(g.holders, g.tags, 1)
            out[g.label] = {
                "holders": len(g.holders),
                "links": graph.number_of_edges(),
                "components": components(graph),
                "numel": g.numel,
            }
        return out
