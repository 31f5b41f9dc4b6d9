"""A cluster file's per-GPU power cap slows the tensor-core clock (models/hardware/power.py: board power = a static
share of the TDP + a dynamic part ~ f^3)."""

from __future__ import annotations

import pytest

from clusterplan.errors import BadInputError
from clusterplan.models.hardware.cluster import cluster_from_dict
from clusterplan.models.hardware.rates import HardwareRates, power_clock_scale


def test_power_clock_scale_worked_example():
    # H100 SXM capped at 350 W of its 700 W TDP: clock x ((0.5 - 0.21) / 0.79)^(1/3) = 0.7160; at 500 W 0.8610.
    assert power_clock_scale(350.0, 700.0) == pytest.approx(((0.5 - 0.21) / 0.79) ** (1 / 3))
    assert power_clock_scale(500.0, 700.0) == pytest.approx(0.8610, abs=5e-5)
    assert power_clock_scale(700.0, 700.0) == 1.0
    assert power_clock_scale(None, 700.0) == 1.0


def test_static_share_reproduces_the_mlperf_maxq_pairs_it_was_fitted_on_and_the_a100_check():
    # NVIDIA's MLPerf Inference DGX-H100 BERT offline, MaxQ over MaxP throughput (research/h100-power-cap-sources.md):
    # 0.766 / 0.770 at 400 W, 0.820 at 450 W (fitted on); DGX-A100 at 275 of 400 W 0.844 (bert-99, checked).
    for cap, tdp, measured in ((400, 700, 0.766), (400, 700, 0.770), (450, 700, 0.820), (275, 400, 0.844)):
        assert power_clock_scale(cap, tdp) == pytest.approx(measured, rel=0.015)


def test_capped_cluster_runs_gemms_slower_but_keeps_its_mfu_peak():
    full = HardwareRates.of(cluster_from_dict({"groups": [{"node": "dgx-h100", "count": 1}]}))
    capped = HardwareRates.of(cluster_from_dict({"groups": [{"node": "dgx-h100", "count": 1, "power_cap_w": 350}]}))
    assert capped.gemm_max_flops == pytest.approx(full.gemm_max_flops * power_clock_scale(350.0, 700.0))
    assert capped.peak_flops == full.peak_flops  # MFU stays against the datasheet bf16 peak
    assert capped.hbm_bytes_per_s == full.hbm_bytes_per_s  # HBM clock is not the capped core clock


@pytest.mark.parametrize("cap", [0, -5, 900, "high", True, 147])
def test_bad_power_cap_is_one_line(cap):
    with pytest.raises(BadInputError, match="power_cap_w"):
        cluster_from_dict({"groups": [{"node": "dgx-h100", "count": 1, "power_cap_w": cap}]})
