"""Peer-to-peer graphs among agents, and the graphs among the holders of one parameter block.

Every random choice is derived from integers only (the run seed, the round, a CRC of the holder
ids), never from Python's salted `hash()` or global RNG state, so every process that builds a
`Topology` from the same config and seed sees exactly the same graphs.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import networkx as nx
import numpy as np

from parse_dfl import registry
from parse_dfl.config import TopologyConfig
from parse_dfl.errors import UserError

ER_ATTEMPTS = 50
"""How many seeds erdos-renyi tries to find a connected graph before giving up (UserError:
a disconnected graph would silently split the agents into groups that never agree)."""


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from integers; stable across processes and Python versions (why: no hash())."""
    words = [int(p) % (1 << 64) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint32)[0])


def _from_edges(n: int, u: np.ndarray, v: np.ndarray) -> nx.Graph:
    """Graph on 0..n-1 (all nodes present, even isolated) from edge arrays; self loops dropped."""
    g = nx.Graph()
    g.add_nodes_from(range(n))
    keep = u != v
    g.add_edges_from(zip(u[keep].tolist(), v[keep].tolist(), strict=True))
    return g


def _ring(n: int) -> nx.Graph:
    i = np.arange(n)
    return _from_edges(n, i, (i + 1) % max(n, 1))


def _chordal_ring(n: int, chord: int | None) -> nx.Graph:
    g = _ring(n)
    if n == 0:
        return g
    k = chord if chord is not None else max(2, round(math.sqrt(n)))
    i = np.arange(n)
    j = (i + k) % n
    keep = i != j
    g.add_edges_from(zip(i[keep].tolist(), j[keep].tolist(), strict=True))
    return g


def _random_regular(n: int, degree: int, seed: int) -> nx.Graph:
    d = min(degree, n - 1) if n > 0 else 0
    if (n * d) % 2:
        d -= 1  # a d-regular graph on n nodes needs n*d even
    if d >= n - 1:
        return nx.complete_graph(n)  # also n <= 1; the pairing model is slow near complete
    g = nx.random_regular_graph(d, n, seed=seed)
    g.add_nodes_from(range(n))
    return g


def _erdos_renyi(n: int, p: float, seed: int) -> nx.Graph:
    g = nx.empty_graph(n)
    for attempt in range(ER_ATTEMPTS):
        g = nx.fast_gnp_random_graph(n, p, seed=derive_seed(seed, attempt))
        if n <= 1 or nx.is_connected(g):
            return g
    # Connected G(n, p) needs p above about ln(n) / n.
    hint = min(1.0, 2 * math.log(n) / n)
    raise UserError(
        "topology.p",
        f"erdos-renyi could not draw a connected graph on {n} agents with p={p:g} in "
        f"{ER_ATTEMPTS} tries; use a larger p (e.g. {hint:.2g}) or another topology.name",
    )


