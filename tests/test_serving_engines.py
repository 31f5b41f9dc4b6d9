"""Engine profiles (hardware_db/data/engines.yaml) and the serving terms they feed, each by a worked example."""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.errors import BadInputError
from clusterplan.hardware_db import get_gpu
from clusterplan.hardware_db.engines import ENGINE_SOURCE_KEYS, engines, get_engine
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.serving.kv import kv_bytes_per_token
from clusterplan.models.serving.model import (
    ServingInstance,
    ServingKnobs,
    knobs_for_gpu,
    serving_memory,
    step_model,
    weight_bytes_split,
)
from clusterplan.models.serving.sim import Engine, simulate

H100 = get_gpu("H100")
LLAMA70 = load_model("llama3.1-70b")


def test_every_engine_number_has_a_source_and_the_three_engines_exist() -> None:
    assert {"vllm", "sglang", "trtllm"} <= {e.engine for e in engines().values()}
    for profile in engines().values():
        assert all(profile.sources[k].strip() for k in ENGINE_SOURCE_KEYS)
    assert get_engine(None).name == "vllm" and get_engine("TRTLLM").name == "trtllm"
    with pytest.raises(BadInputError, match="did you mean"):
        get_engine("vlm")


def test_allreduce_call_latency_replaces_the_ring_at_decode() -> None:
    # 70B at tp 4 under the vLLM profile: 160 all-reduces per step at 12 us each = 1.92 ms of latency, where the
    # ring model would charge 2 (tp - 1) x 2 us = 12 us too: pick tp 8 to tell them apart (20 us vs 28 us).
    vllm = get_engine("vllm")
    assert vllm.allreduce_latency_s(8) == pytest.approx(20e-6) and vllm.allreduce_latency_s(3) == pytest.approx(12e-6)
    inst = ServingInstance(model=LLAMA70, gpu=H100, tp=8, knobs=ServingKnobs.from_engine(vllm, 8))
    ring = ServingInstance(model=LLAMA70, gpu=H100, tp=8)
    assert step_model(inst).ar_fixed_s == pytest.approx(20e-6)
    assert step_model(ring).ar_fixed_s == pytest.approx(2 * 7 * 2e-6)
    terms = step_model(inst).terms(0.0, 0.0, 1.0, 1000.0)
    bytes_part = step_model(inst).ar_s_per_token * 1.0 * 160
    assert float(terms.allreduce_s) == pytest.approx(160 * 20e-6 + bytes_part)


def test_calibrated_alpha_wins_over_the_engine_table() -> None:
    from clusterplan.models.hardware.calibration import calibration_from_dict

    cal = calibration_from_dict({
        "format": "clusterplan-calibration", "version": 1, "meta": {"device_name": "NVIDIA H100 80GB HBM3"},
        "collectives": {"all_reduce": {"scale_up": {"latency_s": 3e-6, "busbw_bytes_per_s": 3e11}}},
        "serving": {"decode_step_overhead_s": 0.004}})
    knobs = knobs_for_gpu(H100, cal, "bf16", get_engine("vllm"), 4)
    assert knobs.step_overhead_s == 0.004 and knobs.allreduce_latency_s == 3e-6 and knobs.allreduce_call_s is None
    assert knobs.request_overhead_s == get_engine("vllm").request_overhead_s  # not measured: the engine's


def test_request_overhead_delays_admission_and_counts_in_ttft() -> None:
    # One request alone: TTFT = overhead + its prefill step; it also shifts the end by the same amount.
    inst = ServingInstance(model=load_model("llama3.1-8b"), gpu=H100)
    step = step_model(inst)
    base = Engine(kv_capacity_tokens=100_000)
    slow = Engine(kv_capacity_tokens=100_000, request_overhead_s=0.02)
    a = simulate(step, base, np.array([0.0]), np.array([500]), np.array([10]), record=True)
    b = simulate(step, slow, np.array([0.0]), np.array([500]), np.array([10]), record=True)
    assert b.ttft_s == pytest.approx(a.ttft_s + 0.02) and b.tpot_s == pytest.approx(a.tpot_s)
    assert b.trace.done_s[0] == pytest.approx(a.trace.done_s[0] + 0.02)


def test_whole_prompt_prefill_waits_for_the_next_step() -> None:
    # Two 5000-token prompts with an 8192-token budget: chunked, step 1 takes 5000 + 3192 and step 2 the last 1808;
    # whole prompts (TensorRT-LLM default), step 1 takes the first prompt only and step 2 the second.
    inst = ServingInstance(model=load_model("llama3.1-8b"), gpu=H100)
    step = step_model(inst)
    pairs = 5000 * 2500.0
    for chunked, first, second in ((True, step.time_s(8192, pairs + 3192 * 1596.0, 0, 0),
                                    step.time_s(1808, 1808 * (3192 + 904.0), 0, 0)),
                                   (False, step.time_s(5000, pairs, 0, 0), step.time_s(5000, pairs, 0, 0))):
        res = simulate(step, Engine(kv_capacity_tokens=100_000, chunk_tokens=8192, chunked_prefill=chunked),
                       np.zeros(2), np.full(2, 5000), np.full(2, 1), record=True)
        assert sorted(res.trace.ttft_s) == pytest.approx([first, first + second])


