"""serve-plan: capacity of every (GPU type, tp, pp) instance on every request-size bucket, then the cheapest mix.

Capacities come from the serving simulation (models/servesim.py) or from a user's measured table; the mix
from the Melange ILP (solver/melange.py); solver/disagg.py adds separate prefill and decode pools.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from clusterplan.errors import InfeasibleError
from clusterplan.models.servesim import Engine, SimResult, Slo, max_rate_rps, simulate, slo_batch
from clusterplan.models.serving import ServingInstance, serving_memory, step_model
from clusterplan.models.traffic import Bucket
from clusterplan.solver.melange import Mix, MixProblem, solve_mix

SIM_REQUESTS = 200
"""Requests per capacity simulation; percentiles of 200 requests move by a few % between seeds."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Workload:
    rate_rps: float
    buckets: tuple[Bucket, ...]
    unit_gaps: tuple[float, ...]
    """Inter-arrival gaps with mean 1 (Poisson draws, or a trace's own gaps)."""
    slo: Slo
    seed: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    max_gpus: int | None = None
    available_gpus: tuple[tuple[str, int], ...] = ()
    slice_factor: int = 4


@dataclass(frozen=True, kw_only=True, slots=True)
class CapacityTable:
    """capacity_rps[g][b] of instance type g on bucket b, and the zero-load latencies where 0."""

    instances: tuple[ServingInstance, ...]
    engines: tuple[Engine, ...]
    capacity_rps: tuple[tuple[float, ...], ...]
    idle: tuple[tuple[SimResult, ...], ...]
    """Simulated latency of each cell at its capacity, or at zero load where the SLO cannot be met."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Pool:
    """Instances of one type in a plan, with what the simulation predicts for them."""

    instance: ServingInstance
    count: int
    max_batch: int
    rate_rps: float
    utilisation: float
    ttft_s: float
    tpot_s: float
    role: str = "colocated"


@dataclass(frozen=True, kw_only=True, slots=True)
class ServePlan:
    mode: str
    pools: tuple[Pool, ...]
    usd_per_hour: float
    output_tokens_per_s: float
    alternatives: dict[str, float] = field(default_factory=dict)
    """Cost of the cheapest plan in each other mode or single instance type, by label."""

    @property
    def usd_per_million_output_tokens(self) -> float:
        # $ per 1M tokens = cost per hour * 1e6 / (3600 * tokens/s) (research/serving-models.md sec. 4.10).
        return self.usd_per_hour * 1e6 / (3600.0 * self.output_tokens_per_s)


def bucket_requests(bucket: Bucket, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n requests resampled from a bucket's members, the same for every instance type (common random numbers)."""
    rng = np.random.default_rng([seed, bucket.input_edges[0], bucket.output_edges[0]])
    pick = rng.integers(0, len(bucket.input_tokens), size=n)
    return np.asarray(bucket.input_tokens)[pick], np.asarray(bucket.output_tokens)[pick]


def engine_for(inst: ServingInstance, mode: str = "colocated", transfer: tuple[float, float] = (0.0, 0.0)) -> Engine:
    """The scheduler of an instance; `transfer` = (latency s, s per prompt token) of a KV hand-off after prefill."""
    return Engine(kv_capacity_tokens=serving_memory(inst).kv_capacity_tokens, mode=mode, ttft_extra_s=transfer[0],
                  ttft_extra_s_per_token=transfer[1], chunk_tokens=min(inst.max_batched_tokens, 2048))


def capacity_table(instances: tuple[ServingInstance, ...], work: Workload, mode: str = "colocated",
                   transfer: tuple[tuple[float, float], ...] | None = None) -> CapacityTable:
    """Simulated capacity of each instance on each bucket (each cell a search over arrival rates)."""
    gaps = np.resize(np.asarray(work.unit_gaps, dtype=float), SIM_REQUESTS)
    reqs = [bucket_requests(b, SIM_REQUESTS, work.seed) for b in work.buckets]
    # A prefill-only instance never sees output lengths: buckets with the same input bin share a capacity.
    keys = [b.input_edges if mode == "prefill" else (b.input_edges, b.output_edges) for b in work.buckets]
    engines, caps, idles = [], [], []
    for g, inst in enumerate(instances):
        step = step_model(inst)
        engine = engine_for(inst, mode, transfer[g] if transfer else (0.0, 0.0))
        row, idle, seen = [], [], {}
        for key, (inp, out) in zip(keys, reqs, strict=True):
            if key not in seen:
                seen[key] = max_rate_rps(step, engine, gaps, inp, out, work.slo)
            row.append(seen[key][0])
            idle.append(seen[key][1])
        engines.append(engine)
        caps.append(tuple(row))
        idles.append(tuple(idle))
    return CapacityTable(instances=instances, engines=tuple(engines), capacity_rps=tuple(caps), idle=tuple(idles))


