"""Which nodes talk to which under a layout, and the slowest measured link they use (uneven real links)."""

from __future__ import annotations

import numpy as np

from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.layout import Layout


def communicating_node_pairs(layout: Layout, cluster: Cluster) -> dict[str, set[tuple[int, int]]]:
    """Logical node pairs that exchange traffic, per mesh axis: ring neighbours of dp and cp, pipeline hops."""
    gpn = cluster.primary.gpus_per_node
    ranks = np.arange(layout.world)
    mesh = layout.mesh()
    strides, stride = {}, 1
    for axis in reversed(("pp", "dp_replicate", "dp_shard", "cp", "tp")):
        strides[axis] = stride
        stride *= mesh[axis]
    pairs: dict[str, set[tuple[int, int]]] = {}
    for axis in ("pp", "dp_replicate", "dp_shard", "cp"):
        size, st = mesh[axis], strides[axis]
        if size <= 1:
            continue
        coord = (ranks // st) % size
        # Ring neighbour along the axis (pipeline: next stage only, no wrap-around).
        nxt = np.where(coord + 1 < size, ranks + st, ranks - (size - 1) * st)
        keep = coord + 1 < size if axis == "pp" else np.ones_like(ranks, dtype=bool)
        a, b = ranks[keep] // gpn, nxt[keep] // gpn
        cross = a != b
        pairs[axis] = {(int(min(x, y)), int(max(x, y))) for x, y in zip(a[cross], b[cross], strict=True)}
    return pairs


def bottleneck(pairs: set[tuple[int, int]], matrix: np.ndarray, physical: tuple[int, ...]) -> float:
    if not pairs:
        return float("inf")
    return float(min(matrix[physical[a], physical[b]] for a, b in pairs))


def placement_bottleneck_gb_per_s(layout: Layout, cluster: Cluster, physical: tuple[int, ...] | None = None
                                  ) -> float | None:
    """Slowest measured node-to-node link used by communicating nodes (None without a bandwidth matrix)."""
    if cluster.node_bandwidth_gb_per_s is None or layout.world != cluster.world_size:
        return None
    matrix = np.asarray(cluster.node_bandwidth_gb_per_s, dtype=float)
    matrix = np.minimum(matrix, matrix.T)  # a link is as fast as its slower direction
    pairs = set().union(*communicating_node_pairs(layout, cluster).values())
    return bottleneck(pairs, matrix, physical or tuple(range(cluster.n_nodes)))
