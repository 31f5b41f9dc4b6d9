"""Timing of one operation: warm-up, repeated runs with device synchronisation, median and spread.

On CUDA each run is bracketed by CUDA events (kernel time, not launch time); on CPU by perf_counter.
An optional `before` callable (a barrier for collectives) runs outside the timed region.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True, slots=True)
class Timing:
    median_s: float
    p10_s: float
    p90_s: float
    min_s: float
    repeats: int

    def to_dict(self) -> dict[str, float | int]:
        return {"median_s": self.median_s, "p10_s": self.p10_s, "p90_s": self.p90_s, "min_s": self.min_s,
                "repeats": self.repeats}


def summarize(times_s: Sequence[float]) -> Timing:
    t = np.asarray(times_s, dtype=float)
    return Timing(median_s=float(np.median(t)), p10_s=float(np.percentile(t, 10)),
                  p90_s=float(np.percentile(t, 90)), min_s=float(t.min()), repeats=int(t.size))


def _time_cuda(fn: Callable[[], object], before: Callable[[], object] | None, inner: int) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    if before is not None:
        before()
    start.record()
    for _ in range(inner):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / inner  # elapsed_time is in milliseconds


def _time_cpu(fn: Callable[[], object], before: Callable[[], object] | None, inner: int) -> float:
    if before is not None:
        before()
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def time_runs(fn: Callable[[], object], *, cuda: bool, warmup: int, repeats: int,
              before: Callable[[], object] | None = None, inner: int = 1) -> list[float]:
    """Seconds per call in each of `repeats` samples after `warmup` untimed ones; a sample is `inner`
    back-to-back calls, so kernels shorter than their launch queue up as they do in a real step."""
    one = _time_cuda if cuda else _time_cpu
    for _ in range(warmup):
        one(fn, before, inner)
    return [one(fn, before, inner) for _ in range(repeats)]


def adaptive_repeats(fn: Callable[[], object], *, cuda: bool, budget_s: float, lo: int = 3, hi: int = 50,
                     sample_s: float = 0.0) -> tuple[int, int]:
    """(repeats, inner): samples of at least sample_s (inner calls each) that fit in budget_s, from one
    warm-up and one timed call; repeats between lo and hi."""
    first_s = max(time_runs(fn, cuda=cuda, warmup=1, repeats=1)[0], 1e-7)
    inner = int(min(1000, max(1, sample_s / first_s)))
    return int(min(hi, max(lo, budget_s / (first_s * inner)))), inner
