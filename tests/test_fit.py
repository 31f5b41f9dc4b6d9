"""The calibration fits recover known curves from synthetic measurements.

Ground truth is chosen to look like an H100: GEMM max 760 TFLOP/s reaching half of it at 3e9 FLOPs;
NVLink all-reduce on 8 GPUs with 15 us per ring step (alpha) and 360 GB/s busbw (research/hardware.md 3).
"""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.errors import BadInputError
from clusterplan.models.hardware.comm import busbw_factor, ring_steps
from clusterplan.profiler.fit import fit_alpha_beta, fit_gemm, gemm_tflops

KIB = 1024


def test_busbw_factors_are_nccl_tests():
    # nccl-tests doc/PERFORMANCE.md: all_reduce 2(n-1)/n, all_gather / reduce_scatter / all_to_all (n-1)/n, p2p 1.
    assert busbw_factor("all_reduce", 8) == pytest.approx(1.75)
    assert busbw_factor("all_gather", 8) == pytest.approx(0.875)
    assert busbw_factor("reduce_scatter", 4) == pytest.approx(0.75)
    assert busbw_factor("all_to_all", 2) == pytest.approx(0.5)
    assert busbw_factor("send_recv", 2) == 1.0
    assert ring_steps("all_reduce", 8) == 14 and ring_steps("all_gather", 8) == 7 and ring_steps("send_recv", 8) == 1
    with pytest.raises(BadInputError):
        busbw_factor("broadcast", 8)


def test_gemm_curve_exact_recovery():
    flops = np.geomspace(1e6, 1e13, 15)
    tflops = gemm_tflops(flops, 760.0, 3e9)
    fit = fit_gemm(flops, tflops)
    # Noise-free points: recovered to 0.1 %.
    assert fit.max_tflops == pytest.approx(760.0, rel=1e-3)
    assert fit.half_flops == pytest.approx(3e9, rel=1e-3)
    assert fit.rms_log_error < 1e-6


def test_gemm_curve_with_noise_and_an_outlier():
    rng = np.random.default_rng(7)
    flops = np.repeat(np.geomspace(1e7, 2e12, 12), 3)
    tflops = gemm_tflops(flops, 760.0, 3e9) * np.exp(rng.normal(0, 0.03, flops.size))
    tflops[5] *= 0.3  # one throttled sample
    fit = fit_gemm(flops, tflops)
    # 3 % log-normal noise, 36 points, one outlier: within 5 % (max) and 15 % (half point).
    assert fit.max_tflops == pytest.approx(760.0, rel=0.05)
    assert fit.half_flops == pytest.approx(3e9, rel=0.15)


def test_gemm_fit_needs_two_sizes():
    with pytest.raises(BadInputError, match="two or more sizes"):
        fit_gemm([1e9, 1e9], [100.0, 101.0])


def _ring_all_reduce_s(size_bytes: np.ndarray, n: int, alpha_s: float, busbw: float) -> np.ndarray:
    return 2 * (n - 1) * alpha_s + 2 * (n - 1) / n * size_bytes / busbw


def test_alpha_beta_exact_recovery():
    sizes = KIB * 2.0 ** np.arange(0, 19)  # 1 KiB .. 256 MiB, as the GPU sweep
    times = _ring_all_reduce_s(sizes, 8, 15e-6, 360e9)
    fit = fit_alpha_beta("all_reduce", 8, sizes, times)
    assert fit.busbw_bytes_per_s == pytest.approx(360e9, rel=1e-3)
    assert fit.latency_s == pytest.approx(15e-6, rel=1e-3)  # per ring step
    assert fit.latency_total_s == pytest.approx(14 * 15e-6, rel=1e-3)


def test_alpha_beta_noise_and_outlier():
    rng = np.random.default_rng(3)
    sizes = KIB * 2.0 ** np.arange(0, 13)  # 1 KiB .. 4 MiB, as the CPU sweep
    times = (50e-6 + sizes / 2e9) * np.exp(rng.normal(0, 0.05, sizes.size))
    times[4] *= 4  # one size hit by a scheduler hiccup
    fit = fit_alpha_beta("send_recv", 2, sizes, times)
    # 5 % noise and one 4x outlier: within 10 % on both.
    assert fit.busbw_bytes_per_s == pytest.approx(2e9, rel=0.10)
    assert fit.latency_total_s == pytest.approx(50e-6, rel=0.10)


def test_alpha_beta_bandwidth_only_has_zero_latency():
    sizes = KIB * 2.0 ** np.arange(4, 12)
    fit = fit_alpha_beta("all_gather", 4, sizes, 0.75 * sizes / 1e10)
    assert fit.latency_total_s < 1e-9
    assert fit.busbw_bytes_per_s == pytest.approx(1e10, rel=1e-3)


def test_alpha_beta_flat_noise_does_not_give_infinite_bandwidth():
    # A busy host: times do not grow with size. busbw stays within 2x the best observed S*factor/t.
    sizes = KIB * 8.0 ** np.arange(5)
    times = np.array([3.8e-3, 0.9e-3, 0.3e-3, 0.5e-3, 3.8e-3])
    fit = fit_alpha_beta("send_recv", 2, sizes, times)
    assert fit.busbw_bytes_per_s <= 2 * (sizes / times).max() * 1.0001
