"""Graph generators, holder graphs and mixing matrices: structure, determinism, and averaging."""

from __future__ import annotations

import time
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parse_dfl.config import TopologyConfig
from parse_dfl.errors import UserError
from parse_dfl.graph import (
    Topology,
    components,
    generate,
    mixing_matrix,
    neighbour_counts,
    torus_shape,
)

NAMES = ["ring", "chordal-ring", "random-gossip", "erdos-renyi", "torus", "full"]


def degrees(g: nx.Graph) -> set[int]:
    return {d for _, d in g.degree()}


# --- generators ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 12, 30])
def test_every_generator_has_all_nodes_and_no_self_loops(name: str, n: int) -> None:
    g = generate(TopologyConfig(name=name), n, seed=3)
    assert sorted(g.nodes) == list(range(n))
    assert nx.number_of_selfloops(g) == 0


def test_ring() -> None:
    cfg = TopologyConfig(name="ring")
    assert generate(cfg, 1, 0).number_of_edges() == 0
    assert generate(cfg, 2, 0).number_of_edges() == 1
    for n in (3, 10, 31):
        g = generate(cfg, n, 0)
        assert degrees(g) == {2}
        assert g.number_of_edges() == n
        assert nx.is_connected(g)


def test_chordal_ring_degree_four_with_valid_chord() -> None:
    g = generate(TopologyConfig(name="chordal-ring", chord=4), 20, 0)
    assert degrees(g) == {4}
    assert g.has_edge(0, 4) and g.has_edge(19, 3)
    assert nx.is_connected(g)


def test_chordal_ring_default_chord_is_sqrt_n() -> None:
    g = generate(TopologyConfig(name="chordal-ring"), 25, 0)
    assert g.has_edge(0, 5) and g.has_edge(24, 4)
    assert degrees(g) == {4}


def test_chordal_ring_chord_half_n_gives_degree_three() -> None:
    # chord n/2: i+k and i-k coincide, so each node gets only one chord
    assert degrees(generate(TopologyConfig(name="chordal-ring", chord=5), 10, 0)) == {3}


@pytest.mark.parametrize(
    ("n", "degree", "expected"), [(20, 4, 4), (9, 3, 2), (5, 10, 4), (1, 4, 0)]
)
def test_random_gossip_is_regular(n: int, degree: int, expected: int) -> None:
    g = generate(TopologyConfig(name="random-gossip", degree=degree), n, seed=1)
    assert g.number_of_nodes() == n
    assert degrees(g) == ({expected} if n else set())


def test_erdos_renyi_connected_and_seeded() -> None:
    cfg = TopologyConfig(name="erdos-renyi", p=0.3)
    g = generate(cfg, 40, seed=5)
    assert nx.is_connected(g)
    assert set(g.edges) == set(generate(cfg, 40, seed=5).edges)
    assert set(g.edges) != set(generate(cfg, 40, seed=6).edges)


def test_erdos_renyi_refuses_hopeless_p() -> None:
    """A disconnected graph would split the agents for good: one clear error instead."""
    with pytest.raises(UserError, match="could not draw a connected graph") as err:
        generate(TopologyConfig(name="erdos-renyi", p=1e-6), 50, seed=0)
    assert err.value.where == "topology.p"
    assert "p=1e-06" in err.value.problem and "larger p" in err.value.problem


@pytest.mark.parametrize(("n", "shape"), [(1, (1, 1)), (7, (1, 7)), (12, (3, 4)), (16, (4, 4))])
def test_torus_shape(n: int, shape: tuple[int, int]) -> None:
    assert torus_shape(n) == shape


def test_torus() -> None:
    cfg = TopologyConfig(name="torus")
    g = generate(cfg, 12, 0)  # 3 x 4
    assert degrees(g) == {4}
    assert g.number_of_edges() == 24
    assert g.has_edge(0, 3) and g.has_edge(0, 8)  # row and column wrap-around
    assert nx.is_connected(g)
    prime = generate(cfg, 7, 0)  # rows == 1: a ring
    assert degrees(prime) == {2} and nx.is_connected(prime)


