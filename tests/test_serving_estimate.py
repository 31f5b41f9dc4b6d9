"""serve-estimate against answers derived by hand: a static batch, a closed loop and an open loop (M/D/1),
each on an engine whose step times are fixed numbers; and serve-plan agreeing with serve-estimate."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from clusterplan.hardware_db import get_gpu
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.serving.estimate import Load, LoadKind, estimate_serving
from clusterplan.models.serving.model import ServingInstance, StepModel
from clusterplan.models.serving.sim import Engine

INST = ServingInstance(model=load_model("llama3.1-8b"), gpu=get_gpu("H100"), tp=1)
STEP_S, PREFILL_S, PER_SEQ_S = 0.010, 0.030, 0.0005
"""A step costs 10 ms, plus 30 ms when it carries prompt tokens, plus 0.5 ms per running sequence."""


def fixed_steps(per_seq_s: float = PER_SEQ_S) -> StepModel:
    zero = dict.fromkeys(("compute_s_per_token", "compute_s_per_pair", "head_s_per_seq", "dense_weights_s",
                          "expert_weights_s", "expert_hit_per_token", "kv_read_s_per_token", "ar_count_per_stage",
                          "ar_fixed_s", "ar_s_per_token", "p2p_latency_s", "p2p_s_per_token"), 0.0)
    return StepModel(pp=1, tp=1, step_overhead_s=STEP_S, prefill_overhead_s=PREFILL_S, seq_overhead_s=per_seq_s,
                     **zero)


def test_static_batch_by_hand() -> None:
    # 8 requests of 100 + 50 tokens at t = 0, chunk 2048: step 1 prefills all 800 prompt tokens with no sequence
    # running (10 + 30 ms) and emits each first token; then 49 decode steps of 8 sequences (10 + 8 x 0.5 = 14 ms).
    n, inp, out = 8, 100, 50
    engine = Engine(kv_capacity_tokens=10_000, max_seqs=256, chunk_tokens=2048)
    est = estimate_serving(INST, engine, Load(kind=LoadKind.STATIC, clients=n), np.full(n, inp), np.full(n, out),
                           step=fixed_steps())
    decode_s = STEP_S + n * PER_SEQ_S
    e2e = STEP_S + PREFILL_S + (out - 1) * decode_s  # 0.726 s
    assert est.requests == n
    assert est.ttft_s.p50 == est.ttft_s.p99 == pytest.approx(0.040)
    assert est.tpot_s.mean == pytest.approx(0.014) and est.itl_s.p99 == pytest.approx(0.014)
    assert est.e2e_s.p90 == pytest.approx(e2e)
    assert est.request_throughput_rps == pytest.approx(n / e2e)
    assert est.output_tokens_per_s == pytest.approx(n * out / e2e)
    assert est.kv_peak_fraction == pytest.approx(n * (inp + out) / 10_000)
    assert est.mean_running_batch == pytest.approx(n)


def test_closed_loop_by_hand() -> None:
    # 16 clients, 200 + 20 tokens, chunk 4096: all prompts share one step (40 ms), then 19 decode steps of 16
    # sequences (18 ms). All finish together at T = 0.04 + 19 x 0.018 = 0.382 s and send again at once, so every
    # cycle repeats: e2e = T, TTFT = 40 ms, TPOT = 18 ms, throughput N / T (Little's law, N = X e2e).
    n, inp, out = 16, 200, 20
    engine = Engine(kv_capacity_tokens=100_000, max_seqs=256, chunk_tokens=4096)
    est = estimate_serving(INST, engine, Load(kind=LoadKind.CLOSED, clients=n, requests=320), np.full(320, inp),
                           np.full(320, out), step=fixed_steps())
    cycle = STEP_S + PREFILL_S + (out - 1) * (STEP_S + n * PER_SEQ_S)
    assert cycle == pytest.approx(0.382)
    assert est.requests == 240  # the first quarter is warm-up
    assert est.e2e_s.mean == pytest.approx(cycle) and est.e2e_s.p99 == pytest.approx(cycle)
    assert est.ttft_s.p90 == pytest.approx(0.040) and est.tpot_s.p90 == pytest.approx(0.018)
    assert est.request_throughput_rps == pytest.approx(n / cycle)
    assert est.request_throughput_rps * est.e2e_s.mean == pytest.approx(n)  # Little's law


def test_closed_loop_with_a_step_budget_staggers_clients() -> None:
    # With a 256-token budget only one 200-token prompt fits a step; clients drift apart but Little's law
    # (clients = throughput x mean e2e, with no think time) holds in any closed loop.
    n = 12
    engine = Engine(kv_capacity_tokens=100_000, max_seqs=256, chunk_tokens=256)
    est = estimate_serving(INST, engine, Load(kind=LoadKind.CLOSED, clients=n, requests=1200), np.full(1200, 200),
                           np.full(1200, 30), step=fixed_steps())
    assert est.request_throughput_rps * est.e2e_s.mean == pytest.approx(n, rel=0.02)


def test_open_loop_is_md1() -> None:
    # One-token answers and one 512-token prompt per step: each request is served in one 40 ms step, FIFO, with
    # Poisson arrivals at load 0.7: an M/D/1 queue. Lindley's recursion gives each TTFT exactly, and the mean
    # wait tends to Pollaczek-Khinchine's rho s / (2 (1 - rho)) = 46.7 ms.
    s, rho, n = STEP_S + PREFILL_S, 0.7, 20_000
    load = Load(kind=LoadKind.OPEN, rate_rps=rho / s, requests=n, seed=3)
    engine = Engine(kv_capacity_tokens=100_000, max_seqs=256, chunk_tokens=512)
    est = estimate_serving(INST, engine, load, np.full(n, 512), np.full(n, 1), step=fixed_steps())
    arrivals = load.arrivals_s(n)
    wait, waits = 0.0, [0.0]
    for gap in np.diff(arrivals):
        wait = max(0.0, wait + s - gap)
        waits.append(wait)
    ttft = np.array(waits[n // 4:]) + s
    assert est.ttft_s.mean == pytest.approx(float(ttft.mean()), rel=1e-9)
    assert est.ttft_s.p90 == pytest.approx(float(np.percentile(ttft, 90)), rel=1e-9)
    assert est.ttft_s.mean - s == pytest.approx(rho * s / (2 * (1 - rho)), rel=0.05)
    assert est.request_throughput_rps == pytest.approx(rho / s, rel=0.03)


def test_open_loop_throughput_excludes_the_drain() -> None:
    """An open loop serves what arrives: the measured throughput is the completions between the first measured
    arrival and the last arrival, over that time (a new user saw 5.5-6.1 req/s served of 5 offered when the window
    ran to the last completion and counted the drain after the last arrival). At load 0.7 of the M/D/1 queue above,
    over 400 requests, it is the arrivals' own rate in that window within the few requests that straddle its end."""
    s, rho, n = STEP_S + PREFILL_S, 0.7, 400
    load = Load(kind=LoadKind.OPEN, rate_rps=rho / s, requests=n, seed=3)
    engine = Engine(kv_capacity_tokens=100_000, max_seqs=256, chunk_tokens=512)
    est = estimate_serving(INST, engine, load, np.full(n, 512), np.full(n, 1), step=fixed_steps())
    arrivals = load.arrivals_s(n)
    warm = n // 4
    offered = (n - 1 - warm) / (arrivals[-1] - arrivals[warm])  # arrivals after the first measured one, per second
    assert est.request_throughput_rps == pytest.approx(offered, rel=0.02)


