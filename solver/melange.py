"""The Melange GPU-mix ILP: cheapest instance counts that serve every request-size bucket within SLO.

Griggs et al. 2024 (Melange), solver.py: each bucket's request rate is cut into `slice_factor` equal slices;
binary x[s, g] sends slice s to instance type g, integer y[g] counts instances;
minimise sum_g cost_g y_g  s.t.  sum_g x[s, g] = 1  and  sum_s x[s, g] rate_s / cap_g(bucket(s)) <= y_g.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clusterplan.errors import BadInputError, InfeasibleError
from clusterplan.fileio import show
from clusterplan.models.hardware.cluster import MAX_WORLD

MAX_SLICE_FACTOR = 1000
"""Most slices per request bucket in the mix ILP (Melange uses 4-8); the ILP grows linearly with it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MixProblem:
    type_names: tuple[str, ...]
    usd_per_hour: tuple[float, ...]
    capacity_rps: tuple[tuple[float, ...], ...]
    """capacity_rps[g][b]: highest request rate one instance of type g sustains within SLO on bucket b (0 = cannot)."""
    bucket_rps: tuple[float, ...]
    """Offered request rate per bucket."""
    slice_factor: int = 4
    max_count: tuple[int | None, ...] | None = None
    """Per-type availability limit (None = unlimited)."""
    max_instances: int | None = None
    gpus_per_instance: tuple[int, ...] | None = None
    """GPUs in one instance of each type (tp x pp); None = 1 each."""
    gpu_kind: tuple[str, ...] | None = None
    """GPU model of each type, for `gpu_limits` (None = the type name)."""
    gpu_limits: tuple[tuple[str, int], ...] = ()
    """(GPU model, GPUs available) pairs: availability across all instance types of that GPU."""
    max_gpus: int | None = None

    def __post_init__(self) -> None:
        n_types, n_buckets = len(self.type_names), len(self.bucket_rps)
        if n_types == 0 or len(self.usd_per_hour) != n_types or len(self.capacity_rps) != n_types:
            raise BadInputError("mix problem: need one cost and one capacity row per instance type")
        if any(len(row) != n_buckets for row in self.capacity_rps):
            raise BadInputError(f"mix problem: every capacity row needs {n_buckets} bucket values")
        if self.slice_factor < 1:
            raise BadInputError(f"slice factor must be >= 1, got {self.slice_factor}")
        if self.max_count is not None and len(self.max_count) != n_types:
            raise BadInputError("mix problem: availability limits need one entry per instance type")


@dataclass(frozen=True, kw_only=True, slots=True)
class Mix:
    counts: dict[str, int]
    usd_per_hour: float
    load: dict[str, float]
    """Instances' worth of load each type carries (<= its count); load / count is its utilisation."""
    share: tuple[tuple[float, ...], ...]
    """share[g][b]: fraction of bucket b's requests served by type g."""


class LimitsTooTight(InfeasibleError):
    """The limits (--max-gpus, --available) hold too few GPUs for the rate: an answer (exit 1) with the nearest
    feasible numbers, also as data (`nearest`, the JSON's nearest_feasible): the highest rate the limits serve and
    the fewest GPUs that serve the asked rate (nearest_within_limits)."""

    def __init__(self, message: str, nearest: dict[str, Any]) -> None:
        super().__init__(message)
        self.nearest = nearest


def _units(problem: MixProblem) -> str:
    """What the GPU counts count: GPUs, or instances where the problem does not know an instance's GPUs (a
    capacity table)."""
    return "GPUs" if problem.gpus_per_instance is not None else "instances"


