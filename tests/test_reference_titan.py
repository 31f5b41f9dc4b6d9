"""torchtitan's published H100 runs (tests/reference/torchtitan_h100_2412.csv; Liang et al. 2024, arXiv 2410.06511,
as torchtitan's benchmarks/llama3_h100_202412_torchtitan.md publishes them) against `estimate` with the torchtitan
stacks.

A held-out check set: no model constant is fitted to these rows and no per-row factor exists. Issue #13's target for
held-out H100-era runs: tokens/s within 10 % median and 20 % max, peak memory within 8 %. Each row is asserted
against the larger of that target (20 % time, 8 % memory) and the error it reached when this test last landed plus 3
points (BOUNDS), the medians against MEDIAN_BOUNDS, so the test fails when a change moves these rows the wrong way;
tighten the bounds as the model improves (a deliberate model change that moves a row past its bound updates BOUNDS
with the reason in its commit message).
History (tokens/s median / max |error|, 18 rows): on the Grand Teton preset (H100 96 GB HBM2e at 500 W) with elementwise
kernels priced as fused for every stack: 21.0 % / 51.1 % (eager rows +37 .. +41 %); with the eager stack's unfused
RMSNorm / RoPE / SwiGLU and SDPA's layout copies priced (compute.py unfused_extra_bytes): 17.6 % / 50.8 % (eager rows
+14 .. +17 %; the compile-over-eager gain 15.7 % published, 18 % predicted); with torch context_parallel as its
source runs it (step.py torch_allgather_cp_s / torch_cp_elementwise_bytes: repeat_kv'd K/V gathered twice, fp32 dK/dV
permutes, the last exposed, the merges' elementwise passes): 17.6 % / 42.2 % (CP rows +34 .. +51 % -> +2 .. +42 %);
with async TP priced per fused op (tp_overlap.py: the backward input-gradient reduce-scatters unfused, the fused
reduce-scatter's reduction kernel, each pull hidden only under its own op's matmuls) and torchao's fp8 TP
all-gathers: 15.0 % / 42.2 % (70B async TP +22.2 -> +11.4 %, vanilla TP +0.2 -> +6.8 %; 405B rows 1 .. 5 points
closer; async TP gain 5.7 % published, 10.2 % predicted, was 29 %); with torchtitan's step as its train loop runs it
(tests/test_torchtitan_step.py: foreach AdamW 84 B + foreach clipping 12 B per parameter instead of fused Adam's 32,
the eager fp32 cross-entropy 22 + 26 B per logit instead of 12 + 12, FSDP2's copy-out kernels and its root module's
exposed gather / reduce-scatter): 12.4 % / 41.8 % (8B FSDP rows +13.0 .. +19.4 % -> +6.7 .. +15.2 %); with PyTorch
SDPA's vendored FA2 forward at 0.905 of the FA2 curve (attention_kernels.yaml sdpa_fa2, pytorch/pytorch#142132):
11.1 % / 36.7 % (8B FSDP +6.0 .. +14.5 %, CP4 / CP8 +35.6 / +41.8 -> +31.0 / +36.7 %); with the ring's attention
priced call by call (compute.py cp_block_core_times: per rank the causal diagonal at seq / cp and cp - 1 unmasked calls
at the non-causal rate, which FA2 runs 10 % faster than the causal one at 16k): 11.1 % / 47.4 % (8B CP2 / CP4 / CP8
-1.9 / +31.0 / +36.7 -> +1.5 / +39.1 / +47.4 %, 405B CP2 / CP4 / CP8 +19.5 / +18.0 / +28.1 -> +22.3 / +23.0 / +35.1 %);
with context_parallel traced into the compiled blocks (step.py: functional collectives wait where issued under
tracing and inductor does not reorder them, so every all-gather and permute is exposed; the merges and fp32
accumulations fuse, the dead K/V cats drop): 10.1 % / 47.6 % (8B +2.8 / +39.9 / +47.6 %, 405B +13.3 / +6.2 / +16.6 %);
with both and the overlapped DP/FSDP collectives' interference (step.py interference_s): 8.9 % / 47.5 %.
With the GEMM k-depth terms (gemm.yaml; per-tensor fp8 from our own H200 sweep): 8.2 % / 47.3 %. With PyTorch SDPA on
its own measured FA2-backend curves (attention_kernels.yaml sdpa_fa2 rows, our H200 run: forward and causal backward
measured; head dim 128 causal: the backward 6-20 % below the old fa2-curve rule up to 8k, 3 % above it at 16k,
the forward 3-6 % above the fa2 curve x 0.905): 9.6 % / 45.2 % (14 of 18 rows
closer, mean |error| 12.6 -> 12.1 %; the 32k rows +8.2 / +7.7 -> +10.3 / +8.9 %).
Left (not fitted): 8B FSDP rows +6 .. +15 % (+4 points more on 128 GPUs than on 8, where the model predicts 1.7 %
faster: FSDP2 traffic over RoCE slowing the overlapped GEMMs is not priced; the same stack on H200 at 700 W,
torchtitan benchmarks/llama3_8b_h200_2025-06_torchtitan.md, is +9 .. +11 % and on A100 at 400 W, docs/performance.md
2024, +6 %, so the 500 W power-cap rule is not the main cause);
8B CP4 / CP8 +40 / +48 % (per-call SDPA shapes are the same at cp 2, 4 and 8 and every torch context_parallel term
scales with cp, yet on 8 GPUs the published per-step time grows 2.4x from cp 2 to cp 4 where the priced one grows 1.7x; the
405B rows, whose CP crosses hosts, fit within 17 % once its traffic is exposed: not explained by any priced term;
research/torch-context-parallel-2412.md decomposes it per layer: 83 ms more than priced per off-diagonal step at cp 4
and 8, none at cp 2, and gives the error each candidate mechanism would leave).
Memory history (median / max |error|): 5.1 % / 18.9 % with every TP row under-predicted (70B -16.4 / -11.1 %, 405B
1F1B -16.6 %, CP -9 .. -19 %); with the PyTorch-native terms priced (memory.py loss_peak_bytes_per_logit: loss_parallel's
16 B per logit under TP; torch_pipeline_bytes: per-micro-batch receive buffers, held stage outputs, the last stage's
output_chunks; torch_cp_gathered_kv_bytes): 3.0 % / 12.0 % (70B -5.0 / +1.1 %, 405B 1F1B -11.8 %, s32k / CP2 / CP4
-3.4 .. -4.2 %); with two over-counts and four missing distinctions fixed from source (memory.py: FSDP2's fp32 sharded
parameters are the master, 16 B per parameter, not 18; torchao's fp8-gathered unsharded weights 1 B, not 2, on every PP
stage; eager op-SAC keeps every MUST_SAVE output, w2's and the MLP reduce-scatter's included, compiled blocks only what
the backward graph reads; the eager loss's freed bf16 logits block stays reserved at pp 1; the loss peak and a running
layer's transients, the recompute working set and context_parallel's gathered K/V, counted as the larger, not the
sum): 2.3 % / 22.9 % (8B eager -6.3 / -8.3 -> -3.6 / -2.3 %, compiled within 2.6 %, CP rows within 1.0 %; 70B -8.1 /
-2.3 %; 405B interleaved +11.7 -> -2.1 %, 1F1B -11.8 -> -22.9 %, s32k .. CP8 -15 .. -23 %). Left: the 405B 1F1B rows
(published 82.5 GiB at 4 x 8192 tokens per micro-batch vs 75.3 GiB at 1 x 32768 with the same layout, schedule and
micro-batch count: no per-token term separates them, and the interleaved row, 72.7, is matched) and 70B vanilla TP
(published 4.3 GiB over async TP, whose gathers live in symmetric memory outside the caching allocator, at a peak
the loss dominates). With torchtitan's float8 all-gather only at dp_shard > 1 (torchtitan/float8.py Float8Handler):
2.3 % / 22.9 % (405B CP8, fsdp 1, -22.8 -> -15.9 %; 8B CP8 -1.0 -> -0.4 %).
405B PP rows, read against torch 2.6.0 (pipelining/stage.py, schedules.py, fsdp/_fully_shard) and torchtitan of Dec
2024: what the code keeps is priced (whole stage unsharded from the first forward, fp8 1 B; fp32 accumulated
gradients 4 B, FSDPParam.to_accumulated_grad_if_needed; per-micro-batch receive / gradient buffers, output_chunks;
8 micro-batches for both schedules, torchtitan PR #781 came after the runs). Counted tensor by tensor the live peak is
lower still: 1F1B's first stage holds 7 micro-batches, not 8, once every gradient is accumulated (-1.9 GiB), and under
Interleaved1F1B each virtual stage reduces, frees its gradients and reshards after its own last backward
(PipelineScheduleMulti last_backward per stage), so the last rank peaks at ~59 GiB, not 71.2. Against that live
accounting every published PP row is 12 .. 15 GiB higher, and the 1F1B 8K row 7 GiB higher again than the 32K row
with the same tokens per micro-batch, layout and schedule: a difference no tensor explains, as expected of the caching
allocator's reserved-but-free blocks (torchtitan logs the allocator's max reserved bytes). Not priced: no source
gives its size, and fitting it to these rows is not allowed.
Re-read tensor by tensor against the schedules (research/torchtitan-pipeline-memory.md): with the gradient lifetime
each schedule gives, every PP row is 12 .. 16 GiB above what its peak rank holds (the 8K 1F1B row 19.5), the 8K
and 32K 1F1B rows hold the same tensors, and every missing source term lowers the prediction: left unpriced.
With FSDP2's buffers at the loss peak from source (memory.fsdp2_peak_buffers: the root module's embedding + norm + LM
head unsharded from forward through backward, the last block kept, the all-gather stream's pool the compute stream
never gets back, in place of an average layer's; pp 1 only): 3.2 % / 22.9 % (8B within 3.4 %: T1 eager -3.6 ->
-0.0 %, T2 / T3 +2.5 .. +3.4 %, were -0.2 .. -2.3 %; 70B -8.1 / -2.3 -> -7.3 / -1.4 %; pp > 1 rows unchanged).
"""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.reference import titan
from clusterplan.reference.report import main as report_main

