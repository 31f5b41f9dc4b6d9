"""Placement on uneven real links: which physical nodes hold which logical nodes of the mesh.

With a measured node-to-node bandwidth matrix (Pipette's view of real clusters, or pods joined by a thinner
spine), the default order can put a data-parallel ring, a pipeline hop (the wrap-around of an interleaved schedule
included) or an expert all-to-all on a slow link. The ranks inside one node keep torchtitan's order (tp innermost);
we choose the permutation of nodes that minimises the model's own step time, in which each axis's traffic runs on
the slowest link its hops cross (models/training/topology.py, models/training/step.py).

Exact method. The step time depends on the order only through the vector of per-axis links, and it never grows
when one axis's link gets faster. So: list every vector of thresholds (one measured bandwidth level per axis that
crosses nodes), price all of them in one vectorised step-time evaluation, and test them in increasing step time
with an ILP (pulp/CBC) that asks for a node order putting every hop of every axis on a link >= its threshold. The
first feasible vector is optimal: an order doing better would meet a vector of lower step time, tried before.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from clusterplan.hardware_db.stacks import ExecutionStack
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.calibration import Calibration
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.estimate import step_times_on_links
from clusterplan.models.training.layout import Layout, layout_problems
from clusterplan.models.training.topology import Axis, axis_node_pairs, link_matrix, links_of_orders

# Beyond this many nodes the ILP is not attempted and the default order is kept (reported as such).
MAX_ILP_NODES = 64
# Most threshold vectors priced at once; with more distinct link levels than that allows (a noisy measured
# matrix), the levels are thinned to evenly spaced ones (method "ilp-coarse": optimal over those levels only).
MAX_CANDIDATES = 4096
# Most feasibility ILPs per plan; the candidates are tried fastest first, so this bounds the work when many
# vectors faster than the default order are impossible.
MAX_ILP_SOLVES = 64


@dataclass(frozen=True, slots=True)
class NodeOrder:
    physical: tuple[int, ...]
    """physical[logical node] = physical node index."""
    method: str
    """`ilp` (proven fastest order), `ilp-coarse` (fastest over thinned link levels), `ilp-time-limit` (an ILP
    ran out of time: the order found is the fastest the others proved), `default` (not attempted: no matrix,
    nothing crosses nodes, too many nodes, or the ILP budget ran out before a faster order was found)."""
    axis_links_gb_per_s: dict[str, float] = field(default_factory=dict)
    """Slowest link each axis crossing nodes uses under `physical`."""
    default_axis_links_gb_per_s: dict[str, float] = field(default_factory=dict)
    """The same under the default order (logical node i on physical node i)."""
    step_time_s: float = float("nan")
    default_step_time_s: float = float("nan")


def _links(pairs: dict[Axis, np.ndarray], matrix: np.ndarray, order: tuple[int, ...]) -> dict[str, float]:
    return {str(a): float(v[0]) for a, v in links_of_orders(pairs, matrix, np.asarray(order)).items()}


def optimize_node_order(model: ModelSpec, layout: Layout, cluster: Cluster, calibration: Calibration | None = None,
                        stack: ExecutionStack | None = None, time_limit_s: float = 10.0) -> NodeOrder:
    """The node order with the lowest predicted step time of `layout` on the cluster's measured links."""
    n = cluster.n_nodes
    identity = tuple(range(n))
    matrix = link_matrix(cluster)
    if matrix is None or layout.world != cluster.world_size or layout_problems(model, layout, cluster.world_size):
        return NodeOrder(identity, "default")  # nothing to place (estimate prices such layouts at the bound)
    pairs = axis_node_pairs(layout, cluster, model.is_moe)
    base = _links(pairs, matrix, identity)

    def price(links: dict[str, np.ndarray]) -> np.ndarray:
        return step_times_on_links(model, cluster, layout, links, calibration, stack)

    base_s = float(price({a: np.array([v]) for a, v in base.items()})[0])
    default = NodeOrder(identity, "default", base, base, base_s, base_s)
    if not pairs or n > MAX_ILP_NODES:
        return default
    axes = list(pairs)
    levels = np.unique(matrix[~np.eye(n, dtype=bool)])
    method = "ilp"
    per_axis = int(MAX_CANDIDATES ** (1.0 / len(axes)))
    if len(levels) > per_axis:
        levels = levels[np.unique(np.linspace(0, len(levels) - 1, max(per_axis, 2)).round().astype(int))]
        method = "ilp-coarse"
    grid = np.array(list(itertools.product(levels, repeat=len(axes))), dtype=float)
    steps = price({str(a): grid[:, i] for i, a in enumerate(axes)})
    # Fastest first; among equal times the lowest thresholds (the easiest to meet) first.
    # A vector at or above one proven impossible on every axis is impossible too: skipped without an ILP.
    solves, impossible, proven = 0, np.empty((0, len(axes))), True
    for k in np.lexsort((grid.sum(axis=1), steps)):
        if steps[k] >= base_s:
            break
        if (impossible <= grid[k]).all(axis=1).any():
            continue
        if solves >= MAX_ILP_SOLVES:
            return default  # budget spent before a faster order was found
        solves += 1
        perm = _assign(pairs, dict(zip(axes, grid[k], strict=True)), matrix, time_limit_s)
        if perm is INFEASIBLE:
            impossible = np.vstack([impossible, grid[k]])
            if len(impossible) == 1:  # the fastest vector is out of reach: learn each axis's own ceiling first
                ceilings, spent = _axis_ceilings(pairs, axes, levels, matrix, time_limit_s)
                solves += spent
                impossible = np.vstack([impossible, ceilings])
        elif perm is None:
            proven = False  # the time limit ran out: neither found nor ruled out
        else:
            links = _links(pairs, matrix, perm)
            placed_s = float(price({a: np.array([v]) for a, v in links.items()})[0])
            return NodeOrder(perm, method if proven else "ilp-time-limit", links, base, placed_s, base_s)
    # No faster vector can be met: the default order is optimal (over the levels tried).
    return NodeOrder(identity, method if proven else "ilp-time-limit", base, base, base_s, base_s)


