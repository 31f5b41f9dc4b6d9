"""Memory bandwidth from a large device-to-device copy.

Bytes moved = 2 x buffer (each byte read once and written once, as STREAM "copy" counts it), so the rate
compares with the datasheet HBM bandwidth (research/hardware.md section 3: expect 80-90 % of peak).
"""

from __future__ import annotations

from typing import Any

from clusterplan.profiler.gemm import sample_seconds
from clusterplan.profiler.sweep import Measurement
from clusterplan.profiler.timer import adaptive_repeats, summarize, time_runs


def measure_copy(meas: Measurement, device: Any, *, budget_s: float) -> dict[str, Any]:
    import torch

    numel = meas.size_bytes // 4
    src = torch.ones(numel, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    fn = lambda: dst.copy_(src)  # noqa: E731
    cuda = device.type == "cuda"
    repeats, inner = adaptive_repeats(fn, cuda=cuda, budget_s=budget_s, lo=3, hi=20, sample_s=sample_seconds(cuda))
    timing = summarize(time_runs(fn, cuda=cuda, warmup=1, repeats=repeats, inner=inner))
    moved = 2 * numel * 4  # read + write
    return {"key": meas.key, "buffer_bytes": numel * 4, "moved_bytes": moved, **timing.to_dict(),
            "bytes_per_s": moved / timing.median_s}
