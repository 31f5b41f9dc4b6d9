"""Which nodes each parallel axis's collectives cross, and the measured link each one runs on (uneven real links).

Every mesh axis of a layout communicates in groups of ranks `stride` apart (torchtitan's mesh order: pp,
dp_replicate, dp_shard, cp, tp, tp innermost; experts fold over dp_shard * cp * tp). A group's traffic follows a
pattern: a ring (NCCL's ring all-reduce / all-gather / reduce-scatter, ring attention), all pairs (all-to-all: EP
dispatch, Ulysses CP) or a chain of pipeline hops (interleaved schedules also hop from the last stage back to the
first for the next virtual stage; Narayanan et al. 2021, section 2.2). Under a node order, the slowest
node-to-node link among an axis's hops paces that axis (a ring step waits for its slowest hop): that is the
bandwidth the step-time model prices the axis's scale-out traffic at (models/training/step.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum, StrEnum
from typing import Any

import numpy as np

from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.layout import Layout


class Axis(StrEnum):
    """Communication groups of a layout, each priced on its own link."""

    TP = "tp"
    CP = "cp"
    DP_SHARD = "dp_shard"
    """The FSDP / ZeRO shard group: dp_shard x cp ranks (torchtitan's dp_shard_cp), as step.py reduces over it."""
    DP_REPLICATE = "dp_replicate"
    PP = "pp"
    EP = "ep"
    EDP = "edp"
    """Expert data parallel: the ranks holding the same experts (dp_shard * cp * tp / (ep * etp))."""


class Pattern(Enum):
    RING = "ring"
    ALL_PAIRS = "all pairs"
    CHAIN = "chain"
    """Pipeline hops stage i -> i + 1."""
    CHAIN_WRAP = "chain and wrap-around"
    """Interleaved pipeline: also last stage -> first stage (the next virtual stage)."""


def axis_group(L: Any, axis: Axis) -> tuple[Any, Any]:
    """(size, stride) of the axis's groups, for a Layout or a LayoutArrays (the one definition step.py prices)."""
    if axis is Axis.TP:
        return L.tp, 1
    if axis is Axis.CP:
        return L.cp, L.tp
    if axis is Axis.DP_SHARD:
        return L.dp_shard * L.cp, L.tp
    if axis is Axis.DP_REPLICATE:
        return L.dp_replicate, L.tp * L.cp * L.dp_shard
    if axis is Axis.PP:
        return L.pp, L.dp * L.cp * L.tp
    if axis is Axis.EP:
        return L.ep, 1
    return np.maximum(1.0, L.dp_shard * L.cp * L.tp / (L.ep * L.etp)), L.ep * L.etp


def axis_patterns(layout: Layout, moe: bool) -> dict[Axis, Pattern]:
    """How each axis of `layout` communicates; EP and EDP only carry traffic in MoE models."""
    patterns = {Axis.TP: Pattern.RING, Axis.CP: Pattern.ALL_PAIRS if layout.cp_kind == "a2a" else Pattern.RING,
                Axis.DP_SHARD: Pattern.RING, Axis.DP_REPLICATE: Pattern.RING,
                Axis.PP: (Pattern.CHAIN_WRAP if layout.schedule == "interleaved-1f1b" and layout.vpp > 1
                          else Pattern.CHAIN)}
    if moe:
        patterns.update({Axis.EP: Pattern.ALL_PAIRS, Axis.EDP: Pattern.RING})
    return patterns


def _node_of_rank(cluster: Cluster) -> np.ndarray:
    per_node = np.concatenate([np.full(g.count, g.gpus_per_node) for g in cluster.groups])
    return np.repeat(np.arange(cluster.n_nodes), per_node)


def _rank_pairs(size: int, stride: int, world: int, pattern: Pattern) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) rank arrays of every hop of the axis's groups."""
    ranks = np.arange(world)
    coord = (ranks // stride) % size
    if pattern is Pattern.ALL_PAIRS:
        base = np.unique(ranks - coord * stride)
        members = base[:, None] + np.arange(size)[None, :] * stride
        i, j = np.triu_indices(size, 1)
        return members[:, i].ravel(), members[:, j].ravel()
    nxt = np.where(coord + 1 < size, ranks + stride, ranks - (size - 1) * stride)
    keep = coord + 1 < size if pattern is Pattern.CHAIN else np.ones_like(ranks, dtype=bool)
    return ranks[keep], nxt[keep]


def axis_node_pairs(layout: Layout, cluster: Cluster, moe: bool = False) -> dict[Axis, np.ndarray]:
    """Per axis, the distinct pairs of logical nodes (k x 2, low first) its hops cross; axes inside a node omitted."""
    node = _node_of_rank(cluster)
    out: dict[Axis, np.ndarray] = {}
    for axis, pattern in axis_patterns(layout, moe).items():
        size, stride = (int(round(float(v))) for v in axis_group(layout, axis))
        if size <= 1:
            continue
        a, b = _rank_pairs(size, stride, layout.world, pattern)
        if axis is Axis.CP and layout.cp_kind == "a2a+p2p":  # all pairs inside each a2a group, a ring across them
            a1, b1 = _rank_pairs(layout.cp_a2a, stride, layout.world, Pattern.ALL_PAIRS)
            a2, b2 = _rank_pairs(size // layout.cp_a2a, stride * layout.cp_a2a, layout.world, Pattern.RING)
            a, b = np.concatenate([a1, a2]), np.concatenate([b1, b2])
        na, nb = node[a], node[b]
        cross = na != nb
        if not cross.any():
            continue
        lo, hi = np.minimum(na[cross], nb[cross]), np.maximum(na[cross], nb[cross])
        out[axis] = np.unique(np.stack([lo, hi], axis=1), axis=0)
    return out


def communicating_node_pairs(layout: Layout, cluster: Cluster, moe: bool = False) -> dict[str, set[tuple[int, int]]]:
    """axis_node_pairs as sets of (low, high) logical node pairs, keyed by axis name."""
    return {str(axis): {(int(a), int(b)) for a, b in pairs}
            for axis, pairs in axis_node_pairs(layout, cluster, moe).items()}


def link_matrix(cluster: Cluster) -> np.ndarray | None:
    """The measured node-to-node matrix, symmetric: a link is as fast as its slower direction."""
    if cluster.node_bandwidth_gb_per_s is None:
        return None
    matrix = np.asarray(cluster.node_bandwidth_gb_per_s, dtype=float)
    return np.minimum(matrix, matrix.T)


def links_of_orders(pairs: Mapping[Axis, np.ndarray], matrix: np.ndarray, orders: np.ndarray
                    ) -> dict[Axis, np.ndarray]:
    """Per axis, the slowest link its hops use under each node order (`orders[k, logical] = physical`), GB/s."""
    orders = np.atleast_2d(orders)
    return {axis: matrix[orders[:, p[:, 0]], orders[:, p[:, 1]]].min(axis=1) for axis, p in pairs.items()}


def axis_links_gb_per_s(layout: Layout, cluster: Cluster, physical: tuple[int, ...] | None = None,
                        moe: bool = False) -> dict[str, float] | None:
    """Slowest measured link each axis crosses under the node order `physical` (default: nodes in order); None
    without a bandwidth matrix or when the layout does not fill the cluster."""
    matrix = link_matrix(cluster)
    if matrix is None or layout.world != cluster.world_size:
        return None
    order = np.asarray(physical if physical is not None else range(cluster.n_nodes))
    links = links_of_orders(axis_node_pairs(layout, cluster, moe), matrix, order)
    return {str(axis): float(v[0]) for axis, v in links.items()}
