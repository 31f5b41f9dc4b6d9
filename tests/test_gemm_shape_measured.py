"""The GEMM shape model (models/hardware/gemm.py: wave / tile quantisation over the SMs, k depth, HBM roofline, on the
MAMF x TRAINING_GEMM_SHARE anchor) against our own timings of real training-layer GEMMs on one H200
(tests/reference/h200_layer_gemms.csv, bench/bench_gemm_shapes.py, 2026-12-04): 164 distinct shapes of Llama 3.1
8B-405B, Mistral-NeMo 12B, Gemma 2 9B and Megatron GPT 145.6B layers at tp 1-8, bf16 and fp8 per-tensor. Held out:
nothing in gemm.yaml or rates.py was fitted on them.

Each measured time is brought to the run's median clock (x its reference GEMM's rate / the median reference rate, as
reference/gemm_kdepth.py does for the k sweep). Measured when this landed:
- common scale, measured over predicted rate: bf16 1.011, fp8 1.061 (isolated GEMMs run at or a little above what
  the model prices for a GEMM inside a training step);
- spread after that scale, |measured / predicted - 1|: bf16 median 2.1 %, 90th percentile 5.1 %, max 35.2 %;
  fp8 2.5 %, 9.2 %, 28.1 %. The same shapes on the flat roofline (no wave, tile or k term): bf16 2.7 / 6.8 %, fp8
  5.4 / 12.6 % (median / 90th percentile);
- the worst rows are long-k GEMMs of small output (2048 x 1536 x 12288, 2048 x 4608 x 12288, 8192 x 1280 x 8192):
  under two waves of 128 x 256 tiles, which the model prices at 73-80 % wave efficiency, cuBLAS runs at full rate,
  evidently splitting k across SMs (split-K / stream-K), which the model does not price.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.reference.report import read_rows

CSV = "h200_layer_gemms.csv"
SCALE_RANGE = (0.97, 1.12)
"""Measured over predicted rate, the common scale of each precision (measured 1.011 bf16, 1.061 fp8)."""
SPREAD_BOUNDS = {"bf16": (0.03, 0.07), "fp8": (0.035, 0.11)}
"""(median, 90th percentile) of |measured / predicted / scale - 1| (measured 2.1 / 5.1 % bf16, 2.5 / 9.2 % fp8)."""


@pytest.fixture(scope="module")
def shapes() -> dict[tuple[int, int, int, str], tuple[float, float]]:
    rows = read_rows(CSV)
    out = {}
    for r in rows:
        key = (int(r["m"]), int(r["n"]), int(r["k"]), r["precision"])
        out[key] = (float(r["median_s"]), float(r["ref_tflops"]))
        # the recorded rate is the recorded time's
        assert float(r["tflops"]) == pytest.approx(2 * key[0] * key[1] * key[2] / float(r["median_s"]) / 1e12,
                                                   abs=0.01)
    assert len(rows) == 192 and len(out) == 164
    return out


def _spread(shapes, precision: str, flat: bool = False) -> tuple[float, np.ndarray]:
    hw = HardwareRates.of(load_cluster("hgx-h200:1"))
    keys = sorted(k for k in shapes if k[3] == precision)
    m, n, k = (np.array([x[i] for x in keys], dtype=float) for i in range(3))
    fp8 = np.full(len(keys), precision == "fp8")
    time_s = np.array([shapes[x][0] for x in keys])
    ref = np.array([shapes[x][1] for x in keys])
    at_median_clock_s = time_s * ref / np.median(ref)
    model = hw.gemm_shape
    if flat:
        model = dataclasses.replace(model, sm_count=None, fp8_k_overhead=0.0, bf16_k_overhead=0.0)
    ratio = model.time_s(m, n, k, fp8) / at_median_clock_s
    scale = float(np.exp(np.median(np.log(ratio))))
    return scale, np.abs(ratio / scale - 1.0)


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_shape_model_reproduces_measured_layer_gemms(shapes, precision):
    scale, dev = _spread(shapes, precision)
    assert SCALE_RANGE[0] < scale < SCALE_RANGE[1]
    median_bound, p90_bound = SPREAD_BOUNDS[precision]
    assert np.median(dev) < median_bound and np.percentile(dev, 90) < p90_bound


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_shape_terms_beat_the_flat_roofline(shapes, precision):
    # The wave / tile and k terms carry part of the shape dependence: without them the 90th percentile is wider
    # (bf16 5.1 -> 6.8 %, fp8 9.2 -> 12.6 %).
    _, with_terms = _spread(shapes, precision)
    _, flat = _spread(shapes, precision, flat=True)
    assert np.percentile(with_terms, 90) < 0.85 * np.percentile(flat, 90)


def test_known_miss_long_k_small_output(shapes):
    # What the model does not price, pinned so a change that prices split-K / stream-K shows here: 2048 x 1536 x
    # 12288 bf16 (96 tiles of 128 x 256 on 132 SMs) runs at the rate of the full-wave shapes, 35 % above the model.
    scale, dev = _spread(shapes, "bf16")
    keys = sorted(k for k in shapes if k[3] == "bf16")
    assert dev[keys.index((2048, 1536, 12288, "bf16"))] > 0.25
