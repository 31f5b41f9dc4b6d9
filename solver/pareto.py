"""The time-cost frontier: plans over node counts and GPU types that no other plan beats on both days and dollars.

Every sub-cluster (each node type of the cluster file at every divisor node count) gets its fastest plan by
expected wall-clock with failures; on a fixed sub-cluster the fastest is also the cheapest (dollars = hours x
price), so one plan per sub-cluster is enough. A plan is on the frontier when no other is at least as fast and
as cheap and strictly better in one.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from clusterplan.errors import InfeasibleError
from clusterplan.hardware_db.stacks import ExecutionStack
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.calibration import Calibration
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.goodput import usd_missing_reason
from clusterplan.solver.results import RankedPlan
from clusterplan.solver.search import sweep_nodes


@dataclass(frozen=True, slots=True)
class Point:
    days: float
    usd: float
    plan: RankedPlan

    @property
    def label(self) -> str:
        return f"{self.plan.cluster.world_size} x {self.plan.cluster.gpu.name}"


def frontier(points: list[Point]) -> tuple[list[Point], list[tuple[Point, Point]]]:
    """(non-dominated points by increasing days, [(dominated point, a frontier point that dominates it)])."""
    ordered = sorted(points, key=lambda p: (p.days, p.usd, p.plan.cluster.world_size, p.label))
    front: list[Point] = []
    for p in ordered:
        if not front or p.usd < front[-1].usd:
            front.append(p)
    dominated = []
    for p in ordered:
        if p in front:
            continue
        by = next(f for f in front if f.days <= p.days and f.usd <= p.usd)
        dominated.append((p, by))
    return front, dominated


def trade_off(front: list[Point], i: int) -> str:
    """Where frontier plan i gains and loses against its neighbours (the next faster and the next cheaper)."""
    p = front[i]
    parts = []
    if i > 0:
        q = front[i - 1]
        parts.append(f"vs {q.label}: saves ${q.usd - p.usd:,.0f} ({1 - p.usd / q.usd:.0%}), "
                     f"takes {p.days - q.days:.1f} more days")
    if i + 1 < len(front):
        q = front[i + 1]
        parts.append(f"vs {q.label}: {q.days - p.days:.1f} days sooner for ${p.usd - q.usd:,.0f} more "
                     f"({p.usd / q.usd - 1:.0%})")
    return "; ".join(parts) or "the only plan on the frontier"


@dataclass(frozen=True, slots=True)
class ParetoResult:
    front: list[Point]
    dominated: list[tuple[Point, Point]]
    candidates: int
    feasible: int
    rejected: Counter
    seconds: float
    notes: tuple[str, ...] = ()

    @property
    def plans(self) -> list[RankedPlan]:
        return [p.plan for p in self.front]

    def to_json(self) -> dict[str, Any]:
        plans = []
        for i, p in enumerate(self.front):
            data = p.plan.to_json()
            data.pop("why_best", None)
            plans.append(data | {"rank": i + 1, "trade_off": trade_off(self.front, i)})
        return {"plans": plans,
                "dominated": [{"cluster": p.plan.cluster.describe(), "gpus": p.plan.cluster.world_size,
                               "layout": p.plan.layout.short(), "days": p.plan.time_to_train["days"],
                               "usd": p.plan.time_to_train["usd"],
                               "dominated_by": self.front.index(by) + 1} for p, by in self.dominated],
                "search": {"candidates": self.candidates, "feasible": self.feasible,
                           "rejected": dict(sorted(self.rejected.items())), "objective": "pareto"}}


def pareto(model: ModelSpec, cluster: Cluster, gbs: int, seq: int, *, tokens: float, fixed: dict | None = None,
           calibration: Calibration | None = None, headroom_gib: float = 0.0, progress=None,
           stack: ExecutionStack | None = None) -> ParetoResult:
    """Non-dominated (days, $) plans to train `tokens`, failures included, across node counts and GPU types."""
    unpriced = usd_missing_reason(cluster)
    if unpriced is not None:
        raise InfeasibleError(f"--objective pareto needs a price: {unpriced}")
    start = time.perf_counter()
    plans, candidates, feasible, rejected, notes = sweep_nodes(
        model, cluster, gbs, seq, fixed=fixed, top=1, calibration=calibration, tokens=tokens,
        headroom_gib=headroom_gib, objective="time-to-train", all_types=True, progress=progress, stack=stack)
    points = [Point(days=t["days"], usd=t["usd"], plan=e) for e in plans
              if (t := e.time_to_train) is not None and t["days"] is not None]
    if not points:
        raise InfeasibleError(f"no plan finishes {tokens:.3g} tokens: failures outpace progress on every node count "
                              "(lower the failure rates or restart time in the cluster file's `resilience:`)")
    front, dominated = frontier(points)
    return ParetoResult(front=front, dominated=dominated, candidates=candidates, feasible=feasible,
                        rejected=rejected, seconds=time.perf_counter() - start, notes=notes)