BOUNDS = {
    # row label -> (|tokens/s error| bound, |peak memory error| bound): achieved + 3 points, at least 20 % / 8 %.
    "T1 8b 8 FSDP+eager": (0.20, 0.08),  # +7.6% / -0.0% (-3.6% before FSDP2 peak buffers)
    "T1 8b 8 FSDP+compile": (0.20, 0.08),  # +8.8% / +1.5% (-2.3% before FSDP2 peak buffers)
    "T1 8b 8 FSDP+compile+float8": (0.20, 0.08),  # +2.7% (fp8 k-depth: was +4.5%) / +1.2% (-2.6% before FSDP2 peak buffers)
    "T2 8b 8 FSDP+compile+float8+s32k": (0.20, 0.08),  # +8.0% (fp8 k-depth: was +9.0%) / +3.3% (-0.3% before FSDP2 peak buffers)
    "T2 8b 8 FSDP+CP2+compile+float8+s64k": (0.20, 0.08),  # +2.0% (fp8 k-depth: was +2.6%) / +3.1% (-0.5% before FSDP2 peak buffers)
    # Worse since the ring's calls are priced one by one (compute.py cp_block_core_times: cp - 1 of the cp SDPA calls
    # run without a mask, at FA2's non-causal rate, 10 % above the causal one at 16k) and the traced elementwise passes
    # fuse (step.py TORCH_CP_TRACED_*); the now exposed NVLink traffic adds little: +30.9 / +36.6 -> +39.7 / +47.5 %.
    "T2 8b 8 FSDP+CP4+compile+float8+s128k": (0.43, 0.08),  # +39.3% (fp8 k-depth: was +39.7%) / +3.3% (-0.2% before FSDP2 peak buffers)
    "T2 8b 8 CP8+compile+float8+s256k": (0.51, 0.08),  # +47.3% (fp8 k-depth: was +47.5%) / +3.0% (-0.4% before FSDP2 peak buffers, -1.0% before bf16 gathers at dp_shard 1)
    "T3 8b 128 FSDP+eager": (0.20, 0.08),  # +12.4% / +1.9% (-2.3% before FSDP2 peak buffers)
    "T3 8b 128 FSDP+compile": (0.20, 0.08),  # +13.4% / +3.4% (-1.2% before FSDP2 peak buffers)
    "T3 8b 128 FSDP+compile+float8": (0.20, 0.08),  # +7.0% (fp8 k-depth: was +8.9%) / +3.1% (-1.7% before FSDP2 peak buffers)
    "T4 70b 256 FSDP+TP8+compile+float8": (0.20, 0.11),  # +1.7% (fp8 k-depth: was +4.5%) / -7.3% (-8.1% before FSDP2 peak buffers)
    "T4 70b 256 FSDP+TP8+compile+float8+asyncTP": (0.20, 0.08),  # +6.7% (fp8 k-depth: was +8.7%) / -1.4% (-2.3% before FSDP2 peak buffers)
    # The 405B 1F1B rows are worse since FSDP2's fp32 sharded parameters (16 B, not 18) and torchao's fp8-gathered
    # unsharded stage weights (1 B, not 2: torchtitan's 405B config enables enable_fsdp_float8_all_gather) are
    # counted from source: -5.8 - 1.5 GiB on every 405B rank; the interleaved row goes +11.7% -> -2.1%.
    "T5 405b 512 FSDP+TP8+PP8+compile+float8+asyncTP+1F1B": (0.20, 0.26),  # +11.9% / -22.9%
    "T5 405b 512 FSDP+TP8+PP8+compile+float8+asyncTP+Interleaved1F1B": (0.20, 0.08),  # +13.5% / -2.1%
    "T6 405b 512 FSDP+TP8+PP8+compile+float8+asyncTP+1F1B+s32k": (0.20, 0.19),  # +7.9% / -15.6%
    # Better since the compiled CP collectives are priced exposed (step.py torch_allgather_cp_s traced: its
    # inter-host all-gathers and fp32 dK/dV permutes): +19.5 / +18.0 / +28.0 -> +13.2 / +6.1 / +16.6 %.
    "T6 405b 512 FSDP+TP8+PP8+CP2+compile+float8+asyncTP+1F1B+s64k": (0.20, 0.19),  # +13.2% / -15.4%
    "T6 405b 512 FSDP+TP8+PP8+CP4+compile+float8+asyncTP+1F1B+s128k": (0.20, 0.20),  # +6.1% / -16.1%
    # fsdp 1: torchtitan's Float8Handler turns the float8 all-gather off without dp_shard, bf16 unsharded stage weights
    # (memory.py state_bytes): -22.8 -> -15.9 %.
    "T6 405b 512 TP8+PP8+CP8+compile+float8+asyncTP+1F1B+s256k": (0.20, 0.19),  # +16.6% / -15.9%
}
MEDIAN_BOUNDS = (0.12, 0.08)  # achieved 9.6 % tokens/s (8.2 % before SDPA's own measured curves, whose faster 16k causal
# backward moves the two 32k rows +2 points while 14 of 18 rows come closer; 8.4 % before the per-tensor fp8 k_0, 8.9 % before the fp8 k-depth term, 10.4 % before torch CP traced, 11.1 % before interference_s),
# 3.2 % memory (2.3 % before FSDP2 peak buffers, 3.0 % before torchtitan memory from source) (targets 10 % / 8 %)


