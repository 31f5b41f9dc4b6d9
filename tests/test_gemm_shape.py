"""GEMM time by shape (models/hardware/gemm.py): wave/tile quantisation over the SMs, anchored on the MAMF shape,
bounded by the HBM roofline. Worked examples derived by hand from hardware_db/data/gemm.yaml and gpus.yaml."""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import TRAINING_GEMM_SHARE, HardwareRates


@pytest.fixture(scope="module")
def h100() -> HardwareRates:
    return HardwareRates.of(load_cluster("dgx-h100:1"))


def _t(hw: HardwareRates, m: float, n: float, k: float, fp8: bool = False) -> float:
    return float(hw.gemm_time_s(np.array([m]), np.array([n]), np.array([k]), np.array([fp8]))[0])


def test_mamf_shape_runs_at_mamf_times_share(h100):
    # gpus.yaml: 989.4 TFLOP/s x 0.803 (MAMF 794.5, measured at 2048x2048x13312) x the training share.
    rate = 989.4e12 * 0.803 * TRAINING_GEMM_SHARE
    assert _t(h100, 2048, 2048, 13312) == pytest.approx(2 * 2048 * 2048 * 13312 / rate, rel=1e-9)


BF16_K_0 = 128.0
"""gemm.yaml bf16_k_overhead on GH100: a bf16 GEMM of depth k runs at k / (k + 128) of its long-k rate."""


def k_term(k: float) -> float:
    """The bf16 k-depth factor relative to the MAMF shape's k = 13312, at which the model is anchored."""
    return (k / (k + BF16_K_0)) / (13312 / (13312 + BF16_K_0))


def test_wave_quantisation_worked_example(h100):
    # H100: 132 SMs, 128x256 tiles. MAMF shape 2048x2048: 16 x 8 = 128 tiles in 1 wave -> 128/132 = 0.9697 useful.
    # 2304x2304: 18 x 9 = 162 tiles -> 2 waves of 132 -> 2304^2 / (264 x 32768) = 0.6136 useful.
    best_eff = 2048 * 2048 / (132 * 128 * 256)
    eff = 2304 * 2304 / (2 * 132 * 128 * 256)
    rate = 989.4e12 * 0.803 * TRAINING_GEMM_SHARE / best_eff * eff * k_term(8192)
    assert _t(h100, 2304, 2304, 8192) == pytest.approx(2 * 2304 * 2304 * 8192 / rate, rel=1e-9)
    # One more row of tiles than fits a wave costs a whole wave: 2304 is 35% slower per FLOP than 2048.
    per_flop = lambda m: _t(h100, m, m, 8192) / (2 * m * m * 8192)  # noqa: E731
    assert per_flop(2304) / per_flop(2048) == pytest.approx(best_eff / eff, rel=1e-9)


def test_skinny_gemm_is_bound_by_hbm(h100):
    # m = 1 (one token): never faster than reading the 8192 x 8192 bf16 weight, (8192 + 8192^2 + 8192) x 2 B / HBM;
    # the best tile (the half-height 64x256, reuse 51.2 of 85.3) fills 1 of 64 rows: 8192 / (132 x 64 x 256) x 0.6.
    traffic = (8192 + 8192 * 8192) * 2 + 8192 * 2
    best_eff = 2048 * 2048 / (132 * 128 * 256)
    compute = 2 * 8192 * 8192 / (989.4e12 * 0.803 * TRAINING_GEMM_SHARE / best_eff * (8192 / (132 * 64 * 256)) * 0.6
                                 * k_term(8192))
    assert _t(h100, 1, 8192, 8192) == pytest.approx(max(compute, traffic / (3.35e12 * 0.85)), rel=1e-9)
    assert _t(h100, 64, 8192, 8192) >= traffic / (3.35e12 * 0.85)


def test_fp8_uses_the_measured_fp8_mamf(h100):
    # gemm.yaml: H100 fp8 MAMF 1,402.6 of 1,978.9 = 0.709; same quantisation as bf16 at the MAMF shape.
    ratio = _t(h100, 2048, 2048, 13312) / _t(h100, 2048, 2048, 13312, fp8=True)
    assert ratio == pytest.approx(1978.9 * 0.709 / (989.4 * 0.803), rel=1e-9)


def test_gpu_without_tiling_has_no_quantisation():
    # L4 has no gemm.yaml entry: every compute-bound shape runs at MAMF x share.
    hw = HardwareRates.of(load_cluster("g6:1"))
    assert hw.gemm_shape is not None and hw.gemm_shape.sm_count is None
    assert _t(hw, 2304, 2304, 8192) == pytest.approx(2 * 2304 * 2304 * 8192 / (121e12 * 0.75 * TRAINING_GEMM_SHARE))


