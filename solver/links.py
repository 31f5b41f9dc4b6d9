"""Placement on uneven real links: which physical nodes hold which logical nodes of the mesh.

With a measured node-to-node bandwidth matrix (Pipette's view of real clusters), the default order can put a
data-parallel ring or a pipeline hop on a slow link. The ranks inside one node keep torchtitan's order (tp
innermost); we choose the permutation of nodes that maximises the slowest link any communicating pair of nodes
uses (a bottleneck assignment, solved as an ILP with pulp/CBC over decreasing bandwidth thresholds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.topology import bottleneck, communicating_node_pairs

# Beyond this many nodes the ILP is not attempted and the default order is kept (reported as such).
MAX_ILP_NODES = 64


@dataclass(frozen=True, slots=True)
class NodeOrder:
    physical: tuple[int, ...]
    """physical[logical node] = physical node index."""
    bottleneck_gb_per_s: float
    default_bottleneck_gb_per_s: float
    method: str
    """`ilp` (proven max-min over the thresholds tried), `default` (no matrix / nothing to gain / too large)."""


def optimize_node_order(layout: Layout, cluster: Cluster, time_limit_s: float = 10.0) -> NodeOrder:
    n = cluster.n_nodes
    identity = tuple(range(n))
    if cluster.node_bandwidth_gb_per_s is None:
        return NodeOrder(identity, float("inf"), float("inf"), "default")
    matrix = np.asarray(cluster.node_bandwidth_gb_per_s, dtype=float)
    matrix = np.minimum(matrix, matrix.T)  # a link is as fast as its slower direction
    pairs = set().union(*communicating_node_pairs(layout, cluster).values())
    base = bottleneck(pairs, matrix, identity)
    if not pairs or n > MAX_ILP_NODES:
        return NodeOrder(identity, base, base, "default")
    thresholds = sorted({float(v) for v in matrix[np.triu_indices(n, 1)] if v > base}, reverse=True)
    for threshold in thresholds:
        perm = _assign_above(pairs, matrix, threshold, n, time_limit_s)
        if perm is not None:
            return NodeOrder(perm, bottleneck(pairs, matrix, perm), base, "ilp")
    return NodeOrder(identity, base, base, "default")


def _assign_above(pairs: set[tuple[int, int]], matrix: np.ndarray, threshold: float, n: int,
                  time_limit_s: float) -> tuple[int, ...] | None:
    """A permutation putting every communicating pair on a link >= threshold, or None (ILP feasibility)."""
    import pulp

    slow = [(p, q) for p in range(n) for q in range(n) if p != q and matrix[p, q] < threshold]
    prob = pulp.LpProblem("placement", pulp.LpMinimize)
    x = {(i, p): pulp.LpVariable(f"x_{i}_{p}", cat="Binary") for i in range(n) for p in range(n)}
    prob += pulp.lpSum(p * x[0, p] for p in range(n))  # any feasible point; prefer keeping node 0 first
    for i in range(n):
        prob += pulp.lpSum(x[i, p] for p in range(n)) == 1
        prob += pulp.lpSum(x[p, i] for p in range(n)) == 1
    for a, b in pairs:
        for p, q in slow:
            prob += x[a, p] + x[b, q] <= 1
    status = prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, threads=1))
    if pulp.LpStatus[status] != "Optimal":
        return None
    return tuple(next(p for p in range(n) if (x[i, p].value() or 0) > 0.5) for i in range(n))
