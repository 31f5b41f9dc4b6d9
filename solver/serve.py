"""serve-plan: capacity of every (GPU type, tp, pp) instance on every request-size bucket, then the cheapest mix.

Capacities come from the serving simulation (models/serving/sim.py) or from a user's measured table; the mix
from the Melange ILP (solver/melange.py); solver/disagg.py adds separate prefill and decode pools.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clusterplan.errors import BadInputError, InfeasibleError
from clusterplan.hardware_db import Link, get_gpu
from clusterplan.hardware_db.engines import get_engine
from clusterplan.hardware_db.prices import PriceChoice, choose_prices
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.serving.estimate import ESTIMATE_REQUESTS, check_context, tp_inside_domain
from clusterplan.models.serving.model import (
    DTYPE_BYTES,
    ServingInstance,
    knobs_for_gpu,
    kv_accounting,
    serving_memory,
    step_model,
)
from clusterplan.models.serving.sim import (
    WARMUP_FRACTION,
    Engine,
    SimResult,
    Slo,
    max_rate_rps,
    simulate,
    slo_batch,
)
from clusterplan.models.serving.traffic import Bucket, load_trace, make_buckets, parse_length
from clusterplan.progress import ProgressFn
from clusterplan.solver.melange import NO_CAPACITY_RPS, Mix, MixProblem, solve_mix
from clusterplan.solver.space import divisors

SIM_REQUESTS = 200
"""Fewest requests per capacity simulation; percentiles of 200 requests move by a few % between seeds."""


def sim_requests(percentile: float) -> int:
    """Enough requests that at least 4 measured ones lie beyond the percentile (200 at p90, 534 at p99)."""
    return int(min(max(SIM_REQUESTS, math.ceil(4.0 / (1.0 - percentile / 100.0) / (1.0 - WARMUP_FRACTION))), 4000))


def pool_requests(percentile: float) -> int:
    """Requests of the final simulation of each chosen pool: as many as `serve-estimate` simulates by default
    (ESTIMATE_REQUESTS), so the plan's percentiles are the ones `serve-estimate` of the same instance reproduces;
    fewer, the measured window holds more of the run's ramp-up and drain and the percentiles come out optimistic
    (Llama 3.1 8B on 2 L4 at 5 req/s: p90 TPOT 61.3 ms at 400 requests, 65.5 ms at 1,000)."""
    return max(2 * sim_requests(percentile), ESTIMATE_REQUESTS)


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
    # A decode pool receives prefilled requests from the prefill pool: no HTTP/tokenizer time in front of it.
    return Engine(kv_capacity_tokens=serving_memory(inst).kv_capacity_tokens, mode=mode, ttft_extra_s=transfer[0],
                  ttft_extra_s_per_token=transfer[1], chunk_tokens=inst.max_batched_tokens,
                  request_overhead_s=inst.knobs.request_overhead_s if mode != "decode" else 0.0,
                  chunked_prefill=get_engine(inst.engine).chunked_prefill,
                  kv_block_tokens=get_engine(inst.engine).kv_block_tokens, **kv_accounting(inst))


def capacity_table(instances: tuple[ServingInstance, ...], work: Workload, mode: str = "colocated",
                   transfer: tuple[tuple[float, float], ...] | None = None,
                   progress: ProgressFn | None = None) -> CapacityTable:
    """Simulated capacity of each instance on each bucket (each cell a search over arrival rates)."""
    n = sim_requests(work.slo.percentile)
    gaps = np.resize(np.asarray(work.unit_gaps, dtype=float), n)
    reqs = [bucket_requests(b, n, work.seed) for b in work.buckets]
    # A prefill-only instance never sees output lengths: buckets with the same input bin share a capacity.
    keys = [b.input_edges if mode == "prefill" else (b.input_edges, b.output_edges) for b in work.buckets]
    engines, caps, idles = [], [], []
    for g, inst in enumerate(instances):
        if progress is not None:
            progress(g, len(instances), f"{mode} {inst.label}")
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
        # a vanishing rate still needs one instance
        out[inst.label] = max(1, math.ceil(load - 1e-9)) * inst.usd_per_hour if math.isfinite(load) else math.inf
    return out


def describe_pools(table: CapacityTable, mix: Mix, work: Workload, limits: Limits, role: str = "colocated",
                   used_gpus: dict[str, int] | None = None) -> tuple[Pool, ...]:
    """Simulate one instance of each chosen type on its whole share of the traffic (all its buckets mixed).

    Per-bucket capacities miss the extra queueing of mixed sizes, so a pool that misses the SLO here gets
    up to REPAIR_STEPS more instances while the GPU limits allow (`used_gpus` is updated in place).
    """
    used = used_gpus if used_gpus is not None else {}
    for inst in table.instances:
        used[inst.gpu.name] = used.get(inst.gpu.name, 0) + mix.counts.get(inst.label, 0) * inst.n_gpus
    pools = []
    rates = np.array([b.share * work.rate_rps for b in work.buckets])
    for g, inst in enumerate(table.instances):
        count = mix.counts.get(inst.label, 0)
        if not count:
            continue
        per_bucket = np.asarray(mix.share[g]) * rates
        inp, out = _mixture(work, per_bucket, pool_requests(work.slo.percentile))
        step = step_model(inst)
        for extra in range(REPAIR_STEPS + 1):
            result = _simulate_share(step, table.engines[g], work, inp, out, float(per_bucket.sum()) / (count + extra))
            if (result.ttft_s <= work.slo.ttft_s and result.tpot_s <= work.slo.tpot_s) or not _can_add(inst, limits, used):
                break
            used[inst.gpu.name] += inst.n_gpus if extra < REPAIR_STEPS else 0
        count += extra
        batch = slo_batch(step, table.engines[g], float(inp.mean()), float(out.mean()), work.slo)
        if role == "prefill":  # prompts only: batch as many as the scheduler admits
            batch = table.engines[g].max_seqs
        pools.append(Pool(instance=inst, count=count, max_batch=max(batch, 1), rate_rps=float(per_bucket.sum()),
                          utilisation=mix.load[inst.label] / count, ttft_s=result.ttft_s, tpot_s=result.tpot_s, role=role))
    return tuple(pools)


REPAIR_STEPS = 3


def _simulate_share(step, engine: Engine, work: Workload, inp: np.ndarray, out: np.ndarray, rate: float) -> SimResult:
    gaps = np.resize(np.asarray(work.unit_gaps, dtype=float), len(inp) - 1)
    arrivals = np.concatenate([[0.0], np.cumsum(gaps)]) / max(rate, 1e-9)
    loose = Slo(ttft_s=math.inf, tpot_s=math.inf, percentile=work.slo.percentile)  # report, never cut short
    return simulate(step, engine, arrivals, inp, out, loose)


def _can_add(inst: ServingInstance, limits: Limits, used: dict[str, int]) -> bool:
    if limits.max_gpus is not None and sum(used.values()) + inst.n_gpus > limits.max_gpus:
        return False
    cap = dict(limits.available_gpus).get(inst.gpu.name)
    return cap is None or used.get(inst.gpu.name, 0) + inst.n_gpus <= cap


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


def pool_cost(pools: tuple[Pool, ...]) -> float:
    return round(sum(p.count * p.instance.usd_per_hour for p in pools), 6)


def mean_output_tokens(work: Workload) -> float:
    return sum(b.share * float(np.mean(b.output_tokens)) for b in work.buckets)


class SloUnreachable(InfeasibleError):
    """No instance serves a request bucket within the SLO even unloaded: an answer (exit 1), with the nearest
    latencies any instance reaches (`nearest`, the JSON's nearest_feasible)."""

    def __init__(self, message: str, nearest: dict[str, Any]) -> None:
        super().__init__(message)
        self.nearest = nearest


def unreachable(table: CapacityTable, work: Workload, phase: str | None = None) -> SloUnreachable:
    """Which bucket no instance serves, and the lowest latencies any instance achieves there (one line, and as data).
    `phase` "prefill" / "decode": a disaggregated pool's table, which models only that phase's latency (TTFT / TPOT)."""
    for b, bucket in enumerate(work.buckets):
        if any(row[b] > 0 for row in table.capacity_rps):
            continue
        cells = [(table.idle[g][b], inst.label) for g, inst in enumerate(table.instances)]
        ttft = min(cells, key=lambda c: c[0].ttft_s)
        tpot = min(cells, key=lambda c: c[0].tpot_s)
        q = work.slo.percentile
        where = {"requests": bucket.label, "traffic_share": round(bucket.share, 6), "percentile": q}
        if not math.isfinite(ttft[0].ttft_s):  # infinite even unloaded: the request does not fit in any KV cache
            return SloUnreachable(f"no instance holds requests {bucket.label} ({bucket.share:.0%} of traffic) in its "
                                  "KV cache; shorten --input-len/--output-len or add GPUs with more memory (--gpus, "
                                  "larger --tp)", where | {"fits_kv_cache": False})
        lowest, parts = {"fits_kv_cache": True}, []
        if phase != "decode":
            lowest["lowest_ttft"] = {"ms": round(ttft[0].ttft_s * 1e3, 3), "instance": ttft[1]}
            parts.append(f"lowest p{q:g} TTFT {ttft[0].ttft_s * 1e3:.0f} ms on {ttft[1]}")
        if phase != "prefill":
            lowest["lowest_tpot"] = {"ms": round(tpot[0].tpot_s * 1e3, 3), "instance": tpot[1]}
            parts.append(f"lowest p{q:g} TPOT {tpot[0].tpot_s * 1e3:.1f} ms on {tpot[1]}")
        pool = f" by a {phase} pool" if phase else ""
        flag = {"prefill": "--ttft-ms", "decode": "--tpot-ms"}.get(phase or "", "--ttft-ms/--tpot-ms")
        return SloUnreachable(
            f"SLO unreachable{pool} for requests {bucket.label} ({bucket.share:.0%} of traffic): {', '.join(parts)} "
            f"(even unloaded); relax {flag} to these or add faster GPUs with --gpus", where | lowest)
    return SloUnreachable("no GPU mix within --max-gpus / availability serves the rate; raise the limits or relax "
                          "the SLO", {"limits": True})


SINGLES_SHOWN = 2
"""Single-type fleets simulated whatever their cost, for the answer's 'best single instance type' line; beyond them,
only the ones whose per-bucket cost could still beat the plan found so far."""


def plan_colocated(instances: tuple[ServingInstance, ...], work: Workload, limits: Limits,
                   progress: ProgressFn | None = None) -> tuple[ServePlan, CapacityTable]:
    """The ILP mix and the single-type fleets that could beat it, each checked on its whole request mix; cheapest
    wins."""
    table = capacity_table(instances, work, progress=progress)
    if any(all(row[b] <= 0 for row in table.capacity_rps) for b in range(len(work.buckets))):
        raise unreachable(table, work)
    candidates = [describe_pools(table, solve_pools(table, work, limits), work, limits)]
    singles = single_type_costs(table, work)
    alternatives = {}
    # Every single-type fleet whose per-bucket cost (a lower bound: simulating the mixed traffic only adds
    # instances) is below the cheapest plan found so far, cheapest first; at least the two cheapest are shown.
    found = min((pool_cost(c) for c in candidates if c and _within(c, limits)), default=math.inf)
    for rank, label in enumerate(sorted((k for k, v in singles.items() if math.isfinite(v)),
                                        key=lambda k: (singles[k], k))):
        if rank >= SINGLES_SHOWN and singles[label] >= found:
            break
        pools = describe_pools(table, single_type_mix(table, work, label), work, Limits())
        alternatives[label] = pool_cost(pools)
        if _within(pools, limits):
            candidates.append(pools)
            found = min(found, pool_cost(pools))
    # A positive rate needs one instance at least: a mix of none (the solver's answer to a vanishing rate) is no plan.
    candidates = [pools for pools in candidates if pools] or candidates
    best = min(candidates, key=lambda pools: (pool_cost(pools), len(pools)))
    plan = ServePlan(mode="colocated", pools=best, usd_per_hour=pool_cost(best),
                     output_tokens_per_s=work.rate_rps * mean_output_tokens(work), alternatives=alternatives)
    return plan, table


def single_type_mix(table: CapacityTable, work: Workload, label: str) -> Mix:
    """All traffic on one instance type: ceil(sum_b rate_b / cap_b) instances."""
    g = [i.label for i in table.instances].index(label)
    load = sum(b.share * work.rate_rps / c for b, c in zip(work.buckets, table.capacity_rps[g], strict=True))
    count = max(1, math.ceil(load - 1e-9)) if load > 0 else 0  # a vanishing rate still needs one instance
    share = tuple(tuple(1.0 if h == g else 0.0 for _ in work.buckets) for h in range(len(table.instances)))
    return Mix(counts={label: count}, usd_per_hour=count * table.instances[g].usd_per_hour, load={label: load},
               share=share)


def _within(pools: tuple[Pool, ...], limits: Limits) -> bool:
    gpus: dict[str, int] = {}
    for p in pools:
        gpus[p.instance.gpu.name] = gpus.get(p.instance.gpu.name, 0) + p.count * p.instance.n_gpus
    if limits.max_gpus is not None and sum(gpus.values()) > limits.max_gpus:
        return False
    return all(gpus.get(kind, 0) <= cap for kind, cap in limits.available_gpus)


MELANGE_NO_CAPACITY_RPS = NO_CAPACITY_RPS
"""Written for a cell no instance serves: Melange's solver divides by every tputs cell (melange/util.py
tputs_to_loads_2d: load = 1 / tput), so 0 would crash it; 1e-9 req/s makes the cell cost 1e9 instances per
req/s, which no optimum picks. Read back, cells at or below it count as 0."""


def melange_table(table: CapacityTable, work: Workload) -> dict:
    """The capacity table exactly as Melange's own solver reads it (tyler-griggs/melange-release,
    melange/lib/runner.py: SolverRunner.Config(**json) takes gpu_info, workload_distribution,
    total_request_rate and slice_factor, nothing else; melange/solver.py reads gpu_info[name]["cost"] and
    ["tputs"][i][j], max req/s of one instance on input bin i x output bin j). Fed back with --capacity-table."""
    in_bins = sorted({b.input_edges for b in work.buckets})
    out_bins = sorted({b.output_edges for b in work.buckets})
    where = {(b.input_edges, b.output_edges): k for k, b in enumerate(work.buckets)}

    def grid(values: list[float], floor: float) -> list[list[float]]:
        return [[max(round(values[where[(i, o)]], 6), floor) if (i, o) in where else floor for o in out_bins]
                for i in in_bins]

    return {
        "gpu_info": {inst.label: {"cost": round(inst.usd_per_hour, 6), "tputs": grid(list(caps), MELANGE_NO_CAPACITY_RPS)}
                     for inst, caps in zip(table.instances, table.capacity_rps, strict=True)},
        "workload_distribution": grid([b.share for b in work.buckets], 0.0),
        "total_request_rate": work.rate_rps,
        "slice_factor": 4,
    }


# ---- candidate instances, workload, and the whole serve-plan answer (the CLI only parses and renders) --------

def candidate_instances(model: ModelSpec, gpu_names: tuple[str, ...], tps: tuple[int, ...], pps: tuple[int, ...],
                        calibration: Any = None, weight_dtype: str = "bf16", kv_dtype: str = "bf16",
                        explicit: bool = True, engine: str | None = None, prices: PriceChoice | None = None,
                        mamba_ssm_dtype: str = "bf16") -> tuple[tuple[ServingInstance, ...], tuple[str, ...]]:
    """Every priced (GPU type, tp, pp) instance that holds the model with KV room, and warnings for GPUs left out.

    `prices` (hardware_db/prices.py choose_prices) prices each GPU; a GPU it lacks is left out with a warning and the
    options that would price it. None: the default rule (each GPU's cheapest on-demand row). All tp and pp sizes that fit are kept: a larger tp costs more GPUs but cuts TTFT and TPOT, and only the
    capacity table can tell whether that pays (a tight TTFT target may be reachable at tp 8 alone).
    Unknown GPU names raise when the user named them (`explicit`), else are skipped (a default list).
    """
    if not gpu_names:
        raise BadInputError("--gpus: give GPU names, e.g. --gpus H100,A100-80GB")
    profile = get_engine(engine)
    out: list[ServingInstance] = []
    warnings: list[str] = []
    seen: set[str] = set()
    unpriced_defaults: list[str] = []
    gpus = []
    for name in gpu_names:
        try:
            gpus.append(get_gpu(name))
        except BadInputError:
            if explicit:
                raise
            continue  # a default GPU the database does not have yet
    if prices is None:  # the default rule: each GPU type's cheapest on-demand row
        prices = choose_prices(tuple(g.name for g in gpus))
    for gpu in gpus:
        if gpu.name in seen:
            continue  # named twice (or by two aliases): one set of instances
        seen.add(gpu.name)
        row = prices.rows.get(gpu.name)
        if row is None:  # named by the user: one line each; from the default list: one line for them all
            if explicit:
                warnings.append(f"{gpu.name} left out: {prices.why_missing(gpu.name)}")
            else:
                unpriced_defaults.append(gpu.name)
            continue
        usd = row.usd_per_gpu_hour
        inside = [tp for tp in tps if tp_inside_domain(gpu, tp)]
        outside = [tp for tp in tps if tp not in inside]
        if outside:
            warnings.append(f"tp {', '.join(map(str, outside))} left out on {gpu.name}: beyond its "
                            f"{gpu.scale_up_domain}-GPU {gpu.scale_up_link} domain (engines pipeline across nodes: "
                            "--pp)")
        for tp in inside:
            knobs = knobs_for_gpu(gpu, calibration, weight_dtype, profile, tp)
            for pp in pps:
                if model.n_heads % tp or pp > model.n_layers:
                    continue
                inst = ServingInstance(model=model, gpu=gpu, tp=tp, pp=pp, weight_dtype=weight_dtype,
                                       kv_dtype=kv_dtype, mamba_ssm_dtype=mamba_ssm_dtype, engine=profile.name,
                                       knobs=knobs,
                                       max_batched_tokens=profile.chunk_tokens, usd_per_gpu_hour=usd)
                if serving_memory(inst).kv_capacity_tokens > 0:
                    out.append(inst)
    dividing = [tp for tp in tps if model.n_heads % tp == 0]
    if not dividing:
        # bad input, as serve-estimate's --tp that divides no head count (exit 2), not an infeasible request
        raise BadInputError(f"{model.name}: no --tp of {tps} divides its {model.n_heads} attention heads; give tp "
                            f"among {divisors(model.n_heads)}")
    if not out and not seen:
        raise BadInputError(f"none of {','.join(gpu_names)} is a GPU type here; `clusterplan hw list` names them")
    if not out and warnings and len(warnings) >= len(seen):  # every GPU named was left out for want of a price
        raise BadInputError("; ".join(warnings))
    if not out:
        raise InfeasibleError(f"{model.name} fits on none of {','.join(gpu_names)} at tp {tps} / pp {pps} (weights need "
                              f"{model.total_params() * DTYPE_BYTES[weight_dtype] / 2**30:.0f} GiB in {weight_dtype}); "
                              "allow larger --tp or --pp or bigger GPUs")
    if unpriced_defaults:
        warnings.append(f"default GPUs with no {prices.pricing} price {prices.from_whom} left out: "
                        + "; ".join(f"{g} ({prices.fixes.get(g, '--prices FILE')})" for g in unpriced_defaults))
    return tuple(sorted(out, key=lambda i: (i.gpu.name, i.n_gpus, i.pp))), tuple(warnings)


def make_workload(rate: float | None, input_len: str | None, output_len: str | None, trace: str | None,
                  ttft_ms: float, tpot_ms: float, percentile: float, seed: int,
                  model: ModelSpec | None = None) -> Workload:
    """The planned traffic: a trace (its lengths and gaps), or a rate with length distributions and Poisson gaps;
    with `model`, traffic none of whose requests fits its context is bad input (serving.estimate.check_context)."""
    if not 0 < percentile < 100:
        raise BadInputError(f"--percentile {percentile}: give a percentile between 0 and 100, e.g. 50, 90 or 99")
    if not (ttft_ms > 0 and tpot_ms > 0):  # NaN fails too
        raise BadInputError("--ttft-ms and --tpot-ms must be > 0")
    rng = np.random.default_rng(seed)
    if rate is not None and not 0 < rate < math.inf:  # NaN fails too; checked before `rate or` can replace a 0
        raise BadInputError(f"--rate {rate}: give a finite request rate > 0 (requests per second)")
    if trace and (input_len is not None or output_len is not None):
        raise BadInputError("--trace gives each request's lengths; drop --input-len / --output-len")
    if trace:
        reqs = load_trace(trace)
        inp, out, gaps = np.asarray(reqs.input_tokens), np.asarray(reqs.output_tokens), reqs.unit_gaps()
        rate = rate or reqs.rate_rps
    else:
        if rate is None or input_len is None or output_len is None:
            raise BadInputError("give --rate, --input-len and --output-len, or --trace FILE")
        inp = parse_length(input_len, "--input-len").sample(rng, TRAFFIC_SAMPLES)
        out = parse_length(output_len, "--output-len").sample(rng, TRAFFIC_SAMPLES)
        gaps = rng.exponential(size=TRAFFIC_SAMPLES)  # Poisson arrivals
    if not 0 < rate < math.inf:
        raise BadInputError(f"--rate {rate}: give a finite request rate > 0 (requests per second)")
    if model is not None:
        check_context(model, inp, out)
    slo = Slo(ttft_s=ttft_ms / 1e3, tpot_s=tpot_ms / 1e3, percentile=percentile)
    return Workload(rate_rps=float(rate), buckets=tuple(make_buckets(inp, out)), unit_gaps=tuple(gaps.tolist()),
                    slo=slo, seed=seed)


TRAFFIC_SAMPLES = 4000
"""Requests drawn from the length distributions to form the buckets."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ServingAnswer:
    """serve-plan's result: the cheapest plan, the cost of each mode tried, and why a mode has no plan."""

    chosen: ServePlan
    modes_usd_per_hour: dict[str, float]
    errors: dict[str, str]
    alternatives: dict[str, float]
    """Cost of the cheapest single-instance-type fleets, by instance label."""
    verdict: str
    capacity: CapacityTable | None
    """The colocated capacity table (None when colocation was not planned)."""


def plan_serving(instances: tuple[ServingInstance, ...], work: Workload, limits: Limits, disaggregate: str,
                 kv_link: Link, progress: ProgressFn | None = None) -> ServingAnswer:
    """Plan colocated and/or disaggregated serving and keep the cheaper (`disaggregate`: off, on or auto)."""
    from clusterplan.solver.disagg import disagg_lower_bound_usd, plan_disaggregated

    modes = {"off": ["colocated"], "on": ["disaggregated"], "auto": ["colocated", "disaggregated"]}[disaggregate]
    plans: dict[str, ServePlan] = {}
    errors: dict[str, str] = {}
    first_error: InfeasibleError | None = None
    table = None
    for mode in modes:
        try:
            if mode == "colocated":
                plans[mode], table = plan_colocated(instances, work, limits, progress)
                continue
            if "colocated" in plans:  # skip simulating when even the rate bound costs more than colocation
                bound = disagg_lower_bound_usd(instances, work)
                if bound >= plans["colocated"].usd_per_hour:
                    errors[mode] = f"cannot go below ${bound:.2f}/h (rate bound), above the colocated plan; not simulated"
                    continue
            disagg = plan_disaggregated(instances, work, limits, kv_link, progress)
            if not disagg.pools:  # a vanishing rate: pools of no instances are no plan
                errors[mode] = "no prefill / decode pool needed at this rate; the colocated plan serves it"
                continue
            plans[mode] = disagg
        except InfeasibleError as exc:
            errors[mode] = str(exc)
            first_error = first_error or exc
    if not plans:
        raise first_error or InfeasibleError(next(iter(errors.values())))
    chosen = min(plans.values(), key=lambda p: (p.usd_per_hour, p.mode))
    others = {m: p.usd_per_hour for m, p in plans.items()} | {m: math.inf for m in errors}
    singles = next((p.alternatives for p in plans.values() if p.alternatives), {})
    return ServingAnswer(chosen=chosen, modes_usd_per_hour=others, errors=errors, alternatives=singles,
                         verdict=_verdict(others, errors), capacity=table)


def _verdict(others: dict[str, float], errors: dict[str, str]) -> str:
    """When disaggregation wins and when colocation does, in one line."""
    col, dis = others.get("colocated", math.inf), others.get("disaggregated", math.inf)
    if math.isfinite(col) and math.isfinite(dis):
        winner, loser, a, b = ("disaggregated", "colocated", dis, col) if dis < col else ("colocated", "disaggregated", col, dis)
        return f"{winner} wins: ${a:.2f}/h vs {loser} ${b:.2f}/h ({1 - a / b:.0%} cheaper)"
    for mode, why in errors.items():
        return f"{mode}: {why}"
    return f"only {next(iter(others))} was planned (--disaggregate)"
