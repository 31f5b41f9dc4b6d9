"""serve-estimate: latency and throughput of ONE serving configuration under one load.

The load is an open loop (requests arrive at a rate, Poisson or a trace's gaps), a closed loop of N clients
(each sends its next request when the last answer is complete, as `vllm bench serve --max-concurrency N` and
most published benchmarks do), or a static batch (N requests at t = 0). The requests run through the same
simulator and step formula as serve-plan (models/serving/sim.py, StepModel.time_s).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import numpy as np

from clusterplan.errors import BadInputError
from clusterplan.hardware_db import GPU, get_gpu
from clusterplan.hardware_db.engines import get_engine
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.serving.kv import kv_tokens_held
from clusterplan.models.serving.model import (
    DTYPE_BYTES,
    ServingInstance,
    StepModel,
    StepTerms,
    knobs_for_gpu,
    kv_accounting,
    serving_memory,
    step_model,
)
from clusterplan.models.serving.sim import Engine, SimTrace, percentile, simulate
from clusterplan.models.serving.traffic import load_trace, parse_length
from clusterplan.progress import ProgressFn

PERCENTILES = (50.0, 90.0, 99.0)
ESTIMATE_REQUESTS = 1000
"""Requests simulated for an open or closed loop: the first WARMUP_FRACTION are left out of the statistics."""
CLOSED_LOOP_ROUNDS = 8
"""A closed loop runs at least this many requests per client, so the steady state outweighs the start-up."""


class LoadKind(StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    STATIC = "static"


@dataclass(frozen=True, kw_only=True, slots=True)
class Load:
    kind: LoadKind
    rate_rps: float = 0.0
    """Open loop: mean arrival rate."""
    clients: int = 0
    """Closed loop: concurrent clients; static: requests in the batch."""
    unit_gaps: tuple[float, ...] = ()
    """Open loop: inter-arrival gaps with mean 1 (a trace's); empty = Poisson drawn from the seed."""
    requests: int = 0
    """Requests to simulate (0 = the default for the load kind)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind is LoadKind.OPEN and not 0 < self.rate_rps < math.inf:
            raise BadInputError(f"open-loop rate {self.rate_rps}: give --rate > 0 requests per second")
        if self.kind is not LoadKind.OPEN and self.clients < 1:
            raise BadInputError(f"{self.kind} load needs at least 1 request in flight (--concurrency / --batch >= 1)")

    def n_requests(self) -> int:
        if self.requests:
            return self.requests
        if self.kind is LoadKind.STATIC:
            return self.clients
        if self.kind is LoadKind.CLOSED:
            return max(ESTIMATE_REQUESTS, CLOSED_LOOP_ROUNDS * self.clients)
        return ESTIMATE_REQUESTS

    def arrivals_s(self, n: int) -> np.ndarray:
        """Arrival times of n requests (closed loop: the first `clients` at 0; the simulator sets the rest)."""
        if self.kind is not LoadKind.OPEN:
            return np.zeros(n)
        if self.unit_gaps:
            gaps = np.resize(np.asarray(self.unit_gaps, dtype=float), n - 1)
        else:
            gaps = np.random.default_rng([self.seed, 1]).exponential(size=n - 1)  # Poisson arrivals
        return np.concatenate([[0.0], np.cumsum(gaps)]) / self.rate_rps


@dataclass(frozen=True, kw_only=True, slots=True)
class Stats:
    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: np.ndarray | list[float]) -> Stats:
        v = [float(x) for x in values]
        if not v:
            return cls(mean=0.0, p50=0.0, p90=0.0, p99=0.0)
        p = [percentile(v, q) for q in PERCENTILES]
        return cls(mean=sum(v) / len(v), p50=p[0], p90=p[1], p99=p[2])


@dataclass(frozen=True, kw_only=True, slots=True)
class ServingEstimate:
    instance: ServingInstance
    load: Load
    requests: int
    """Requests in the statistics (after the warm-up ones)."""
    ttft_s: Stats
    tpot_s: Stats
    itl_s: Stats
    """Inter-token latency: the gap before each output token after the first, over all tokens."""
    e2e_s: Stats
    request_throughput_rps: float
    output_tokens_per_s: float
    input_tokens_per_s: float
    mean_running_batch: float
    kv_capacity_tokens: int
    kv_peak_fraction: float
    kv_mean_fraction: float
    prefill: StepTerms
    """One step that prefills one prompt of the mean input length."""
    decode: StepTerms
    """One decode step of the mean running batch at the mean context."""
    prefill_tokens: int
    decode_batch: int
    decode_context_tokens: int
    max_seqs: int
    """The engine's sequence cap the run used (for the launch line)."""
    max_model_len: int
    """Longest request simulated, rounded up to 256 tokens (for the launch line)."""
    load_sweep: LoadSweep | None = None
    """Latency against load around this one (serve-estimate --sweep / --plot)."""

    @property
    def n_gpus(self) -> int:
        return self.instance.n_gpus


SWEEP_POINTS = 10
"""Loads in a latency-against-load sweep, spaced geometrically (the requested load is added to them)."""
SWEEP_BELOW = 0.25
"""The sweep starts at this share of the lower of the requested load and the saturation load."""
SWEEP_ABOVE = 1.25
"""... and ends at this multiple of the higher of the two (past saturation the queue shows)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SweepPoint:
    """The instance's latency and throughput at one load of a sweep."""

    load: float
    """Requests per second (open loop) or requests in flight (closed loop, static batch)."""
    ttft_s: Stats
    tpot_s: Stats
    request_throughput_rps: float
    output_tokens_per_s: float
    mean_running_batch: float
    past_saturation: bool
    """Beyond the saturation load: an open loop's queue grows for as long as the run lasts, so its latencies
    depend on the number of requests simulated; a closed loop queues for admission."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadSweep:
    """Latency against load: the same instance, lengths and seed, re-simulated at loads around the requested one.

    Saturation: the scheduler runs at most `running_cap` requests at once (saturation_running); a closed
    loop of that many clients keeps it full, and its steady-state throughput (saturation_rps) is the most
    the instance sustains for these lengths. An open loop saturates at that rate; a closed loop or a static
    batch at running_cap requests in flight (more only queue for admission). Each point's throughput is
    serve-estimate's own (whole measured window, which past saturation includes the final drain, when the
    requests in flight finish faster than in steady state, so it can read above saturation_rps).
    """

    kind: LoadKind
    requested: float
    saturation_load: float
    saturation_rps: float
    saturation_running: int
    points: tuple[SweepPoint, ...]


def running_cap(engine: Engine, input_tokens: np.ndarray, output_tokens: np.ndarray) -> int:
    """Most requests the scheduler runs at once: its sequence cap, or as many mean-sized requests as the KV
    cache holds when each reserves prompt + output in whole pages (the admission rule of sim._admit)."""
    page = max(engine.kv_block_tokens, 1)
    reserved = np.ceil((np.asarray(input_tokens) + np.asarray(output_tokens) + engine.state_tokens_per_seq) / page) * page
    return int(max(1, min(engine.max_seqs, engine.kv_capacity_tokens // float(reserved.mean()))))


def steady_throughput_rps(step: StepModel, engine: Engine, clients: int, input_tokens: np.ndarray,
                          output_tokens: np.ndarray) -> float:
    """Requests per second of a closed loop of `clients` between the warm-up and the moment the last request
    is sent (after it the loop drains with a shrinking batch, which a whole-run average would count)."""
    n = max(ESTIMATE_REQUESTS, CLOSED_LOOP_ROUNDS * clients)
    inp = np.resize(np.asarray(input_tokens, dtype=np.int64), n)
    out = np.resize(np.asarray(output_tokens, dtype=np.int64), n)
    trace = simulate(step, engine, np.zeros(n), inp, out, clients=clients, record=True).trace
    assert trace is not None  # record=True
    done = np.sort(np.asarray(trace.done_s))
    first, last = trace.warm, n - clients  # the (n - clients)-th completion sends the last request
    return float((last - first) / (done[last - 1] - done[first - 1])) if first else float(last / done[last - 1])


def sweep_loads(requested: float, saturation: float, integer: bool) -> tuple[float, ...]:
    """SWEEP_POINTS geometric loads from SWEEP_BELOW x min(requested, saturation) to SWEEP_ABOVE x the max,
    plus the requested load; integers (at least 1) for requests in flight, 4 significant digits for rates."""
    lo = max(SWEEP_BELOW * min(requested, saturation), 1.0 if integer else 0.0)
    hi = max(SWEEP_ABOVE * max(requested, saturation), lo)
    grid = np.geomspace(lo, hi, SWEEP_POINTS) if hi > lo else np.array([lo])
    values = {float(round(v)) if integer else float(f"{v:.4g}") for v in grid} | {requested}
    return tuple(sorted(v for v in values if v > 0))


def sweep_load(inst: ServingInstance, engine: Engine, load: Load, input_tokens: np.ndarray,
               output_tokens: np.ndarray, progress: ProgressFn | None = None) -> LoadSweep:
    """Re-simulate `load`'s kind at the loads of sweep_loads (same lengths, gaps and seed at each)."""
    step = step_model(inst)
    cap = running_cap(engine, input_tokens, output_tokens)
    sat_rps = steady_throughput_rps(step, engine, cap, input_tokens, output_tokens)
    if load.kind is LoadKind.OPEN:
        requested, sat_load = load.rate_rps, sat_rps
    else:
        requested, sat_load = float(load.clients), float(cap)
    loads = sweep_loads(requested, sat_load, integer=load.kind is not LoadKind.OPEN)
    points = []
    for k, x in enumerate(loads):
        if progress is not None:
            progress(k, len(loads), f"load {x:g}")
        at = replace(load, rate_rps=x) if load.kind is LoadKind.OPEN else replace(load, clients=int(x))
        e = estimate_serving(inst, engine, at, input_tokens, output_tokens, step=step)
        points.append(SweepPoint(load=x, ttft_s=e.ttft_s, tpot_s=e.tpot_s, request_throughput_rps=e.request_throughput_rps,
                                 output_tokens_per_s=e.output_tokens_per_s, mean_running_batch=e.mean_running_batch,
                                 past_saturation=x > sat_load))
    if progress is not None:
        progress(len(loads), len(loads), "done")
    return LoadSweep(kind=load.kind, requested=requested, saturation_load=sat_load, saturation_rps=sat_rps,
                     saturation_running=cap, points=tuple(points))


