"""Discrete-event simulation of one continuous-batching instance, and its capacity under a latency SLO.

The scheduler is vLLM's with chunked prefill: each step decodes one token of every running sequence and
spends the rest of a `chunk_tokens` budget on queued prompts in FIFO order; a request is admitted when a
sequence slot and KV room for its prompt plus output are free. Step times come from models/serving/model.py.
Between events (arrivals, prefill chunks, completions) pure decode steps are advanced in one jump, so a
simulation costs O(requests) Python operations rather than O(tokens).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from clusterplan.models.serving.kv import kv_tokens_held
from clusterplan.models.serving.model import StepModel

HEADROOM = 0.9
"""Highest share of the saturation rate a search tries: near saturation a queue needs far more requests than a
short run has to show its steady-state delay (aiconfigurator derates rate-matched pools to 0.9 / 0.92 likewise)."""
WARMUP_FRACTION = 0.25
"""Requests left out of the percentiles: the system starts empty, so the first ones see no queue."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Slo:
    ttft_s: float
    tpot_s: float
    percentile: float = 90.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Engine:
    """Scheduler limits of one instance and which phases it runs."""

    kv_capacity_tokens: int
    max_seqs: int = 256
    chunk_tokens: int = 2048
    chunked_prefill: bool = True
    """Split prompts across steps to fill the token budget (vLLM, SGLang); False: a step takes whole prompts
    while they fit the budget, a longer prompt runs alone (TensorRT-LLM's default, enable_chunked_prefill off)."""
    mode: str = "colocated"
    """colocated, prefill (prompts only; TTFT adds `ttft_extra_s`, e.g. KV transfer) or decode (KV arrives)."""
    ttft_extra_s: float = 0.0
    ttft_extra_s_per_token: float = 0.0
    """TTFT added per prompt token (KV-cache transfer to a decode instance)."""
    kv_block_tokens: int = 1
    """KV-cache page size: a request reserves whole pages, ceil((prompt + output) / page) of them (vLLM 16,
    TensorRT-LLM 32, SGLang 1)."""
    request_overhead_s: float = 0.0
    """Time from a request's arrival until the scheduler sees it (HTTP, tokenization): delays its admission,
    so TTFT and end-to-end latency both include it."""
    state_tokens_per_seq: int = 0
    """What each running sequence reserves beyond its KV, in KV tokens: a hybrid's Mamba state
    (models.serving.kv.state_tokens_per_seq); 0 for a transformer."""
    kv_window_tokens: int = 0
    """Tokens a windowed layer keeps at most (models.serving.kv.kv_window); 0: every layer keeps every token."""
    kv_windowed_share: float = 0.0
    """Share of the layers that are windowed."""

    def kv_tokens(self, tokens: float) -> int:
        """KV tokens a sequence of `tokens` reserves: what its layers hold (kv.kv_tokens_held) and any Mamba state,
        in whole pages."""
        held = math.ceil(float(kv_tokens_held(tokens, self.kv_window_tokens, self.kv_windowed_share)))
        held += self.state_tokens_per_seq
        page = max(self.kv_block_tokens, 1)
        return -(-held // page) * page


@dataclass(frozen=True, kw_only=True, slots=True)
class SimTrace:
    """What a recorded run saw, request by request (warm-up requests included; `warm` says how many lead)."""

    arrival_s: tuple[float, ...]
    ttft_s: tuple[float, ...]
    tpot_s: tuple[float, ...]
    """Mean time per output token after the first, per request (0 for one-token answers)."""
    done_s: tuple[float, ...]
    """Time each request finished."""
    itl_steps: tuple[tuple[int, float, float, int], ...]
    """Steps that emitted decode tokens: (count k, first step s, last step s, sequences b), step time linear
    between first and last; every sequence of the b emits one token per step."""
    kv_token_seconds: float
    """Integral of reserved KV tokens over time (admission reserves prompt plus output)."""
    kv_peak_tokens: int
    warm: int


@dataclass(frozen=True, kw_only=True, slots=True)
class SimResult:
    ttft_s: float
    """TTFT at the SLO percentile (inf when the run was cut short by SLO violations)."""
    tpot_s: float
    met: bool
    finished: int
    trace: SimTrace | None = None


class _Run:
    """Mutable state of one simulation; slots keep attribute access cheap in the event loop."""

    __slots__ = ("t", "g", "b", "base", "kv_used", "finished", "bad_ttft", "bad_tpot", "joined", "first", "heap",
                 "done", "steps", "kv_area", "kv_peak")

    def __init__(self, n: int, record: bool = False) -> None:
        self.t, self.g, self.b, self.base, self.kv_used, self.finished = 0.0, 0, 0, 0, 0, 0
        self.bad_ttft = self.bad_tpot = 0
        self.joined, self.first = [0] * n, [0.0] * n
        self.heap: list[tuple[int, int]] = []  # (decode step at which it finishes, request)
        self.done: list[float] = [0.0] * n
        self.steps: list[tuple[int, float, float, int]] | None = [] if record else None
        self.kv_area, self.kv_peak = 0.0, 0

    def elapse(self, k: int, first_s: float, last_s: float) -> None:
        """k steps whose times run linearly from first_s to last_s (recorded when asked)."""
        dt = k * (first_s + last_s) / 2.0 if k > 1 else first_s
        if self.steps is not None:
            if self.b:
                self.steps.append((k, first_s, last_s, self.b))
            self.kv_area += self.kv_used * dt
            self.kv_peak = max(self.kv_peak, self.kv_used)
        self.t += dt

    def start_decode(self, r: int, inp: int, out: int) -> None:
        # Context of a running sequence at decode step g: inp + 1 + (g - joined); base sums inp + 1 - joined.
        self.joined[r], self.first[r], self.base, self.b = self.g, self.t, self.base + inp + 1 - self.g, self.b + 1
        heapq.heappush(self.heap, (self.g + out - 1, r))


def simulate(step: StepModel, engine: Engine, arrival_s: np.ndarray, input_tokens: np.ndarray,
             output_tokens: np.ndarray, slo: Slo | None = None, clients: int = 0, record: bool = False) -> SimResult:
    """Run the requests through one instance; stop early once the SLO can no longer be met.

    Open loop (clients 0): request r arrives at arrival_s[r]. Closed loop (clients N > 0): the first N arrive
    at arrival_s[:N]; each later one arrives the moment an earlier one finishes (N clients that each send
    the next request when the last answer is complete; arrival_s[N:] is ignored). `record` keeps a SimTrace.
    """
    f = step.time_s  # the one step formula, called with floats
    arr, inp, out = arrival_s.tolist(), input_tokens.tolist(), output_tokens.tolist()
    if engine.mode == "prefill":
        out = [1] * len(out)
    n = len(arr)
    known = min(clients, n) if clients > 0 else n  # arrivals known so far
    need = [engine.kv_tokens(i + o) for i, o in zip(inp, out, strict=True)]  # KV tokens reserved, whole pages
    delay = engine.request_overhead_s
    warm = int(n * WARMUP_FRACTION) if n >= 40 else 0
    allowed = (n - warm) - math.ceil((n - warm) * (slo.percentile if slo else 100.0) / 100.0)
    limits = (slo.ttft_s, slo.tpot_s, warm) if slo else (math.inf, math.inf, warm)
    ttft, tpot = [0.0] * n, [0.0] * n
    run, nxt = _Run(n, record), 0
    waiting: deque[int] = deque()
    prefilling: deque[list[int]] = deque()  # [request, prompt tokens done]
    while run.finished < n:
        while nxt < known and arr[nxt] + delay <= run.t:
            waiting.append(nxt)
            nxt += 1
        if not (run.b or prefilling or waiting):
            run.t = max(run.t, arr[nxt] + delay)
            continue
        _admit(run, engine, waiting, prefilling, inp, out, need)
        if not (run.b or prefilling):
            if waiting and run.kv_used == 0:  # one request larger than the whole KV cache
                return SimResult(ttft_s=math.inf, tpot_s=math.inf, met=False, finished=run.finished)
            run.t = arr[nxt] + delay if nxt < known else run.t
            continue
        n_p, pairs, done = _chunk(prefilling, inp, engine.chunk_tokens - run.b, engine.chunked_prefill)
        _advance(run, f, n_p, pairs, arr[nxt] + delay if nxt < known and not waiting else None)
        _first_tokens(run, engine, done, prefilling, arr, inp, out, ttft, limits, need)
        _completions(run, inp, out, tpot, limits, need)
        if run.bad_ttft > allowed or run.bad_tpot > allowed:
            return SimResult(ttft_s=math.inf, tpot_s=math.inf, met=False, finished=run.finished)
        while clients and known < min(n, clients + run.finished):  # closed loop: a finished client sends again
            arr[known] = run.t
            known += 1
    result = _result(ttft[warm:], tpot[warm:], out[warm:], engine, slo, run.finished)
    if not record:
        return result
    trace = SimTrace(arrival_s=tuple(arr), ttft_s=tuple(ttft), tpot_s=tuple(tpot), done_s=tuple(run.done),
                     itl_steps=tuple(run.steps or ()), kv_token_seconds=run.kv_area, kv_peak_tokens=run.kv_peak,
                     warm=warm)
    return replace(result, trace=trace)


def _admit(run: _Run, engine: Engine, waiting: deque[int], prefilling: deque[list[int]], inp: list[int],
           out: list[int], need: list[int]) -> None:
    """FIFO admission while a sequence slot and KV room (whole pages) for prompt plus output are free (vLLM-style)."""
    while waiting and len(prefilling) + run.b < engine.max_seqs and \
            run.kv_used + need[waiting[0]] <= engine.kv_capacity_tokens:
        r = waiting.popleft()
        run.kv_used += need[r]
        if engine.mode != "decode":
            prefilling.append([r, 0])
        elif out[r] <= 1:  # decode pool, nothing left to decode
            run.finished, run.kv_used = run.finished + 1, run.kv_used - need[r]
            run.done[r] = run.t
        else:  # decode pool: the prompt's KV arrives from a prefill instance
            run.start_decode(r, inp[r], out[r])


def _chunk(prefilling: deque[list[int]], inp: list[int], budget: int, chunked: bool = True
           ) -> tuple[int, float, list[int]]:
    """Spend the step's token budget on queued prompts in order: (tokens, attention pairs, prompts completed)."""
    n_p, pairs, done = 0, 0.0, []
    for item in prefilling:
        if n_p >= budget:
            break
        r, have = item
        if not chunked and n_p and n_p + inp[r] - have > budget:
            break  # whole prompts only: this one waits for the next step
        take = min(inp[r] - have, budget - n_p) if chunked else inp[r] - have
        pairs += take * (have + take / 2.0)  # causal: each new token attends to what came before it
        n_p += take
        item[1] = have + take
        if item[1] >= inp[r]:
            done.append(r)
    return n_p, pairs, done


def _advance(run: _Run, f: Callable[[float, float, float, float], float], n_p: int, pairs: float,
             next_arrival: float | None) -> None:
    """One step with prompt tokens, or a jump over pure decode steps to the next completion or arrival."""
    ctx = run.base + run.b * run.g
    if n_p:
        dt = f(n_p, pairs, run.b, ctx)
        run.elapse(1, dt, dt)
        run.g += 1 if run.b else 0
        return
    k = run.heap[0][0] - run.g
    d0 = f(0, 0, run.b, ctx)
    if next_arrival is not None:
        k = min(k, math.ceil((next_arrival - run.t) / d0))
    k = max(k, 1)
    # Step time is linear in context while the regime holds: k steps cost k times the mean of first and last.
    run.elapse(k, d0, f(0, 0, run.b, ctx + (k - 1) * run.b) if k > 1 else d0)
    run.g += k


def _first_tokens(run: _Run, engine: Engine, done: list[int], prefilling: deque[list[int]], arr: list[float],
                  inp: list[int], out: list[int], ttft: list[float], limits: tuple[float, float, int],
                  need: list[int]) -> None:
    for r in done:
        prefilling.popleft()
        ttft[r] = run.t - arr[r] + engine.ttft_extra_s + engine.ttft_extra_s_per_token * inp[r]
        if ttft[r] > limits[0] and r >= limits[2]:
            run.bad_ttft += 1
        if out[r] <= 1:
            run.finished, run.kv_used = run.finished + 1, run.kv_used - need[r]
            run.done[r] = run.t
        else:
            run.start_decode(r, inp[r], out[r])


def _completions(run: _Run, inp: list[int], out: list[int], tpot: list[float], limits: tuple[float, float, int],
                 need: list[int]) -> None:
    heap = run.heap
    while heap and heap[0][0] <= run.g:
        _, r = heapq.heappop(heap)
        tpot[r] = (run.t - run.first[r]) / (out[r] - 1)
        if tpot[r] > limits[1] and r >= limits[2]:
            run.bad_tpot += 1
        run.finished, run.b, run.kv_used = run.finished + 1, run.b - 1, run.kv_used - need[r]
        run.base -= inp[r] + 1 - run.joined[r]
        run.done[r] = run.t


def _result(ttft: list[float], tpot: list[float], out: list[int], engine: Engine, slo: Slo | None,
            finished: int) -> SimResult:
    q = slo.percentile if slo else 90.0
    p_ttft = percentile(ttft, q) if engine.mode != "decode" else 0.0
    decoded = [v for v, o in zip(tpot, out, strict=True) if o > 1]
    p_tpot = percentile(decoded, q) if decoded and engine.mode != "prefill" else 0.0
    met = slo is None or (p_ttft <= slo.ttft_s and p_tpot <= slo.tpot_s)
    return SimResult(ttft_s=p_ttft, tpot_s=p_tpot, met=met, finished=finished)


def percentile(values: list[float], q: float) -> float:
    """numpy's default (linear) percentile on a short list, without numpy's per-call overhead."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def rate_upper_bound_rps(step: StepModel, engine: Engine, input_tokens: float, output_tokens: float,
                         slo: Slo) -> float:
    """Saturation throughput ignoring queueing: the batch that still meets TPOT, or full prefill chunks.

    Colocated and decode: B*/(O t_dec(B*) + B* I t_token) with B* the largest batch whose decode step meets
    the TPOT target and whose KV fits (research/serving-models.md sec. 4.7). Prefill: full chunks back to back.
    """
    i_tok, o_tok = max(input_tokens, 1.0), max(output_tokens, 1.0)
    if engine.mode == "prefill":
        chunk = float(engine.chunk_tokens)
        return chunk / float(step.step_s(chunk, chunk * i_tok / 2.0, 0.0, 0.0)) / i_tok
    batch = max(slo_batch(step, engine, i_tok, o_tok, slo), 1)
    step_s = float(step.decode_s(batch, i_tok + o_tok / 2.0))
    prefill_s = 0.0 if engine.mode == "decode" else i_tok * step.compute_s_per_token
    return batch / (o_tok * step_s + batch * prefill_s)


def slo_batch(step: StepModel, engine: Engine, input_tokens: float, output_tokens: float, slo: Slo) -> int:
    """Largest batch whose KV fits and whose decode step meets the TPOT target (0 when none does)."""
    held = float(kv_tokens_held(max(input_tokens + output_tokens, 1.0), engine.kv_window_tokens,
                                engine.kv_windowed_share)) + engine.state_tokens_per_seq
    b_max = int(min(engine.max_seqs, engine.kv_capacity_tokens // held))
    if b_max < 1:
        return 0
    batch = np.arange(1, b_max + 1, dtype=float)
    ok = np.nonzero(np.asarray(step.decode_s(batch, input_tokens + output_tokens / 2.0)) <= slo.tpot_s)[0]
    return int(ok[-1]) + 1 if len(ok) else 0


def max_rate_rps(step: StepModel, engine: Engine, unit_gaps: np.ndarray, input_tokens: np.ndarray,
                 output_tokens: np.ndarray, slo: Slo, steps: int = 3) -> tuple[float, SimResult]:
    """Highest arrival rate whose simulated percentiles meet the SLO (0 and the zero-load result if none).

    Arrival gaps are `unit_gaps / rate` (common random numbers across rates): start just under the
    saturation bound (HEADROOM), back off by 0.7x until the SLO holds, then bisect `steps` times (~4% resolution).
    """
    loose = Slo(ttft_s=math.inf, tpot_s=math.inf, percentile=slo.percentile)  # no early exit: keep the latencies
    idle = simulate(step, engine, np.arange(min(len(unit_gaps), 16)) * 1e6, input_tokens[:16], output_tokens[:16], loose)
    idle = replace(idle, met=idle.ttft_s <= slo.ttft_s and idle.tpot_s <= slo.tpot_s)
    if not idle.met:
        return 0.0, idle
    arrivals = np.concatenate([[0.0], np.cumsum(unit_gaps[: len(input_tokens) - 1])])
    hi = rate_upper_bound_rps(step, engine, float(np.mean(input_tokens)), float(np.mean(output_tokens)), slo)
    rate, fail = HEADROOM * hi, None
    result = simulate(step, engine, arrivals / rate, input_tokens, output_tokens, slo)
    while not result.met and rate > hi * 1e-3:
        fail, rate = rate, rate * 0.7
        result = simulate(step, engine, arrivals / rate, input_tokens, output_tokens, slo)
    if not result.met:
        return 0.0, idle
    for _ in range(steps if fail else 0):
        mid = math.sqrt(rate * fail)
        trial = simulate(step, engine, arrivals / mid, input_tokens, output_tokens, slo)
        rate, result, fail = (mid, trial, fail) if trial.met else (rate, result, mid)
    return rate, result