@pytest.fixture(scope="module")
def rows() -> list[titan.TitanRow]:
    return titan.titan_rows()


def test_every_csv_row_is_predicted_with_its_published_gpu_count(rows):
    assert len(rows) == len(BOUNDS) == 18
    assert {r.label for r in rows} == set(BOUNDS)
    for r in rows:
        assert r.expressible and r.layout.world == r.gpus
        assert r.stack in ("torchtitan", "torchtitan-compile", "torchtitan-compile, async TP off")


@pytest.mark.parametrize("label", sorted(BOUNDS))
def test_row_within_bound(rows, label):
    row = next(r for r in rows if r.label == label)
    time_bound, memory_bound = BOUNDS[label]
    assert time_bound >= titan.TARGET_TIME_MAX and memory_bound >= titan.TARGET_MEMORY
    assert abs(row.error) <= time_bound, (
        f"{label}: predicted {row.predicted_tokens_per_s:.0f} tokens/s/GPU vs published "
        f"{row.published_tokens_per_s:.0f} ({row.error:+.1%}), bound {time_bound:.0%}")
    assert abs(row.memory_error) <= memory_bound, (
        f"{label}: predicted {row.predicted_memory_gib:.1f} GiB vs published {row.published_memory_gib:.1f} "
        f"({row.memory_error:+.1%}), bound {memory_bound:.0%}")