def check_scale(problem: MixProblem) -> None:
    """Refuse a rate that needs more than MAX_WORLD GPUs (the most a cluster may hold) even on each bucket's most
    efficient instance type (requests per second per GPU): a typo such as --rate 1e12, not a plan."""
    cap = np.asarray(problem.capacity_rps, dtype=float)
    rates = np.asarray(problem.bucket_rps, dtype=float)
    gpus = np.asarray(problem.gpus_per_instance or (1,) * len(cap), dtype=float)[:, None]
    per_gpu = np.where(cap > 0, cap / gpus, 0.0).max(axis=0)  # best req/s per GPU on each bucket
    served = (rates > 0) & (per_gpu > 0)
    need = float((rates[served] / per_gpu[served]).sum())
    if need > MAX_WORLD:
        raise BadInputError(f"{rates.sum():.3g} req/s needs at least {need:.3g} {_units(problem)} within the SLO, "
                            f"over the {MAX_WORLD:,} a plan may hold; give a lower --rate")


RATE_BISECTIONS = 12
"""Steps of the search for the highest rate the limits serve in nearest_within_limits: geometric while the bracket
spans more than a factor 2, then halvings (each a CBC solve of the mix ILP, milliseconds)."""
MIN_RATE_SCALE = 1e-6
"""The smallest share of the asked rate tried: a limit that leaves room for no instance serves none of it."""


def nearest_within_limits(problem: MixProblem) -> dict[str, Any] | None:
    """The nearest feasible numbers when no mix within the limits serves the rate, from the same ILP as solve_mix
    (its slices included, so each number is one solve_mix meets): the fewest GPUs (instances) that serve the asked
    rate without the limits, with their instances, and the highest rate the limits serve at the same request mix
    (bisected, rounded down to 3 significant digits; 0 when they hold no instance that serves every request size).
    None when the ILP finds no mix even without the limits."""
    total = float(sum(problem.bucket_rps))
    fewest, _, _, y, _ = _mix_ilp(problem, limited=False, minimise="gpus")
    if not fewest:
        return None
    gpus = problem.gpus_per_instance or (1,) * len(y)
    counts = {problem.type_names[g]: n for g, v in enumerate(y) if (n := int(round(v.value() or 0)))}
    needed = sum(gpus[problem.type_names.index(label)] * n for label, n in counts.items())
    lo, hi = 0.0, 1.0
    if _mix_ilp(problem, MIN_RATE_SCALE)[0]:
        lo = MIN_RATE_SCALE
        for _ in range(RATE_BISECTIONS):
            # geometric while the bracket spans more than a factor 2 (a far-off --rate), then halving: the answer
            # lands within 1 % of the bracket, not within 1/4096 of the asked rate
            mid = math.sqrt(lo * hi) if hi > 2 * lo else (lo + hi) / 2
            lo, hi = (mid, hi) if _mix_ilp(problem, mid)[0] else (lo, mid)
    highest = lo * total
    digits = 2 - math.floor(math.log10(highest)) if highest > 0 else 0
    return {"limits": True, "rate_rps": float(f"{total:.6g}"),
            # floored to 3 significant digits, printed clean (a large exponent leaves float noise in the division)
            "max_rate_rps_within_limits": float(f"{math.floor(highest * 10**digits) / 10**digits:.3g}")
            if highest > 0 else 0.0,
            "gpus_needed": needed, "units": _units(problem), "instances_needed": counts}


def _add_limits(prob: Any, problem: MixProblem, y: list, gpus: Sequence[int], kinds: Sequence[str]) -> None:
    """The availability and size limits on the instance counts y."""
    import pulp

    for g in range(len(y)):
        if problem.max_count is not None and problem.max_count[g] is not None:
            prob += y[g] <= problem.max_count[g]
    if problem.max_instances is not None:
        prob += pulp.lpSum(y) <= problem.max_instances
    for kind, limit in problem.gpu_limits:
        prob += pulp.lpSum(gpus[g] * y[g] for g in range(len(y)) if kinds[g] == kind) <= limit
    if problem.max_gpus is not None:
        prob += pulp.lpSum(gpus[g] * y[g] for g in range(len(y))) <= problem.max_gpus


