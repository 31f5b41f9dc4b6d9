"""Fits of measured points to the calibration curves (numpy/scipy only, no torch).

GEMM: achieved TFLOP/s = max_tflops * F / (F + half_flops), F = 2*m*n*k (models/hardware/calibration.py GemmCurve),
fitted in log space so small and large GEMMs weigh alike.
Collectives: t = a + factor(op, n) * S / busbw (alpha-beta model, research/hardware.md section 6; the factor and the
ring step counts come from models/hardware/comm.py), fitted on
relative residuals with a soft-L1 loss so that one noisy size cannot drag the line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from clusterplan.errors import BadInputError
from clusterplan.models.hardware.comm import busbw_factor, ring_steps

MAX_BUSBW_OVER_OBSERVED = 2.0


@dataclass(frozen=True, kw_only=True, slots=True)
class GemmFit:
    max_tflops: float
    half_flops: float
    rms_log_error: float
    """Root-mean-square of ln(measured / fitted) over the points: 0.05 is about 5 % typical error."""
    points: int


@dataclass(frozen=True, kw_only=True, slots=True)
class AlphaBetaFit:
    latency_total_s: float
    """The intercept a: the whole latency of one call at this group size."""
    latency_s: float
    """a / steps(op, n): per-step alpha, as models/hardware/comm.py multiplies it back by the algorithm's steps."""
    busbw_bytes_per_s: float
    rms_rel_error: float
    points: int


def gemm_tflops(flops: np.ndarray | float, max_tflops: float, half_flops: float) -> np.ndarray | float:
    # Saturating efficiency curve of models/hardware/calibration.py GemmCurve (Calculon-style size dependence).
    return max_tflops * flops / (flops + half_flops)


def fit_gemm(flops: Sequence[float], tflops: Sequence[float]) -> GemmFit:
    """Fit max_tflops and half_flops to (GEMM FLOPs, achieved TFLOP/s) points; needs two distinct sizes."""
    f = np.asarray(flops, dtype=float)
    y = np.asarray(tflops, dtype=float)
    keep = (f > 0) & (y > 0) & np.isfinite(f) & np.isfinite(y)
    f, y = f[keep], y[keep]
    if len(np.unique(f)) < 2:
        raise BadInputError(f"GEMM fit needs points at two or more sizes, got {len(np.unique(f))}")
    log_f, log_y = np.log(f), np.log(y)

    def residual(p: np.ndarray) -> np.ndarray:
        # ln achieved = ln max + ln F - ln(F + half), evaluated stably with logaddexp.
        return p[0] + log_f - np.logaddexp(log_f, p[1]) - log_y

    top = float(y.max())
    lower = [math.log(top * 0.5), 0.0]
    upper = [math.log(top * 20.0), math.log(1e18)]
    start = [math.log(top * 1.1), float(np.clip(np.median(log_f), lower[1] + 1, upper[1] - 1))]
    sol = least_squares(residual, start, bounds=(lower, upper), loss="soft_l1", f_scale=0.1)
    rms = float(np.sqrt(np.mean(residual(sol.x) ** 2)))
    return GemmFit(max_tflops=float(math.exp(sol.x[0])), half_flops=float(math.exp(sol.x[1])),
                   rms_log_error=rms, points=len(f))


def fit_alpha_beta(op: str, n_ranks: int, size_bytes: Sequence[float], time_s: Sequence[float]) -> AlphaBetaFit:
    """Fit t = a + factor * S / busbw to measured (bytes, seconds); a >= 0, busbw > 0."""
    s = np.asarray(size_bytes, dtype=float)
    t = np.asarray(time_s, dtype=float)
    keep = (s > 0) & (t > 0) & np.isfinite(s) & np.isfinite(t)
    s, t = s[keep], t[keep]
    if len(np.unique(s)) < 2:
        raise BadInputError(f"{op}: alpha-beta fit needs two or more message sizes, got {len(np.unique(s))}")
    x = float(busbw_factor(op, n_ranks)) * s
    # Scale the unknowns to order one: a in units of the fastest time, b in units of the slowest slope.
    t_unit = float(t.min())
    b_unit = float((t / x).max())

    def residual(p: np.ndarray) -> np.ndarray:
        return (p[0] * t_unit + p[1] * b_unit * x) / t - 1.0

    # busbw at most twice the best observed: an asymptote the sweep never approached is not measured,
    # and noise on a busy host must not turn a flat curve into infinite bandwidth.
    b_floor = 1.0 / (MAX_BUSBW_OVER_OBSERVED * float((x / t).max()) * b_unit)
    sol = least_squares(residual, [0.5, max(0.5, 2 * b_floor)], bounds=([0.0, b_floor], [np.inf, np.inf]),
                        loss="soft_l1", f_scale=0.05)
    a, b = float(sol.x[0] * t_unit), float(sol.x[1] * b_unit)
    rms = float(np.sqrt(np.mean(residual(sol.x) ** 2)))
    steps = max(float(ring_steps(op, n_ranks)), 1.0)
    return AlphaBetaFit(latency_total_s=a, latency_s=a / steps, busbw_bytes_per_s=1.0 / b,
                        rms_rel_error=rms, points=len(s))
