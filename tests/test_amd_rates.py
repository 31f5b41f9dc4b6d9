"""AMD Instinct rates as published (hardware_db gpus.yaml, gemm.yaml, links.yaml; research/mi300x.md): worked examples
derived by hand from the data rows, one per term, so a changed number fails here."""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import TRAINING_GEMM_SHARE, HardwareRates


def _rates(node: str) -> HardwareRates:
    return HardwareRates.of(load_cluster(f"{node}:1"))


def _t(hw: HardwareRates, m: float, n: float, k: float, fp8: bool = False) -> float:
    return float(hw.gemm_time_s(np.array([m]), np.array([n]), np.array([k]), np.array([fp8]))[0])


@pytest.fixture(scope="module")
def mi300x() -> HardwareRates:
    return _rates("mi300x-8")


def test_mi300x_bf16_mamf_shape_and_a_llama_projection(mi300x):
    # gemm.yaml: 304 CUs, 256x256 tiles, MAMF 668.4 = 0.514 x 1,307.4 at 10240x15360x8192:
    # 40 x 60 = 2,400 tiles -> 8 waves of 304 = 2,432 slots -> 0.98684 useful (the half tile, 128x256, fills the same
    # share at 2/3 of the reuse, so the full tile is the best).
    rate = 1307.4e12 * 0.514 * TRAINING_GEMM_SHARE
    anchor = 2400 / 2432
    assert _t(mi300x, 10240, 15360, 8192) == pytest.approx(2 * 10240 * 15360 * 8192 / rate, rel=1e-9)
    # Llama 3.1 8B q_proj on one 8,192-token sequence: 8192 x 4096 -> 32 x 16 = 512 tiles -> 2 waves = 608 slots.
    eff = 512 / 608
    assert _t(mi300x, 8192, 4096, 4096) == pytest.approx(2 * 8192 * 4096 * 4096 / (rate / anchor * eff), rel=1e-9)


def test_mi300x_fp8_runs_at_amds_published_maf(mi300x):
    # gemm.yaml fp8_mamf_fraction: AMD ROCm blog 'Measuring Max-Achievable FLOPs - Part 2', MI300X fp8 (e4m3fnuz)
    # MAF 1,273 of 2,614.9 TFLOP/s = 0.487, not the bf16 fraction 0.514 it used to borrow.
    assert mi300x.gemm_max_flops_fp8 == pytest.approx(2614.9e12 * 0.487 * TRAINING_GEMM_SHARE, rel=1e-9)
    bf16, fp8 = _t(mi300x, 10240, 15360, 8192), _t(mi300x, 10240, 15360, 8192, fp8=True)
    assert bf16 / fp8 == pytest.approx(2614.9 * 0.487 / (1307.4 * 0.514), rel=1e-9)  # 1.895x, not 2x


def test_mi325x_fp8_fraction():
    # MI325X: same CDNA 3 dies; AMD MAF fp8 with normal-distribution inputs 1,408.06 of 2,614.9 = 0.538 (TAF blog);
    # bf16 MAMF 784.9 of 1,300 = 0.604.
    hw = _rates("mi325x-8")
    assert hw.gemm_max_flops_fp8 == pytest.approx(2614.9e12 * 0.538 * TRAINING_GEMM_SHARE, rel=1e-9)
    assert hw.gemm_max_flops == pytest.approx(1307.4e12 * 0.604 * TRAINING_GEMM_SHARE, rel=1e-9)
    # Same xGMI as MI300X (links.yaml infinity-fabric-mi300); HBM 6.0 TB/s at MI300X's measured 0.775.
    assert hw.bw_in == pytest.approx(448e9 * 0.707, rel=1e-9)
    assert hw.hbm_bytes_per_s == pytest.approx(6.0e12 * 0.775, rel=1e-9)


def test_mi355x_mamf_shape_fills_whole_waves():
    # gemm.yaml MI355X: MAMF 1,565 at 12288x8192x8192 on 256 CUs with 256x256 tiles: 48 x 32 = 1,536 tiles = exactly
    # 6 waves, so the anchor is 1 and that shape runs at 0.622 x 2,516.6 x share; no fp8 MAMF published: fp8 at the
    # bf16 fraction of the fp8 peak.
    hw = _rates("mi355x-8")
    rate = 2516.6e12 * 0.622 * TRAINING_GEMM_SHARE
    assert _t(hw, 12288, 8192, 8192) == pytest.approx(2 * 12288 * 8192 * 8192 / rate, rel=1e-9)
    assert hw.gemm_max_flops_fp8 == pytest.approx(5033.2e12 * 0.622 * TRAINING_GEMM_SHARE, rel=1e-9)
    # 4th-gen Infinity Fabric: 7 x 153.6 / 2 = 537.6 GB/s per direction at MI300X's measured RCCL fraction 0.707.
    assert hw.bw_in == pytest.approx(537.6e9 * 0.707, rel=1e-9)
    # HBM3E 8.0 TB/s at MI300X's measured BabelStream fraction 0.775 (gpus.yaml: no MI355X stream benchmark).
    assert hw.hbm_bytes_per_s == pytest.approx(8.0e12 * 0.775, rel=1e-9)


