"""A GPU's tensor-core clock under a power cap (a cluster file's per-GPU power_cap_w)."""

from __future__ import annotations

# Power cap -> clock: board power P = s TDP + k f^3, a share s of the TDP that does not follow the SM clock (HBM,
# NVLink, leakage) plus dynamic power ~ C V^2 f with V rising about linearly with f over the DVFS range (first-order
# CMOS model), so under a cap f / f_TDP = ((cap / TDP - s) / (1 - s))^(1/3). s fitted on one chip's own power-limit
# pairs: NVIDIA's MLPerf Inference DGX-H100 MaxP vs MaxQ offline BERT (mlcommons inference_results v4.0 3c4a1cf /
# v3.1 eaf622a, GEMM-bound tensor-core work): 0.766 / 0.770 of the 700 W rate at 400 W, 0.820 at 450 W give
# s = 0.222 / 0.211 / 0.204, mean 0.21 (research/h100-power-cap-sources.md). Checked, not fitted: MLPerf v2.1
# DGX-A100 at 275 of 400 W, 0.844 (bert-99) and 0.798 (bert-99.9) measured against 0.845. The plain cube root (s = 0)
# gives 0.830 / 0.863 at the H100 points; at 500 of 700 W the rule gives 0.861 (cube root 0.894). Caps at or
# below s x TDP are refused (models/hardware/cluster.py); far below ~60 % of TDP throughput falls about linearly
# with power (a GB300 at 500 of 1,400 W ran 0.28-0.39 of its 1,400 W GEMM rate): the rule is for moderate caps.
STATIC_POWER_SHARE = 0.21
DYNAMIC_POWER_CLOCK_EXPONENT = 3.0
"""Dynamic power ~ C V^2 f with V rising about linearly with f: P_dynamic ~ f^3."""


def power_clock_scale(power_cap_w: float | None, tdp_w: float) -> float:
    """Tensor-core clock under a power cap relative to the clock at TDP (1 without a cap)."""
    if power_cap_w is None:
        return 1.0
    share = min(1.0, power_cap_w / tdp_w)
    return ((share - STATIC_POWER_SHARE) / (1.0 - STATIC_POWER_SHARE)) ** (1.0 / DYNAMIC_POWER_CLOCK_EXPONENT)
