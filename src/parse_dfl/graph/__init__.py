"""Communication graphs (per round, per block's holders) and their gossip mixing matrices."""

from parse_dfl.graph.mixing import mixing_matrix, neighbour_counts
from parse_dfl.graph.topology import (
    Topology,
    components,
    derive_seed,
    generate,
    read_edge_list,
    torus_shape,
)

__all__ = [
    "Topology",
    "components",
    "derive_seed",
    "generate",
    "mixing_matrix",
    "neighbour_counts",
    "read_edge_list",
    "torus_shape",
]