def solve_pools(table: CapacityTable, work: Workload, limits: Limits) -> Mix:
    rates = tuple(b.share * work.rate_rps for b in work.buckets)
    problem = MixProblem(
        type_names=tuple(i.label for i in table.instances), usd_per_hour=tuple(i.usd_per_hour for i in table.instances),
        capacity_rps=table.capacity_rps, bucket_rps=rates, slice_factor=limits.slice_factor,
        gpus_per_instance=tuple(i.n_gpus for i in table.instances), gpu_kind=tuple(i.gpu.name for i in table.instances),
        gpu_limits=limits.available_gpus, max_gpus=limits.max_gpus)
    return solve_mix(problem)


def single_type_costs(table: CapacityTable, work: Workload) -> dict[str, float]:
    """$/h of serving everything with one instance type: ceil(sum_b rate_b / cap_b) instances (inf if any cap is 0)."""
    out = {}
    for inst, caps in zip(table.instances, table.capacity_rps, strict=True):
        load = sum(b.share * work.rate_rps / c if c > 0 else math.inf for b, c in zip(work.buckets, caps, strict=True))
        out[inst.label] = math.ceil(load - 1e-9) * inst.usd_per_hour if math.isfinite(load) else math.inf
    return out


def describe_pools(table: CapacityTable, mix: Mix, work: Workload, role: str = "colocated") -> tuple[Pool, ...]:
    """Simulate one instance of each chosen type at its share of the traffic, for the reported latencies."""
    pools = []
    rates = np.array([b.share * work.rate_rps for b in work.buckets])
    for g, inst in enumerate(table.instances):
        count = mix.counts.get(inst.label, 0)
        if not count:
            continue
        per_bucket = np.asarray(mix.share[g]) * rates
        rate = float(per_bucket.sum()) / count
        inp, out = _mixture(work, per_bucket)
        gaps = np.resize(np.asarray(work.unit_gaps, dtype=float), len(inp) - 1)
        arrivals = np.concatenate([[0.0], np.cumsum(gaps)]) / max(rate, 1e-9)
        result = simulate(step_model(inst), table.engines[g], arrivals, inp, out, work.slo)
        batch = slo_batch(step_model(inst), table.engines[g], float(inp.mean()), float(out.mean()), work.slo)
        pools.append(Pool(instance=inst, count=count, max_batch=max(batch, 1), rate_rps=rate * count,
                          utilisation=mix.load[inst.label] / count, ttft_s=result.ttft_s, tpot_s=result.tpot_s, role=role))
    return tuple(pools)


def _mixture(work: Workload, per_bucket_rps: np.ndarray, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(work.seed)
    weights = per_bucket_rps / per_bucket_rps.sum()
    which = rng.choice(len(work.buckets), size=n, p=weights)
    inp = np.empty(n, dtype=np.int64)
    out = np.empty(n, dtype=np.int64)
    for b in np.unique(which):
        idx = np.nonzero(which == b)[0]
        inp[idx], out[idx] = bucket_requests(work.buckets[b], len(idx), work.seed + 1)
    return inp, out


def mean_output_tokens(work: Workload) -> float:
    return sum(b.share * float(np.mean(b.output_tokens)) for b in work.buckets)


def unreachable_message(table: CapacityTable, work: Workload) -> str:
    """One line: which bucket no instance serves, and the lowest latencies any instance achieves there."""
    for b, bucket in enumerate(work.buckets):
        if any(row[b] > 0 for row in table.capacity_rps):
            continue
        cells = [(table.idle[g][b], inst.label) for g, inst in enumerate(table.instances)]
        ttft = min(cells, key=lambda c: c[0].ttft_s)
        tpot = min(cells, key=lambda c: c[0].tpot_s)
        q = work.slo.percentile
        return (f"SLO unreachable for requests {bucket.label} ({bucket.share:.0%} of traffic): lowest p{q:g} TTFT "
                f"{ttft[0].ttft_s * 1e3:.0f} ms on {ttft[1]}, lowest p{q:g} TPOT {tpot[0].tpot_s * 1e3:.1f} ms on "
                f"{tpot[1]} (even unloaded); relax --ttft-ms/--tpot-ms to these or add faster GPUs with --gpus")
    return "no GPU mix within --max-gpus / availability serves the rate; raise the limits or relax the SLO"


def plan_colocated(instances: tuple[ServingInstance, ...], work: Workload, limits: Limits) -> tuple[ServePlan, CapacityTable]:
    table = capacity_table(instances, work)
    if any(all(row[b] <= 0 for row in table.capacity_rps) for b in range(len(work.buckets))):
        raise InfeasibleError(unreachable_message(table, work))
    try:
        mix = solve_pools(table, work, limits)
    except InfeasibleError as exc:
        raise InfeasibleError(f"{exc}") from None
    pools = describe_pools(table, mix, work)
    singles = {k: v for k, v in single_type_costs(table, work).items() if math.isfinite(v)}
    plan = ServePlan(mode="colocated", pools=pools, usd_per_hour=mix.usd_per_hour,
                     output_tokens_per_s=work.rate_rps * mean_output_tokens(work), alternatives=singles)
    return plan, table