def _axis_ceilings(pairs: dict[Axis, np.ndarray], axes: list[Axis], levels: np.ndarray, matrix: np.ndarray,
                   time_limit_s: float) -> tuple[np.ndarray, int]:
    """Per axis alone (the others at the lowest level, always met), the lowest level no node order reaches, by
    bisection over the levels: rows of impossible threshold vectors, and the ILPs it took."""
    rows, solves = [], 0
    for i, axis in enumerate(axes):
        lo, hi = 0, len(levels)  # levels[lo] is met (every link is at least the lowest level); levels[hi:] unknown
        while hi - lo > 1:
            mid = (lo + hi) // 2
            thresholds = {a: (levels[mid] if a == axis else levels[0]) for a in axes}
            solves += 1
            perm = _assign(pairs, thresholds, matrix, time_limit_s)
            if perm is None:
                break  # out of time: no ceiling learnt for this axis
            if perm is INFEASIBLE:
                hi = mid
            else:
                lo = mid
        else:
            if hi < len(levels):
                row = np.full(len(axes), levels[0])
                row[i] = levels[hi]
                rows.append(row)
    return np.array(rows).reshape(-1, len(axes)), solves


INFEASIBLE = ()
"""What _assign returns when CBC proves no node order meets the thresholds."""


def _assign(pairs: dict[Axis, np.ndarray], thresholds: dict[Axis, float], matrix: np.ndarray,
            time_limit_s: float) -> tuple[int, ...] | None:
    """A node order putting every hop of every axis on a link >= the axis's threshold (ILP feasibility; among
    feasible orders, one moving nodes the least distance in total from the default); INFEASIBLE when proven
    impossible, None when the time limit ran out first."""
    import pulp

    n = len(matrix)
    need: dict[tuple[int, int], float] = {}
    for axis, ps in pairs.items():
        for a, b in ps:
            need[int(a), int(b)] = max(need.get((int(a), int(b)), 0.0), thresholds[axis])
    prob = pulp.LpProblem("placement", pulp.LpMinimize)
    x = {(i, p): pulp.LpVariable(f"x_{i}_{p}", cat="Binary") for i in range(n) for p in range(n)}
    prob += pulp.lpSum(abs(p - i) * x[i, p] for i in range(n) for p in range(n))  # nodes moved as little as possible
    for i in range(n):
        prob += pulp.lpSum(x[i, p] for p in range(n)) == 1
        prob += pulp.lpSum(x[p, i] for p in range(n)) == 1
    for (a, b), t in need.items():
        for p in range(n):
            slow = [q for q in range(n) if q != p and matrix[p, q] < t]
            if len(slow) == n - 1:
                prob += x[a, p] == 0
                prob += x[b, p] == 0
            elif slow:  # a on p forbids b on any q slower than t from p (b sits on exactly one node)
                prob += x[a, p] + pulp.lpSum(x[b, q] for q in slow) <= 1
    status = pulp.LpStatus[prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, threads=1))]
    if status == "Infeasible":
        return INFEASIBLE
    if status != "Optimal" or any(v.value() is None for v in x.values()):
        return None
    return tuple(next(p for p in range(n) if (x[i, p].value() or 0) > 0.5) for i in range(n))
