"""Where each rank's mesh coordinate lands: node and GPU, in torchtitan's mesh order (tp innermost)."""

from __future__ import annotations

from dataclasses import replace

from clusterplan.models.hardware.calibration import Calibration
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import MESH_AXES, Layout
from clusterplan.solver.links import optimize_node_order
from clusterplan.solver.results import Placement, RankedPlan, SearchResult
from clusterplan.solver.search import with_why_best

NO_MATRIX = "default (no measured bandwidth matrix: torchtitan mesh order)"


def coordinates(layout: Layout, rank: int) -> dict[str, int]:
    """Row-major unravel of a rank over (pp, dp_replicate, dp_shard, cp, tp)."""
    coords = {}
    for axis in reversed(MESH_AXES):
        size = layout.mesh()[axis]
        coords[axis] = rank % size
        rank //= size
    return {axis: coords[axis] for axis in MESH_AXES}


def placement(layout: Layout, cluster: Cluster, max_nodes: int = 16,
              physical: tuple[int, ...] | None = None) -> Placement:
    """Per logical node: the physical node holding it and its GPUs' coordinates as ranges per axis (first
    `max_nodes` nodes; the pattern repeats)."""
    nodes = []
    rank = 0
    for node in range(min(cluster.n_nodes, max_nodes)):
        per = cluster.group_of_node(node).gpus_per_node
        coords = [coordinates(layout, r) for r in range(rank, rank + per)]
        rank += per
        nodes.append({"node": physical[node] if physical else node, "ranks": [rank - per, rank - 1],
                      **{axis: sorted({c[axis] for c in coords}) for axis in MESH_AXES}})
    return Placement(mesh_order=MESH_AXES, mesh=layout.mesh(), nodes_total=cluster.n_nodes, nodes=tuple(nodes))


def placed_plan(plan: RankedPlan, calibration: Calibration | None = None) -> RankedPlan:
    """The plan placed on the cluster's measured links (if any) and re-priced there: a new plan."""
    est = plan.estimate
    order = optimize_node_order(est.layout, est.cluster)
    where = placement(est.layout, est.cluster, physical=order.physical)
    if order.method == "default" and order.default_bottleneck_gb_per_s == float("inf"):
        return replace(plan, placement=replace(where, method=NO_MATRIX))
    stack = est.evaluation.stack if est.evaluation is not None else None
    placed = estimate(est.model, est.cluster, est.layout, calibration, node_order=order.physical, stack=stack)
    default = estimate(est.model, est.cluster, est.layout, calibration, stack=stack)
    placed_s = placed.to_json()["step_time_s"]
    where = replace(where, method=order.method, node_order=tuple(order.physical),
                    bottleneck_gb_per_s=order.bottleneck_gb_per_s,
                    default_bottleneck_gb_per_s=order.default_bottleneck_gb_per_s,
                    step_time_default_order_s=default.to_json()["step_time_s"], step_time_placed_s=placed_s)
    # Cost scales with the step time the placement changes.
    scale = placed_s / plan.step_time_s
    usd = {key: round(getattr(plan, key) * scale, 6) for key in ("usd_per_step", "usd_per_million_tokens")
           if getattr(plan, key) is not None}
    return replace(plan, estimate=placed, placement=where, **usd)


def rerank_on_links(result: SearchResult, calibration: Calibration | None = None) -> SearchResult:
    """A new result: the top plans placed on the measured links and, when that changes their times, re-ranked.

    The search prices scale-out traffic at the cluster's slowest link (a bound every order meets); placement can
    only make a plan faster, so with a bandwidth matrix each top plan is re-priced on its own best node order.
    Without one, only #1 is placed (in the default order, for the report).
    """
    if all(p.cluster.node_bandwidth_gb_per_s is None for p in result.plans):
        return replace(result, plans=(placed_plan(result.plans[0], calibration), *result.plans[1:]))
    placed = [placed_plan(p, calibration) for p in result.plans]
    by_cost = result.objective == "cost"
    placed.sort(key=lambda p: (p.usd_per_million_tokens if by_cost else 0.0, p.step_time_s, p.rank))
    ranked = with_why_best(placed, result.objective)
    return replace(result, plans=(ranked[0], *(replace(p, placement=None) for p in ranked[1:])))
