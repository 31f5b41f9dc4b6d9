"""How well the calibration fits recover known curves as measurement noise grows (Monte Carlo).

Ground truth like an H100 node: all-reduce on 8 GPUs, 15 us per ring step and 360 GB/s busbw, over the GPU
sweep 1 KiB .. 256 MiB; GEMM curve 760 TFLOP/s max, half of it at 3e9 FLOPs, over the standard GPU shapes.
Noise is log-normal per point; every 10th trial also has one point 3x slow (a hiccup).
"""

from __future__ import annotations

import numpy as np

from clusterplan.profiler.fit import fit_alpha_beta, fit_gemm, gemm_tflops
from clusterplan.profiler.shapes import standard_shapes
from clusterplan.profiler.sweep import collective_sizes

TRIALS = 200


def _errors(noise: float, rng: np.random.Generator) -> tuple[float, float, float, float]:
    sizes = np.array(collective_sizes(cuda=True, quick=False), dtype=float)
    flops = np.array([2.0 * m * n * k for m, n, k in standard_shapes(cuda=True, quick=False) if min(m, n, k) >= 256])
    bw, lat, gmax, ghalf = [], [], [], []
    for trial in range(TRIALS):
        t = (14 * 15e-6 + 1.75 * sizes / 360e9) * np.exp(rng.normal(0, noise, sizes.size))
        y = gemm_tflops(flops, 760.0, 3e9) * np.exp(rng.normal(0, noise, flops.size))
        if trial % 10 == 0:
            t[rng.integers(sizes.size)] *= 3
            y[rng.integers(flops.size)] /= 3
        ab, g = fit_alpha_beta("all_reduce", 8, sizes, t), fit_gemm(flops, y)
        bw.append(abs(ab.busbw_bytes_per_s / 360e9 - 1))
        lat.append(abs(ab.latency_s / 15e-6 - 1))
        gmax.append(abs(g.max_tflops / 760 - 1))
        ghalf.append(abs(g.half_flops / 3e9 - 1))
    return tuple(float(np.percentile(e, 90)) for e in (bw, lat, gmax, ghalf))  # type: ignore[return-value]


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    print(f"90th-percentile relative error over {TRIALS} trials")
    print(f"{'noise':>6} {'busbw':>8} {'alpha':>8} {'gemm max':>9} {'gemm half':>10}")
    for noise in (0.0, 0.01, 0.03, 0.05, 0.10, 0.20):
        bw, lat, gmax, ghalf = _errors(noise, rng)
        print(f"{noise:>6.0%} {bw:>8.1%} {lat:>8.1%} {gmax:>9.1%} {ghalf:>10.1%}")