def test_medians_within_bound(rows):
    _, time_median, _, memory_median, _ = titan.summary(rows)
    assert time_median <= MEDIAN_BOUNDS[0], f"tokens/s median |error| {time_median:.1%}"
    assert memory_median <= MEDIAN_BOUNDS[1], f"memory median |error| {memory_median:.1%}"


def test_compile_gain_over_eager_is_predicted(rows):
    """Table 1 and 3: torch.compile is +15.7 % (8 GPUs) and +16.2 % (128 GPUs) over eager in the source; the model
    prices it as the eager stack's unfused kernels, so the predicted gain must be there too (within 5 points)."""
    by = {r.label: r for r in rows}
    for gpus in (8, 128):
        eager, compiled = by[f"T{1 if gpus == 8 else 3} 8b {gpus} FSDP+eager"], by[
            f"T{1 if gpus == 8 else 3} 8b {gpus} FSDP+compile"]
        published = compiled.published_tokens_per_s / eager.published_tokens_per_s
        predicted = compiled.predicted_tokens_per_s / eager.predicted_tokens_per_s
        assert predicted > 1.0 and abs(predicted - published) <= 0.05, (gpus, published, predicted)


def test_async_tp_gain_is_predicted(rows):
    """Table 4: async TP is +5.7 % over vanilla TP on 70B / 256 H100 in the source (829 -> 876 tokens/s/GPU); the
    PyTorch async-TP post reports ~8 % end-to-end on 70B, torchtitan's June 2025 async-TP benchmark 1.16 (float8
    tensorwise) and 1.09 (bf16) on a near-identical layout. Priced per fused op (tp_overlap.py), nothing fitted: the
    predicted gain must be positive and within 5.5 points of this row's (it was 29 %, 23 points off; 4.3 points until
    the fp8 GEMM k-depth term, gemm.yaml fp8_k_overhead, slowed both rows' short-k GEMMs: vanilla +4.5 -> +1.7 %,
    async +8.7 -> +6.7 %, gain 1.099 -> 1.108 against the published 1.057)."""
    by = {r.label: r for r in rows}
    vanilla, overlapped = (by["T4 70b 256 FSDP+TP8+compile+float8"],
                           by["T4 70b 256 FSDP+TP8+compile+float8+asyncTP"])
    published = overlapped.published_tokens_per_s / vanilla.published_tokens_per_s
    predicted = overlapped.predicted_tokens_per_s / vanilla.predicted_tokens_per_s
    assert predicted > 1.0 and abs(predicted - published) <= 0.055, (published, predicted)


