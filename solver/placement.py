"""Where each rank's mesh coordinate lands: node and GPU, in torchtitan's mesh order (tp innermost)."""

from __future__ import annotations

from clusterplan.models.hardware.calibration import Calibration
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.estimate import Estimate, estimate
from clusterplan.models.training.layout import MESH_AXES, Layout
from clusterplan.solver.links import optimize_node_order
from clusterplan.solver.search import SearchResult, why_best


def coordinates(layout: Layout, rank: int) -> dict[str, int]:
    """Row-major unravel of a rank over (pp, dp_replicate, dp_shard, cp, tp)."""
    coords = {}
    for axis in reversed(MESH_AXES):
        size = layout.mesh()[axis]
        coords[axis] = rank % size
        rank //= size
    return {axis: coords[axis] for axis in MESH_AXES}


def placement(layout: Layout, cluster: Cluster, max_nodes: int = 16,
              physical: tuple[int, ...] | None = None) -> dict:
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
    return {"mesh_order": list(MESH_AXES), "mesh": layout.mesh(), "nodes_total": cluster.n_nodes, "nodes": nodes}


def placed_plan(est: Estimate, calibration: Calibration | None = None) -> tuple[Estimate, dict]:
    """Place the plan's nodes on the cluster's measured links (if any) and re-price it there."""
    order = optimize_node_order(est.layout, est.cluster)
    info = placement(est.layout, est.cluster, physical=order.physical)
    if order.method == "default" and order.default_bottleneck_gb_per_s == float("inf"):
        info["method"] = "default (no measured bandwidth matrix: torchtitan mesh order)"
        return est, info
    stack = est.evaluation.stack if est.evaluation is not None else None
    placed = estimate(est.model, est.cluster, est.layout, calibration, node_order=order.physical, stack=stack)
    default = estimate(est.model, est.cluster, est.layout, calibration, stack=stack)
    info.update(method=order.method, node_order=list(order.physical),
                bottleneck_gb_per_s=order.bottleneck_gb_per_s,
                default_bottleneck_gb_per_s=order.default_bottleneck_gb_per_s,
                step_time_default_order_s=default.to_json()["step_time_s"],
                step_time_placed_s=placed.to_json()["step_time_s"])
    placed.extra.update(est.extra)
    return placed, info


def rerank_on_links(result: SearchResult, calibration: Calibration | None = None) -> None:
    """Place the top plans on the measured links and, when that changes their times, re-rank them.

    The search prices scale-out traffic at the cluster's slowest link (a bound every order meets); placement can
    only make a plan faster, so with a bandwidth matrix each top plan is re-priced on its own best node order.
    """
    if all(est.cluster.node_bandwidth_gb_per_s is None for est in result.plans):
        best, info = placed_plan(result.plans[0], calibration)
        best.extra["placement"] = info
        return
    placed = []
    for est in result.plans:
        new, info = placed_plan(est, calibration)
        new.extra["placement"] = info
        if "usd_per_step" in est.extra:
            scale = new.to_json()["step_time_s"] / est.to_json()["step_time_s"]
            for key in ("usd_per_step", "usd_per_million_tokens"):
                new.extra[key] = round(est.extra[key] * scale, 6)
        placed.append(new)
    key = "usd_per_million_tokens" if result.objective == "cost" else None
    placed.sort(key=lambda e: (e.extra[key] if key else 0.0, e.to_json()["step_time_s"], e.extra.get("rank", 0)))
    for rank, est in enumerate(placed, start=1):
        est.extra["rank"] = rank
        est.extra.pop("why_best", None)
    if len(placed) > 1:
        placed[0].extra["why_best"] = why_best(placed[0].to_json(), placed[1].to_json())
    for est in placed[1:]:
        est.extra.pop("placement", None)
    result.plans[:] = placed
