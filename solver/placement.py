"""Where each rank's mesh coordinate lands: node and GPU, in torchtitan's mesh order (tp innermost)."""

from __future__ import annotations

from clusterplan.models.cluster import Cluster
from clusterplan.models.layout import MESH_AXES, Layout


def coordinates(layout: Layout, rank: int) -> dict[str, int]:
    """Row-major unravel of a rank over (pp, dp_replicate, dp_shard, cp, tp)."""
    coords = {}
    for axis in reversed(MESH_AXES):
        size = layout.mesh()[axis]
        coords[axis] = rank % size
        rank //= size
    return {axis: coords[axis] for axis in MESH_AXES}


def placement(layout: Layout, cluster: Cluster, max_nodes: int = 16) -> dict:
    """Per node: its GPUs' coordinates as ranges per axis (first `max_nodes` nodes; the pattern repeats)."""
    nodes = []
    rank = 0
    for node in range(min(cluster.n_nodes, max_nodes)):
        per = cluster.group_of_node(node).gpus_per_node
        coords = [coordinates(layout, r) for r in range(rank, rank + per)]
        rank += per
        nodes.append({"node": node, "ranks": [rank - per, rank - 1],
                      **{axis: sorted({c[axis] for c in coords}) for axis in MESH_AXES}})
    return {"mesh_order": list(MESH_AXES), "mesh": layout.mesh(), "nodes_total": cluster.n_nodes, "nodes": nodes}