def test_torchtitan_stage_split_matches_hand_count():
    """torchtitan generate_split_points: 126 layers over 8 stages: 15, 16 x 6, 15; over 16 stages (2 per rank,
    looped): 7, 8 x 14, 7, so rank 0 holds stages 0 and 8 (7 + 8) and rank 7 stages 7 and 15 (8 + 7)."""
    from clusterplan.models.architecture.catalog import load_model

    l405 = load_model("llama3.1-405b")
    assert titan.pipeline_split(l405, 8, 1)[:2] == (15, 15)
    assert titan.pipeline_split(l405, 8, 2)[:2] == (15, 15)
    assert titan.pipeline_split(load_model("llama3.1-70b"), 8, 1)[:2] == (0, 0)


def test_report_carries_the_torchtitan_table(tmp_path, capsys):
    assert report_main(["--markdown"]) == 0
    text = capsys.readouterr().out
    assert "torchtitan on H100" in text and text.count("| llama3.1-") >= 18


def test_unfused_kernels_worked_example():
    """Llama-3.1-8B (h 4096, q 4096, K + V 2048, v 4096, ffn 14336, 32 heads over 8 KV heads), tp 1, one 8192-token
    sequence. Beyond the fused kernels, an eager stack moves per token: RMSNorm 2 norms x (36 - 4) B x h = 64 h,
    RoPE (20 - 4) B x (q + k) = 16 x 5120, SwiGLU (10 - 8) B x ffn = 2 x 14336, and SDPA's copies: repeat_kv
    2 x 2048 read + 2 x 2 x 4096 written, the output's contiguous 4 x 4096:
    8192 x (262144 + 81920 + 28672 + 36864) = 3,355,443,200 B. Compiled: the SDPA copies only, 8192 x 36864."""
    from clusterplan.hardware_db import get_stack
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.models.architecture.shapes import ModelShapes
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.batch import LayoutArrays
    from clusterplan.models.training.compute import layer_time, unfused_extra_bytes
    from clusterplan.models.training.layout import Layout

    shapes = ModelShapes.of(load_model("llama3.1-8b"))
    L = LayoutArrays.from_layouts([Layout(dp=8, zero=3, mbs=1, gbs=8, seq=8192, recompute="selective")])
    eager, compiled, mcore = (float(unfused_extra_bytes(shapes, L, False, get_stack(s))[0])
                              for s in ("torchtitan", "torchtitan-compile", "megatron-core"))
    assert eager == 8192 * (64 * 4096 + 16 * 5120 + 2 * 14336 + 36864) == 3_355_443_200
    assert compiled == 8192 * 36864 == 301_989_888
    assert mcore == 0.0
    # Forward carries the extra bytes once at the achieved HBM rate (tp 1: the two stacks differ in nothing else).
    hw = HardwareRates.of(load_cluster("dgx-h100:1"))
    t_eager, t_comp = (layer_time(shapes, L, hw, False, get_stack(s)) for s in ("torchtitan", "torchtitan-compile"))
    assert float(t_eager.forward_s[0] - t_comp.forward_s[0]) == pytest.approx(
        (eager - compiled) / hw.hbm_bytes_per_s, rel=1e-12)
    # A GPT (LayerNorm, learned positions, no gate, unfused attention) under Megatron-LM 2021 gets nothing extra:
    # the A100 reference tables keep their numbers.
    from clusterplan.reference.report import gpt

    gpt_shapes = ModelShapes.of(gpt(2048, 16, 24))
    assert float(unfused_extra_bytes(gpt_shapes, L, False, get_stack("megatron-lm-2021"))[0]) == 0.0
    assert np.all(unfused_extra_bytes(shapes, L, False, get_stack("megatron-core")) == 0.0)


