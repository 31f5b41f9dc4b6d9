"""A cluster file's per-GPU power cap slows the tensor-core clock by the cube-root law of rates.py."""

from __future__ import annotations

import pytest

from clusterplan.errors import BadInputError
from clusterplan.models.hardware.cluster import cluster_from_dict
from clusterplan.models.hardware.rates import HardwareRates, power_clock_scale


def test_power_clock_scale_worked_example():
    # H100 SXM capped at 350 W of its 700 W TDP: clock x (350/700)^(1/3) = 0.7937.
    assert power_clock_scale(350.0, 700.0) == pytest.approx(0.5 ** (1 / 3))
    assert power_clock_scale(None, 700.0) == 1.0


def test_capped_cluster_runs_gemms_slower_but_keeps_its_mfu_peak():
    full = HardwareRates.of(cluster_from_dict({"groups": [{"node": "dgx-h100", "count": 1}]}))
    capped = HardwareRates.of(cluster_from_dict({"groups": [{"node": "dgx-h100", "count": 1, "power_cap_w": 350}]}))
    assert capped.gemm_max_flops == pytest.approx(full.gemm_max_flops * 0.5 ** (1 / 3))
    assert capped.peak_flops == full.peak_flops  # MFU stays against the datasheet bf16 peak
    assert capped.hbm_bytes_per_s == full.hbm_bytes_per_s  # HBM clock is not the capped core clock


@pytest.mark.parametrize("cap", [0, -5, 900, "high", True])
def test_bad_power_cap_is_one_line(cap):
    with pytest.raises(BadInputError, match="power_cap_w"):
        cluster_from_dict({"groups": [{"node": "dgx-h100", "count": 1, "power_cap_w": cap}]})