def test_full() -> None:
    g = generate(TopologyConfig(name="full"), 9, 0)
    assert degrees(g) == {8}
    assert g.number_of_edges() == 36


# --- edge-list ------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "edges.txt"
    p.write_text(text)
    return str(p)


def test_edge_list_parses_comments_and_blanks(tmp_path: Path) -> None:
    path = write(tmp_path, "# a path\n0 1\n\n1 2  # inline comment\n  2 3\n1 0\n")
    g = generate(TopologyConfig(name="edge-list", path=path), 5, 0)
    assert sorted(g.nodes) == [0, 1, 2, 3, 4]
    assert set(map(frozenset, g.edges)) == {frozenset(e) for e in [(0, 1), (1, 2), (2, 3)]}
    assert components(g) == 2  # node 4 is isolated


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0 1\n1 x\n", "line 2: expected two integer ids"),
        ("0 1\n# c\n1 2 3\n", "line 3: expected two integer ids"),
        ("0\n", "line 1: expected two integer ids"),
        ("0 1\n1 5\n", "line 2: id 5 is outside 0..4"),
        ("-1 2\n", "line 1: id -1 is outside 0..4"),
        ("\n\n2 2\n", "line 3: self loop"),
    ],
)
def test_edge_list_errors_name_the_line(tmp_path: Path, text: str, fragment: str) -> None:
    cfg = TopologyConfig(name="edge-list", path=write(tmp_path, text))
    with pytest.raises(UserError) as err:
        generate(cfg, 5, 0)
    assert err.value.where == "topology.path"
    assert fragment in err.value.problem


def test_edge_list_missing_file_or_path(tmp_path: Path) -> None:
    for cfg in (
        TopologyConfig(name="edge-list", path=str(tmp_path / "nope.txt")),
        TopologyConfig(name="edge-list"),
    ):
        with pytest.raises(UserError) as err:
            generate(cfg, 3, 0)
        assert err.value.where == "topology.path"


# --- Topology -------------------------------------------------------------------------------


def test_random_gossip_varies_by_round_and_is_reproducible() -> None:
    cfg = TopologyConfig(name="random-gossip", degree=3)
    a, b = Topology(cfg, 30, seed=7), Topology(cfg, 30, seed=7)
    assert a.time_varying
    edges = [set(a.graph(r).edges) for r in range(4)]
    assert len({frozenset(e) for e in edges}) == 4  # a new graph each round
    for r in (3, 0, 2):  # another process, any order: the same graphs
        assert set(b.graph(r).edges) == edges[r]
    assert set(Topology(cfg, 30, seed=8).graph(0).edges) != edges[0]
    assert all(degrees(a.graph(r)) == {3} for r in range(4))


@pytest.mark.parametrize("name", ["ring", "torus", "erdos-renyi", "full"])
def test_static_topology_is_cached_and_not_time_varying(name: str) -> None:
    t = Topology(TopologyConfig(name=name), 16, seed=1)
    assert not t.time_varying
    assert t.graph(0) is t.graph(5)


def test_induced_holder_graph_of_ring() -> None:
    t = Topology(TopologyConfig(name="ring", holder_graph="induced"), 30, seed=0)
    holders = list(range(10)) + list(range(20, 30))
    g = t.holder_graph(holders, None, round=0)
    assert sorted(g.nodes) == list(range(20))
    # ring edges inside the holders: 0-1..8-9 (9), 20-21..28-29 (9), 29-0 (1)
    assert g.number_of_edges() == 19
    assert components(g) == 1  # the wrap 29-0 joins the two arcs
    assert g.has_edge(19, 0)  # local ids: agent 29 is position 19, agent 0 is position 0
    g2 = t.holder_graph(list(range(5, 10)) + list(range(20, 25)), None, round=0)
    assert g2.number_of_edges() == 8 and components(g2) == 2


