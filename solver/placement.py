"""Where each rank's mesh coordinate lands: node and GPU, in torchtitan's mesh order (tp innermost)."""

from __future__ import annotations

import math
from dataclasses import replace

from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.calibration import Calibration
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.goodput import time_to_train
from clusterplan.models.training.layout import MESH_AXES, Layout
from clusterplan.solver.links import optimize_node_order
from clusterplan.solver.results import Placement, RankedPlan, SearchResult, _r
from clusterplan.solver.search import TOKEN_OBJECTIVES, dominant_terms_of, with_why_best

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
    if est.cluster.node_bandwidth_gb_per_s is None:
        return replace(plan, placement=replace(placement(est.layout, est.cluster), method=NO_MATRIX))
    stack = est.evaluation.stack if est.evaluation is not None else None
    order = optimize_node_order(est.model, est.layout, est.cluster, calibration, stack)
    where = placement(est.layout, est.cluster, physical=order.physical)
    placed = estimate(est.model, est.cluster, est.layout, calibration, node_order=order.physical, stack=stack)
    default = estimate(est.model, est.cluster, est.layout, calibration, stack=stack)
    placed_json, default_json = placed.to_json(), default.to_json()
    if "step_time_s" not in placed_json:  # infeasible plans are not placed
        return replace(plan, placement=replace(where, method=order.method))
    placed_s, default_s = placed_json["step_time_s"], default_json["step_time_s"]
    links, base = order.axis_links_gb_per_s, order.default_axis_links_gb_per_s
    where = replace(where, method=order.method, node_order=tuple(order.physical),
                    bottleneck_gb_per_s=min(links.values(), default=None),
                    default_bottleneck_gb_per_s=min(base.values(), default=None),
                    axis_links_gb_per_s=links, default_axis_links_gb_per_s=base,
                    step_time_default_order_s=default_s, step_time_placed_s=placed_s,
                    time_change_s={term: _r(placed_json["time"][term] - default_json["time"][term])
                                   for term in placed_json["time"]
                                   if placed_json["time"][term] != default_json["time"][term]})
    # Cost scales with the step time the placement changes.
    scale = placed_s / plan.step_time_s
    usd = {key: round(getattr(plan, key) * scale, 6) for key in ("usd_per_step", "usd_per_million_tokens")
           if getattr(plan, key) is not None}
    days = {} if plan.days_without_failures is None else {"days_without_failures": round(plan.days_without_failures * scale, 4)}
    if plan.time_to_train is not None:  # failures, checkpoints and dollars at the placed step time
        ev = placed.evaluation
        train = time_to_train(float(plan.time_to_train["tokens"]), ev.tokens_per_s, ModelShapes.of(est.model),
                              LayoutArrays.from_layouts([est.layout]), ev.memory, est.cluster)
        days["time_to_train"] = train.to_json(0)
    return replace(plan, estimate=placed, placement=where, dominant_terms=dominant_terms_of(placed_json), **usd,
                   **days)


def rerank_on_links(result: SearchResult, calibration: Calibration | None = None) -> SearchResult:
    """A new result: the top plans placed on the measured links and, when that changes their times, re-ranked.

    The search prices scale-out traffic at the cluster's slowest link (a bound every order meets); placement can
    only make a plan faster, so with a bandwidth matrix each top plan is re-priced, each axis on the link it crosses,
    in its own fastest node order (solver/links.py).
    Without one, only #1 is placed (in the default order, for the report).
    """
    if all(p.cluster.node_bandwidth_gb_per_s is None for p in result.plans):
        return replace(result, plans=(placed_plan(result.plans[0], calibration), *result.plans[1:]))
    placed = [placed_plan(p, calibration) for p in result.plans]

    def key(p: RankedPlan) -> tuple[float, float, int]:
        if result.objective in TOKEN_OBJECTIVES and p.time_to_train is not None:  # expected days / dollars
            train = p.time_to_train
            first = train.get("usd") if result.objective == "cost-to-train" else train.get("days")
            return (math.inf if first is None else float(first), p.step_time_s, p.rank)
        return (p.usd_per_million_tokens or 0.0 if result.objective == "cost" else 0.0, p.step_time_s, p.rank)

    placed.sort(key=key)
    ranked = with_why_best(placed, result.objective)
    return replace(result, plans=(ranked[0], *(replace(p, placement=None) for p in ranked[1:])))