def limits_too_tight(problem: MixProblem) -> LimitsTooTight:
    """No mix within the limits serves the rate: the nearest feasible numbers, in one line and as data."""
    nearest = nearest_within_limits(problem)
    fix = "raise --max-gpus or --available, lower --rate, or relax the SLO"
    if nearest is None:
        return LimitsTooTight(f"no GPU mix within --max-gpus / --available serves the rate within the SLO; {fix}",
                              {"limits": True})
    units = nearest["units"]
    mix = ", ".join(f"{n} x {label}" for label, n in nearest["instances_needed"].items())
    highest = nearest["max_rate_rps_within_limits"]
    within = (f"the {units} the limits allow serve at most {highest:g} req/s" if highest > 0 else
              "the limits leave room for no instance that serves every request size")
    return LimitsTooTight(
        f"no GPU mix within --max-gpus / --available serves {nearest['rate_rps']:g} req/s within the SLO: it needs "
        f"{nearest['gpus_needed']:,} {units} ({mix}); {within}; {fix}", nearest)


def _mix_ilp(problem: MixProblem, rate_scale: float = 1.0, *, limited: bool = True,
             minimise: str = "usd") -> tuple[bool, list[tuple[int, float]], dict, list, np.ndarray]:
    """The mix ILP at `rate_scale` times the offered rates, solved with CBC: (optimal, slices, x, y, capacities).
    minimise "usd" (the plan) or "gpus" (the fewest GPUs, nearest_within_limits); `limited`: with the problem's
    availability and size limits."""
    import pulp

    cap = np.asarray(problem.capacity_rps, dtype=float)
    rates = np.asarray(problem.bucket_rps, dtype=float) * rate_scale
    n_types, n_buckets = cap.shape
    gpus = problem.gpus_per_instance or (1,) * n_types
    slices = [(b, rates[b] / problem.slice_factor) for b in range(n_buckets) if rates[b] > 0
              for _ in range(problem.slice_factor)]
    prob = pulp.LpProblem("gpu_mix", pulp.LpMinimize)
    y = [prob.add_variable(f"y{g}", lowBound=0, cat="Integer") for g in range(n_types)]
    x = {(s, g): prob.add_variable(f"x{s}_{g}", cat="Binary")
         for s, (b, _) in enumerate(slices) for g in range(n_types) if cap[g, b] > 0}
    per_type = problem.usd_per_hour if minimise == "usd" else gpus
    prob += pulp.lpSum(per_type[g] * y[g] for g in range(n_types))
    for s, (b, _) in enumerate(slices):
        options = [x[s, g] for g in range(n_types) if (s, g) in x]
        if not options:
            raise InfeasibleError(f"no instance type serves request bucket {b} within the SLO")
        prob += pulp.lpSum(options) == 1
    for g in range(n_types):
        prob += pulp.lpSum(x[s, g] * (rate / cap[g, b]) for s, (b, rate) in enumerate(slices) if (s, g) in x) <= y[g]
    if limited:
        _add_limits(prob, problem, y, gpus, problem.gpu_kind or problem.type_names)
    with warnings.catch_warnings():  # PuLP 3 flags its bundled CBC as deprecated; it is the one solver shipped
        warnings.simplefilter("ignore", DeprecationWarning)
        status = prob.solve(pulp.PULP_CBC_CMD(msg=0))
    return pulp.LpStatus[status] == "Optimal", slices, x, y, cap


def solve_mix(problem: MixProblem) -> Mix:
    """Solve the ILP with CBC; LimitsTooTight when no mix within the limits serves every bucket (with the nearest
    feasible numbers), BadInputError when the rate needs more GPUs than any cluster holds (check_scale)."""
    check_scale(problem)
    optimal, slices, x, y, cap = _mix_ilp(problem)
    if not optimal:
        # every bucket has an instance that serves it (_mix_ilp raised otherwise), so only the limits leave no mix
        raise limits_too_tight(problem)
    return _mix(problem, slices, x, y, cap)