def itl_samples(trace: SimTrace) -> tuple[np.ndarray, np.ndarray]:
    """(step time, tokens emitted at that time) over every decode step; k steps of a jump are spread evenly."""
    times, weights = [], []
    for k, first, last, b in trace.itl_steps:
        times.append(np.linspace(first, last, k) if k > 1 else np.array([first]))
        weights.append(np.full(k, float(b)))
    if not times:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(times), np.concatenate(weights)


def weighted_stats(values: np.ndarray, weights: np.ndarray) -> Stats:
    """Percentiles of values repeated `weights` times (inverted CDF: the smallest value with cum weight >= q)."""
    if not len(values):
        return Stats(mean=0.0, p50=0.0, p90=0.0, p99=0.0)
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cdf = np.cumsum(w) / w.sum()
    pick = [float(v[min(int(np.searchsorted(cdf, q / 100.0 - 1e-12)), len(v) - 1)]) for q in PERCENTILES]
    return Stats(mean=float(np.dot(v, w) / w.sum()), p50=pick[0], p90=pick[1], p99=pick[2])


def estimate_serving(inst: ServingInstance, engine: Engine, load: Load, input_tokens: np.ndarray,
                     output_tokens: np.ndarray, step: StepModel | None = None) -> ServingEstimate:
    """Simulate `load` on one instance; input/output_tokens are the requests' lengths in order (cycled)."""
    step = step or step_model(inst)
    n = load.n_requests()
    inp = np.resize(np.asarray(input_tokens, dtype=np.int64), n)
    out = np.resize(np.asarray(output_tokens, dtype=np.int64), n)
    longest = float(kv_tokens_held(int((inp + out).max()), engine.kv_window_tokens, engine.kv_windowed_share))
    if longest > engine.kv_capacity_tokens:
        raise BadInputError(f"a request of {int((inp + out).max())} tokens does not fit the KV cache of "
                            f"{engine.kv_capacity_tokens} tokens on {inst.label}; shorten it or raise --tp")
    clients = load.clients if load.kind is LoadKind.CLOSED else 0
    res = simulate(step, engine, load.arrivals_s(n), inp, out, clients=clients, record=True)
    trace = res.trace
    assert trace is not None  # record=True
    warm = trace.warm if load.kind is not LoadKind.STATIC else 0
    ttft = np.asarray(trace.ttft_s[warm:])
    done = np.asarray(trace.done_s)
    e2e = done[warm:] - np.asarray(trace.arrival_s[warm:])
    decoded = out[warm:] > 1
    tpot = np.asarray(trace.tpot_s[warm:])[decoded]
    # Throughput over the measured window: from the warm-th completion (or t = 0) to the last one. An open loop the
    # server keeps up with ends its window at its last arrival instead: the drain after it (no new requests, a
    # shrinking batch) would count the last completions at a pace no steady load sees, and report more than offered.
    ordered = np.sort(done)
    start = float(ordered[warm - 1]) if warm else 0.0
    span = float(ordered[-1]) - start
    counted = slice(warm, None)
    rps = (n - warm) / span if span > 0 else math.inf
    if load.kind is LoadKind.OPEN and n - warm >= 2:
        first, last = float(trace.arrival_s[warm]), float(trace.arrival_s[-1])
        served = int(np.count_nonzero((done > first) & (done <= last)))
        # Overloaded (most requests still queued at the last arrival, the queue growing): the server runs full from
        # the warm-th completion to the last one, so that span's rate is what it serves, not the few completions of
        # an arrival window shorter than one request's service.
        if last > first and 2 * served >= n - warm:
            rps = served / (last - first)
    itl_t, itl_w = itl_samples(trace)
    busy = float(np.dot(itl_t, itl_w)) / float(np.sum(itl_t)) if len(itl_t) else 0.0  # time-weighted batch
    kv_cap = engine.kv_capacity_tokens
    makespan = float(ordered[-1])
    mean_in, mean_out = float(inp[counted].mean()), float(out[counted].mean())
    batch = max(1, int(round(busy)))
    ctx = int(round(mean_in + mean_out / 2.0))
    prefill_len = int(round(mean_in))
    return ServingEstimate(
        instance=inst, load=load, requests=n - warm,
        ttft_s=Stats.of(ttft), tpot_s=Stats.of(tpot), itl_s=weighted_stats(itl_t, itl_w), e2e_s=Stats.of(e2e),
        request_throughput_rps=rps, output_tokens_per_s=rps * mean_out, input_tokens_per_s=rps * mean_in,
        mean_running_batch=busy, kv_capacity_tokens=kv_cap,
        kv_peak_fraction=trace.kv_peak_tokens / kv_cap if kv_cap else 0.0,
        kv_mean_fraction=trace.kv_token_seconds / (makespan * kv_cap) if kv_cap and makespan > 0 else 0.0,
        prefill=step.terms(float(prefill_len), prefill_len * prefill_len / 2.0, 0.0, 0.0),
        decode=step.terms(0.0, 0.0, float(batch), float(batch * ctx)),
        prefill_tokens=prefill_len, decode_batch=batch, decode_context_tokens=ctx, max_seqs=engine.max_seqs,
        max_model_len=int(math.ceil(int((inp + out).max()) / 256) * 256))


