"""The continuous-batching simulation against closed forms: one request alone, and an M/D/1 queue."""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.hardware_db import get_gpu
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.serving.model import ServingInstance, serving_memory, step_model
from clusterplan.models.serving.sim import (
    WARMUP_FRACTION,
    Engine,
    Slo,
    max_rate_rps,
    percentile,
    rate_upper_bound_rps,
    simulate,
)

INST = ServingInstance(model=load_model("llama3.1-8b"), gpu=get_gpu("A100-80GB"), tp=1)
STEP = step_model(INST)
KV = serving_memory(INST).kv_capacity_tokens


@pytest.mark.parametrize(("model", "gpu", "tp", "pp"), [
    ("llama3.1-8b", "A100-80GB", 1, 1), ("llama3.1-70b", "H100", 2, 1), ("llama3.1-70b", "H100", 4, 1),
    ("llama3.1-70b", "H100", 8, 1), ("llama3.1-70b", "H100", 4, 2), ("mixtral-8x7b", "H100", 2, 1),
    ("mixtral-8x7b", "H100", 8, 1), ("mixtral-8x7b", "H100", 2, 2)])
def test_one_request_alone_costs_its_prefill_and_decode_steps(model: str, gpu: str, tp: int, pp: int) -> None:
    # The simulator prices steps with StepModel.time_s on floats; the closed forms below call it on numpy
    # arrays (step_s/prefill_s/decode_s). Equal at every tp, pp and for MoE: one formula, two call paths.
    inst = ServingInstance(model=load_model(model), gpu=get_gpu(gpu), tp=tp, pp=pp)
    step, kv = step_model(inst), serving_memory(inst).kv_capacity_tokens
    inp, out = 1000, 64
    res = simulate(step, Engine(kv_capacity_tokens=kv), np.array([0.0]), np.array([inp]), np.array([out]))
    # TTFT = one prefill step of the whole prompt (it fits the 2048-token chunk).
    assert res.ttft_s == pytest.approx(float(step.prefill_s(inp)), rel=1e-9)
    # TPOT = mean of the out-1 decode steps at contexts inp+1 .. inp+out-1 (the jump sums them exactly).
    steps = [float(step.decode_s(1, inp + 1 + j)) for j in range(out - 1)]
    assert res.tpot_s == pytest.approx(sum(steps) / len(steps), rel=1e-9)
    # Float and array calls of the one formula agree on a mixed step (prompt chunk plus decodes).
    mixed = (512.0, 512.0 * 700.0, 24.0, 24.0 * 3000.0)
    assert step.time_s(*mixed) == pytest.approx(float(step.step_s(*mixed)), rel=1e-12)


def test_prefill_queue_is_md1() -> None:
    # Prefill-only, one 2048-token prompt per step: a FIFO queue with deterministic service s and Poisson
    # arrivals (M/D/1). Lindley's recursion W' = max(0, W + s - A) gives every request's wait exactly.
    n, inp = 400, 2048
    service = float(STEP.prefill_s(inp))
    rng = np.random.default_rng(7)
    gaps = rng.exponential(1.0 / (0.8 / service), size=n - 1)  # load 0.8
    arrivals = np.concatenate([[0.0], np.cumsum(gaps)])
    wait, ttft = 0.0, [service]
    for gap in gaps:
        wait = max(0.0, wait + service - gap)
        ttft.append(wait + service)
    res = simulate(STEP, Engine(kv_capacity_tokens=KV, chunk_tokens=inp, mode="prefill"), arrivals,
                   np.full(n, inp), np.full(n, 1), Slo(ttft_s=10.0, tpot_s=1.0, percentile=90))
    # The first quarter of requests found an empty system and is left out of the percentiles.
    steady = ttft[int(n * WARMUP_FRACTION):]
    assert res.ttft_s == pytest.approx(percentile(steady, 90), rel=1e-9)
    assert percentile(steady, 90) == pytest.approx(float(np.percentile(steady, 90)), rel=1e-12)


def test_capacity_search_brackets_the_slo_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    gaps = rng.exponential(size=200)
    inp, out = rng.integers(1500, 2500, 200), rng.integers(100, 300, 200)
    slo = Slo(ttft_s=0.25, tpot_s=0.05, percentile=90)
    engine = Engine(kv_capacity_tokens=KV)
    rate, res = max_rate_rps(STEP, engine, gaps, inp, out, slo)
    assert res.met and res.ttft_s <= 0.25 and res.tpot_s <= 0.05
    assert 0 < rate <= rate_upper_bound_rps(STEP, engine, float(inp.mean()), float(out.mean()), slo)
    arrivals = np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    assert not simulate(STEP, engine, arrivals / (rate * 1.15), inp, out, slo).met
    assert max_rate_rps(STEP, engine, gaps, inp, out, slo) == (rate, res)  # same inputs, same answer
    # A tighter TTFT target cannot raise capacity; an impossible one gives 0 and the unloaded latency.
    assert max_rate_rps(STEP, engine, gaps, inp, out, Slo(ttft_s=0.15, tpot_s=0.05))[0] <= rate
    zero, idle = max_rate_rps(STEP, engine, gaps, inp, out, Slo(ttft_s=0.01, tpot_s=0.05))
    assert zero == 0.0 and not idle.met and 0.01 < idle.ttft_s < 0.25


def test_decode_pool_takes_requests_with_one_output_token() -> None:
    # A one-token answer is finished by its prefill; the decode pool must count it done, not divide by zero.
    out = np.array([1, 50, 1, 20])
    res = simulate(STEP, Engine(kv_capacity_tokens=KV, mode="decode"), np.arange(4.0), np.full(4, 100), out)
    assert res.finished == 4 and res.ttft_s == 0.0 and res.tpot_s > 0


def test_long_prompt_is_prefilled_in_chunks() -> None:
    # 5000 tokens with a 2048-token budget: chunks of 2048, 2048, 904, each attending to the tokens before it.
    res = simulate(STEP, Engine(kv_capacity_tokens=KV, chunk_tokens=2048), np.array([0.0]), np.array([5000]),
                   np.array([2]))
    chunks = [(2048, 0), (2048, 2048), (904, 4096)]
    expected = sum(float(STEP.step_s(c, c * (done + c / 2.0), 0, 0)) for c, done in chunks)
    assert res.ttft_s == pytest.approx(expected, rel=1e-9)
    assert res.ttft_s > float(STEP.prefill_s(5000))  # two more fixed step costs than one 5000-token step
