"""Gossip mixing matrices W on a graph: one averaging step is x <- W x.

Built from edge arrays with numpy (no per-node Python loops) so 10,000-agent graphs are cheap.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import scipy.sparse as sp

from parse_dfl.errors import UserError

RULES = ("metropolis-hastings", "uniform", "max-degree")


def _edge_arrays(g: nx.Graph) -> tuple[int, np.ndarray, np.ndarray]:
    """(n, u, v) with self loops dropped; checks the nodes are exactly 0..n-1."""
    n = g.number_of_nodes()
    if n and (min(g.nodes) != 0 or max(g.nodes) != n - 1):
        raise ValueError("mixing_matrix needs a graph on nodes 0..n-1")
    e = np.array(list(g.edges()), dtype=np.int64).reshape(-1, 2)
    e = e[e[:, 0] != e[:, 1]]
    return n, e[:, 0], e[:, 1]


def mixing_matrix(g: nx.Graph, rule: str) -> sp.csr_matrix:
    """n x n float64 mixing matrix of `g` under `rule`.

    metropolis-hastings (1/(1+max(d_i,d_j))) and max-degree (1/(1+d_max)) are symmetric and
    doubly stochastic, so averaging preserves the mean; uniform (1/(1+d_i)) is only row-
    stochastic. The diagonal takes what the row leaves, so an isolated node keeps its value.
    """
    n, u, v = _edge_arrays(g)
    deg = np.bincount(np.concatenate([u, v]), minlength=n).astype(np.float64)
    if rule == "metropolis-hastings":
        w = 1.0 / (1.0 + np.maximum(deg[u], deg[v]))
        w_uv, w_vu = w, w
    elif rule == "max-degree":
        dmax = deg.max() if n else 0.0
        w = np.full(u.shape, 1.0 / (1.0 + dmax))
        w_uv, w_vu = w, w
    elif rule == "uniform":
        w_uv, w_vu = 1.0 / (1.0 + deg[u]), 1.0 / (1.0 + deg[v])
    else:
        raise UserError("topology.mixing", f"unknown mixing rule {rule!r}; one of {RULES}")
    idx = np.arange(n)
    rows = np.concatenate([u, v, idx])
    cols = np.concatenate([v, u, idx])
    off = np.concatenate([w_uv, w_vu])
    diag = 1.0 - np.bincount(rows[: off.size], weights=off, minlength=n)
    W = sp.csr_matrix((np.concatenate([off, diag]), (rows, cols)), shape=(n, n), dtype=np.float64)
    W.eliminate_zeros()
    return W


def neighbour_counts(W: sp.spmatrix | np.ndarray) -> np.ndarray:
    """Off-diagonal nonzeros per row: how many peers each agent sends to (for byte counts)."""
    coo = sp.coo_matrix(W)
    mask = (coo.row != coo.col) & (coo.data != 0)
    return np.bincount(coo.row[mask], minlength=coo.shape[0]).astype(np.int64)