def check_context(model: ModelSpec, input_tokens: np.ndarray, output_tokens: np.ndarray) -> None:
    """Every request longer than the model's context is bad input: an engine refuses it (vLLM's --max-model-len is at
    most the model's max_position_embeddings), so nothing would be served."""
    total = np.asarray(input_tokens) + np.asarray(output_tokens)
    if len(total) and int(total.min()) > model.max_positions:
        raise BadInputError(f"every request is longer than {model.name}'s context of {model.max_positions:,} tokens "
                            f"(the shortest is {int(total.min()):,} with its output); shorten --input-len / "
                            "--output-len (or the trace's lengths)")


def engine_of(inst: ServingInstance, max_seqs: int, chunk_tokens: int | None = None) -> Engine:
    """The scheduler limits of one instance: its KV capacity, a sequence cap and a step token budget."""
    return Engine(kv_capacity_tokens=serving_memory(inst).kv_capacity_tokens, max_seqs=max_seqs,
                  chunk_tokens=chunk_tokens or inst.max_batched_tokens, request_overhead_s=inst.knobs.request_overhead_s,
                  chunked_prefill=get_engine(inst.engine).chunked_prefill,
                  kv_block_tokens=get_engine(inst.engine).kv_block_tokens, **kv_accounting(inst))


