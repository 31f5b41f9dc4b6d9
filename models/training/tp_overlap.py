"""What overlapping tensor-parallel communication with the GEMMs costs the GEMMs themselves: the overlap hides the
all-gathers and reduce-scatters (step.tp_comm_s prices what stays exposed), but it cuts each GEMM into chunks that
fill fewer waves of the SMs, and some variants run their communication kernels on SMs the GEMM then gives up.

Transformer Engine userbuffers (Megatron-Core --tp-comm-overlap, stack tp_overlap "bulk"), with the defaults of
TE's initialize_ub (transformer_engine/pytorch/module/base.py, get_default_config):
  ring_exchange (qkv_fprop, fc1_fprop, proj_dgrad, fc2_dgrad): the all-gather runs as tp peer-to-peer steps on the
      copy engines and the GEMM as tp chunks of m/tp rows, one under each step (num_splits = tp, 1 SM);
  pipeline (proj_fprop, fc2_fprop): the GEMM is cut into UB_PIPELINE_SPLITS chunks of m/4 rows whose reduce-scatters
      run on UB_COMM_SMS SMs while the next chunk computes; the GEMM is launched with that SM margin (set_sm_margin);
  bulk (qkv_dgrad, fc1_dgrad): the input all-gather runs under the dgrad GEMM and the dgrad's reduce-scatter under
      the wgrad GEMM, each on UB_COMM_SMS SMs the concurrent GEMM gives up; NVIDIA's tuned configs, which the
      megatron-core recipes pass, give up none (stack tp_overlap_bulk_sm_margin; research/tp-overlap-ub-configs.md).
PyTorch async TP (torchtitan, stack tp_overlap "async_tp"): inductor's micro-pipeline pass
(torch/_inductor/fx_passes/micro_pipeline_tp.py) rewrites, in the forward and backward graphs alike,
  all-gather -> the matmuls that take the gathered tensor as their left operand (fuse_all_gather_matmul:
      symm_mem.fused_all_gather_matmul / _scaled_mm variant), and
  one matmul -> reduce-scatter (fuse_matmul_reduce_scatter: the scattered tensor must be a single mm / _scaled_mm
      output, _find_producer_matmul; fused_matmul_reduce_scatter),
into tp chunks of m/tp rows with copy-engine pulls between them (torch/distributed/_symmetric_memory/__init__.py):
  forward: the block input's all-gather with qkv / fc1 (every step's pull runs under the previous chunk's matmul,
      the first under the local shard's: the pulls hide under (tp-1)/tp of the chunked matmuls), and the proj /
      fc2 output's reduce-scatter (_pipelined_produce_and_all2all: each chunk computed for a peer while the previous
      one is pulled, the last pull under the local chunk, then one torch.sum over the tp stacked partials: hidden
      under (tp-1)/tp of the matmuls, plus an exposed reduction that reads m x n and writes m/tp x n);
  backward: the gradient dY of proj / fc2 is all-gathered and fused with their input-gradient matmul (the weight
      gradient takes the gathered dY the fused op returns, whole); the input gradient of qkv / fc1 is the SUM of
      the q, k, v (w1, w3) input-gradient matmuls, not one matmul, so its reduce-scatter is not rewritten: it runs
      as a plain collective after them, exposed, and those matmuls run whole.
nanotron's asynchronous tensor parallelism (stack tp_overlap "local_shard"; nanotron
src/nanotron/parallel/tensor_parallel/functional.py, tp_mode REDUCE_SCATTER with tp_linear_async_communication,
adapted from Megatron-LM's LinearWithGradAccumulationAndAsyncCommunication), per column / row pair:
  column forward (_ColumnLinearAsyncCommunication): the input all-gather is issued async and the matmul of the local
      shard's rows (m/tp) runs under it, then the other rows (the matmuls before and after the local shard);
  row forward (_RowLinearAsyncCommunication): the matmul, then its reduce-scatter, exposed;
  row backward: dY's all-gather async under the local shard's input-gradient matmul, then the other rows, then the
      weight gradient;
  column backward: the input re-gathered (tp_recompute_allgather) under the input-gradient matmul, and that input
      gradient's reduce-scatter async under the weight-gradient matmul (CUDA_DEVICE_MAX_CONNECTIONS=1 orders them).
The weight-gradient matmuls are never rewritten. The all-gather is fused only with matmuls that take the gathered
tensor itself (_find_consumer_matmuls): an fp8 recipe that gathers bf16 and casts after the gather (one the stack does
not list in fp8_tp_allgather_recipes: torchtitan applies plain TP to torchao's rowwise recipe, whose row scales
reduce over the gathered sequence) puts the cast kernels between, so neither all-gather is fused and its matmuls run
whole (pytorch/pytorch#149990: rowwise all-gather-matmuls not fused, its matmul-reduce-scatters fused, #149247).
Vectorised over LayoutArrays; nothing here is fitted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from clusterplan.hardware_db.stacks import TE_UB_COMM_SMS, ExecutionStack
from clusterplan.models.hardware.comm import exposed_s, interference_s
from clusterplan.models.hardware.gemm import OUTPUT_BYTES

UB_PIPELINE_SPLITS = 4
"""TE initialize_ub default num_splits of a "pipeline" overlap (proj_fprop, fc2_fprop)."""
NVLINK_DOMAIN_OVERLAPS = frozenset({"bulk", "async_tp"})
"""Overlaps whose communication runs on NVLink-mapped memory, so only inside one NVLink (scale-up) domain: TE
userbuffers rely on CUDA multicast / IPC handles, "only possible with single-node tensor-parallelism"
(NVIDIA/TransformerEngine#1071), and since TE 2.2 a multi-node NVLink domain (#1470, UB MNNVL); PyTorch async TP
pulls peers' symmetric-memory buffers over the same handles (torch/distributed/_symmetric_memory). nanotron's
local_shard overlap issues plain NCCL collectives asynchronously and runs over any link."""


def tp_overlap_runs(kind: str, sp: np.ndarray, tp: np.ndarray, domain: int) -> np.ndarray:
    """Where the stack's TP overlap `kind` runs: sequence parallelism with tp > 1, and a TP group inside one
    scale-up domain of `domain` GPUs for the NVLink-only overlaps (NVLINK_DOMAIN_OVERLAPS); elsewhere the TP
    collectives run whole and exposed."""
    on = (np.asarray(sp) > 0) & (np.asarray(tp) > 1)
    return on & (np.asarray(tp) <= domain) if kind in NVLINK_DOMAIN_OVERLAPS else on
UB_COMM_SMS = TE_UB_COMM_SMS
"""TE initialize_ub default num_sm of the "pipeline" and "bulk" overlaps, given up by the GEMM (set_sm_margin)."""


class TpRole(IntEnum):
    """A weight GEMM's place in a Megatron tensor-parallel block (Shoeybi 2019; Korthikanti 2022 with SP)."""

    NONE = 0
    COLUMN = 1
    """Column-parallel (qkv, fc1): all-gather of the sequence-parallel input before it, reduce-scatter of dX after."""
    ROW = 2
    """Row-parallel (proj, fc2): reduce-scatter of its output after it, all-gather of dY before its dgrad."""


Gemm = Callable[..., np.ndarray]
"""hw.gemm_time_s(m, n, k, fp8, batch=1.0, sm_margin=0, output_bytes=OUTPUT_BYTES)."""


def async_tp_gathers_fused(stack: ExecutionStack, fp8: np.ndarray) -> np.ndarray:
    """Where async TP fuses the all-gathers with their matmuls (module docstring): bf16 layouts, and fp8 layouts whose
    recipe (the stack's first) gathers fp8 (fp8_tp_allgather_recipes)."""
    return ~np.asarray(fp8, dtype=bool) | stack.fp8_tp_gathers_fp8


def chunked_s(gemm: Gemm, m: np.ndarray, n, k, fp8: np.ndarray, chunks: np.ndarray | float,
              sm_margin: int = 0) -> np.ndarray:
    """`chunks` GEMMs of m / chunks rows each, one after the other (each fills its own waves)."""
    return chunks * gemm(m / chunks, n, k, fp8, sm_margin=sm_margin)


def split_s(gemm: Gemm, m: np.ndarray, n, k, fp8: np.ndarray, tp: np.ndarray) -> np.ndarray:
    """The local shard's m / tp rows, then the rest as one more GEMM (nanotron's before / after shards, priced as one:
    at most one of them is short)."""
    return gemm(m / tp, n, k, fp8) + gemm(m - m / tp, n, k, fp8)


def overlapped_times(gemm: Gemm, role: TpRole, kind: str, tokens: np.ndarray, in_features, out_features,
                     fp8: np.ndarray, tp: np.ndarray, gather_fused: np.ndarray | bool = True,
                     bulk_sm_margin: int = UB_COMM_SMS, wgrad_output_bytes: np.ndarray | float = OUTPUT_BYTES
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(forward, input-gradient, weight-gradient) seconds of one tensor-parallel GEMM run under `kind` overlap
    ("bulk": TE userbuffers, "async_tp": PyTorch async TP). Y = X W forward; dX = dY W^T, dW = X^T dY backward.
    Async TP: where `gather_fused` is False (async_tp_gathers_fused) the matmuls after an all-gather run whole.
    `bulk_sm_margin`: SMs the bulk overlaps take from the column GEMMs' dgrad and wgrad (the stack's
    tp_overlap_bulk_sm_margin: TE's default UB_COMM_SMS, 0 under NVIDIA's tuned configs). `wgrad_output_bytes`: the
    weight gradient's C traffic per element (compute.wgrad_output_bytes)."""
    t, i, o = tokens, in_features, out_features
    wb = wgrad_output_bytes
    if kind == "local_shard":  # the column forward and the row input gradient split at the local shard
        if role == TpRole.ROW:
            return gemm(t, o, i, fp8), split_s(gemm, t, i, o, fp8, tp), gemm(i, o, t, fp8, output_bytes=wb)
        return split_s(gemm, t, o, i, fp8, tp), gemm(t, i, o, fp8), gemm(i, o, t, fp8, output_bytes=wb)
    if kind == "async_tp":  # column dgrad whole: its reduce-scatter sums several matmuls and is not fused
        if role == TpRole.ROW:  # forward before the fused reduce-scatter; dgrad after dY's all-gather
            dgrad = chunked_s(gemm, t, i, o, fp8, tp)
            if not np.all(gather_fused):
                dgrad = np.where(gather_fused, dgrad, gemm(t, i, o, fp8))
            return (chunked_s(gemm, t, o, i, fp8, tp), dgrad, gemm(i, o, t, fp8, output_bytes=wb))
        forward = chunked_s(gemm, t, o, i, fp8, tp)  # after the block input's all-gather
        if not np.all(gather_fused):
            forward = np.where(gather_fused, forward, gemm(t, o, i, fp8))
        return (forward, gemm(t, i, o, fp8), gemm(i, o, t, fp8, output_bytes=wb))
    if role == TpRole.COLUMN:  # ring_exchange forward; bulk dgrad and wgrad on the SMs the comm kernels leave
        return (chunked_s(gemm, t, o, i, fp8, tp), gemm(t, i, o, fp8, sm_margin=bulk_sm_margin),
                gemm(i, o, t, fp8, sm_margin=bulk_sm_margin, output_bytes=wb))
    # ROW: pipeline forward with the SM margin; ring_exchange dgrad; wgrad as is
    return (chunked_s(gemm, t, o, i, fp8, UB_PIPELINE_SPLITS, UB_COMM_SMS), chunked_s(gemm, t, i, o, fp8, tp),
            gemm(i, o, t, fp8, output_bytes=wb))


@dataclass(frozen=True, slots=True)
class AsyncTpBlock:
    """One tensor-parallel block (attention or MLP) as async TP fuses it: seconds of its chunked matmuls per
    micro-batch, the ones its collectives' pulls run under."""

    column_forward_s: np.ndarray
    """qkv / fc1 forward: under the block input's all-gather."""
    row_forward_s: np.ndarray
    """proj / fc2 forward: under the output's reduce-scatter."""
    row_dgrad_s: np.ndarray
    """proj / fc2 input gradient: under the all-gather of their output gradient dY."""


@dataclass(frozen=True, slots=True)
class LocalShardBlock:
    """One tensor-parallel block (attention or MLP) as nanotron's asynchronous TP runs it: seconds per micro-batch of
    the matmuls its collectives run under."""

    column_local_s: np.ndarray
    """qkv / fc1 forward of the local shard's rows: under the block input's all-gather."""
    row_dgrad_local_s: np.ndarray
    """proj / fc2 input gradient of the local shard's rows: under dY's all-gather."""
    column_wgrad_s: np.ndarray
    """qkv / fc1 weight gradient: under the input gradient's reduce-scatter."""


def local_shard_exposed_s(blocks: tuple[LocalShardBlock, ...], all_gather_s: np.ndarray,
                          reduce_scatter_s: np.ndarray, calls: np.ndarray, forward_passes: np.ndarray,
                          overlap: float, slowdown: np.ndarray | float = 1.0) -> np.ndarray:
    """Exposed traffic of one layer per micro-batch under nanotron's asynchronous TP (module docstring). Per block and
    forward pass (1, or 2 under full recompute): the all-gather beyond its local shard's matmul, the reduce-scatter
    whole; backward: dY's all-gather beyond the local shard's input-gradient matmul, the input gradient's
    reduce-scatter beyond the weight-gradient matmul. TP collectives outside these blocks (`calls` all-gathers and as
    many reduce-scatters per layer in all) stay exposed. The hidden part of each collective is NCCL kernels on their
    own SMs beside the matmul, which runs `slowdown` times slower meanwhile (comm.interference_s; LayerTime's
    comm_slowdown_in, as the data-parallel overlap prices it); 1 = no slowdown."""
    total = np.zeros_like(np.asarray(forward_passes, dtype=float))

    def under(comm_s: np.ndarray, compute_s: np.ndarray) -> np.ndarray:
        # the overlapped share of the collective runs beside the matmul for its whole length
        return exposed_s(comm_s, compute_s, overlap) + interference_s(overlap * comm_s, compute_s, slowdown)

    for b in blocks:
        forward = under(all_gather_s, b.column_local_s) + reduce_scatter_s
        backward = under(all_gather_s, b.row_dgrad_local_s) + under(reduce_scatter_s, b.column_wgrad_s)
        total = total + forward_passes * forward + backward
    covered = len(blocks) * (forward_passes + 1.0)
    return total + np.maximum(calls - covered, 0.0) * (all_gather_s + reduce_scatter_s)


def async_tp_exposed_s(blocks: tuple[AsyncTpBlock, ...], all_gather_s: np.ndarray, reduce_scatter_s: np.ndarray,
                       reduction_s: np.ndarray, calls: np.ndarray, forward_passes: np.ndarray, tp: np.ndarray,
                       overlap: float, gather_fused: np.ndarray | bool = True) -> np.ndarray:
    """Exposed async-TP traffic of one layer per micro-batch (module docstring: what the micro-pipeline pass fuses).

    Per block and forward pass (1, or 2 under full recompute): the all-gather hides under (tp-1)/tp of the column
    matmuls, the reduce-scatter under (tp-1)/tp of the row matmuls, plus the exposed reduction kernel
    (`reduction_s`); backward: dY's all-gather hides under (tp-1)/tp of the row dgrad, the input gradient's
    reduce-scatter stays whole. A layer's TP collectives outside these blocks (`calls` all-gathers and as many
    reduce-scatters per layer in all, e.g. a MoE block's) stay exposed. `exposed = c - overlap x min(c, hidden)`
    (comm.exposed_s) per fused collective: the pull of a chunk cannot hide under another matmul than its own op's.
    Where `gather_fused` is False (async_tp_gathers_fused) both all-gathers stay whole and exposed."""
    pipelined = (tp - 1.0) / tp
    total = np.zeros_like(np.asarray(tp, dtype=float))
    for b in blocks:
        gather_f = np.where(gather_fused, exposed_s(all_gather_s, pipelined * b.column_forward_s, overlap),
                            all_gather_s)
        gather_b = np.where(gather_fused, exposed_s(all_gather_s, pipelined * b.row_dgrad_s, overlap), all_gather_s)
        forward = gather_f + exposed_s(reduce_scatter_s, pipelined * b.row_forward_s, overlap) + reduction_s
        backward = gather_b + reduce_scatter_s
        total = total + forward_passes * forward + backward
    fused_calls = len(blocks) * (forward_passes + 1.0)
    return total + np.maximum(calls - fused_calls, 0.0) * (all_gather_s + reduce_scatter_s)