def test_torch_context_parallel_worked_example():
    """torch context_parallel's elementwise passes (step.py torch_cp_elementwise_bytes, counted by hand from
    torch/distributed/tensor/experimental/_attention.py): Llama-3.1-8B at 262144 tokens on cp 8, tp 1, 32768 tokens per
    rank; SDPA gets K and V after repeat_kv, so q = out = 32768 x 4096 = 134,217,728 elements and K + V = 2 x that.
    Forward, last rank: copies 4 x kv x 8, fp32 casts 6 x out x 8, 7 merges 32 x out, final cast 6 x out
    = 32 kv + 278 out = 45,902,462,976 B. Backward: q (4 + 10 x 8 + 6) = 90 q, kv (4 + 4 x 8 + 10 + 13 x 7 + 8 x 8 + 6)
    = 207 kv = 67,645,734,912 B. cp 1: nothing."""
    from clusterplan.hardware_db import get_stack
    from clusterplan.models.training.step import torch_cp_elementwise_bytes

    q = out = 32768 * 4096
    kv = 2 * q
    fwd, bwd = torch_cp_elementwise_bytes(np.array([q, q]), np.array([kv, kv]), np.array([out, out]),
                                          np.array([8.0, 1.0]))
    assert float(fwd[0]) == 32 * kv + 278 * out == 45_902_462_976
    assert float(bwd[0]) == 90 * q + 207 * kv == 67_645_734_912
    assert float(fwd[1]) == float(bwd[1]) == 0.0
    # Traced by torch.compile (TORCH_CP_TRACED_*): forward one copy 4 kv + 7 fused merges 10 x out less 4 x out at the
    # ends = 4 kv + 66 out = 74 q = 9,932,111,872 B; backward kv (4 + 6 + 9 x 7 + 6) = 79 kv, q (6 + 10 x 6 + 8) = 74 q,
    # 158 q + 74 q = 232 q = 31,138,512,896 B. cp 2: forward 4 kv + 6 out, backward 25 kv + 14 q.
    fwd, bwd = torch_cp_elementwise_bytes(np.array([q, q, q]), np.array([kv, kv, kv]), np.array([out, out, out]),
                                          np.array([8.0, 2.0, 1.0]), traced=True)
    assert float(fwd[0]) == 4 * kv + 66 * out == 9_932_111_872
    assert float(bwd[0]) == 79 * kv + 74 * q == 31_138_512_896
    assert float(fwd[1]) == 4 * kv + 6 * out and float(bwd[1]) == 25 * kv + 14 * q
    assert float(fwd[2]) == float(bwd[2]) == 0.0
    # Only the torch stacks run context parallelism this way; Megatron-Core (TE's p2p ring) keeps its pricing.
    assert get_stack("torchtitan").cp_impl == get_stack("torchtitan-compile").cp_impl == "torch"
    assert get_stack("megatron-core").cp_impl == "megatron"