def test_dp_attention_splits_kv_by_group_and_keeps_experts_sharded() -> None:
    # DeepSeek-V3 on 8 H200 at tp 8: the MLA latent is replicated on every tp rank (70,272 B/token in bf16), so
    # each GPU's KV holds the whole instance's tokens; with 8 DP-attention groups each GPU caches only its
    # group's tokens: 8x the capacity from the same free memory, while attention weights are replicated.
    ds = load_model("deepseek-v3")
    h200 = get_gpu("H200")
    tp8 = ServingInstance(model=ds, gpu=h200, tp=8, ep=8, weight_dtype="fp8")
    dp8 = ServingInstance(model=ds, gpu=h200, tp=8, ep=8, attention_dp=8, weight_dtype="fp8")
    dense_tp, expert_tp = weight_bytes_split(tp8)
    dense_dp, expert_dp = weight_bytes_split(dp8)
    assert expert_dp == expert_tp and dense_dp == pytest.approx(8 * dense_tp)
    free_tp = serving_memory(tp8).kv_gib
    free_dp = serving_memory(dp8).kv_gib
    per_token = kv_bytes_per_token(ds, 2.0)
    assert serving_memory(tp8).kv_capacity_tokens == int(free_tp * 2**30 // per_token)
    assert serving_memory(dp8).kv_capacity_tokens == 8 * int(free_dp * 2**30 // per_token)
    # Each GPU reads its own group's KV: an eighth of the batch's context.
    assert step_model(dp8).kv_read_s_per_token == pytest.approx(step_model(tp8).kv_read_s_per_token / 8)


def test_fp8_kv_halves_kv_bytes_and_doubles_capacity_tokens() -> None:
    bf16 = ServingInstance(model=LLAMA70, gpu=H100, tp=4)
    fp8 = ServingInstance(model=LLAMA70, gpu=H100, tp=4, kv_dtype="fp8")
    assert step_model(fp8).kv_read_s_per_token == pytest.approx(step_model(bf16).kv_read_s_per_token / 2)
    assert serving_memory(fp8).kv_capacity_tokens == pytest.approx(2 * serving_memory(bf16).kv_capacity_tokens, abs=2)


@pytest.mark.parametrize(("kwargs", "needle"), [({"ep": 3}, "must divide"), ({"attention_dp": 16}, "must divide"),
                                                ({"ep": 2}, "has no experts")])
def test_bad_parallel_sizes_say_what_to_do(kwargs: dict, needle: str) -> None:
    with pytest.raises(BadInputError, match=needle):
        ServingInstance(model=LLAMA70, gpu=H100, tp=8, **kwargs)


def test_decode_beyond_the_captured_cuda_graphs_pays_eager_launches() -> None:
    # SGLang captures decode graphs up to batch 160: batch 161 adds the eager-launch cost (prefill_overhead_s,
    # 0.5 ms) on top of one more sequence's cost; batch 160 does not.
    sglang = get_engine("sglang")
    step = step_model(ServingInstance(model=load_model("llama3.1-8b"), gpu=H100,
                                      knobs=ServingKnobs.from_engine(sglang, 1)))
    per_seq = float(step.time_s(0.0, 0.0, 160.0, 160.0 * 1000)) - float(step.time_s(0.0, 0.0, 159.0, 159.0 * 1000))
    jump = float(step.time_s(0.0, 0.0, 161.0, 161.0 * 1000)) - float(step.time_s(0.0, 0.0, 160.0, 160.0 * 1000))
    assert sglang.cuda_graph_max_batch == 160
    assert jump == pytest.approx(per_seq + sglang.prefill_overhead_s, rel=1e-6)


def test_kv_pages_round_each_request_up() -> None:
    # 160 KV tokens in pages of 16: requests of 70 + 10 tokens reserve 5 pages (80) each, so two run together;
    # 75 + 10 = 85 tokens reserve 6 pages (96), so the second waits until the first finishes.
    step = step_model(ServingInstance(model=load_model("llama3.1-8b"), gpu=H100))
    for prompt, together in ((70, True), (75, False)):
        res = simulate(step, Engine(kv_capacity_tokens=160, kv_block_tokens=16), np.zeros(2), np.full(2, prompt),
                       np.full(2, 10), record=True)
        first_done = min(res.trace.done_s)
        assert (max(res.trace.ttft_s) < first_done) == together
    assert get_engine("vllm").kv_block_tokens == 16 and get_engine("trtllm").kv_block_tokens == 32