def tp_inside_domain(gpu: GPU, tp: int) -> bool:
    """Tensor parallelism of one serving instance stays inside the GPU's NVLink-class scale-up domain (the step
    model prices its all-reduces on that link, models/serving/model.py step_model): engines put tp inside a node and
    pp across nodes (vLLM docs, distributed serving: "set the tensor parallel size to the number of GPUs in each
    node, and the pipeline parallel size to the number of nodes"). A PCIe GPU (domain 1) prices its tp on PCIe."""
    return gpu.scale_up_domain <= 1 or tp <= gpu.scale_up_domain


SMALLER_WEIGHTS = ("fp8", "int4")
"""Weight formats does_not_fit offers, nearest first: fp8 (the usual FP8 checkpoint of a large model, e.g.
Llama-3.1-405B-Instruct-FP8), then 4-bit weight-only (AWQ / GPTQ); each only where it is smaller than the one given."""
NODE_TP = 8
"""Largest tp does_not_fit offers on a GPU whose scale-up domain is smaller (PCIe cards): the GPUs of one node."""


def does_not_fit(inst: ServingInstance, build: Callable[..., ServingInstance]) -> BadInputError:
    """An instance without room for a KV cache, in numbers (serving_memory: weights, activations and reserve per GPU
    against the engine's share of the GPU), with the nearest instances that hold one, each priced by the same memory
    model: the first larger pp, the first larger tp inside the GPU's scale-up domain (a node's NODE_TP on PCIe) dividing
    the heads, the first smaller weight format (SMALLER_WEIGHTS). `build(tp=, pp=, weight_dtype=)` makes an instance
    changed in one of them."""
    mem = serving_memory(inst)
    usable = inst.knobs.memory_utilization * inst.gpu.memory_gib
    model = inst.model
    tries = (
        [("--pp", n, {"pp": n}) for n in range(inst.pp + 1, model.n_layers + 1)],
        [("--tp", n, {"tp": n}) for n in range(2 * inst.tp, max(inst.gpu.scale_up_domain, NODE_TP) + 1, inst.tp)
         if model.n_heads % n == 0 and tp_inside_domain(inst.gpu, n)],
        [("--weight-dtype", d, {"weight_dtype": d}) for d in SMALLER_WEIGHTS
         if DTYPE_BYTES[d] < DTYPE_BYTES[inst.weight_dtype]],
    )
    options = []
    for changes in tries:
        for flag, value, change in changes:
            try:
                other = build(**change)
            except BadInputError:  # a size the instance's other degrees (ep, attention dp) do not divide
                continue
            tokens = serving_memory(other).kv_capacity_tokens
            if tokens > 0:
                options.append(f"{flag} {value} ({other.n_gpus} GPUs, KV cache {tokens:,} tokens)")
                break
    nearest = ("; nearest that hold one: " + ", ".join(options)) if options else \
        "; raise --tp or --pp, or use a GPU with more memory"
    return BadInputError(f"{model.name} does not fit on {inst.label} with room for a KV cache: weights "
                         f"{mem.weights_gib:.1f} GiB + activations {mem.activation_gib:.1f} + reserve "
                         f"{mem.reserve_gib:.1f} GiB per GPU > {usable:.1f} GiB usable "
                         f"({inst.knobs.memory_utilization:g} x {inst.gpu.memory_gib:.1f} GiB){nearest}")


