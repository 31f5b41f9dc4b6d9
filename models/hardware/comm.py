"""Collective communication times with the alpha-beta model, flat and hierarchical.

All functions work on floats or numpy arrays alike. `busbw` is the achieved bus bandwidth per GPU per
direction as nccl-tests defines it (NVIDIA/nccl-tests doc/PERFORMANCE.md), so time = factor * S / busbw
with factor 2(n-1)/n for all-reduce and (n-1)/n for all-gather, reduce-scatter and all-to-all.
Sizes: all-reduce S = the buffer; all-gather / reduce-scatter S = the full gathered size;
all-to-all S = the bytes one rank sends in total.
"""

from __future__ import annotations

import numpy as np

from clusterplan.errors import BadInputError

ArrayLike = float | np.ndarray
OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")


def _frac(n: ArrayLike) -> ArrayLike:
    n = np.asarray(n, dtype=float)
    return np.where(n > 1, (n - 1) / np.maximum(n, 1), 0.0)


def _check(op: str) -> None:
    if op not in OPS:
        raise BadInputError(f"unknown collective {op!r}; expected one of {', '.join(OPS)}")


def ring_steps(op: str, n: ArrayLike) -> ArrayLike:
    """Latency steps (alphas) of one call over n ranks: ring all-reduce 2(n-1) (Patarasuk & Yuan 2009), ring
    all-gather / reduce-scatter and pairwise all-to-all (n-1) (Thakur, Rabenseifner & Gropp 2005), send/recv 1.
    The one place these counts live: the cost model multiplies a per-step alpha by them, profiler/fit.py divides a
    measured intercept by them."""
    _check(op)
    n = np.asarray(n, dtype=float)
    if op == "send_recv":
        return np.ones_like(n)
    steps = np.maximum(n - 1, 0.0)
    return 2 * steps if op == "all_reduce" else steps


def busbw_factor(op: str, n: ArrayLike) -> ArrayLike:
    """nccl-tests' bus-bandwidth factor (doc/PERFORMANCE.md): time = factor * S / busbw with all-reduce 2(n-1)/n,
    all-gather, reduce-scatter and all-to-all (n-1)/n, send/recv 1."""
    _check(op)
    if op == "send_recv":
        return np.ones_like(np.asarray(n, dtype=float))
    return 2 * _frac(n) if op == "all_reduce" else _frac(n)


def all_reduce_s(size_bytes: ArrayLike, n: ArrayLike, busbw_bytes_per_s: ArrayLike, latency_s: ArrayLike) -> ArrayLike:
    # Ring all-reduce: 2(n-1) steps of alpha + 2(n-1)/n * S / B (Patarasuk & Yuan 2009; nccl-tests busbw).
    n = np.asarray(n, dtype=float)
    return np.where(n > 1, ring_steps("all_reduce", n) * latency_s
                    + busbw_factor("all_reduce", n) * size_bytes / busbw_bytes_per_s, 0.0)


def all_gather_s(size_bytes: ArrayLike, n: ArrayLike, busbw_bytes_per_s: ArrayLike, latency_s: ArrayLike) -> ArrayLike:
    # Ring all-gather: (n-1) steps of alpha + (n-1)/n * S / B (Thakur, Rabenseifner & Gropp 2005).
    n = np.asarray(n, dtype=float)
    return np.where(n > 1, ring_steps("all_gather", n) * latency_s
                    + busbw_factor("all_gather", n) * size_bytes / busbw_bytes_per_s, 0.0)


reduce_scatter_s = all_gather_s  # mirror image of all-gather, same cost (nccl-tests factor (n-1)/n)


def all_to_all_s(size_bytes: ArrayLike, n: ArrayLike, busbw_bytes_per_s: ArrayLike, latency_s: ArrayLike) -> ArrayLike:
    # Pairwise all-to-all: (n-1) exchanges, (n-1)/n of the send buffer leaves the rank (nccl-tests).
    return all_gather_s(size_bytes, n, busbw_bytes_per_s, latency_s)


def p2p_s(size_bytes: ArrayLike, bandwidth_bytes_per_s: ArrayLike, latency_s: ArrayLike) -> ArrayLike:
    # Send/recv: alpha + S / B.
    return latency_s + np.asarray(size_bytes, dtype=float) / bandwidth_bytes_per_s


def hierarchical_all_reduce_s(size_bytes: ArrayLike, n_in: ArrayLike, n_out: ArrayLike, bw_in: ArrayLike,
                              bw_out: ArrayLike, lat_in: ArrayLike, lat_out: ArrayLike) -> ArrayLike:
    # 2-level all-reduce: intra reduce-scatter + inter all-reduce of S/n_in per rail + intra all-gather
    # (NCCL's effective behaviour; research/hardware.md section 6 "Hierarchical forms").
    n_in = np.asarray(n_in, dtype=float)
    intra = 2 * reduce_scatter_s(size_bytes, n_in, bw_in, lat_in)
    inter = all_reduce_s(np.asarray(size_bytes, dtype=float) / n_in, n_out, bw_out, lat_out)
    return intra + inter