def test_tags_drop_links_without_a_common_tag() -> None:
    t = Topology(TopologyConfig(name="ring", holder_graph="induced"), 6, seed=0)
    a, b, ab = frozenset({"a"}), frozenset({"b"}), frozenset({"a", "b"})
    tags = [a, a, b, b, ab, a]  # ring 0-1-2-3-4-5-0
    g = t.holder_graph(range(6), tags, round=0)
    kept = {frozenset(e) for e in g.edges}
    assert kept == {frozenset(e) for e in [(0, 1), (2, 3), (3, 4), (4, 5), (5, 0)]}
    for u, v in g.edges:
        assert tags[u] & tags[v]


@pytest.mark.parametrize("mode", ["induced", "overlay"])
def test_tags_filter_applies_in_both_modes(mode: str) -> None:
    t = Topology(TopologyConfig(name="full", holder_graph=mode), 8, seed=0)
    tags = [frozenset({"x" if i % 2 else "y"}) for i in range(4)]
    g = t.holder_graph([1, 3, 5, 7], tags, round=0)
    assert {frozenset(e) for e in g.edges} == {frozenset((0, 2)), frozenset((1, 3))}


def test_overlay_builds_a_ring_over_exactly_the_holders() -> None:
    t = Topology(TopologyConfig(name="ring", holder_graph="overlay"), 30, seed=0)
    holders = [0, 4, 9, 17, 22, 29]
    g = t.holder_graph(holders, None, round=0)
    assert sorted(g.nodes) == list(range(6))
    assert degrees(g) == {2} and nx.is_connected(g)
    ring = TopologyConfig(name="ring", holder_graph="induced")
    induced = Topology(ring, 30, seed=0).holder_graph(holders, None, 0)
    assert induced.number_of_edges() == 1  # only 29-0 are ring neighbours


def test_overlay_random_gossip_is_deterministic_per_round_and_holders() -> None:
    cfg = TopologyConfig(name="random-gossip", degree=3, holder_graph="overlay")
    holders = list(range(0, 40, 2))
    a, b = Topology(cfg, 40, seed=2), Topology(cfg, 40, seed=2)
    assert set(a.holder_graph(holders, None, 5).edges) == set(
        b.holder_graph(holders, None, 5).edges
    )
    assert set(a.holder_graph(holders, None, 5).edges) != set(
        a.holder_graph(holders, None, 6).edges
    )
    assert degrees(a.holder_graph(holders, None, 5)) == {3}


def test_overlay_edge_list_falls_back_to_induced(tmp_path: Path) -> None:
    path = write(tmp_path, "0 1\n1 2\n2 3\n3 0\n")
    cfg = TopologyConfig(name="edge-list", path=path, holder_graph="overlay")
    g = Topology(cfg, 4, seed=0).holder_graph([1, 2, 3], None, 0)
    assert {frozenset(e) for e in g.edges} == {frozenset((0, 1)), frozenset((1, 2))}


def test_holder_graph_rejects_bad_holders() -> None:
    t = Topology(TopologyConfig(name="ring"), 5, seed=0)
    with pytest.raises(ValueError):
        t.holder_graph([0, 0], None, 0)
    with pytest.raises(ValueError):
        t.holder_graph([0, 5], None, 0)
    with pytest.raises(ValueError):
        t.holder_graph([0, 1], [frozenset({"a"})], 0)


def test_components() -> None:
    assert components(nx.empty_graph(0)) == 0
    assert components(nx.empty_graph(4)) == 4
    assert components(generate(TopologyConfig(name="ring"), 5, 0)) == 1


# --- mixing ---------------------------------------------------------------------------------


def dense(g: nx.Graph, rule: str) -> np.ndarray:
    W = mixing_matrix(g, rule)
    assert W.shape == (g.number_of_nodes(),) * 2 and W.dtype == np.float64
    return W.toarray()


graphs = st.builds(
    lambda n, p, seed: nx.gnp_random_graph(n, p, seed=seed),
    st.integers(1, 15),
    st.floats(0.0, 1.0),
    st.integers(0, 10_000),
)