def test_an_overloaded_open_loop_serves_at_its_full_rate() -> None:
    """Offered far beyond what one instance serves, the queue grows and the server runs full: it serves one request
    per 40 ms step (each a one-step, one-token request, FIFO, 512-token budget), 25 req/s, not the 0 req/s of the
    arrival window (a new user's pass at --rate 1e9: every arrival within a microsecond, no completion inside it)."""
    s, n = STEP_S + PREFILL_S, 400
    load = Load(kind=LoadKind.OPEN, rate_rps=1e9, requests=n, seed=3)
    engine = Engine(kv_capacity_tokens=100_000, max_seqs=256, chunk_tokens=512)
    est = estimate_serving(INST, engine, load, np.full(n, 512), np.full(n, 1), step=fixed_steps())
    assert est.request_throughput_rps == pytest.approx(1 / s, rel=1e-6)


def test_open_loop_light_load_is_one_request_at_a_time() -> None:
    # Arrivals 1 s apart (a trace's gaps) and answers of 10 tokens: nobody queues; TTFT 40 ms, TPOT 10.5 ms.
    n = 50
    load = Load(kind=LoadKind.OPEN, rate_rps=1.0, unit_gaps=(1.0,), requests=n)
    est = estimate_serving(INST, Engine(kv_capacity_tokens=100_000), load, np.full(n, 300), np.full(n, 10),
                           step=fixed_steps())
    assert est.ttft_s.p99 == pytest.approx(0.040) and est.tpot_s.p99 == pytest.approx(0.0105)
    assert est.e2e_s.mean == pytest.approx(0.040 + 9 * 0.0105)