def test_mi300x_hbm_is_the_measured_stream_rate(mi300x):
    # gpus.yaml: BabelStream copy 4.11 TB/s of 5.3 on Azure ND MI300X v5 = 0.775.
    assert mi300x.hbm_bytes_per_s == pytest.approx(5.3e12 * 0.775, rel=1e-9)
    # A shallow GEMM (8192 x 4096, k = 64) is bound by its bf16 traffic, (8192 x 64 + 64 x 4096 + 8192 x 4096) x 2 B
    # = 68.7 MB -> 16.7 us at 4.11 TB/s, above its 4.3 GFLOP at the 2-wave rate (9.4 us).
    traffic = (8192 * 64 + 64 * 4096 + 8192 * 4096) * 2
    compute = 2 * 8192 * 4096 * 64 / (1307.4e12 * 0.514 * TRAINING_GEMM_SHARE / (2400 / 2432) * (512 / 608))
    assert compute < traffic / (5.3e12 * 0.775)
    assert _t(mi300x, 8192, 4096, 64) == pytest.approx(traffic / (5.3e12 * 0.775), rel=1e-9)


def test_mi300x_xgmi_bus_bandwidth_is_the_measured_rccl_rate(mi300x):
    # links.yaml: 7 x 64 GB/s per direction = 448; rccl-tests all_reduce 8 GB on 8 MI300X: 316.8 GB/s = 0.707.
    assert mi300x.bw_in == pytest.approx(448e9 * 0.707, rel=1e-9)


def test_mi325x_shape_model_against_amds_typical_attained_flops():
    # AMD's TAF (ROCm blog, Oct 2026): FLOP-weighted harmonic mean over ten DeepSeek-V3 GEMM shapes, M = 32 and
    # 32,768 for each (N, K); MI325X measured bf16 616, fp8 1,143 TFLOP/s. The shape model without the training share
    # (a bare GEMM benchmark has no training step around it) on the same shapes: within the bounds below; each M = 32
    # GEMM costs a whole K loop of one tile wave (no split-K here), which pulls the bf16 mean down a few percent.
    hw = _rates("mi325x-8")
    nk = [(2112, 7168), (3072, 1536), (7168, 2048), (4608, 7168), (7168, 256)]
    # Achieved: bf16 676 (+9.8 %), fp8 1,204 (+5.3 %); bounds achieved + 1 point.
    for fp8, taf, bound in ((False, 616e12, 0.11), (True, 1143e12, 0.065)):
        flops = time = 0.0
        for m in (32, 32768):
            for n, k in nk:
                flops += 2 * m * n * k
                time += _t(hw, m, n, k, fp8) * TRAINING_GEMM_SHARE
        assert abs(flops / time / taf - 1) <= bound, (fp8, flops / time / 1e12)


# PyTorch SDPA on MI300X runs AOTriton's Triton attn_fwd (attention_kernels.yaml sdpa_backend), priced on the forward
# curves midiareshadi/attn-dsl-bench published (PyTorch 2.10, ROCm 7.2.2, batch 16 x 16 heads, bf16, causal).
AOTRITON_D128 = {1024: 164.07, 2048: 214.50, 4096: 256.90, 8192: 289.55, 16384: 306.54}


def _llama8b_core(hw: HardwareRates, seq: int, kernel: str) -> tuple[float, float, float]:
    from clusterplan.models.architecture.shapes import ModelShapes
    from clusterplan.models.architecture.spec import ModelSpec
    from clusterplan.models.training.batch import LayoutArrays
    from clusterplan.models.training.compute import flash_core_times, layer_flops
    from clusterplan.models.training.layout import Layout

    shapes = ModelShapes.of(ModelSpec(name="l8-attn", n_layers=1, hidden=4096, n_heads=32, n_kv_heads=8,
                                      ffn_hidden=14336, vocab=128256))
    L = LayoutArrays.from_layouts([Layout(mbs=1, gbs=1, seq=seq, flash_attn=True)])
    _, core_exec = layer_flops(shapes, L, False)
    fwd, bwd = flash_core_times(shapes, L, hw, core_exec, kernel)
    return float(core_exec[0]), float(fwd[0]), float(bwd[0])


@pytest.mark.parametrize("seq", sorted(AOTRITON_D128))
def test_mi300x_sdpa_forward_is_aotritons_published_rate(mi300x, seq):
    flops, fwd, _ = _llama8b_core(mi300x, seq, "sdpa")
    assert flops / fwd / 1e12 == pytest.approx(AOTRITON_D128[seq], rel=1e-9)


def test_mi300x_sdpa_backward_runs_at_the_forward_rate_without_a_published_backward(mi300x):
    # Llama 3 8B at 8k: forward 4 x 8192^2 x 4096 / 2 = 549.8 GFLOP at 289.55 TFLOP/s = 1.899 ms; backward 2.5x.
    flops, fwd, bwd = _llama8b_core(mi300x, 8192, "sdpa")
    assert flops == pytest.approx(4 * 8192**2 * 4096 / 2)
    assert fwd == pytest.approx(flops / 289.55e12, rel=1e-9)
    assert bwd == pytest.approx(2.5 * fwd, rel=1e-9)


def test_torchtitans_cudnn_first_sdpa_runs_aotriton_on_rocm(mi300x):
    # ROCm has no cuDNN backend: sdpa_cudnn_first is plain SDPA there.
    assert mi300x.attention.family("sdpa_cudnn_first") == "aotriton"
    assert _llama8b_core(mi300x, 8192, "sdpa_cudnn_first") == _llama8b_core(mi300x, 8192, "sdpa")


def test_mi355x_without_curves_prices_the_core_as_gemms():
    mi355x = _rates("mi355x-8")
    assert not mi355x.attention.has("sdpa")
