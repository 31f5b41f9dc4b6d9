"""The flash-attention core priced from published kernel curves (hardware_db/data/attention_kernels.yaml,
models/hardware/attention.py): every transcribed causal forward point is reproduced within 10 % by the layer model,
the backward follows the measured backward/forward ratio, sliding windows price their window."""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.hardware_db import get_attention_curves
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.attention import ATTN_BWD_FLOPS_OVER_FWD
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import causal_share, flash_core_times, layer_flops
from clusterplan.models.training.layout import Layout

H100 = HardwareRates.of(load_cluster("dgx-h100:1"))
CAUSAL_FORWARD = [c for c in get_attention_curves("H100-SXM5-80GB") if c.direction == "forward" and c.causal]


def _bench_model(head_dim: int, window: int | None = None) -> ModelShapes:
    # The FA3 paper's benchmark: hidden 2048 = heads x head_dim, batch x seq = 16k tokens.
    return ModelShapes.of(ModelSpec(name=f"bench-d{head_dim}", n_layers=1, hidden=2048, n_heads=2048 // head_dim,
                                    head_dim=head_dim, ffn_hidden=8192, vocab=32000, sliding_window=window))


def _core(shapes: ModelShapes, seq: int, kernel: str, hw: HardwareRates = H100):
    L = LayoutArrays.from_layouts([Layout(mbs=16384 // seq, gbs=16384 // seq, seq=seq, flash_attn=True)])
    _, core_exec = layer_flops(shapes, L, False)
    fwd, bwd = flash_core_times(shapes, L, hw, core_exec, kernel)
    return float(core_exec[0]), float(fwd[0]), float(bwd[0])


def test_every_curve_has_a_source_and_six_lengths():
    assert len(CAUSAL_FORWARD) == 9  # fa2, cudnn, fa3 x head dim 64, 128, 256
    assert all("FA3 paper Fig. 5" in c.source and len(c.seq) == 6 for c in CAUSAL_FORWARD)


@pytest.mark.parametrize("curve", CAUSAL_FORWARD, ids=lambda c: f"{c.kernel}-d{c.head_dim}")
def test_published_causal_forward_points_within_10_percent(curve):
    shapes = _bench_model(curve.head_dim)
    for seq, published in zip(curve.seq, curve.tflops, strict=True):
        flops, fwd, _ = _core(shapes, seq, curve.kernel)
        assert flops / fwd / 1e12 == pytest.approx(published, rel=0.10), (curve.kernel, curve.head_dim, seq)


def test_backward_follows_the_measured_backward_forward_ratio():
    # cuDNN, head dim 128, 8k: causal forward 529 TFLOP/s; non-causal backward 518 over non-causal forward 600, so
    # the causal backward runs at 529 x 518 / 600 = 456.7 TFLOP/s on 2.5x the forward FLOPs.
    flops, fwd, bwd = _core(_bench_model(128), 8192, "cudnn")
    assert flops / fwd == pytest.approx(529e12)
    assert bwd == pytest.approx(ATTN_BWD_FLOPS_OVER_FWD * flops / (529e12 * 518 / 600))


def test_sdpa_runs_the_flash_attention_2_curve():
    assert _core(_bench_model(128), 4096, "sdpa")[1] == _core(_bench_model(128), 4096, "fa2")[1]


def test_kernel_choice_changes_the_time():
    # FA3 at head dim 128, 16k: 616 TFLOP/s; FlashAttention-2: 335 -> FA2 takes 616/335 x as long.
    _, fa3, _ = _core(_bench_model(128), 16384, "fa3")
    _, fa2, _ = _core(_bench_model(128), 16384, "fa2")
    assert fa2 / fa3 == pytest.approx(616 / 335)


def test_interpolates_in_log_seq_and_log_head_dim():
    # 3k lies at log2(3k/2k) = 0.585 between 2k (484) and 4k (518) on cuDNN d128: 484 + 0.585 x 34 = 503.9.
    rate = H100.attention.forward_flops_per_s("cudnn", np.array([3072.0]), 128.0)[0] / 1e12
    assert rate == pytest.approx(484 + np.log2(1.5) * 34)
    # head dim 181 = sqrt(128 x 256) sits half way in log(head dim): (539 + 509) / 2 at 16k.
    rate = H100.attention.forward_flops_per_s("cudnn", np.array([16384.0]), float(np.sqrt(128 * 256)))[0] / 1e12
    assert rate == pytest.approx((539 + 509) / 2)


def test_sliding_window_share_worked_example():
    # Window 128 at 4k: sum_i min(i, 128) / 4096^2 = 128/4096 - 128^2 / (2 x 4096^2) = 0.030762 of the blocks.
    shapes = _bench_model(128, window=128)
    share = causal_share(shapes, np.array([4096.0]))[0]
    assert share == pytest.approx(128 / 4096 - 128**2 / (2 * 4096**2))
    # Priced at the 512-key end of the curve (the window is shorter than any published length): 315 TFLOP/s.
    flops, fwd, _ = _core(shapes, 4096, "cudnn")
    assert flops / fwd == pytest.approx(315e12)


def test_gpu_without_curves_prices_the_causal_half_of_the_core_gemms():
    b200 = HardwareRates.of(load_cluster("dgx-b200:1"))
    assert not b200.attention.has("cudnn")
    shapes = _bench_model(128)
    L = LayoutArrays.from_layouts([Layout(mbs=2, gbs=2, seq=8192, flash_attn=True)])
    from clusterplan.models.training.compute import core_gemm_times

    full, _ = core_gemm_times(shapes, L, b200)
    _, core_exec = layer_flops(shapes, L, False)
    fwd, bwd = flash_core_times(shapes, L, b200, core_exec, "cudnn")
    assert float(fwd[0]) == pytest.approx(0.5 * float(full[0]))
    assert float(bwd[0]) == pytest.approx(ATTN_BWD_FLOPS_OVER_FWD * float(fwd[0]))
