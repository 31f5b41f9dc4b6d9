"""serve-plan's cost against SLO: what each candidate instance type costs per token at loads up to saturation,
and the cheapest cost reachable at each TTFT (TPOT) target.

Each candidate serves the whole request mix alone, at per-instance rates from a tenth of its queue-free
saturation bound up to HEADROOM of it (models/serving/sim.py rate_upper_bound_rps, no SLO cap on the batch);
its fleet runs every instance at that rate, so the cost per token is the instance's $/h over the tokens it
emits (research/serving-models.md sec. 4.10). Integer instance counts, mixes and disaggregation are the plan's
business: the chosen plan sits on or above these curves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from clusterplan.models.serving.model import ServingInstance, step_model
from clusterplan.models.serving.sim import HEADROOM, Slo, rate_upper_bound_rps
from clusterplan.progress import ProgressFn
from clusterplan.solver.serve import (
    Workload,
    _mixture,
    _simulate_share,
    engine_for,
    mean_output_tokens,
    sim_requests,
)

LOAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, HEADROOM)
"""Per-instance rates as shares of the queue-free saturation bound (above HEADROOM a short run cannot show
the steady-state queue, as in max_rate_rps)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CostPoint:
    """One candidate at one per-instance rate: its latencies at the SLO percentile and its cost per token."""

    rate_rps: float
    ttft_s: float
    tpot_s: float
    usd_per_million_output_tokens: float
    meets_slo: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class CandidateCurve:
    instance: ServingInstance
    saturation_rps: float
    """Queue-free saturation bound of one instance on the whole mix (no SLO cap on the batch)."""
    points: tuple[CostPoint, ...]
    """By rising rate; loads whose requests do not fit the KV cache are left out."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CostSloFrontier:
    slo: Slo
    candidates: tuple[CandidateCurve, ...]
    ttft_frontier: tuple[tuple[int, int], ...]
    """(candidate, point) of the cheapest $/1M at each TTFT target among points that meet the TPOT target,
    by rising TTFT: each costs less than every point before it (a TTFT target between two of them buys the
    earlier one's cost)."""
    tpot_frontier: tuple[tuple[int, int], ...]
    """The same over TPOT among points that meet the TTFT target."""


def staircase(points: list[tuple[float, float, tuple[int, int]]]) -> tuple[tuple[int, int], ...]:
    """(latency, cost, ref) -> refs of the points no other point beats on both (ties by ref): by rising latency,
    each strictly cheaper than all before."""
    out, best = [], math.inf
    for _, cost, ref in sorted(points):
        if cost < best:
            out.append(ref)
            best = cost
    return tuple(out)


def cost_slo_frontier(instances: tuple[ServingInstance, ...], work: Workload,
                      progress: ProgressFn | None = None) -> CostSloFrontier:
    """Every candidate at LOAD_FRACTIONS of its saturation bound on the workload's whole mix (same requests,
    gaps and seed for all), and the two frontiers."""
    slo = work.slo
    rates = np.array([b.share * work.rate_rps for b in work.buckets])
    inp, out = _mixture(work, rates, 2 * sim_requests(slo.percentile))
    tokens_per_request = mean_output_tokens(work)
    loose = Slo(ttft_s=math.inf, tpot_s=math.inf, percentile=slo.percentile)
    curves = []
    for g, inst in enumerate(instances):
        if progress is not None:
            progress(g, len(instances), inst.label)
        step, engine = step_model(inst), engine_for(inst)
        bound = rate_upper_bound_rps(step, engine, float(inp.mean()), float(out.mean()), loose)
        points = []
        for f in LOAD_FRACTIONS:
            rate = f * bound
            res = _simulate_share(step, engine, work, inp, out, rate)
            if not (math.isfinite(res.ttft_s) and math.isfinite(res.tpot_s)):
                continue  # a request larger than the KV cache
            # $ per 1M tokens = cost per hour * 1e6 / (3600 * tokens/s) (research/serving-models.md sec. 4.10).
            usd = inst.usd_per_hour * 1e6 / (3600.0 * rate * tokens_per_request)
            points.append(CostPoint(rate_rps=rate, ttft_s=res.ttft_s, tpot_s=res.tpot_s,
                                    usd_per_million_output_tokens=usd,
                                    meets_slo=res.ttft_s <= slo.ttft_s and res.tpot_s <= slo.tpot_s))
        curves.append(CandidateCurve(instance=inst, saturation_rps=bound, points=tuple(points)))
    if progress is not None:
        progress(len(instances), len(instances), "done")
    refs = [(c, k, p) for c, curve in enumerate(curves) for k, p in enumerate(curve.points)]
    ttft = staircase([(p.ttft_s, p.usd_per_million_output_tokens, (c, k)) for c, k, p in refs if p.tpot_s <= slo.tpot_s])
    tpot = staircase([(p.tpot_s, p.usd_per_million_output_tokens, (c, k)) for c, k, p in refs if p.ttft_s <= slo.ttft_s])
    return CostSloFrontier(slo=slo, candidates=tuple(curves), ttft_frontier=ttft, tpot_frontier=tpot)