def test_cli_json_is_deterministic_and_has_every_field(run_cli) -> None:
    args = ("serve-estimate", "--model", "llama3.1-8b", "--gpu", "H100", "--concurrency", "16", "--input-len",
            "uniform:500:1500", "--output-len", "uniform:100:300", "--format", "json")
    code, out, err = run_cli(*args)
    assert code == 0, err
    code2, out2, _ = run_cli(*args)
    assert out == out2
    data = json.loads(out)
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_s"):
        assert 0 < data[key]["p50"] <= data[key]["p90"] <= data[key]["p99"]
    assert data["throughput"]["requests_per_s_per_gpu"] > 0 and 0 < data["kv_cache"]["peak_fraction"] <= 1
    assert data["decode_step"]["total_ms"] > 0 and data["prefill_step"]["compute_ms"] > 0
    assert 10 < data["mean_running_batch"] <= 16


@pytest.mark.parametrize(("args", "needle"), [
    (("--rate", "1", "--concurrency", "4"), "give one load"),
    (("--concurrency", "4", "--tp", "3"), "does not divide"),
    (("--rate", "0"), "--rate > 0"),
    (("--rate", "1", "--output-len", "10.5"), "not a valid length distribution"),  # a token count is whole
])
def test_bad_input_is_one_line(run_cli, args, needle) -> None:
    code, _, err = run_cli("serve-estimate", "--model", "llama3.1-8b", "--gpu", "H100", "--input-len", "100",
                           "--output-len", "10", *args)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_a_model_too_big_for_the_instance_names_its_memory_and_the_nearest_that_fit(run_cli) -> None:
    # Llama 3.1 405B in bf16 on 8 H100: 405.85e9 x 2 B / 8 = 94.5 GiB of weights per GPU, over vLLM's 0.9 x 79.6 GiB.
    # The answer gives those numbers and the nearest instances that hold a KV cache; each runs as offered, with the
    # KV cache the answer names.
    args = ("serve-estimate", "--model", "llama3.1-405b", "--gpu", "H100", "--tp", "8", "--rate", "0.5",
            "--input-len", "1000", "--output-len", "100", "--requests", "50")
    code, _, err = run_cli(*args)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert ("does not fit on H100-SXM5-80GB tp8 pp1 with room for a KV cache: weights 94.5 GiB + activations "
            in err and "GiB per GPU > 71.6 GiB usable (0.9 x 79.6 GiB); nearest that hold one: --pp 2 (16 GPUs, "
            in err)
    offered = dict(re.findall(r"(--pp 2|--weight-dtype fp8) \(\d+ GPUs, KV cache ([\d,]+) tokens\)", err))
    assert set(offered) == {"--pp 2", "--weight-dtype fp8"}
    for option, tokens in offered.items():
        code, out, err = run_cli(*args, *option.split(), "--format", "json")
        assert code == 0, err
        assert json.loads(out)["kv_cache"]["capacity_tokens"] == int(tokens.replace(",", ""))


def test_serve_plan_and_serve_estimate_agree(run_cli) -> None:
    # serve-plan's chosen pool, re-run by serve-estimate at the pool's per-instance rate with the same lengths:
    # both simulate the same step model, so the percentiles agree within the noise of different arrival draws.
    code, out, err = run_cli("serve-plan", "--model", "llama3.1-8b", "--gpus", "H100", "--tp", "1", "--rate", "6",
                             "--input-len", "1000", "--output-len", "200", "--ttft-ms", "400", "--tpot-ms", "40",
                             "--disaggregate", "off", "--format", "json")
    assert code == 0, err
    pool = json.loads(out)["pools"][0]
    per_instance = pool["rate_rps"] / pool["instances"]
    code, out, err = run_cli("serve-estimate", "--model", "llama3.1-8b", "--gpu", "H100", "--tp", "1",
                             "--rate", f"{per_instance}", "--input-len", "1000", "--output-len", "200",
                             "--format", "json")
    assert code == 0, err
    est = json.loads(out)
    assert est["ttft_ms"]["p90"] == pytest.approx(pool["ttft_ms"], rel=0.15)
    assert est["tpot_ms"]["p90"] == pytest.approx(pool["tpot_ms"], rel=0.15)