def _mix(problem: MixProblem, slices: Sequence[tuple[int, float]], x: dict, y: list, cap: np.ndarray) -> Mix:
    n_types, n_buckets = cap.shape
    share = np.zeros((n_types, n_buckets))
    load = np.zeros(n_types)
    for (s, g), var in x.items():
        if (var.value() or 0) > 0.5:
            b, rate = slices[s]
            share[g, b] += 1.0 / problem.slice_factor
            load[g] += rate / cap[g, b]
    counts = {problem.type_names[g]: int(round(y[g].value() or 0)) for g in range(n_types)}
    cost = sum(problem.usd_per_hour[g] * counts[problem.type_names[g]] for g in range(n_types))
    return Mix(counts={k: v for k, v in counts.items() if v > 0}, usd_per_hour=round(cost, 6),
               load={problem.type_names[g]: float(load[g]) for g in range(n_types) if load[g] > 0},
               share=tuple(tuple(float(v) for v in row) for row in share))


def plan_from_capacity_table(data: Any, path: str, rate: float | None = None, slice_factor: int | None = None,
                             max_gpus: int | None = None) -> dict:
    """The mix for a Melange-format table {gpu_info: {NAME: {cost | cost_per_hour, tputs[i][j]}},
    workload_distribution[i][j], total_request_rate[, slice_factor]} read from `path` (named in errors)."""
    try:
        info = data["gpu_info"]
        names = tuple(sorted(info))
        dist = [float(w) for row in data["workload_distribution"] for w in row]
        costs = tuple(float(info[n].get("cost_per_hour", info[n].get("cost"))) for n in names)
        caps = tuple(tuple(_capacity(v) for row in info[n]["tputs"] for v in row) for n in names)
        total = float(rate if rate is not None else data["total_request_rate"])
        sf = slice_factor or data.get("slice_factor", 4)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadInputError(f"{path}: capacity table needs gpu_info.NAME.cost_per_hour and .tputs, workload_distribution "
                            f"and total_request_rate (or --rate) ({type(exc).__name__}: {exc})") from None
    numbers = [*dist, *costs, *(v for row in caps for v in row), total]
    if not all(math.isfinite(v) for v in numbers) or min(costs, default=1) <= 0 or min(dist, default=0) < 0 \
            or sum(dist) <= 0 or min((v for row in caps for v in row), default=0) < 0 or total <= 0:
        raise BadInputError(f"{path}: capacity table numbers must be finite, cost_per_hour and total_request_rate "
                            "(or --rate) > 0, tputs and workload_distribution >= 0 with some traffic")
    if isinstance(sf, bool) or not isinstance(sf, int) or not 1 <= sf <= MAX_SLICE_FACTOR:
        # the ILP has one variable per slice, bucket and GPU type: 1e9 slices would exhaust memory
        raise BadInputError(f"{show(path)}: capacity table slice_factor must be an integer from 1 to {MAX_SLICE_FACTOR} (as "
                            f"--slice-factor), got {str(sf)[:40]}")
    rates = tuple(w * total for w in dist)
    mix = solve_mix(MixProblem(type_names=names, usd_per_hour=costs, capacity_rps=caps, bucket_rps=rates,
                               slice_factor=sf, max_gpus=max_gpus))
    singles = {}
    for n, c, cap in zip(names, costs, caps, strict=True):
        load = sum(r / v if v > 0 else math.inf for r, v in zip(rates, cap, strict=True) if r > 0)
        if math.isfinite(load):
            singles[n] = math.ceil(load - 1e-9) * c
    best = min(singles.items(), key=lambda kv: (kv[1], kv[0])) if singles else None
    return {"mode": "capacity-table", "rate_rps": total, "slice_factor": sf, "counts": mix.counts,
            "usd_per_hour": round(mix.usd_per_hour, 4),
            "utilisation": {n: round(mix.load[n] / mix.counts[n], 4) for n in mix.counts},
            "best_single_type": None if best is None else {
                "instance": best[0], "usd_per_hour": round(best[1], 4),
                "saving_fraction": round(1 - mix.usd_per_hour / best[1], 4)}}


NO_CAPACITY_RPS = 1e-9
"""A tputs cell at or below this is a cell the instance cannot serve (solver/serve.py writes it for 0)."""


def _capacity(value: Any) -> float:
    rps = float(value)
    return 0.0 if 0 <= rps <= NO_CAPACITY_RPS else rps
