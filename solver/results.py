"""What `plan` returns: typed, frozen results. The search makes them; placement returns new ones (never edits).

    RankedPlan   one plan of the search: the estimate and what the search adds (rank, cost, why it won, placement)
    Placement    where the plan's mesh lands on nodes, and what a measured link matrix changed
    SearchResult the ranked plans and the search's counts
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.estimate import Estimate
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.rules import RuleCode


def _r(x: float) -> float:
    """6 significant digits, as estimate JSON rounds."""
    return float(f"{x:.6g}")


@dataclass(frozen=True, slots=True)
class Placement:
    """Per logical node: the physical node holding it and its GPUs' mesh coordinates (ranges per axis)."""

    mesh_order: tuple[str, ...]
    mesh: dict[str, int]
    nodes_total: int
    nodes: tuple[dict[str, Any], ...]
    """First nodes only (the pattern repeats): {"node", "ranks", axis: [coordinates]}."""
    method: str = "default"
    """How the node order was chosen: "default" (torchtitan mesh order), or the optimizer's method."""
    node_order: tuple[int, ...] | None = None
    """With a measured bandwidth matrix: physical node of each logical node, and what it changed."""
    bottleneck_gb_per_s: float | None = None
    default_bottleneck_gb_per_s: float | None = None
    axis_links_gb_per_s: dict[str, float] | None = None
    """Slowest measured link each axis crossing nodes uses under node_order (GB/s per direction, whole node)."""
    default_axis_links_gb_per_s: dict[str, float] | None = None
    step_time_default_order_s: float | None = None
    step_time_placed_s: float | None = None
    time_change_s: dict[str, float] | None = None
    """Step-time terms the node order changed: placed minus default order (s)."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mesh_order": list(self.mesh_order), "mesh": dict(self.mesh),
                               "nodes_total": self.nodes_total, "nodes": list(self.nodes), "method": self.method}
        if self.node_order is not None:
            out.update(node_order=list(self.node_order), bottleneck_gb_per_s=self.bottleneck_gb_per_s,
                       default_bottleneck_gb_per_s=self.default_bottleneck_gb_per_s,
                       axis_links_gb_per_s=dict(self.axis_links_gb_per_s or {}),
                       default_axis_links_gb_per_s=dict(self.default_axis_links_gb_per_s or {}),
                       step_time_default_order_s=self.step_time_default_order_s,
                       step_time_placed_s=self.step_time_placed_s,
                       gain_s=_r(self.step_time_default_order_s - self.step_time_placed_s),
                       time_change_s=dict(self.time_change_s or {}))
        return out


@dataclass(frozen=True, slots=True)
class RankedPlan:
    """One plan the search returns: its estimate and what ranking it added."""

    estimate: Estimate
    rank: int
    dominant_terms: tuple[str, ...]
    """The three largest time terms with their share of the step, e.g. "compute 71%"."""
    usd_per_step: float | None = None
    """None when the cluster's GPUs carry no price."""
    usd_per_million_tokens: float | None = None
    days_without_failures: float | None = None
    """With a token budget (--tokens): tokens / tokens per second, no failure, checkpoint or restart counted (the
    plan table's `days` are time_to_train's, failures included)."""
    time_to_train: dict[str, Any] | None = None
    """With a token budget: expected days, $ and goodput with failures (models/training/goodput.py)."""
    why_best: str | None = None
    """On #1 only: what it gains over #2."""
    placement: Placement | None = None
    """On #1 (or every plan re-ranked on a measured link matrix) once placed."""

    @property
    def layout(self) -> Layout:
        return self.estimate.layout

    @property
    def cluster(self) -> Cluster:
        return self.estimate.cluster

    @property
    def step_time_s(self) -> float:
        return float(self.estimate.to_json()["step_time_s"])

    def to_json(self) -> dict[str, Any]:
        out = self.estimate.to_json() | {"rank": self.rank, "dominant_terms": list(self.dominant_terms)}
        for key in ("usd_per_step", "usd_per_million_tokens", "days_without_failures", "time_to_train", "why_best"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.placement is not None:
            out["placement"] = self.placement.to_json()
        return out


@dataclass(frozen=True, slots=True)
class SearchResult:
    plans: tuple[RankedPlan, ...]
    candidates: int
    feasible: int
    rejected: Counter[RuleCode]
    """Layouts rejected per rule they break (the first, for structural rules)."""
    seconds: float
    objective: str
    notes: tuple[str, ...] = ()
    """What the execution stack cannot run and the search left out (printed, not in the JSON)."""

    def to_json(self) -> dict[str, Any]:
        # Wall time goes to stderr only, so the same inputs give byte-identical JSON.
        rejected = {str(code): count for code, count in sorted(self.rejected.items(), key=lambda kv: str(kv[0]))}
        return {"plans": [p.to_json() for p in self.plans],
                "search": {"candidates": self.candidates, "feasible": self.feasible, "rejected": rejected,
                           "objective": self.objective}}
