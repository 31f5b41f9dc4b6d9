"""The Megatron-Core MoE report's benchmark runs and the Megatron-MoE-ModelZoo rows it points to
(tests/reference/mcore_moe_2603.csv; Yan et al. 2026, arXiv 2603.07685, Tables 11 / 20 / B.2) against `estimate` with
the megatron-core stack (reference/mcore_moe.py).

A held-out check set: no model constant is fitted to these rows and no per-row factor exists. Issue #13's target for
held-out runs: tokens/s within 10 % median and 20 % max. Each expressible row is asserted against the larger of that
target (20 %) and the error it reached when this test last landed plus 3 points (BOUNDS), the median against
MEDIAN_BOUND; tighten the bounds as the model improves (a deliberate model change that moves a row past its bound
updates BOUNDS with the reason in its commit message).
History (2026-12-03, first measured): 9 of 16 rows expressible, median 7.1 %, max 86.8 %. The GB200 / GB300 rows
(HybridEP inside the NVL72 domain, priced as the NCCL all-to-all there) are within 7 % except the ModelZoo GB200 BF16
ep8 pp8 row (-17.8 %); the H100 rows with EP8 inside a node are off both ways: pipelined with mbs 1 (tp2 pp32 vp3
NCCL all-to-all +51 %, tp4 pp8 vp4 DeepEP +87 %, bf16, so not the fp8 padding copies) too fast, as the Bridge 25.11
H100 Qwen3-30B row (+149 %), and Megatron-FSDP pp1 mbs4 with full recompute -18 % too slow. Seven rows run the 1F1B
all-to-all overlap or DeepEP across nodes, which Layout cannot express: listed with the reason, not priced.
"""

from __future__ import annotations

import pytest

from clusterplan.reference import mcore_moe
from clusterplan.reference.report import TARGET_TIME_MAX

BOUNDS = {
    "report DGX-GB200 DeepSeekV3 FP8-MX 256 tp1 pp4v4 ep64 mbs1 hybridep": 0.20,  # +7.1% (estimate: out of memory)
    "report DGX-GB200 DeepSeekV3 BF16 256 tp1 pp8v4 ep32 mbs1 hybridep": 0.20,  # -3.2%
    "report DGX-GB300 Qwen3_235B_a22B FP8-MX 256 tp1 pp4v6 ep64 mbs2 hybridep": 0.20,  # -5.3%
    "report DGX-GB300 Qwen3_235B_a22B FP8-MX 128 tp4 pp4v12 ep32 mbs1 hybridep": 0.20,  # +0.4% (seq 131072, cp4)
    "zoo DGX-H100 Qwen3_235B_a22B BF16 256 tp2 pp1v1 ep8 mbs4 deepep": 0.21,  # -18.0% (Megatron-FSDP, full recompute)
    "zoo DGX-H100 Qwen3_235B_a22B BF16 256 tp2 pp32v3 ep8 mbs1 alltoall": 0.545,  # +51.4%
    "zoo DGX-H100 Qwen3_235B_a22B BF16 256 tp4 pp8v4 ep8 mbs1 deepep": 0.90,  # +86.8%
    "zoo DGX-GB200 Qwen3_235B_a22B BF16 256 tp1 pp8v1 ep8 mbs1 hybridep": 0.208,  # -17.8%
    "zoo DGX-GB300 Qwen3_235B_a22B FP8-MX 256 tp1 pp4v1 ep32 mbs2 hybridep": 0.20,  # -5.5%
}
MEDIAN_BOUND = 0.10  # achieved 7.1 % (target 10 %)
NOT_EXPRESSIBLE = {
    "report DGX-GB300 DeepSeekV3 FP8-MX 256 tp1 pp4v4 ep64 mbs1 hybridep +a2a-overlap",
    "report DGX-H100 DeepSeekV3 FP8-BLK 1024 tp2 pp8v4 ep64 mbs1 deepep +a2a-overlap",
    "report DGX-GB200 Qwen3_235B_a22B FP8-MX 256 tp1 pp4v6 ep64 mbs3 hybridep +a2a-overlap",
    "report DGX-GB200 Qwen3_235B_a22B BF16 256 tp1 pp4v12 ep32 mbs1 hybridep +a2a-overlap",
    "report DGX-H100 Qwen3_235B_a22B BF16 256 tp2 pp8v4 ep32 mbs1 deepep +a2a-overlap",
    "zoo DGX-H100 Qwen3_235B_a22B BF16 256 tp2 pp8v4 ep32 mbs1 deepep",
    "zoo DGX-H100 Qwen3_235B_a22B BF16 256 tp2 pp8v4 ep32 mbs1 deepep +a2a-overlap",
}


@pytest.fixture(scope="module")
def rows() -> list[mcore_moe.McoreMoeRow]:
    return mcore_moe.mcore_moe_rows()


def test_every_csv_row_is_listed_once_with_its_published_gpu_count(rows):
    assert len(rows) == len(BOUNDS) + len(NOT_EXPRESSIBLE) == 16
    assert {r.label for r in rows} == set(BOUNDS) | NOT_EXPRESSIBLE
    for r in rows:
        assert r.layout.world == r.gpus
        assert r.expressible == (r.label in BOUNDS)
        if not r.expressible:  # listed with the reason, never dropped
            assert "1F1B all-to-all overlap" in r.reason or "DeepEP's cross-node dispatch" in r.reason


@pytest.mark.parametrize("label", sorted(BOUNDS))
def test_row_tokens_per_s_within_its_bound(rows, label):
    row = next(r for r in rows if r.label == label)
    assert BOUNDS[label] >= TARGET_TIME_MAX
    assert abs(row.error) <= BOUNDS[label], f"{label}: {row.error:+.1%}"


def test_median_error(rows):
    n, med, _ = mcore_moe.summary(rows)
    assert n == len(BOUNDS)
    assert med <= MEDIAN_BOUND


def test_published_pairs_agree_with_the_megatron_flop_count(rows):
    # The report publishes TFLOP/s and tokens/s both (Table 11); their ratio is Megatron's FLOPs per token within 2 %
    # (DeepSeek-V3 with its MTP layer 260.7 GFLOP/token, Qwen3-235B 150.1 at 4K): the pair is one measurement.
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.reference.bridge import MODELS, bridge_flops_per_token

    for r in rows:
        if r.source != "report":
            continue
        count = bridge_flops_per_token(load_model(MODELS[r.model]), r.layout.seq, r.layout.tp) / 1e9
        implied = r.published_tflops * 1e3 / r.published_tokens_per_s
        assert implied == pytest.approx(count, rel=0.02), r.label


def test_a_zoo_row_without_tokens_derives_them_from_the_step_time(rows):
    # tp2 pp32 vp3 ep8 NCCL all-to-all: 2048 x 4096 tokens / (24.2 s x 256 GPUs) = 1354.1 tokens/s per GPU.
    row = next(r for r in rows if r.label == "zoo DGX-H100 Qwen3_235B_a22B BF16 256 tp2 pp32v3 ep8 mbs1 alltoall")
    assert row.published_tokens_per_s == pytest.approx(2048 * 4096 / (24.2 * 256), rel=1e-12)
    assert any("published step 24.2 s" in n for n in row.notes)
