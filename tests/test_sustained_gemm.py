"""A GPU's GEMM rate under full-node training load (gemm.yaml sustained_fraction_*; models/hardware/rates.py
sustained_scale), worked by hand.

stas00/ml-engineering's mamf-finder measures, with every GPU of an 8-GPU node running matmuls, the maximum sustainable
matmul FLOPS (MSMF) beside the burst MAMF: B200 bf16 1,439 / 1,737 = 0.828, fp8 2,788 / 3,350 = 0.832 at its
1,000 W cap; H200 (GH100) 755 / 850 = 0.888 in both. TRAINING_GEMM_SHARE (fitted on A100) reproduces the GH100 rows,
so it holds GH100's sustained loss; a GPU measured under the same load runs at its ratio over GH100's."""

from __future__ import annotations

import pytest

from clusterplan.hardware_db import get_gemm_tiling
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import SUSTAINED_REFERENCE_GPU, HardwareRates, sustained_scale


def test_b200_runs_its_measured_sustained_ratio_over_gh100s():
    b200 = get_gemm_tiling("B200")
    assert (b200.sustained_fraction_bf16, b200.sustained_fraction_fp8) == (0.828, 0.832)
    assert SUSTAINED_REFERENCE_GPU == "H200-SXM-141GB"
    assert sustained_scale(b200, "bf16") == pytest.approx(0.828 / 0.888)  # 0.9324
    assert sustained_scale(b200, "fp8") == pytest.approx(0.832 / 0.888)  # 0.9369


def test_gb200_sustains_b200s_rate_at_its_higher_power_cap():
    """GB200 is B200's die at 1,200 W instead of 1,000 W. B200's sustained rate, 0.828 x 2,250 x 0.776 = 1,446
    TFLOP/s bf16, is GB200's under a 1,000 of 1,200 W cap; the cap -> clock rule gives 0.924 of the clock at 1,200 W
    ((1000 / 1200 - 0.21) / 0.79) ** (1 / 3), so GB200 sustains 1,446 / 0.924 = 1,565 of its 2,500 x 0.729 = 1,823
    burst: 0.858 (fp8: 0.832 x 4,500 x 0.763 / 0.924 / (5,000 x 0.723) = 0.855). Fails when any input moves."""
    from clusterplan.hardware_db import get_gpu
    from clusterplan.models.hardware.power import power_clock_scale

    b200, gb200 = get_gpu("B200"), get_gpu("GB200")
    clock = power_clock_scale(b200.tdp_w, gb200.tdp_w)
    assert (b200.tdp_w, gb200.tdp_w) == (1000, 1200) and clock == pytest.approx(0.924, abs=5e-4)
    b200_tiling, tiling = get_gemm_tiling("B200"), get_gemm_tiling("GB200")
    b200_sustained_bf16 = b200_tiling.sustained_fraction_bf16 * b200.tflops("bf16") * b200.gemm_peak_fraction
    b200_sustained_fp8 = b200_tiling.sustained_fraction_fp8 * b200.tflops("fp8") * b200_tiling.fp8_mamf_fraction
    assert tiling.sustained_fraction_bf16 == pytest.approx(
        b200_sustained_bf16 / clock / (gb200.tflops("bf16") * gb200.gemm_peak_fraction), abs=5e-4)  # 0.8584
    assert tiling.sustained_fraction_fp8 == pytest.approx(
        b200_sustained_fp8 / clock / (gb200.tflops("fp8") * tiling.fp8_mamf_fraction), abs=5e-4)  # 0.8552
    assert sustained_scale(tiling, "bf16") == pytest.approx(0.858 / 0.888)  # 0.966: 3.4 % below the share


@pytest.mark.parametrize("gpu", ["H100-SXM5-80GB", "H200-SXM-141GB", "GB300", "B300", "MI300X"])
def test_unmeasured_gpus_and_the_reference_keep_the_share(gpu):
    # Not measured with the whole node busy (GB300 has no MSMF, nor a same-die part that has one; B300's was one GPU
    # alone): unscaled.
    assert sustained_scale(get_gemm_tiling(gpu), "bf16") == sustained_scale(get_gemm_tiling(gpu), "fp8") == 1.0


def test_the_b200_best_shape_rate_carries_the_scale():
    """B200: 2,250 TFLOP/s dense bf16 x MAMF fraction 1,745 / 2,250 x TRAINING_GEMM_SHARE 0.85 x 0.9324 = 1,383.0
    TFLOP/s at the best shape (before: 1,483.3); fp8 4,500 x 0.763 x 0.85 x 0.9369 = 2,734.3."""
    rates = HardwareRates.of(load_cluster("dgx-b200:1"))
    assert rates.gemm_max_flops / 1e12 == pytest.approx(1745 * 0.85 * 0.828 / 0.888, rel=1e-3)
    assert rates.gemm_shape.max_flops_fp8 / 1e12 == pytest.approx(4500 * 0.763 * 0.85 * 0.832 / 0.888,
                                                                            rel=1e-3)


def test_a_mixed_cluster_is_priced_at_its_slowest_group_as_trained():
    """B200 and B300 share the 2,250 TFLOP/s dense bf16 peak; under training load B200's GEMMs run at 1,745 x 0.85 x
    0.932 = 1,383 TFLOP/s and B300's at its MAMF x 0.85 (no sustained measurement under full-node load): a cluster of
    both is priced at the slower B200 whichever group comes first."""
    from clusterplan.models.hardware.cluster import cluster_from_dict

    for order in (["dgx-b200", "dgx-b300"], ["dgx-b300", "dgx-b200"]):
        mixed = cluster_from_dict({"groups": [{"node": n, "count": 1} for n in order]})
        assert HardwareRates.of(mixed).gpu_name == "B200"


def test_estimate_shows_the_gemm_rate_it_priced(run_cli):
    """`estimate` says which best-shape GEMM rate it priced and why: B200 at MAMF x share x 0.932 (its measured
    sustained ratio over GH100's), in the JSON and on the table."""
    import json

    args = ["estimate", "--model", "llama3.1-8b", "--cluster", "dgx-b200:1", "--layout",
            "tp=1,dp=8,mbs=2,gbs=128,seq=8192,precision=fp8,recompute=none"]
    code, out, _ = run_cli(*args, "--format", "json")
    hw = json.loads(out)["hardware"]
    assert code == 0 and hw["gemm_sustained_scale"] == pytest.approx(0.828 / 0.888, abs=1e-4)
    assert hw["gemm_best_shape_tflops"]["bf16"] == pytest.approx(1383.8, abs=0.5)
    code, text, _ = run_cli(*args)
    assert "GEMM rate at the best shape: 1,384 TFLOP/s bf16" in text and "x 0.932 sustained under full-node load" in text
