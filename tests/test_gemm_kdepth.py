"""Reduction-depth (k) term of the GEMM shape model (models/hardware/gemm.py): an fp8 GEMM of depth k runs at
k / (k + k_0) of its long-k rate. Published points reproduced from DeepGEMM's README (H800, fp8), and a worked example
derived by hand from gemm.yaml and gpus.yaml."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from clusterplan.hardware_db import get_gemm_tiling
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.gemm import GemmShapeModel
from clusterplan.models.hardware.rates import TRAINING_GEMM_SHARE, HardwareRates

# DeepGEMM README, initial release (deepseek-ai/DeepGEMM, Feb 2025), H800 SXM5, fp8: (groups, m, n, k, TFLOP/s).
DEEPGEMM_H800_FITTED = ((1, 4096, 24576, 1536, 990.0), (1, 4096, 32768, 512, 590.0), (1, 4096, 7168, 16384, 1358.0),
                        (1, 4096, 4096, 7168, 1304.0), (1, 4096, 7168, 2048, 1025.0))
"""'Normal GEMMs for dense models', the M = 4096 rows that fill the model's waves alike: k_0 = 720 was fitted here."""
DEEPGEMM_H800_CHECKED = ((4, 8192, 4096, 7168, 1297.0), (4, 8192, 7168, 2048, 1099.0), (8, 4096, 4096, 7168, 1288.0),
                         (8, 4096, 7168, 2048, 1093.0), (1, 1024, 4096, 7168, 1233.0), (1, 1024, 7168, 2048, 925.0))
"""'Grouped GEMMs' contiguous and masked layouts (a group of m x n x k each): not fitted on."""
DEEPGEMM_TOLERANCE = 0.05
"""Each published rate within 5 % of the model's, the common scale (the kernel's long-k rate) taken as the geometric
mean of published over predicted across all eleven rows (fitted rows land within 2.6 %, checked within 4.8 %)."""


def _rates(model: GemmShapeModel, rows) -> tuple[np.ndarray, np.ndarray]:
    groups, m, n, k, published = (np.array(c, dtype=float) for c in zip(*rows, strict=True))
    time_s = model.time_s(m, n, k, fp8=np.ones_like(m, dtype=bool), batch=groups)
    return 2.0 * groups * m * n * k / time_s, published


def _h800_model() -> GemmShapeModel:
    tiling = get_gemm_tiling("H800-SXM5-80GB")
    assert tiling is not None and tiling.fp8_k_overhead == 720.0
    return GemmShapeModel.of(tiling, best_shape_flops=1.0, best_shape_flops_fp8=1.0, hbm_bytes_per_s=1e30)


def test_deepgemm_h800_rates_are_reproduced():
    predicted, published = _rates(_h800_model(), DEEPGEMM_H800_FITTED + DEEPGEMM_H800_CHECKED)
    scale = np.exp(np.mean(np.log(published / predicted)))
    assert np.abs(predicted * scale / published - 1.0).max() < DEEPGEMM_TOLERANCE


def test_without_the_k_term_the_short_k_rows_are_missed():
    # The same table with k_0 = 0: the k = 512 row (590 TFLOP/s, 43 % of the k = 16384 row's 1,358) is priced as fast
    # as the long-k rows of the same wave fill, more than 40 % off.
    model = dataclasses.replace(_h800_model(), fp8_k_overhead=0.0)
    predicted, published = _rates(model, DEEPGEMM_H800_FITTED)
    scale = np.exp(np.mean(np.log(published / predicted)))
    assert np.abs(predicted * scale / published - 1.0).max() > 0.40


@pytest.fixture(scope="module")
def h100() -> HardwareRates:
    return HardwareRates.of(load_cluster("dgx-h100:1"))


def _t(hw: HardwareRates, m: float, n: float, k: float, fp8: bool) -> float:
    return float(hw.gemm_time_s(np.array([m]), np.array([n]), np.array([k]), np.array([fp8]))[0])


def test_k_depth_worked_example(h100):
    # H100 fp8 MAMF 1,978.9 x 0.709 x the training share at the MAMF shape 2048 x 2048 x 13312, whose k runs at
    # 13312 / (13312 + 720) = 0.9487 of the long-k rate. A 2048 x 2048 x 768 GEMM (same wave fill, a fine-grained MoE
    # expert's fc2 depth) runs at 768 / 1488 = 0.5161, i.e. 0.5161 / 0.9487 = 0.544 of the MAMF-shape rate.
    mamf_rate = 1978.9e12 * 0.709 * TRAINING_GEMM_SHARE
    rate = mamf_rate * (768 / (768 + 720)) / (13312 / (13312 + 720))
    assert _t(h100, 2048, 2048, 768, True) == pytest.approx(2 * 2048 * 2048 * 768 / rate, rel=1e-9)
    assert _t(h100, 2048, 2048, 13312, True) == pytest.approx(2 * 2048 * 2048 * 13312 / mamf_rate, rel=1e-9)
    # fc2 (k = 768) now runs slower per FLOP than fc1 (k = 2048), as DeepGEMM measures; bf16 has no k term.
    per_flop = lambda k, fp8: _t(h100, 2048, 2048, k, fp8) / k  # noqa: E731
    assert per_flop(768, True) / per_flop(2048, True) == pytest.approx((2048 / 2768) / (768 / 1488), rel=1e-9)
    assert per_flop(768, False) == pytest.approx(per_flop(2048, False), rel=1e-9)


def test_gpus_without_a_published_k_sweep_have_no_k_term():
    for gpu in ("A100-SXM4-80GB", "B200", "MI300X"):
        tiling = get_gemm_tiling(gpu)
        assert tiling is not None and tiling.fp8_k_overhead == 0.0