def test_torch_allgather_exposure_worked_example():
    """torch_allgather_cp_s by its waits: with no attention to hide under, forward exposes the whole all-gather (again
    under full recompute), backward the second all-gather plus every fp32 dK/dV permute (latency + transfer, cp of
    them); with attention far longer than the traffic only the latencies and the last permute stay exposed."""
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.step import Group, _collective, _p2p_parts, torch_allgather_cp_s
    from clusterplan.models.training.topology import Axis

    hw = HardwareRates.of(load_cluster("dgx-h100:1"))
    kv_bytes, cp = np.array([2.0 ** 30]), np.array([8.0])
    group = Group(size=cp, stride=np.array([1.0]), axis=Axis.CP)
    n_out = np.array([1.0])
    ag = float(_collective("all_gather", cp * kv_bytes, group, hw)[0])
    lat, xfer = (float(x[0]) for x in _p2p_parts(2.0 * kv_bytes, n_out, hw, Axis.CP))
    zero = np.array([0.0])
    bare = float(torch_allgather_cp_s(kv_bytes, cp, group, n_out, zero, zero, np.array([1.0]), hw)[0])
    assert bare == pytest.approx(2 * ag + ag + 8 * (lat + xfer), rel=1e-12)
    hidden = float(torch_allgather_cp_s(kv_bytes, cp, group, n_out, np.array([1e3]), np.array([1e3]), zero, hw)[0])
    o = hw.comm_overlap
    assert hidden == pytest.approx((1 - o) * (2 * ag + 7 * xfer) + 8 * lat + xfer, rel=1e-12)
    # Traced into a torch.compile graph every collective waits where it is issued: all exposed however long the
    # attention, forward all-gather + backward all-gather + 8 permutes.
    traced = float(torch_allgather_cp_s(kv_bytes, cp, group, n_out, np.array([1e3]), np.array([1e3]), zero, hw,
                                        traced=True)[0])
    assert traced == pytest.approx(2 * ag + 8 * (lat + xfer), rel=1e-12)


def test_compiled_stack_traces_context_parallel():
    """torchtitan-compile (compiled: true) prices torch context_parallel traced (exposed collectives, fused
    elementwise); the eager torchtitan stack keeps the overlapped, unfused pricing. Same layout, same attention: the
    cp term differs by exactly the two variants' difference."""
    from clusterplan.hardware_db import get_stack
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.models.architecture.shapes import ModelShapes
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.batch import LayoutArrays
    from clusterplan.models.training.compute import layer_time
    from clusterplan.models.training.layout import Layout
    from clusterplan.models.training.step import (
        Group,
        _layer_comm,
        torch_allgather_cp_s,
        torch_cp_elementwise_bytes,
    )
    from clusterplan.models.training.topology import Axis

    hw = HardwareRates.of(load_cluster("dgx-h100:1"))
    shapes = ModelShapes.of(load_model("llama3.1-8b"))
    L = LayoutArrays.from_layouts([Layout(dp=2, cp=4, cp_kind="allgather", zero=3, mbs=1, gbs=2, seq=131072,
                                          recompute="full", flash_attn=True)])
    eager, compiled = get_stack("torchtitan"), get_stack("torchtitan-compile")
    assert compiled.compiled and not eager.compiled
    lt = layer_time(shapes, L, hw, False, compiled)
    cp_eager = float(_layer_comm(shapes, L, hw, eager, False, lt)[1][0])
    cp_traced = float(_layer_comm(shapes, L, hw, compiled, False, lt)[1][0])
    # 32768 tokens per rank; SDPA's K and V after repeat_kv: kv = 2 x q = 2 x out elements, 2 B each.
    q = 32768 * 4096
    kv, group = 2 * q, Group.of(L, Axis.CP)
    n_out = np.array([1.0])
    ag = [float(torch_allgather_cp_s(np.array([2.0 * kv]), L.cp, group, n_out, lt.core_forward_s, lt.core_backward_s,
                                     np.array([1.0]), hw, traced=t)[0]) for t in (False, True)]
    (fe, be), (ft, bt) = (torch_cp_elementwise_bytes(np.array([q]), np.array([kv]), np.array([q]), L.cp, traced=t)
                          for t in (False, True))
    elementwise = (2 * (float(ft[0]) - float(fe[0])) + float(bt[0]) - float(be[0])) / hw.hbm_bytes_per_s
    assert cp_traced - cp_eager == pytest.approx(ag[1] - ag[0] + elementwise, rel=1e-9)
    assert ag[1] > ag[0] and elementwise < 0  # exposed traffic, fewer bytes
