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
+14 .. +17 %; the compile-over-eager gain 15.7 % published, 18 % predicted); with async TP priced per fused op
(tp_overlap.py: backward input-gradient reduce-scatters unfused, the reduce-scatter's reduction kernel, each pull
hidden only under its own op's matmuls) and torchao's fp8 TP all-gathers: 15.0 % / 50.7 % (70B async TP +22.2 ->
+11.4 %, vanilla TP +0.2 -> +6.8 %; 405B rows 3 .. 5 points closer; async TP gain 5.7 % published, 10.2 %
predicted, was 29 %).
Left (not fitted): compiled 8B FSDP rows +13 .. +19 %;
CP at 128K-256K +32 .. +51 % (attention at those lengths); 70B / 405B 1F1B memory -11 .. -19 % (allocator reserve).
"""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.reference import titan
from clusterplan.reference.report import main as report_main

BOUNDS = {
    # row label -> (|tokens/s error| bound, |peak memory error| bound): achieved + 3 points, at least 20 % / 8 %.
    "T1 8b 8 FSDP+eager": (0.20, 0.10),  # +13.5% / -6.3%
    "T1 8b 8 FSDP+compile": (0.20, 0.08),  # +15.9% / +0.3%
    "T1 8b 8 FSDP+compile+float8": (0.20, 0.08),  # +13.0% / +0.6%
    "T2 8b 8 FSDP+compile+float8+s32k": (0.20, 0.08),  # +14.1% / -2.6%
    "T2 8b 8 FSDP+CP2+compile+float8+s64k": (0.20, 0.08),  # +7.5% / -2.8%
    "T2 8b 8 FSDP+CP4+compile+float8+s128k": (0.48, 0.08),  # +44.1% / -2.6%
    "T2 8b 8 CP8+compile+float8+s256k": (0.54, 0.08),  # +50.7% / -3.3%
    "T3 8b 128 FSDP+eager": (0.21, 0.12),  # +17.4% / -8.3%
    "T3 8b 128 FSDP+compile": (0.23, 0.08),  # +19.4% / -0.9%
    "T3 8b 128 FSDP+compile+float8": (0.20, 0.08),  # +16.0% / -0.6%
    "T4 70b 256 FSDP+TP8+compile+float8": (0.20, 0.20),  # +6.8% / -16.4% (fp8 TP all-gathers; was +0.2%)
    "T4 70b 256 FSDP+TP8+compile+float8+asyncTP": (0.20, 0.15),  # +11.4% / -11.1%
    "T5 405b 512 FSDP+TP8+PP8+compile+float8+asyncTP+1F1B": (0.20, 0.20),  # +12.6% / -16.6%
    "T5 405b 512 FSDP+TP8+PP8+compile+float8+asyncTP+Interleaved1F1B": (0.20, 0.08),  # +14.2% / -3.9%
    "T6 405b 512 FSDP+TP8+PP8+compile+float8+asyncTP+1F1B+s32k": (0.20, 0.12),  # +9.5% / -8.6%
    "T6 405b 512 FSDP+TP8+PP8+CP2+compile+float8+asyncTP+1F1B+s64k": (0.34, 0.13),  # +30.8% / -9.1%
    "T6 405b 512 FSDP+TP8+PP8+CP4+compile+float8+asyncTP+1F1B+s128k": (0.34, 0.14),  # +30.1% / -10.5%
    "T6 405b 512 TP8+PP8+CP8+compile+float8+asyncTP+1F1B+s256k": (0.53, 0.22),  # +49.4% / -18.9%
}
MEDIAN_BOUNDS = (0.18, 0.08)  # achieved 15.0 % tokens/s, 5.1 % memory (targets 10 % / 8 %)


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
    predicted gain must be positive and within 5 points of this row's (it was 29 %, 23 points off)."""
    by = {r.label: r for r in rows}
    vanilla, overlapped = (by["T4 70b 256 FSDP+TP8+compile+float8"],
                           by["T4 70b 256 FSDP+TP8+compile+float8+asyncTP"])
    published = overlapped.published_tokens_per_s / vanilla.published_tokens_per_s
    predicted = overlapped.predicted_tokens_per_s / vanilla.predicted_tokens_per_s
    assert predicted > 1.0 and abs(predicted - published) <= 0.05, (published, predicted)


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
