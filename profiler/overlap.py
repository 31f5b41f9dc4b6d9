"""How much of a collective hides under compute when both run at once: the overlap a training step relies on.

Every rank of the level's group times three things (all ranks together, each run after a barrier):
  t_comm    one all-reduce of the buffer, alone;
  t_gemm    a loop of square GEMMs sized to take about t_comm, alone;
  t_both    the all-reduce started asynchronously (async_op=True, as DDP/FSDP buckets are), the same GEMM loop,
            then the wait.
overlap = (t_comm + t_gemm - t_both) / min(t_comm, t_gemm), clipped to [-1, 1]: 1 when the shorter op is fully
hidden (NCCL on its own stream and SMs), 0 when the two take as long as one after the other, below 0 when running
them together is slower still (gloo's worker thread competing with the GEMMs for the same CPU cores).
models/hardware/comm.py exposed_s inverts it: exposed = comm - overlap * min(comm, compute) for data-parallel and
context-parallel traffic under compute.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from clusterplan.profiler.collectives import ELEMENT_BYTES
from clusterplan.profiler.gemm import gemm_fn
from clusterplan.profiler.sweep import Measurement


def overlap_fraction(comm_s: float, gemm_s: float, both_s: float) -> float:
    """Share of the shorter operation hidden when both run at once, in [-1, 1] (negative: slower than serial)."""
    shorter = min(comm_s, gemm_s)
    if shorter <= 0:
        return 0.0
    return min(1.0, max(-1.0, (comm_s + gemm_s - both_s) / shorter))


def _wall(fn: Callable[[], object], sync: Callable[[], object], barrier: Callable[[], object]) -> float:
    barrier()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def measure_overlap(meas: Measurement, *, group: Any, ranks: Sequence[int], device: Any,
                    repeats: int = 9) -> dict[str, Any]:
    """Run on every rank of the level; returns the record (each time is the slowest rank's median)."""
    import statistics

    import torch
    import torch.distributed as dist

    cuda = device.type == "cuda"
    n = len(ranks)
    count = max(n, meas.size_bytes // ELEMENT_BYTES // n * n)
    buf = torch.ones(count, dtype=torch.float32, device=device)
    m = meas.shape[0]
    gemm = gemm_fn(m, m, m, meas.dtype, device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def barrier() -> None:
        dist.barrier(group=group)

    def slowest(seconds: float) -> float:
        t = torch.tensor([seconds], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
        return float(t.item())

    def median_of(fn: Callable[[], object]) -> float:
        _wall(fn, sync, barrier)  # warm-up
        return slowest(statistics.median(_wall(fn, sync, barrier) for _ in range(repeats)))

    comm_s = median_of(lambda: dist.all_reduce(buf, group=group))
    one_gemm_s = median_of(gemm)
    loops = max(1, round(comm_s / one_gemm_s))  # the same on every rank: both times are the group's slowest

    def gemms() -> None:
        for _ in range(loops):
            gemm()

    def both() -> None:
        work = dist.all_reduce(buf, group=group, async_op=True)
        gemms()
        work.wait()

    gemm_s = median_of(gemms)
    both_s = median_of(both)
    return {"key": meas.key, "level": meas.level, "n_ranks": n, "size_bytes": count * ELEMENT_BYTES,
            "gemm_shape": [m, m, m], "dtype": meas.dtype, "gemm_loops": loops, "comm_s": comm_s, "gemm_s": gemm_s,
            "both_s": both_s, "overlap": overlap_fraction(comm_s, gemm_s, both_s)}
