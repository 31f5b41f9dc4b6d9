"""A rank's per-expert GEMMs pay a GEMM kernel's fixed time per turn of Transformer Engine's four streams.

The k-depth fits of gemm.yaml fit each GEMM's time as a fixed time per kernel plus its FLOPs at a k-dependent rate
(python -m clusterplan.reference.gemm_kdepth): 6.5 us bf16 on sm_90 (OpenXLA's table), 5.2 us fp8 (our H200 sweep),
5.8 / 5.2 us on sm_100. Below 1 % of a dense training GEMM, so dense GEMMs leave it out; an expert GEMM of a few
hundred rows takes 10-40 us, so moe_layer.grouped_gemm_time_s adds it: once per turn of GROUPED_GEMM_STREAMS
concurrent experts (their fixed parts overlap: a lower bound).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.moe_layer import GROUPED_GEMM_STREAMS, grouped_gemm_time_s

H100 = HardwareRates.of(load_cluster("dgx-h100:1"))
B200 = HardwareRates.of(load_cluster("dgx-b200:1"))
A100 = HardwareRates.of(load_cluster("dgx-a100:1"))


def _without_kernel_time(hw: HardwareRates) -> HardwareRates:
    assert hw.gemm_shape is not None
    return replace(hw, gemm_shape=replace(hw.gemm_shape, bf16_kernel_s=0.0, fp8_kernel_s=0.0))


@pytest.mark.parametrize(("hw", "bf16_us", "fp8_us"), [(H100, 6.5, 5.2), (B200, 5.8, 5.2), (A100, 0.0, 0.0)])
def test_kernel_times_by_gpu(hw: HardwareRates, bf16_us: float, fp8_us: float) -> None:
    assert hw.gemm_shape is not None
    got = hw.gemm_shape.kernel_s(np.array([False, True]))
    assert got == pytest.approx([bf16_us * 1e-6, fp8_us * 1e-6], abs=1e-12)


@pytest.mark.parametrize(("local_experts", "turns"), [(16, 4), (6, 2), (4, 1), (1, 1)])
def test_one_kernel_time_per_turn(local_experts: int, turns: int) -> None:
    """Qwen3-30B's fc1 at ep8: 16 local experts of 512 rows x 1,536 (two 768-wide GLU halves) x 2,048 in bf16 on H100:
    16 experts run in 4 turns of 4, so 4 x 6.5 us = 26 us more than without the term; 6 experts in 2 turns."""
    assert GROUPED_GEMM_STREAMS == 4
    m, n, k, fp8 = np.array([512.0]), 1536.0, 2048.0, np.array([False])
    with_term = float(grouped_gemm_time_s(H100, m, n, k, fp8, float(local_experts))[0])
    without = float(grouped_gemm_time_s(_without_kernel_time(H100), m, n, k, fp8, float(local_experts))[0])
    assert with_term - without == pytest.approx(turns * 6.5e-6, rel=1e-9)


def test_dense_gemms_leave_it_out() -> None:
    m, n, k = np.array([8192.0]), 4096.0, 4096.0
    assert float(H100.gemm_time_s(m, n, k)[0]) == float(_without_kernel_time(H100).gemm_time_s(m, n, k)[0])