@pytest.mark.parametrize("model", ["llama3.1-8b", "deepseek-v3", "mixtral-8x7b"])
def test_layer_gemm_shapes_carry_the_layer_flops(model):
    # The shapes the GEMMs are priced at multiply back to 2 x tokens x parameters / tp (Narayanan 2021 Eq. 3); the
    # experts' GEMMs run the busiest expert-parallel rank's rows (moe_layer.busiest_rank_ratio, above 1 under forced
    # balancing), the layer's FLOPs count the mean.
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.models.architecture.shapes import ModelShapes
    from clusterplan.models.training.batch import LayoutArrays
    from clusterplan.models.training.compute import layer_flops, layer_linears
    from clusterplan.models.training.layout import Layout
    from clusterplan.models.training.moe_layer import busiest_rank_ratio

    shapes = ModelShapes.of(load_model(model))
    moe = shapes.n_moe_layers > 0
    L = LayoutArrays.from_layouts([Layout(tp=4, ep=8 if moe else 1, mbs=2, seq=4096, gbs=64)])
    busiest = busiest_rank_ratio(shapes, L)
    assert (float(busiest[0]) > 1.0) == moe
    flops = sum(2 * g.tokens * g.in_features * g.out_features * g.count / (busiest if g.streamed else 1.0)
                for g in layer_linears(shapes, L, moe))
    assert float(flops[0]) == pytest.approx(float(layer_flops(shapes, L, moe)[0][0]), rel=1e-12)


def test_grouped_gemm_experts_share_waves(h100):
    # 16 local experts of 2048 x 1536 (x 2048): alone each is 16 x 6 = 96 tiles in one wave of 132 SMs (0.727 useful);
    # as one grouped GEMM 1536 tiles fill 12 waves (0.9697 useful), as Megatron-Core's grouped GEMM runs them.
    alone = 16 * _t(h100, 2048, 1536, 2048)
    grouped = float(h100.gemm_time_s(np.array([2048.0]), np.array([1536.0]), np.array([2048.0]), False, 16.0)[0])
    assert alone / grouped == pytest.approx((2048 * 1536 * 16 / (12 * 132 * 32768)) / (96 / 132), rel=1e-9)


# Held-out check on Blackwell Ultra (not fitted: TRAINING_GEMM_SHARE was fitted on A100 Megatron runs): Transformer Engine
# GEMM Profiling Tutorial (NVIDIA/TransformerEngine docs/examples/gemm_profiling/gemm_profiling.rst, benchmark_gemm.py
# --pre-quantize on "NVIDIA B300 SXM6 AC"): hidden 4096, intermediate 16384 (non-gated MLP), 32 heads, M = 31 x 512 =
# 15,872 tokens; per-layer GEMM ms with operands already quantised, fprop / dgrad / wgrad:
# BF16 4.250 / 4.434 / 4.418 = 13.102, FP8 CurrentScaling 2.158 / 2.329 / 2.325 = 6.812.
TE_TUTORIAL_TOKENS = 15872
TE_TUTORIAL_LINEARS = ((4096, 12288), (4096, 4096), (4096, 16384), (16384, 4096))
"""(in, out) of QKV, attention out, MLP up, MLP down, as the tutorial lists them."""
TE_TUTORIAL_B300_LAYER_MS = {"bf16": 13.102, "fp8": 6.812}
TE_TUTORIAL_TOLERANCE = 0.05
"""The shape model without any Blackwell-specific factor lands within 0.4 % (bf16) and 1.8 % (fp8) of the tutorial."""


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_b300_layer_gemms_match_the_te_tutorial(precision):
    hw = HardwareRates.of(load_cluster("dgx-b300:1"))
    fp8, m = precision == "fp8", TE_TUTORIAL_TOKENS
    fprop = sum(_t(hw, m, n, k, fp8) for k, n in TE_TUTORIAL_LINEARS)
    dgrad = sum(_t(hw, m, k, n, fp8) for k, n in TE_TUTORIAL_LINEARS)
    wgrad = sum(_t(hw, k, n, m, fp8) for k, n in TE_TUTORIAL_LINEARS)
    measured_s = TE_TUTORIAL_B300_LAYER_MS[precision] * 1e-3
    assert (fprop + dgrad + wgrad) == pytest.approx(measured_s, rel=TE_TUTORIAL_TOLERANCE)
