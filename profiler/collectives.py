"""Collective timings with torch.distributed, the same code for NCCL (GPU) and gloo (CPU).

Every rank of a level's groups runs the op at once (all nodes' NVLink groups, or all rails, together, as in
training); each run starts after a barrier and the time of a run is the slowest rank's (max over the world).
Sizes as nccl-tests: all_reduce S = the buffer, all_gather / reduce_scatter S = the full gathered buffer,
all_to_all S = one rank's send buffer, send_recv S = bytes each rank sends to its ring neighbour.
algbw = S / t; busbw = algbw * factor(op, n) (NVIDIA/nccl-tests doc/PERFORMANCE.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from clusterplan.models.hardware.comm import busbw_factor
from clusterplan.profiler.sweep import MIB, Measurement
from clusterplan.profiler.timer import summarize, time_runs

ELEMENT_BYTES = 4  # float32: gloo lacks bf16 for some collectives (pytorch#112137)


def repeats_for(size_bytes: int, *, cuda: bool, quick: bool) -> tuple[int, int]:
    """(warm-up, repeats): the same on every rank, since each run is a collective call."""
    if cuda:
        return (2, 10) if quick or size_bytes > 64 * MIB else (5, 20)
    return (2, 10) if quick else (3, 20)


def collective_fn(op: str, count: int, group: Any, ranks: Sequence[int], rank: int,
                  device: Any) -> Callable[[], object]:
    """One call of `op` on `count` float32 elements (a multiple of the group size) inside `group`."""
    import torch
    import torch.distributed as dist

    n = len(ranks)
    full = torch.ones(count, dtype=torch.float32, device=device)
    part = torch.ones(count // n, dtype=torch.float32, device=device)
    if op == "all_reduce":
        return lambda: dist.all_reduce(full, group=group)
    if op == "all_gather":  # all_gather_single replaces all_gather_into_tensor in torch 2.13
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        return lambda: gather(full, part, group=group)
    if op == "reduce_scatter":
        scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        return lambda: scatter(part, full, group=group)
    if op == "all_to_all":
        out = torch.empty_like(full)
        return lambda: dist.all_to_all_single(out, full, group=group)
    me = ranks.index(rank)
    nxt, prv = ranks[(me + 1) % n], ranks[(me - 1) % n]
    recv = torch.empty_like(full)

    def ring_exchange() -> None:
        # Batched so NCCL posts both in one group call (separate calls to one peer can deadlock).
        ops = [dist.P2POp(dist.isend, full, nxt, group), dist.P2POp(dist.irecv, recv, prv, group)]
        for req in dist.batch_isend_irecv(ops):
            req.wait()

    return ring_exchange


def measure_collective(meas: Measurement, *, group: Any, ranks: Sequence[int], rank: int, device: Any,
                       quick: bool) -> dict[str, Any]:
    """Run on every rank; returns the record (times are the max over all ranks of the world)."""
    import torch
    import torch.distributed as dist

    n = len(ranks)
    count = max(n, meas.size_bytes // ELEMENT_BYTES // n * n)
    fn = collective_fn(meas.op, count, group, ranks, rank, device)
    cuda = device.type == "cuda"
    warmup, repeats = repeats_for(meas.size_bytes, cuda=cuda, quick=quick)
    times = time_runs(fn, cuda=cuda, warmup=warmup, repeats=repeats, before=lambda: dist.barrier(group=group))
    slowest = torch.tensor(times, dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    timing = summarize(slowest.cpu().tolist())
    size = count * ELEMENT_BYTES
    algbw = size / timing.median_s
    return {"key": meas.key, "op": meas.op, "level": meas.level, "n_ranks": n, "size_bytes": size,
            **timing.to_dict(), "algbw_bytes_per_s": algbw, "busbw_bytes_per_s": algbw * float(busbw_factor(meas.op, n))}