@settings(max_examples=150, deadline=None)
@given(graphs, st.sampled_from(["metropolis-hastings", "max-degree"]))
def test_symmetric_rules_are_doubly_stochastic(g: nx.Graph, rule: str) -> None:
    W = dense(g, rule)
    assert np.allclose(W, W.T)
    assert (W >= 0).all()
    assert np.allclose(W.sum(axis=0), 1) and np.allclose(W.sum(axis=1), 1)
    A = nx.to_numpy_array(g, nodelist=range(g.number_of_nodes()))
    off = W - np.diag(np.diag(W))
    assert ((off > 0) == (A > 0)).all()  # weights exactly on the edges


@settings(max_examples=150, deadline=None)
@given(graphs)
def test_uniform_is_row_stochastic(g: nx.Graph) -> None:
    W = dense(g, "uniform")
    assert (W >= 0).all()
    assert np.allclose(W.sum(axis=1), 1)
    deg = np.array([g.degree(i) for i in range(g.number_of_nodes())])
    assert np.allclose(np.diag(W), 1 / (1 + deg))


def test_metropolis_hastings_values() -> None:
    g = nx.star_graph(3)  # centre 0 with degree 3, leaves degree 1
    W = dense(g, "metropolis-hastings")
    assert W[0, 1] == pytest.approx(0.25) and W[1, 0] == pytest.approx(0.25)
    assert W[0, 0] == pytest.approx(0.25) and W[1, 1] == pytest.approx(0.75)
    Wm = dense(g, "max-degree")
    assert Wm[1, 1] == pytest.approx(0.75) and Wm[0, 0] == pytest.approx(0.25)


def test_isolated_nodes_keep_their_value() -> None:
    g = nx.empty_graph(3)
    g.add_edge(0, 1)
    for rule in ("metropolis-hastings", "max-degree", "uniform"):
        W = dense(g, rule)
        assert W[2, 2] == 1 and W[2].sum() == 1
    assert mixing_matrix(nx.empty_graph(0), "uniform").shape == (0, 0)


def test_unknown_rule() -> None:
    with pytest.raises(UserError):
        mixing_matrix(nx.path_graph(3), "bogus")


@pytest.mark.parametrize("rule", ["metropolis-hastings", "max-degree"])
@pytest.mark.parametrize("name", ["ring", "torus", "erdos-renyi", "chordal-ring"])
def test_gossip_preserves_mean_and_reaches_consensus(name: str, rule: str) -> None:
    g = generate(TopologyConfig(name=name, p=0.3), 16, seed=4)
    assert nx.is_connected(g)
    W = mixing_matrix(g, rule)
    x = np.random.default_rng(0).normal(size=(16, 3))
    mean = x.mean(axis=0)
    for _ in range(2000):
        x = W @ x
    assert np.allclose(x.mean(axis=0), mean)
    assert np.ptp(x, axis=0).max() < 1e-6


def test_gossip_on_disconnected_graph_averages_per_component() -> None:
    g = nx.disjoint_union(nx.cycle_graph(4), nx.cycle_graph(3))
    W = mixing_matrix(g, "metropolis-hastings")
    x = np.arange(7, dtype=float)
    for _ in range(500):
        x = W @ x
    assert np.allclose(x[:4], 1.5) and np.allclose(x[4:], 5.0)


def test_neighbour_counts() -> None:
    g = nx.star_graph(4)
    g.add_node(5)
    for rule in ("metropolis-hastings", "max-degree", "uniform"):
        counts = neighbour_counts(mixing_matrix(g, rule))
        assert counts.tolist() == [4, 1, 1, 1, 1, 0]
    assert neighbour_counts(np.array([[0.5, 0.5], [0.0, 1.0]])).tolist() == [1, 0]


def test_mixing_is_fast_for_ten_thousand_agents() -> None:
    g = generate(TopologyConfig(name="torus"), 10_000, seed=0)
    start = time.perf_counter()
    W = mixing_matrix(g, "metropolis-hastings")
    elapsed = time.perf_counter() - start
    assert W.nnz == 10_000 * 5
    assert np.allclose(np.asarray(W.sum(axis=1)).ravel(), 1)
    assert elapsed < 2.0