def hierarchical_all_gather_s(size_bytes: ArrayLike, n_in: ArrayLike, n_out: ArrayLike, bw_in: ArrayLike,
                              bw_out: ArrayLike, lat_in: ArrayLike, lat_out: ArrayLike) -> ArrayLike:
    # 2-level all-gather (S = total gathered size): inter along each rail on S/n_in, then intra on S
    # (research/hardware.md section 6). Reduce-scatter is the mirror image with the same cost.
    n_in = np.asarray(n_in, dtype=float)
    inter = all_gather_s(np.asarray(size_bytes, dtype=float) / n_in, n_out, bw_out, lat_out)
    return inter + all_gather_s(size_bytes, n_in, bw_in, lat_in)


hierarchical_reduce_scatter_s = hierarchical_all_gather_s


def hierarchical_all_to_all_s(size_bytes: ArrayLike, n_in: ArrayLike, n_out: ArrayLike, bw_in: ArrayLike,
                              bw_out: ArrayLike, lat_in: ArrayLike, lat_out: ArrayLike) -> ArrayLike:
    # All-to-all over n_out nodes x n_in GPUs, uniform destinations: the (n_out-1)/n_out remote share crosses
    # the GPU's own NIC (all-to-all cannot aggregate NICs, nccl-tests#267), the local share rides NVLink.
    n_in = np.asarray(n_in, dtype=float)
    n_out = np.asarray(n_out, dtype=float)
    n = n_in * n_out
    remote = np.where(n_out > 1, (n_out - 1) / n_out * size_bytes / bw_out + (n - n_in) * lat_out, 0.0)
    local = np.where(n_in > 1, (n_in - 1) / n * size_bytes / bw_in + (n_in - 1) * lat_in, 0.0)
    return remote + local


def exposed_s(comm_s: ArrayLike, compute_s: ArrayLike, overlap: float) -> ArrayLike:
    # Communication left on the critical path when it runs under compute: comm - overlap * min(comm, compute),
    # the inverse of profiler/overlap.py's measured fraction (1: the shorter op fully hidden, 0: serial, < 0: the
    # two slow each other down, as gloo's thread and the GEMMs on shared CPU cores).
    comm_s = np.asarray(comm_s, dtype=float)
    return comm_s - overlap * np.minimum(comm_s, compute_s)


def interference_s(concurrent_comm_s: ArrayLike, compute_s: ArrayLike, slowdown: ArrayLike) -> ArrayLike:
    """Time a collective running concurrently with compute adds to that compute (communication/computation
    interference). Each NCCL CTA holds one SM for the whole collective and shares it with no compute kernel
    (NVIDIA/nccl#689), so for the `concurrent_comm_s` seconds C the collective runs beside a compute phase of
    `compute_s` seconds W (on all SMs), that phase runs `slowdown` f times slower (its waves over the SMs left:
    compute.comm_sm_slowdown): it does C / f of its work under the collective and ends at max(C, W + C (1 - 1/f))
    instead of max(C, W). Checked, not fitted: 1 - 1/f = 24 / 132 = 18 % on H100 at the ideal f (ring over NVLink)
    against the 18.9 % average compute slowdown under overlap that Lee et al. 2025 (arXiv 2507.03114, A100/H100,
    GPT and Llama layers) measure. Returns the added seconds (0 at f = 1)."""
    c = np.maximum(np.asarray(concurrent_comm_s, dtype=float), 0.0)
    lost = 1.0 - 1.0 / np.maximum(np.asarray(slowdown, dtype=float), 1.0)
    return np.maximum(c, compute_s + lost * c) - np.maximum(c, compute_s)


def split_group(size: ArrayLike, stride: ArrayLike, domain: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of a mesh-axis group inside one scale-up domain (n_in) and domains spanned (n_out), for the worst
    group of the axis (the step waits on it).

    A group of `size` ranks spaced `stride` apart (torchtitan mesh order: tp innermost, stride 1) on
    scale-up domains of `domain` GPUs (the job's, min(domain, world): every axis's span divides the world). Groups
    tile the domains when the domain is a multiple of the stride and of the group's span (size x stride) or the span
    a multiple of the domain; otherwise one group straddles a boundary (64-rank groups on 72-GPU NVL72 racks: ranks
    64-127 have 8 in the first rack) and spans one domain more, its ranks split evenly as the worst case.
    """
    size = np.asarray(size, dtype=float)
    stride = np.maximum(np.asarray(stride, dtype=float), 1.0)
    domain = np.asarray(domain, dtype=float)
    n_in = np.clip(np.floor(domain / stride), 1, size)
    n_out = np.ceil(size / n_in)
    span = size * stride
    tiles = (np.mod(domain, stride) == 0) & ((np.mod(domain, span) == 0) | (np.mod(span, domain) == 0))
    straddles = (stride < domain) & (size > 1) & ~tiles
    n_out = np.where(straddles, np.minimum(size, n_out + 1), n_out)
    n_in = np.where(straddles, np.ceil(size / n_out), n_in)
    return n_in, n_out