def estimate_for(model: ModelSpec, gpu_name: str, *, tp: int = 1, pp: int = 1, ep: int = 1, attention_dp: int = 1,
                 weight_dtype: str = "bf16", kv_dtype: str = "bf16", engine: str | None = None,
                 mamba_ssm_dtype: str = "bf16", max_batch: int | None = None, chunk_tokens: int | None = None, input_len: str | None = None,
                 output_len: str | None = None, rate: float | None = None, trace: str | None = None, clients: int = 0,
                 static: bool = False, requests: int = 0, calibration: Any = None, seed: int = 0,
                 sweep: bool = False, progress: ProgressFn | None = None) -> ServingEstimate:
    """serve-estimate from its inputs as given: a trace or length distributions, and one load; with `sweep`,
    also the latency at loads around it (LoadSweep)."""
    gpu = get_gpu(gpu_name)
    profile = get_engine(engine)
    chunk_tokens = chunk_tokens or profile.chunk_tokens
    max_batch = max_batch or profile.max_seqs
    if model.n_heads % tp:
        divisors = [d for d in range(1, min(model.n_heads, 64) + 1) if model.n_heads % d == 0]
        shown = ", ".join(map(str, divisors[:-1])) + f" or {divisors[-1]}" if len(divisors) > 1 else str(divisors[0])
        raise BadInputError(f"--tp {tp} does not divide {model.name}'s {model.n_heads} attention heads; "
                            f"use a divisor: {shown}")
    if not tp_inside_domain(gpu, tp):
        domain = gpu.scale_up_domain
        raise BadInputError(f"--tp {tp} spans more than one {domain}-GPU {gpu.scale_up_link} domain of {gpu.name}, and "
                            "its all-reduces would cross the network; keep tp inside it and pipeline across nodes "
                            f"(--tp {domain} --pp {-(-tp // domain) * pp}), as vLLM's distributed serving guide does")
    def build(tp: int = tp, pp: int = pp, weight_dtype: str = weight_dtype) -> ServingInstance:
        return ServingInstance(model=model, gpu=gpu, tp=tp, pp=pp, ep=ep, attention_dp=attention_dp,
                               weight_dtype=weight_dtype, kv_dtype=kv_dtype, mamba_ssm_dtype=mamba_ssm_dtype,
                               engine=profile.name, knobs=knobs_for_gpu(gpu, calibration, weight_dtype, profile, tp),
                               max_batched_tokens=chunk_tokens)

    inst = build()
    engine = engine_of(inst, max_batch, chunk_tokens)
    if engine.kv_capacity_tokens <= 0:
        raise does_not_fit(inst, build)
    gaps: tuple[float, ...] = ()
    if trace and (input_len is not None or output_len is not None):
        raise BadInputError("--trace gives each request's lengths; drop --input-len / --output-len")
    if static and requests and requests != clients:
        raise BadInputError(f"--batch {clients} is a static batch of that many requests at t = 0; drop --requests "
                            f"{requests} (or give --batch {requests})")
    if trace:
        reqs = load_trace(trace)
        inp, out, gaps = np.asarray(reqs.input_tokens), np.asarray(reqs.output_tokens), tuple(reqs.unit_gaps().tolist())
        rate = rate or reqs.rate_rps
        requests = requests or len(inp)
    else:
        if input_len is None or output_len is None:
            raise BadInputError("give --input-len and --output-len (or --trace FILE)")
        rng = np.random.default_rng([seed, 0])
        n = requests or (clients if static else max(ESTIMATE_REQUESTS, CLOSED_LOOP_ROUNDS * clients))
        inp = parse_length(input_len, "--input-len").sample(rng, n)
        out = parse_length(output_len, "--output-len").sample(rng, n)
    check_context(model, inp, out)
    if rate is not None:
        load = Load(kind=LoadKind.OPEN, rate_rps=float(rate), unit_gaps=gaps, requests=requests, seed=seed)
    else:
        load = Load(kind=LoadKind.STATIC if static else LoadKind.CLOSED, clients=clients, requests=requests, seed=seed)
    est = estimate_serving(inst, engine, load, inp, out)
    if not sweep:
        return est
    return replace(est, load_sweep=sweep_load(inst, engine, load, inp, out, progress))
