"""The standard normal distribution, vectorised without scipy (kept off the planner's import path: scipy.special
alone adds about 0.2 s to every command's start)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

# Abramowitz & Stegun 1964, formula 7.1.26: erf(x) = 1 - (a1 t + ... + a5 t^5) exp(-x^2), t = 1 / (1 + p x), x >= 0;
# absolute error below 1.5e-7.
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf(x: np.ndarray | float) -> np.ndarray:
    """The error function (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7)."""
    x = np.asarray(x, dtype=float)
    a = np.abs(x)
    t = 1.0 / (1.0 + _ERF_P * a)
    poly = t * (_ERF_A[0] + t * (_ERF_A[1] + t * (_ERF_A[2] + t * (_ERF_A[3] + t * _ERF_A[4]))))
    return np.sign(x) * (1.0 - poly * np.exp(-a * a))


def cdf(z: np.ndarray | float) -> np.ndarray:
    """P(Z <= z) of a standard normal."""
    return 0.5 * (1.0 + erf(np.asarray(z, dtype=float) / np.sqrt(2.0)))


def pdf(z: np.ndarray | float) -> np.ndarray:
    """The standard normal density."""
    z = np.asarray(z, dtype=float)
    return np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)


WINDOW_SIGMAS = 6.0
"""ceil_moments sums P(X > j d) over j within this many standard deviations of the mean: beyond, each term is 0 or 1
to within 1e-9."""
DEDUPE_MIN_SIZE = 256
"""ceil_moments prices each distinct (mean, sd) once when given at least this many (a search's arrays repeat them)."""


def expected_ceil(mean: np.ndarray, sd: np.ndarray | float, step: float) -> np.ndarray:
    """E[ceil(X / step)] for X normal (mean, sd), mean > 0 (ceil_moments); exactly ceil(mean / step) where sd is 0."""
    return ceil_moments(mean, sd, step)[0]


def ceil_moments(mean: np.ndarray, sd: np.ndarray | float, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of C = ceil(X / step) for X normal (mean, sd), mean > 0. C counts the j >= 0 with
    j step < X, so E[C] = sum_j P(X > j step) and E[C^2] = sum_j (2 j + 1) P(X > j step) (tail sums of a count);
    each sum runs over j within WINDOW_SIGMAS deviations, the terms below counted whole. Where sd is 0:
    ceil(mean / step) and 0."""
    mean = np.asarray(mean, dtype=float)
    shape = np.broadcast_shapes(mean.shape, np.shape(sd))
    mean = np.broadcast_to(mean, shape)
    sd = np.broadcast_to(np.asarray(sd, dtype=float), shape)
    if not np.any(sd > 0):
        return np.ceil(mean / step), np.zeros(shape)
    if mean.size >= DEDUPE_MIN_SIZE:
        keys, inverse = np.unique((mean + 1j * sd).ravel(), return_inverse=True)
        if keys.size < mean.size:
            m, v = _ceil_moments(keys.real, keys.imag, step)
            return m[inverse].reshape(shape), v[inverse].reshape(shape)
    return _ceil_moments(mean, sd, step)


def _ceil_moments(mean: np.ndarray, sd: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """ceil_moments on arrays of one shape."""
    exact = np.ceil(mean / step)
    spread = np.where(sd > 0, sd, 1.0)
    first = np.maximum(np.floor((mean - WINDOW_SIGMAS * spread) / step), 0.0)
    terms = int(np.max(np.ceil(2 * WINDOW_SIGMAS * spread[sd > 0] / step))) + 2
    total, square = first.copy(), first * first  # j < first: P = 1, sum of 2 j + 1 over them = first^2
    for i in range(terms):
        j = first + i
        tail = 1.0 - cdf((j * step - mean) / spread)
        total += tail
        square += (2.0 * j + 1.0) * tail
    return np.where(sd > 0, total, exact), np.where(sd > 0, np.maximum(square - total * total, 0.0), 0.0)


@lru_cache(maxsize=256)
def expected_max_standard_normal(n: int) -> float:
    """E[max of n independent standard normals] = integral of x n phi(x) Phi(x)^(n-1) dx (order statistics, e.g.
    David & Nagaraja 2003, Sec. 3.1): 0.0 for 1, 1.4236 for 8, 1.7660 for 16, 2.0697 for 32, 2.3437 for 64."""
    if n < 2:
        return 0.0
    x, density, below = _normal_grid()
    return float(np.sum(x * n * density * below ** (n - 1)) * (x[1] - x[0]))


@lru_cache(maxsize=1)
def _normal_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The standard normal's density and distribution function on expected_max_standard_normal's grid."""
    x = np.linspace(-MAX_NORMAL_SIGMA, MAX_NORMAL_SIGMA, NORMAL_GRID_POINTS)
    # math.erf, exact, not cdf()'s 1.5e-7 approximation: evaluated once, and the order statistics are tabulated values
    exact_cdf = 0.5 * (1.0 + np.frompyfunc(math.erf, 1, 1)(x / np.sqrt(2.0)).astype(float))
    return x, pdf(x), exact_cdf


MAX_NORMAL_SIGMA = 12.0
"""Integration range of expected_max_standard_normal, in standard deviations: the density beyond is below 1e-30."""
NORMAL_GRID_POINTS = 48_001
"""Integration grid of expected_max_standard_normal (step 5e-4 sigma: the sum is exact to 1e-9 for n <= 1,024)."""