def torus_shape(n: int) -> tuple[int, int]:
    """(rows, cols) with rows * cols == n and rows the largest divisor of n that is <= sqrt(n)."""
    rows = max((r for r in range(1, math.isqrt(n) + 1) if n % r == 0), default=1)
    return rows, (n // rows if n else 0)


def _torus(n: int) -> nx.Graph:
    rows, cols = torus_shape(n)
    if rows == 1:
        return _ring(n)
    r, c = np.divmod(np.arange(n), cols)
    right = r * cols + (c + 1) % cols
    down = ((r + 1) % rows) * cols + c
    i = np.arange(n)
    return _from_edges(n, np.concatenate([i, i]), np.concatenate([right, down]))


def read_edge_list(path: str | None, n: int) -> nx.Graph:
    """Parse an 'i j' file (0-based ids, '#' comments); every mistake names its line number."""
    where = "topology.path"
    if not path:
        raise UserError(where, "the edge-list topology needs a file: set topology.path")
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UserError(where, f"no such file: {path}") from None
    except OSError as e:
        raise UserError(where, f"cannot read {path}: {e.strerror or e}") from None
    g = nx.empty_graph(n)
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            a, b = int(parts[0]), int(parts[1])
        except ValueError:
            raise UserError(
                where, f"line {lineno}: expected two integer ids 'i j', got {raw.strip()!r}"
            ) from None
        for x in (a, b):
            if not 0 <= x < n:
                raise UserError(where, f"line {lineno}: id {x} is outside 0..{n - 1}")
        if a == b:
            raise UserError(where, f"line {lineno}: self loop {a} {b}")
        g.add_edge(a, b)
    return g


Generator = Callable[[TopologyConfig, int, int], nx.Graph]
"""(config, number of nodes, seed) -> graph: what the registry holds for each topology name."""

for _name, _gen in (
    ("ring", lambda cfg, n, seed: _ring(n)),
    ("chordal-ring", lambda cfg, n, seed: _chordal_ring(n, cfg.chord)),
    ("random-gossip", lambda cfg, n, seed: _random_regular(n, cfg.degree, seed)),
    ("erdos-renyi", lambda cfg, n, seed: _erdos_renyi(n, cfg.p, seed)),
    ("torus", lambda cfg, n, seed: _torus(n)),
    ("full", lambda cfg, n, seed: nx.complete_graph(n)),
    ("edge-list", lambda cfg, n, seed: read_edge_list(cfg.path, n)),
):
    registry.register("topology", _name, _gen)


def generate(cfg: TopologyConfig, n: int, seed: int) -> nx.Graph:
    """One graph of `cfg.name` on nodes 0..n-1 (all n nodes present, even if isolated)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    gen: Generator = registry.resolve("topology", cfg.name, "topology.name")
    return gen(cfg, n, seed)


def components(g: nx.Graph) -> int:
    """Number of connected components (0 for the empty graph): >1 means a block cannot agree."""
    return 0 if g.number_of_nodes() == 0 else nx.number_connected_components(g)


class Topology:
    """The communication graph of a run, per round, and the graphs among each block's holders.

    Static graphs are built once; random-gossip draws a fresh graph each round from a seed
    derived from (seed, round) so all processes agree without talking. Returned graphs are
    frozen (shared cache): copy them (`nx.Graph(g)`) before editing.
    """

    def __init__(self, cfg: TopologyConfig, n: int, seed: int) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.cfg = cfg
        self.n = n
        self.seed = seed
        self.time_varying: bool = cfg.name == "random-gossip"
        self._cache: dict[int, nx.Graph] = {}  # round key -> base graph (one entry kept)

    def _round_key(self, round: int) -> int:
        return round if self.time_varying else 0

    def graph(self, round: int) -> nx.Graph:
        """The base graph over all n agents in `round` (the same object for static topologies)."""
        key = self._round_key(round)
        g = self._cache.get(key)
        if g is None:
            seed = derive_seed(self.seed, round) if self.time_varying else self.seed
            g = nx.freeze(generate(self.cfg, self.n, seed))
            self._cache = {key: g}
        return g

    def holder_graph(
        self,
        holders: Sequence[int],
        tags: Sequence[frozenset[str]] | None,
        round: int,
    ) -> nx.Graph:
        """Graph among `holders` on local ids 0..h-1 (position in `holders`).

        induced: the round's base graph restricted to the holders; overlay: the same generator
        run over the holders alone (edge-list has no generator, so it stays induced). With
        `tags`, links between holders whose tag sets are disjoint are dropped.
        """
        hs = [int(a) for a in holders]
        h = len(hs)
        if len(set(hs)) != h:
            raise ValueError(f"holders must be distinct, got {hs}")
        if any(not 0 <= a < self.n for a in hs):
            raise ValueError(f"holders must lie in 0..{self.n - 1}, got {hs}")
        if tags is not None and len(tags) != h:
            raise ValueError(f"tags has {len(tags)} entries for {h} holders")

        if self.cfg.holder_graph == "overlay" and self.cfg.name != "edge-list":
            crc = zlib.crc32(np.asarray(hs, dtype="<i8").tobytes())
            g = generate(self.cfg, h, derive_seed(self.seed, self._round_key(round), crc))
        else:
            base = self.graph(round)
            pos = {a: i for i, a in enumerate(hs)}
            g = nx.empty_graph(h)
            g.add_edges_from((pos[a], pos[b]) for a, b in base.subgraph(hs).edges())

        if tags is not None:
            g.remove_edges_from([(a, b) for a, b in g.edges() if not tags[a] & tags[b]])
        return g
