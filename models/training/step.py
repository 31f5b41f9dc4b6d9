"""Step time of a training layout: pipeline of per-layer compute and communication, bubble, data-parallel
gradient traffic with the part hidden under backward, optimizer step. Vectorised over LayoutArrays.

Mesh order (torchtitan): pp, dp_replicate, dp_shard, cp, tp with tp innermost, so a group's stride is the
product of the degrees inside it; each collective is priced on the links its group actually crosses.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace

import numpy as np

from clusterplan.hardware_db.stacks import ExecutionStack
from clusterplan.models.architecture.shapes import HYBRID_BLOCK_KINDS, ModelShapes
from clusterplan.models.hardware import comm
from clusterplan.models.hardware.mamba_kernels import cp_all_to_all_widths, cp_copy_elements
from clusterplan.models.hardware.rates import HardwareRates, LinkRates
from clusterplan.models.training.batch import (
    CODES,
    PREC_FP8,
    CpKindCode,
    LayoutArrays,
    MoeDispatcherCode,
    OptimizerCode,
    ScheduleCode,
)
from clusterplan.models.training.bf16_layers import as_bf16, bf16_rows, bf16_stage_layers
from clusterplan.models.training.collectives import (
    ALL_GATHER,
    EP_ALL_TO_ALLS_PER_LAYER,  # noqa: F401  (re-exported: tests/test_step_terms.py pins it)
    REDUCE_SCATTER,
    Collectives,
    activation_bytes,
    ep_collectives,
    pipeline_p2p,
    tp_collectives,
)
from clusterplan.models.training.compute import (
    LayerTime,
    head_time,
    layer_linears,
    layer_time,
    model_flops_per_step,
)
from clusterplan.models.training.dispatch import (
    a2a_overlap_exposed_s,
    combined_1f1b_unmerged_share,
    dedup_all_to_all_s,
    deepep_rates,
    dispatcher_slowdown,
)
from clusterplan.models.training.host import (
    MoeGpuTimes,
    dense_host_exposed_s,
    moe_host_exposed_s,
    phase_ops,
    stack_fp8_recipe,
)
from clusterplan.models.training.memory import (
    StageLayers,
    StageParams,
    bytes_per_param,
    fsdp_fp8_allgather,
    param_gather_bytes,
    rank_block_counts,
    stack_fp8_saved,
    stage_layers,
    stage_params,
    unique_per_layer_activation_bytes,
    zero_shards,
)
from clusterplan.models.training.moe_layer import imbalance, max_destination_nodes, mtp_projection_s
from clusterplan.models.training.topology import Axis, axis_group
from clusterplan.models.training.tp_overlap import (
    AsyncTpBlock,
    LocalShardBlock,
    async_tp_exposed_s,
    async_tp_gathers_fused,
    local_shard_exposed_s,
    tp_overlap_runs,
)

# Share of backward compute under which data-parallel gradient traffic can hide (bucketed overlap, as
# Megatron-Core's overlap_grad_reduce and FSDP2 do; Galvatron models the residual slowdown with 1.3x).
DP_OVERLAP_SHARE = 0.8
# Floor of a denominator that may be 0 (no layers, no stage time), so an empty term divides to 0 instead of NaN.
TINY_S = 1e-300
# Backward over forward + backward of a layer whose backward is twice its forward (two GEMMs per forward GEMM:
# input and weight gradients; Narayanan et al. 2021, Sec. 5.1): the bubble's default when the caller has none.
BACKWARD_SHARE_2X = 2.0 / 3.0
# HBM bytes bf16 Adam moments save per updated parameter: m and v each read and written once, 2 B less per access.
BF16_MOMENTS_SAVED_BYTES_PER_PARAM = 4 * 2.0

POSITIONS = ("first", "middle", "last")
"""Pipeline stage positions, in the order step_time stacks them."""


@dataclass(frozen=True, slots=True)
class Group:
    size: np.ndarray
    stride: np.ndarray
    axis: Axis
    """Which axis's link the group's scale-out traffic runs on (HardwareRates.axis_bw_out)."""

    @classmethod
    def of(cls, L: LayoutArrays, axis: Axis) -> Group:
        """The axis's groups as models/training/topology.py axis_group defines them (and places them on nodes)."""
        size, stride = axis_group(L, axis)
        return cls(np.asarray(size, dtype=float), np.broadcast_to(np.asarray(stride, dtype=float), np.shape(L.tp)),
                   axis)


def _collective(kind: str, size_bytes: np.ndarray, g: Group, hw: HardwareRates) -> np.ndarray:
    """Time of one collective over a mesh-axis group, flat inside a scale-up domain, ring across nodes.

    Across nodes, NCCL runs one ring per NIC rail, so the group's bus bandwidth is its n_in GPUs' share of the node
    NICs, capped by the scale-up link: min(bw_in, n_in * bw_out) (8 x HDR -> 192 GB/s, NVIDIA/nccl#1576). An
    all-to-all has no ring to spread over the rails: every GPU sends its remote share at once, each over its own NIC,
    so across nodes it is priced as comm.hierarchical_all_to_all_s (cross_node_all_to_all_s).
    """
    n_in, n_out = comm.split_group(g.size, g.stride, hw.domain)
    inside = n_out <= 1
    r = hw.link(kind, g.axis)
    bw = np.where(inside, r.bw_in, np.minimum(r.bw_in, n_in * r.bw_out))
    lat = np.where(inside, r.lat_in, r.lat_out)
    if kind == "all_to_all":
        flat = comm.all_to_all_s(size_bytes, g.size, bw, lat)
        across = cross_node_all_to_all_s(size_bytes, n_in, n_out, r)
        return np.where(g.size > 1, np.where(inside, flat, across), 0.0)
    fn = {"all_reduce": comm.all_reduce_s, "all_gather": comm.all_gather_s,
          "reduce_scatter": comm.reduce_scatter_s}[kind]
    # A collective with nothing to move is not issued (a dense model's empty expert buffer).
    return np.where((g.size > 1) & (np.asarray(size_bytes) > 0), fn(size_bytes, g.size, bw, lat), 0.0)


def cross_node_all_to_all_s(size_bytes: np.ndarray, n_in: np.ndarray, n_out: np.ndarray, r: LinkRates) -> np.ndarray:
    """One all-to-all over n_out nodes x n_in GPUs, `size_bytes` sent per rank: the remote (n_out-1)/n_out share
    leaves through the GPU's own NIC at bw_out, the local share rides the scale-up link (comm.hierarchical_all_to_all_s;
    all-to-all cannot aggregate NICs, NVIDIA/nccl-tests#267). Checked, not fitted, on NCCL all-to-all dispatch/combine
    measured on H100 at EP 8/16/32/64 (Yan et al. 2026, arXiv 2603.07685, Table 7; tests/test_ep_all_to_all.py)."""
    return comm.hierarchical_all_to_all_s(size_bytes, n_in, n_out, r.bw_in, r.bw_out, r.lat_in, r.lat_out)


def _p2p(size_bytes: np.ndarray, n_out: np.ndarray, hw: HardwareRates, axis: Axis) -> np.ndarray:
    """One send/recv between two ranks of `axis`, across nodes when the pair spans domains (n_out > 1)."""
    r = hw.link("send_recv", axis)
    return comm.p2p_s(size_bytes, np.where(n_out > 1, r.bw_out, r.bw_in), np.where(n_out > 1, r.lat_out, r.lat_in))


def _priced(collectives: tuple[Collectives, ...], g: Group, hw: HardwareRates) -> np.ndarray:
    """Time of every call of `collectives` (models/training/collectives.py) over the group, one after another."""
    total = np.zeros_like(g.size, dtype=float)
    for c in collectives:
        total = total + c.calls * _collective(c.kind, c.size_bytes, g, hw)
    return total


@dataclass(frozen=True, slots=True)
class StepTime:
    step_s: np.ndarray
    compute_s: np.ndarray
    tp_comm_s: np.ndarray
    cp_comm_s: np.ndarray
    ep_comm_s: np.ndarray
    host_s: np.ndarray
    """Host (CPU launch) time the MoE layers leave exposed (models/training/host.py)."""
    pp_comm_s: np.ndarray
    dp_comm_s: np.ndarray
    """Data-parallel traffic left exposed, plus what its overlapped part costs the compute it runs under (its NCCL
    CTAs hold SMs: comm.interference_s)."""
    bubble_s: np.ndarray
    optimizer_s: np.ndarray
    model_flops: np.ndarray
    hardware_flops: np.ndarray
    offload_s: np.ndarray
    """Activation offloading's host copies left exposed (offload_exposed_s; 0 without offload_layers)."""


def _p2p_parts(size_bytes: np.ndarray, n_out: np.ndarray, hw: HardwareRates, axis: Axis
               ) -> tuple[np.ndarray, np.ndarray]:
    """(latency, transfer) seconds of one send/recv over `axis`: the latency is the wait before the receiver can use
    the data, the transfer the part that can run under compute."""
    r = hw.link("send_recv", axis)
    lat = np.where(n_out > 1, r.lat_out, r.lat_in)
    return lat, comm.p2p_s(size_bytes, np.where(n_out > 1, r.bw_out, r.bw_in), lat) - lat


def tp_comm_s(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, stack: ExecutionStack,
              linear_s: np.ndarray, async_tp_blocks: tuple[AsyncTpBlock, ...] | None = None,
              local_shard_blocks: tuple[LocalShardBlock, ...] | None = None,
              slowdown_in: np.ndarray | float = 1.0) -> np.ndarray:
    """Exposed tensor-parallel traffic of one layer per micro-batch, forward + backward (+ recompute).

    Megatron TP: 2 all-reduces of b*s*h forward and 2 backward (with SP an all-gather + reduce-scatter each, the same
    bytes; Korthikanti 2022), 2 more when full recompute redoes the forward; fp8 all-gathers in fp8 where the stack
    casts before the gather (fp8_tp_allgather_recipes). Where the overlap runs (tp_overlap.tp_overlap_runs: sequence
    parallelism, and for userbuffers / async TP a TP group inside one NVLink domain), TE userbuffers hide
    `stack.tp_overlap_share` of it under the layer's weight GEMMs, at most their time. Async TP hides each fused
    collective under its own op's chunked matmuls and leaves the unfused ones exposed
    (tp_overlap.async_tp_exposed_s; `async_tp_blocks` from LayerTime). nanotron's asynchronous TP hides each
    all-gather under its local shard's matmul and the input gradient's reduce-scatter under the weight gradient
    (tp_overlap.local_shard_exposed_s; `local_shard_blocks` from LayerTime), the matmuls slowed `slowdown_in` times
    beside the NCCL kernels (the TP group's comm_slowdown: LayerTime's inside or across scale-up domains).
    """
    # The calls and bytes are collectives.py's (tests/test_validate_collectives.py counts them in torch).
    colls = tp_collectives(shapes, L, stack.fp8_tp_gathers_fp8)
    group = Group.of(L, Axis.TP)
    total = _priced(colls, group, hw)
    overlapped = tp_overlap_runs(stack.tp_overlap, L.sp, L.tp, hw.domain)
    if stack.tp_overlap == "async_tp":
        if async_tp_blocks is None:
            raise ValueError("async TP is priced per fused op: pass LayerTime.async_tp_blocks")
        _, gather, scatter = colls
        tokens = L.seq * L.mbs / L.cp
        # fused_matmul_reduce_scatter's torch.sum over the tp stacked partials: reads tokens x h, writes 1/tp of it.
        reduction_s = activation_bytes(L) * tokens * shapes.hidden * (1.0 + 1.0 / L.tp) / hw.hbm_bytes_per_s
        passes = 1.0 + L.full_recompute_share(shapes.n_layers)
        exposed = async_tp_exposed_s(async_tp_blocks, _collective(ALL_GATHER, gather.size_bytes, group, hw),
                                     _collective(REDUCE_SCATTER, scatter.size_bytes, group, hw), reduction_s,
                                     gather.calls, passes, L.tp, hw.comm_overlap,
                                     async_tp_gathers_fused(stack, L.precision == PREC_FP8))
        return np.where(overlapped, exposed, total)
    if stack.tp_overlap == "local_shard":
        if local_shard_blocks is None:
            raise ValueError("nanotron's asynchronous TP is priced per block: pass LayerTime.local_shard_blocks")
        _, gather, scatter = colls
        exposed = local_shard_exposed_s(local_shard_blocks, _collective(ALL_GATHER, gather.size_bytes, group, hw),
                                        _collective(REDUCE_SCATTER, scatter.size_bytes, group, hw), gather.calls,
                                        1.0 + L.full_recompute_share(shapes.n_layers), hw.comm_overlap,
                                        slowdown_in)
        return np.where(overlapped, exposed, total)
    share = np.where(overlapped, stack.tp_overlap_share, 0.0)
    return comm.exposed_s(share * total, linear_s, hw.comm_overlap) + (1.0 - share) * total


def ring_cp_s(kv_bytes: np.ndarray, cp: np.ndarray, n_out: np.ndarray, core_forward_s: np.ndarray,
              recompute_full: np.ndarray, hw: HardwareRates) -> np.ndarray:
    """Exposed ring-attention traffic of one layer per micro-batch (Liu et al. 2023; Megatron --cp-comm-type p2p).

    Forward: cp - 1 steps, each sends this rank's K,V block (kv_bytes) to the next rank while the current block's
    attention runs; with causal load balancing (each rank holds chunks i and 2cp-1-i: Megatron / torchtitan) every
    step computes the same 1/cp of the rank's attention core. Backward: cp - 1 steps sending K,V onward and dK,dV
    back (2 x kv_bytes) under 1/cp of the core's backward. A step exposes its latency (the next block waits for the
    data) plus the transfer beyond its block's compute: exposed = sum_i [lat + max(0, transfer_i - compute_i)].
    """
    steps = np.maximum(cp - 1.0, 0.0)
    o = hw.comm_overlap
    lat_f, xfer_f = _p2p_parts(kv_bytes, n_out, hw, Axis.CP)
    lat_b, xfer_b = _p2p_parts(2.0 * kv_bytes, n_out, hw, Axis.CP)
    block_f = core_forward_s / cp
    block_b = hw.attn_bwd_over_fwd * core_forward_s / cp
    forward = steps * (lat_f + comm.exposed_s(xfer_f, block_f, o))
    backward = steps * (lat_b + comm.exposed_s(xfer_b, block_b, o))
    return np.where(cp > 1, (1.0 + recompute_full) * forward + backward, 0.0)


def ulysses_cp_s(shapes: ModelShapes, L: LayoutArrays, tokens: np.ndarray, group: Group,
                 hw: HardwareRates) -> np.ndarray:
    """DeepSpeed-Ulysses / Megatron a2a context parallelism of one layer per micro-batch (Jacobs et al. 2023).

    Forward: 4 all-to-alls (q, k, v from sequence- to head-sharded, the output back), backward the 4 mirrored ones on
    the gradients (same bytes), and the forward's 4 again under full recompute; none overlap (they sit between the
    projections and the attention that need them). The old `2 * a2a(q+k+v+out bytes) * 4/3` counted the four tensors'
    bytes and then 4/3 more: the bytes already hold all four; what the four collectives add is 4 latencies each way.
    """
    act = activation_bytes(L) / L.tp
    widths = (shapes.q_dim, shapes.kv_dim / 2.0, shapes.kv_dim / 2.0, shapes.v_dim)
    one_way = sum(_collective("all_to_all", act * tokens * w, group, hw) for w in widths)
    return (2.0 + L.full_recompute_share(shapes.n_layers)) * one_way


def hierarchical_cp_s(shapes: ModelShapes, L: LayoutArrays, tokens: np.ndarray, cp_group: Group,
                      core_forward_s: np.ndarray, recompute_full: np.ndarray, hw: HardwareRates) -> np.ndarray:
    """Megatron-Core's hierarchical context parallelism (--cp-comm-type a2a+p2p, --hierarchical-context-parallel-sizes
    cp_a2a cp/cp_a2a; Transformer Engine AttnFuncWithCPAndKVP2P under an all-to-all) of one layer per micro-batch:
    the all-to-alls of Ulysses inside each group of cp_a2a adjacent CP ranks (ulysses_cp_s: q, k, v from sequence- to
    head-sharded and the output back, none overlapped; backward one more, the output beside dout), then a
    load-balanced ring across the cp / cp_a2a groups (ring_cp_s) whose K/V blocks are the group's sequence chunk on
    1 / cp_a2a of the heads: the same bytes per rank as a plain ring's, in cp / cp_a2a - 1 steps under
    1 / (cp / cp_a2a) of the core each."""
    a2a = Group(size=np.asarray(L.cp_a2a, dtype=float), stride=cp_group.stride, axis=Axis.CP)
    ring_size = L.cp_ring
    _, n_out = comm.split_group(ring_size, cp_group.stride * L.cp_a2a, hw.domain)
    kv_bytes = activation_bytes(L) * tokens * shapes.kv_dim / L.tp
    # Backward runs one all-to-all more than Ulysses' mirrored four: the forward output goes to head-sharded beside
    # dout before the ring (TE AttnFuncWithCPAndKVP2P.backward with cp_size_a2a > 1: out, dout, then dq, dk, dv)
    out_back = _collective("all_to_all", activation_bytes(L) / L.tp * tokens * shapes.v_dim, a2a, hw)
    return (ulysses_cp_s(shapes, L, tokens, a2a, hw) + out_back
            + ring_cp_s(kv_bytes, ring_size, n_out, core_forward_s, recompute_full, hw))


def allgather_cp_s(shapes: ModelShapes, L: LayoutArrays, group: Group, hw: HardwareRates) -> np.ndarray:
    """K,V all-gather context parallelism of one layer per micro-batch (Megatron --cp-comm-type allgather,
    torchtitan's default rotate method): forward all-gathers the whole sequence's K,V (S = seq x kv width), backward
    reduce-scatters dK,dV of the same size; the attention needs the gathered K,V, so neither overlaps."""
    gathered = activation_bytes(L) * L.seq * L.mbs * shapes.kv_dim / L.tp
    ag = _collective("all_gather", gathered, group, hw)
    return (1.0 + L.full_recompute_share(shapes.n_layers)) * ag + _collective("reduce_scatter",
                                                                                          gathered, group, hw)




# torch context_parallel's elementwise passes around its SDPA calls (torch/distributed/tensor/experimental/
# _attention.py, _templated_ring_attention / _SDPAMerger / _templated_ring_attention_backward / _partial_update), in
# HBM bytes per element read + written; bf16 = 2 B, fp32 = 4 B.
TORCH_CP_COPY_BYTES = 4.0
"""key/value .contiguous() at entry (a transposed SDPA input: read 2 + write 2), and torch.cat([k, v]) before each
exchange (every step but the last; the all-gather rotater still concatenates though it gathers once)."""
TORCH_CP_OUT_TO_F32_BYTES = 6.0
"""_SDPAMerger.step: each block's output cast to fp32 (read 2 + write 4)."""
TORCH_CP_MERGE_BYTES = 32.0
"""One merge, out - sigmoid(lse_b - lse) * (out - out_b) in fp32: out - out_b (8 + 4), the scaled product (4 + 4),
the subtraction (8 + 4)."""
TORCH_CP_RESULT_CAST_BYTES = 6.0
"""Merged fp32 output (or dQ / dK / dV) cast back to bf16 at the end (read 4 + write 2)."""
TORCH_CP_ZEROS_BYTES = 4.0
"""Backward: zeros_like fp32 accumulators for dQ, dK, dV."""
TORCH_CP_ACCUM_BYTES = 10.0
"""Backward: fp32 accumulator += bf16 block gradient (read 4 + 2, write 4)."""
TORCH_CP_PARTIAL_ACCUM_BYTES = 13.0
"""Backward, load-balanced step with half of the K/V chunk: _partial_update adds into one half (5 per element of the
whole) and torch.cat rebuilds the whole tensor (read 4 + write 4)."""
TORCH_CP_GRAD_CAT_BYTES = 8.0
"""Backward: torch.cat([dK, dV]) in fp32 before each permute (read 4 + write 4)."""


TORCH_CP_TRACED_COPY_BYTES = 4.0
"""Traced (torch.compile): key/value .contiguous() written straight into the first exchange's torch.cat buffer (one
copy, read 2 + write 2); the later cats feed an all-gather rotater that no longer sends, so the graph drops them."""
TORCH_CP_TRACED_MERGE_BYTES = 10.0
"""Traced: one merge fused with its block's fp32 cast: read the fp32 running output 4 + the block's bf16 output 2,
write fp32 4."""
TORCH_CP_TRACED_MERGE_END_SAVING = 4.0
"""Traced: the first merge reads step 0's output in bf16 (2 less) and the last writes the bf16 result (2 less)."""
TORCH_CP_TRACED_FIRST_GRAD_BYTES = 6.0
"""Traced backward: zeros_like + step 0's block gradient fused into one cast (read bf16 2, write fp32 4), for dK/dV
written into the first permute's torch.cat buffer."""
TORCH_CP_TRACED_PARTIAL_ACCUM_BYTES = 9.0
"""Traced backward, load-balanced step: the received fp32 dK/dV (4), half of it plus the bf16 half-block gradient
(1 per element of the whole), written whole into the next permute's buffer (4)."""
TORCH_CP_TRACED_LAST_DQ_BYTES = 8.0
"""Traced backward: the last dQ accumulation fused with the cast back to bf16 (read 4 + 2, write 2)."""


def torch_cp_elementwise_bytes(q: np.ndarray, kv: np.ndarray, out: np.ndarray, cp: np.ndarray,
                               traced: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) HBM bytes of torch context_parallel's elementwise passes on the slowest rank of one layer
    per micro-batch; q, kv, out: elements of the rank's query, key + value and output.

    The last rank (cp - 1) does the most: with round-robin load balance its steps 1..cp-1 are all the `i <= rank`
    case (whole query against half the K/V block: whole-output merges, partial dK/dV updates); rank 0's are all the
    partial-query case (half-output merges). Forward: copies 4 x kv x cp, fp32 casts 6 x out x cp, cp - 1 merges
    32 x out, the final cast 6 x out. Backward: zeros 4 x (q + kv), copies 4 x kv x cp, dK/dV 10 x kv (step 0) +
    13 x kv (steps 1..cp-1), fp32 dK/dV cats 8 x kv x cp, dQ 10 x q x cp, final casts 6 x (q + kv).
    `traced`: the same code traced into a torch.compile graph, where inductor fuses each pointwise chain and drops the
    unused cats (TORCH_CP_TRACED_*). Forward: one copy 4 x kv, cp - 1 fused merges 10 x out less 4 x out at the ends.
    Backward: kv (4 copy + 6 first cast + 9 x (cp - 1) accumulations + 6 final cast), q (6 first cast + 10 x (cp - 2)
    accumulations + 8 last one with the cast)."""
    steps = np.maximum(cp - 1.0, 0.0)
    if traced:
        forward = (TORCH_CP_TRACED_COPY_BYTES * kv
                   + (TORCH_CP_TRACED_MERGE_BYTES * steps - TORCH_CP_TRACED_MERGE_END_SAVING) * out)
        backward = (kv * (TORCH_CP_TRACED_COPY_BYTES + TORCH_CP_TRACED_FIRST_GRAD_BYTES
                          + TORCH_CP_TRACED_PARTIAL_ACCUM_BYTES * steps + TORCH_CP_RESULT_CAST_BYTES)
                    + q * (TORCH_CP_TRACED_FIRST_GRAD_BYTES + TORCH_CP_ACCUM_BYTES * np.maximum(cp - 2.0, 0.0)
                           + TORCH_CP_TRACED_LAST_DQ_BYTES))
        return np.where(cp > 1, forward, 0.0), np.where(cp > 1, backward, 0.0)
    forward = (TORCH_CP_COPY_BYTES * kv * cp + TORCH_CP_OUT_TO_F32_BYTES * out * cp + TORCH_CP_MERGE_BYTES * out * steps
               + TORCH_CP_RESULT_CAST_BYTES * out)
    backward = (TORCH_CP_ZEROS_BYTES * (q + kv) + TORCH_CP_COPY_BYTES * kv * cp + TORCH_CP_ACCUM_BYTES * kv
                + TORCH_CP_PARTIAL_ACCUM_BYTES * kv * steps + TORCH_CP_GRAD_CAT_BYTES * kv * cp
                + TORCH_CP_ACCUM_BYTES * q * cp + TORCH_CP_RESULT_CAST_BYTES * (q + kv))
    return np.where(cp > 1, forward, 0.0), np.where(cp > 1, backward, 0.0)


def torch_allgather_cp_s(kv_bytes: np.ndarray, cp: np.ndarray, group: Group, n_out: np.ndarray,
                         core_forward_s: np.ndarray, core_backward_s: np.ndarray, recompute_full: np.ndarray,
                         hw: HardwareRates, traced: bool = False) -> np.ndarray:
    """Exposed K/V traffic of torch context_parallel with rotate_method ALL_GATHER (its default, torchtitan's) of one
    layer per micro-batch; kv_bytes: this rank's K and V as the SDPA call receives them.

    torch/distributed/tensor/experimental/_attention.py: forward all-gathers K/V once, issued before the first
    (diagonal) SDPA call and waited after it; every call computes the same 1/cp of the rank's core (round-robin load
    balance). Backward all-gathers K/V again (kv_rotater is the default rotater) under the first backward call, and
    passes the fp32 dK/dV accumulators (2 x kv_bytes) to the next rank with permute_tensor after every call: each is
    waited after the next call, the last one at the end, fully exposed.
    `traced` (the attention inside a torch.compile graph): functional collectives wait right where they are issued
    (torch/distributed/_functional_collectives.py _maybe_wrap_tensor returns wait_tensor(...) when tracing) and
    inductor keeps that order (torch/_inductor/config.py reorder_for_compute_comm_overlap = False), so every
    all-gather and permute is exposed."""
    o = 0.0 if traced else hw.comm_overlap
    ag = _collective("all_gather", cp * kv_bytes, group, hw)
    block_f, block_b = core_forward_s / cp, core_backward_s / cp
    lat, xfer = _p2p_parts(2.0 * kv_bytes, n_out, hw, Axis.CP)
    forward = comm.exposed_s(ag, block_f, o)
    backward = (comm.exposed_s(ag, block_b, o) + np.maximum(cp - 1.0, 0.0) * (lat + comm.exposed_s(xfer, block_b, o))
                + lat + xfer)
    return np.where(cp > 1, (1.0 + recompute_full) * forward + backward, 0.0)


def _layer_comm(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, stack: ExecutionStack, moe: bool,
                lt: LayerTime):
    """(tp, cp, ep) exposed communication of one layer per micro-batch, forward + backward (+ recompute)."""
    tokens = L.seq * L.mbs / L.cp
    act = activation_bytes(L)
    full = L.full_recompute_share(shapes.n_layers)
    tp = tp_comm_s(shapes, L, hw, stack, lt.linear_s, lt.async_tp_blocks, lt.local_shard_blocks,
                   comm_slowdown(Group.of(L, Axis.TP), hw, (lt.comm_slowdown_in, lt.comm_slowdown_out)))
    cp_group = Group.of(L, Axis.CP)
    _, n_out = comm.split_group(cp_group.size, cp_group.stride, hw.domain)
    ring = ring_cp_s(act * tokens * shapes.kv_dim / L.tp, L.cp, n_out, lt.core_forward_s, full, hw)
    allgather = allgather_cp_s(shapes, L, cp_group, hw)
    if stack.cp_impl == "torch":
        # torch context_parallel hands the SDPA call's own K and V around: F.scaled_dot_product_attention stacks
        # (torchtitan's Attention.forward) pass them after repeat_kv, at the query head count.
        kv_width = shapes.q_dim + shapes.v_dim if stack.torch_sdpa else shapes.kv_dim
        kv_bytes = act * tokens * kv_width / L.tp
        # A compiled stack traces the attention into each block's graph (torchtitan compiles every TransformerBlock
        # with fullgraph=True; context_parallel's SDPA override runs inside it).
        allgather = torch_allgather_cp_s(kv_bytes, L.cp, cp_group, n_out, lt.core_forward_s, lt.core_backward_s,
                                         full, hw, traced=stack.compiled)
    kinds, costs = [L.cp_kind == CpKindCode.A2A, L.cp_kind == CpKindCode.ALLGATHER], [
        ulysses_cp_s(shapes, L, tokens, cp_group, hw), allgather]
    if np.any(L.cp_kind == CpKindCode.A2A_P2P):
        kinds.append(L.cp_kind == CpKindCode.A2A_P2P)
        costs.append(hierarchical_cp_s(shapes, L, tokens, cp_group, lt.core_forward_s, full, hw))
    cp = np.select(kinds, costs, ring)
    if stack.cp_impl == "torch":
        # Its merges and fp32 gradient accumulation run on the compute stream between the SDPA calls (either rotate
        # method): serial time, forward again under full recompute.
        kv_width = shapes.q_dim + shapes.v_dim if stack.torch_sdpa else shapes.kv_dim
        fwd_b, bwd_b = torch_cp_elementwise_bytes(tokens * shapes.q_dim / L.tp, tokens * kv_width / L.tp,
                                                  tokens * shapes.v_dim / L.tp, L.cp, traced=stack.compiled)
        cp = cp + ((1.0 + full) * fwd_b + bwd_b) / hw.hbm_bytes_per_s
    if shapes.block == "mamba":  # Megatron-Core's Mamba context parallelism, whatever the attention's kind
        cp = mamba_cp_s(shapes, L, tokens, cp_group, hw)
    elif shapes.block in ("mlp", "moe"):  # a hybrid's MLP and MoE blocks exchange nothing over cp
        cp = np.zeros_like(tp)
    cp = np.where(L.cp > 1, cp, 0.0)
    ep = np.zeros_like(tp)
    if moe:
        # tokens x top_k x h per all-to-all, each rank sending its 1/tp share (collectives.py ep_collectives).
        colls = ep_collectives(shapes, L)
        ep_group = Group.of(L, Axis.EP)
        ep = _priced((colls,), ep_group, hw)
        if np.any(L.moe_dispatcher != MoeDispatcherCode.ALLTOALL):
            ep = np.where(L.moe_dispatcher == MoeDispatcherCode.ALLTOALL, ep,
                          colls.calls * flex_dispatch_s(shapes, L, ep_group, hw))
    return tp, cp, ep


def mamba_cp_s(shapes: ModelShapes, L: LayoutArrays, tokens: np.ndarray, group: Group,
               hw: HardwareRates) -> np.ndarray:
    """One Mamba block's context-parallel time per micro-batch, forward + backward: Megatron-Core's
    MambaContextParallel moves z, x, B, C and dt from sequence to head sharding before the conv1d and y back after
    the scan, six all-to-alls each way (autograd's _AllToAll backward is an all-to-all of the gradient), synchronous
    on the compute stream; and the copies around them at the HBM rate (mamba_kernels.cp_copy_elements). A rank sends
    (cp - 1) / cp of each tensor (Ulysses' volume, as ulysses_cp_s)."""
    act = activation_bytes(L)
    widths = cp_all_to_all_widths(shapes.mamba_inner, shapes.mamba_heads, shapes.mamba_groups, shapes.mamba_state,
                                  L.tp, L.cp)
    one_way = sum(_collective("all_to_all", act * tokens * w, group, hw) for w in widths)
    copies = act * tokens * cp_copy_elements(shapes.mamba_inner, shapes.mamba_heads, shapes.mamba_groups,
                                             shapes.mamba_state, L.tp, L.cp) / hw.hbm_bytes_per_s
    return 2.0 * (one_way + copies)


def flex_dispatch_s(shapes: ModelShapes, L: LayoutArrays, g: Group, hw: HardwareRates) -> np.ndarray:
    """One DeepEP / HybridEP dispatch or combine over the EP group: each rank's tokens/tp (sequence-parallel share,
    as ep_collectives) once per destination GPU / node (dispatch.dedup_all_to_all_s) on the all-to-all link rates;
    with node-limited routing at most moe_layer.max_destination_nodes RDMA copies per token (DeepSeek-V3: 4 nodes)."""
    n_in, n_out = comm.split_group(g.size, g.stride, hw.domain)
    # Imbalanced dropless routing: the busiest destination's copies set the time (moe_layer.imbalance).
    token_bytes = activation_bytes(L) * L.seq * L.mbs / L.cp / L.tp * shapes.routed_width * imbalance(shapes, L)
    rates, cap = hw.link("all_to_all", g.axis), max_destination_nodes(shapes, n_out)
    flex = dedup_all_to_all_s(token_bytes, shapes.n_experts, shapes.top_k, n_in, n_out, rates, cap)
    deepep = L.moe_dispatcher == MoeDispatcherCode.DEEPEP
    if np.any(deepep):  # DeepEP's kernels reach less of the links than NCCL does (dispatch.deepep_rates)
        flex = np.where(deepep, dedup_all_to_all_s(token_bytes, shapes.n_experts, shapes.top_k, n_in, n_out,
                                                   deepep_rates(rates), cap), flex)
    return flex


@dataclass(frozen=True, slots=True)
class LayerCost:
    """One average layer (dense and MoE layers mixed by their share) per micro-batch, forward + backward."""

    compute_s: np.ndarray
    tp_s: np.ndarray
    cp_s: np.ndarray
    ep_s: np.ndarray
    host_s: np.ndarray
    """Exposed host time of one layer: the MoE layers' (moe_share of one MoE layer's) and, on a stack with dense_host
    data, the dense layers' (host.py)."""
    hardware_flops: np.ndarray
    weight_grad_s: np.ndarray
    """The weight-gradient GEMMs inside compute_s (what zero-bubble schedules move into the bubble)."""
    forward_s: np.ndarray
    backward_s: np.ndarray
    head_s: np.ndarray
    """LM head and loss, forward + backward (last stage only)."""
    embed_tp_s: np.ndarray
    """Vocabulary-parallel embedding's all-reduce of its output, forward (first stage; 0 without tp)."""
    head_tp_s: np.ndarray
    """LM head: all-reduce of its input's gradient, backward, and the vocabulary-parallel cross-entropy's three
    all-reduces of one float per token (max, target logit, sum of exponentials; Megatron-LM) (last stage)."""
    comm_slowdown_in: np.ndarray | float = 1.0
    """forward_s / backward_s's slowdown beside a collective inside the scale-up domain (LayerTime's)."""
    comm_slowdown_out: np.ndarray | float = 1.0
    """... beside a collective across nodes."""

    @property
    def total_s(self) -> np.ndarray:
        return self.compute_s + self.tp_s + self.cp_s + self.ep_s + self.host_s


WGRAD_ACCUMULATION_FIELDS = ("fp32_grads", "optimizer", "sharded_grads")
"""The columns only a stack that accumulates in its weight-gradient GEMMs reads (compute.wgrad_output_bytes: the main
gradients' dtype, and whether they are sharded); a stack without it keys its dedupe on the rest."""
LAYER_TIME_FIELDS = ("tp", "pp", "cp", "cp_kind", "cp_a2a", "ep", "etp", "dp", "mbs", "gbs", "seq", "sp", "flash_attn",
                     "precision", "recompute", "recompute_layers", "recompute_modules", "moe_capacity_factor",
                     "moe_imbalance") + WGRAD_ACCUMULATION_FIELDS
"""The LayoutArrays columns compute.layer_time reads (microbatches: gbs, dp, mbs; sp_div: sp, tp; cp_kind: which
context-parallel attention runs its calls block by block; WGRAD_ACCUMULATION_FIELDS where the stack accumulates in
its weight-gradient GEMMs), etp besides;
tests/test_plan_speed.py checks the list against what layer_time touches."""
DEDUPE_MIN_ROWS = 4096
"""Below this many candidates layer_time runs on every row (finding the distinct rows would cost more)."""


def layer_time_fields(stack: ExecutionStack) -> tuple[str, ...]:
    """LAYER_TIME_FIELDS as `stack` reads them: without WGRAD_ACCUMULATION_FIELDS where it does not accumulate in its
    weight-gradient GEMMs (a split on them would only multiply the distinct rows)."""
    if stack.wgrad_accumulation_fusion:
        return LAYER_TIME_FIELDS
    return tuple(f for f in LAYER_TIME_FIELDS if f not in WGRAD_ACCUMULATION_FIELDS)


def unique_layer_time(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, moe: bool,
                      stack: ExecutionStack) -> LayerTime:
    """compute.layer_time, computed once per distinct combination of LAYER_TIME_FIELDS and broadcast back: each
    candidate's value is the same numbers as layer_time on all rows (every term is elementwise per candidate). Runs
    on all rows when the rates vary per candidate (per-axis link arrays) or the rows are few."""
    per_candidate_rates = np.ndim(hw.bw_out) or any(np.ndim(v) for v in hw.axis_bw_out.values())
    unique = None if per_candidate_rates or len(L) < DEDUPE_MIN_ROWS else L.unique_rows(layer_time_fields(stack))
    if unique is None or len(unique[0]) == len(L):
        return layer_time(shapes, L, hw, moe, stack)
    first, inverse = unique
    lt = layer_time(shapes, L.take(first), hw, moe, stack)
    return _broadcast(lt, inverse)


def _broadcast(value, inverse: np.ndarray):
    """`value` (an array per distinct row, a scalar, or a tuple / dataclass of them) at every row: value[inverse]."""
    if is_dataclass(value):
        return replace(value, **{f.name: _broadcast(getattr(value, f.name), inverse) for f in fields(value)})
    if isinstance(value, tuple):
        return tuple(_broadcast(v, inverse) for v in value)
    return value[inverse] if np.ndim(value) else value


def layer_cost(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, stack: ExecutionStack) -> LayerCost:
    if shapes.blocks:  # a hybrid's average layer: its block kinds' costs mixed by their share of the layers
        return mixed_layer_cost([(share, layer_cost(block, L, hw, stack)) for share, block in shapes.blocks])
    moe_share = shapes.moe_fraction
    dense = unique_layer_time(shapes, L, hw, False, stack)
    compute = (1 - moe_share) * (dense.forward_s + dense.backward_s + dense.recompute_s)
    flops = (1 - moe_share) * dense.hardware_flops
    weight_grad = (1 - moe_share) * dense.weight_grad_s
    tp_d, cp_d, _ = _layer_comm(shapes, L, hw, stack, False, dense)
    tp, cp, ep = (1 - moe_share) * tp_d, (1 - moe_share) * cp_d, np.zeros_like(tp_d)
    host = np.zeros_like(tp_d)
    if moe_share:
        sparse = unique_layer_time(shapes, L, hw, True, stack)
        compute = compute + moe_share * (sparse.forward_s + sparse.backward_s + sparse.recompute_s)
        flops = flops + moe_share * sparse.hardware_flops
        weight_grad = weight_grad + moe_share * sparse.weight_grad_s
        tp_s, cp_s, ep_s = _layer_comm(shapes, L, hw, stack, True, sparse)
        tp, cp = tp + moe_share * tp_s, cp + moe_share * cp_s
        # Under the 1F1B all-to-all overlap only the exposed all-to-all time is left on the compute stream for the
        # host's launches to hide behind (host.py).
        ep_layer = a2a_exposed_s(L, hw, sparse, ep_s)
        ep = moe_share * ep_layer
        if np.any(L.schedule == ScheduleCode.DUALPIPE):
            fwd_share = dense.forward_s / np.maximum(dense.forward_s + dense.backward_s, TINY_S)
            ep = np.where(L.schedule == ScheduleCode.DUALPIPE,
                          dualpipe_ep_exposed_s(moe_share * ep_s, compute, fwd_share, hw.comm_overlap,
                                                ep_compute_slowdown(L, hw, sparse)),
                          ep)
        if stack.moe_host is not None:
            host = moe_share * moe_host_exposed_s(shapes, L, hw, stack, _moe_gpu_times(shapes, L, hw, stack, sparse,
                                                                                        ep_layer))
    head_f, head_b = head_time(shapes, L, hw, stack)
    accumulate = np.zeros_like(compute)
    if stack.grad_accum_bytes_per_param:
        # A gradient accumulation pass of its own per micro-batch over the layer's parameters on this rank (stack
        # grad_accum_bytes_per_param; Megatron-Core fuses it into the weight-gradient GEMM instead).
        one = stage_params(shapes, L, np.ones_like(L.tp), False, False)
        accumulate = (one.dense + one.expert) * stack.grad_accum_bytes_per_param / hw.hbm_bytes_per_s
        compute = compute + accumulate
    # Eager layers (validate's runs, with a calibration's `layer` section): unfused kernels scale the compute,
    # DTensor dispatch adds a fixed time per tensor-parallel layer; 1 and 0 otherwise.
    compute = hw.layer_time_factor * compute
    weight_grad = hw.layer_time_factor * weight_grad
    tp_overhead = np.where(L.tp > 1, hw.tp_layer_overhead_s, 0.0)
    tp = tp + tp_overhead
    if stack.dense_host is not None and moe_share < 1:
        # The dense layers' host calls show where they outlast the layer's GPU time (host.dense_host_exposed_s): its
        # compute with the accumulation pass (whose adds the host counts include), its exposed communication and a
        # calibration's measured per-layer TP overhead.
        dense_gpu = (hw.layer_time_factor * (dense.forward_s + dense.backward_s + dense.recompute_s + accumulate)
                     + tp_d + cp_d + tp_overhead)
        host = host + (1 - moe_share) * dense_host_exposed_s(L, hw, stack, shapes.n_layers, dense_gpu)
    embed_tp, head_tp = _ends_tp_comm(shapes, L, hw)
    return LayerCost(compute_s=compute, tp_s=tp, cp_s=cp, ep_s=ep, host_s=host, hardware_flops=flops,
                     weight_grad_s=weight_grad,
                     forward_s=dense.forward_s, backward_s=dense.backward_s, head_s=head_f + head_b,
                     embed_tp_s=embed_tp, head_tp_s=head_tp, comm_slowdown_in=dense.comm_slowdown_in,
                     comm_slowdown_out=dense.comm_slowdown_out)


def mixed_layer_cost(parts: list[tuple[float, LayerCost]]) -> LayerCost:
    """The average of several layers' costs, each weighted by its share of the layers (the shares sum to 1): what
    a hybrid stack's average layer costs (ModelShapes.blocks). The ends' terms (LM head, embedding and head TP) are
    the same in every part, so the average keeps them."""
    mixed = {f.name: sum(share * getattr(cost, f.name) for share, cost in parts) for f in fields(LayerCost)}
    # The compute slowdowns beside a collective are ratios of GEMM times: weighted by each part's forward time.
    forward = np.maximum(mixed["forward_s"], TINY_S)
    for name in ("comm_slowdown_in", "comm_slowdown_out"):
        mixed[name] = sum(share * getattr(cost, name) * cost.forward_s for share, cost in parts) / forward
    return LayerCost(**mixed)


def a2a_exposed_s(L: LayoutArrays, hw: HardwareRates, sparse: LayerTime, ep_s: np.ndarray) -> np.ndarray:
    """One MoE layer's all-to-all time per micro-batch left on the critical path: all of it, or under the 1F1B
    all-to-all overlap (Layout.moe_a2a_overlap) what dispatch.a2a_overlap_exposed_s leaves, its kernels slowing the
    compute they run beside (DeepEP / HybridEP: their SMs; NCCL: the layer's slowdown beside NCCL CTAs)."""
    if not np.any(L.moe_a2a_overlap > 0):
        return ep_s
    slowdown = ep_compute_slowdown(L, hw, sparse)
    experts_f, experts_b = sparse.experts_forward_s, sparse.experts_backward_s
    overlapped = a2a_overlap_exposed_s(ep_s, sparse.forward_s - experts_f,
                                       sparse.backward_s + sparse.recompute_s - experts_b, experts_f, experts_b,
                                       combined_1f1b_unmerged_share(L), hw.comm_overlap, slowdown)
    return np.where(L.moe_a2a_overlap > 0, overlapped, ep_s)


def ep_compute_slowdown(L: LayoutArrays, hw: HardwareRates, sparse: LayerTime) -> np.ndarray:
    """Slowdown of the compute an MoE layer's all-to-alls run beside: DeepEP / HybridEP's SMs, or the NCCL CTAs of
    the EP group inside / across scale-up domains (dispatch.dispatcher_slowdown, comm_slowdown)."""
    nccl = comm_slowdown(Group.of(L, Axis.EP), hw, (sparse.comm_slowdown_in, sparse.comm_slowdown_out))
    return dispatcher_slowdown(L, hw.sm_count, nccl)


def dualpipe_ep_exposed_s(ep_s: np.ndarray, compute_s: np.ndarray, forward_share: np.ndarray, overlap: float,
                          slowdown: np.ndarray | float) -> np.ndarray:
    """A layer's expert-parallel all-to-alls under DualPipe (DeepSeek-V3, arXiv 2412.19437 section 3.2.1, Figure 4):
    each rank runs one micro-batch's forward chunk beside another's backward chunk, so the forward's dispatch and
    combine (half of `ep_s`) run under the backward's compute and the backward's two under the forward's. Exposed:
    what each half exceeds its partner's compute by (comm.exposed_s), plus the compute the overlapped part slows
    beside the dispatcher's kernels (comm.interference_s at `slowdown`, dispatch.dispatcher_slowdown: DeepEP's 20
    SMs, the count DeepSeek-V3 reserves, section 3.2.2: 'only 20 SMs are sufficient to fully utilize the bandwidths
    of IB and NVLink'). `compute_s`: the layer's forward + backward, `forward_share` of it forward."""
    half = 0.5 * ep_s
    forward, backward = forward_share * compute_s, (1.0 - forward_share) * compute_s
    exposed = comm.exposed_s(half, backward, overlap) + comm.exposed_s(half, forward, overlap)
    hidden = ep_s - exposed
    return exposed + comm.interference_s(hidden, compute_s, slowdown)


def _moe_gpu_times(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, stack: ExecutionStack,
                   sparse: LayerTime, ep_s: np.ndarray) -> MoeGpuTimes:
    """One MoE layer's GPU time split as the host issues it: the experts (GroupedLinear), the rest of the layer, and
    one token all-to-all (the layer's exposed EP time over its all-to-all calls)."""
    experts_f, experts_b = sparse.experts_forward_s, sparse.experts_backward_s
    calls = ep_collectives(shapes, L).calls
    return MoeGpuTimes(experts_forward_s=experts_f, experts_backward_s=experts_b,
                       rest_forward_s=sparse.forward_s - experts_f, rest_backward_s=sparse.backward_s - experts_b,
                       all_to_all_s=np.where(calls > 0, ep_s / np.maximum(calls, 1.0), 0.0))


MOE_PHASES = ("dispatch", "experts_forward", "combine", "rest_forward", "combine_backward", "experts_backward",
              "dispatch_backward", "rest_backward")
"""One MoE layer's phases per micro-batch in issue order (models/training/host.py): the all-to-alls, the routed
experts (GroupedLinear), and the rest (attention, norms, router, permutes) forward, then backward."""


@dataclass(frozen=True, slots=True)
class MoePhase:
    name: str
    gpu_s: np.ndarray
    host_ops: np.ndarray
    host_s: np.ndarray
    """host_ops at the host CPU's time per op (0 for a stack without moe_host data)."""


@dataclass(frozen=True, slots=True)
class MoeLayerBreakdown:
    """One MoE layer per micro-batch on one rank, as step_time prices it: GPU and host time per phase, the exposed
    host time (host.moe_host_exposed_s) and the local experts' GEMM shapes."""

    phases: tuple[MoePhase, ...]
    exposed_host_s: np.ndarray
    local_experts: np.ndarray
    expert_gemms: tuple[tuple[str, np.ndarray, np.ndarray, np.ndarray], ...]
    """(name, m tokens, n, k) of each local expert's forward GEMMs (fc1, fc2)."""

    @property
    def gpu_s(self) -> np.ndarray:
        return sum((p.gpu_s for p in self.phases), np.zeros_like(self.exposed_host_s))

    @property
    def total_s(self) -> np.ndarray:
        """GPU time of the layer plus its exposed host time (recompute not included)."""
        return self.gpu_s + self.exposed_host_s


def moe_layer_breakdown(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates,
                        stack: ExecutionStack) -> MoeLayerBreakdown:
    """The terms layer_cost adds for one MoE layer, split by phase (a diagnostic view of the same numbers)."""
    sparse = unique_layer_time(shapes, L, hw, True, stack)
    _, _, ep_s = _layer_comm(shapes, L, hw, stack, True, sparse)
    gpu = _moe_gpu_times(shapes, L, hw, stack, sparse, ep_s)
    zeros = np.zeros_like(np.asarray(gpu.rest_forward_s, dtype=float))
    h = stack.moe_host
    ops = phase_ops(h, shapes, L, stack_fp8_recipe(stack), hw.fp8_all_layouts) if h is not None else {}
    op_s = h.op_s[hw.host_cpu] if h is not None else 0.0

    def phase(name: str, gpu_s: np.ndarray, op_name: str) -> MoePhase:
        n = np.asarray(ops.get(op_name, zeros), dtype=float) + zeros
        return MoePhase(name, np.asarray(gpu_s, dtype=float) + zeros, n, n * op_s)

    a2a = gpu.all_to_all_s
    parts = [(a2a, "dispatch"), (gpu.experts_forward_s, "experts_forward"), (a2a, "combine"),
             (gpu.rest_forward_s, "rest"), (a2a, "combine"), (gpu.experts_backward_s, "experts_backward"),
             (a2a, "dispatch"), (gpu.rest_backward_s, "rest")]
    phases = tuple(phase(name, g, o) for name, (g, o) in zip(MOE_PHASES, parts, strict=True))
    exposed = moe_host_exposed_s(shapes, L, hw, stack, gpu) if h is not None else zeros
    expert_linears = layer_linears(shapes, L, True)[2:4]
    gemms = tuple((name, g.tokens + zeros, np.asarray(g.out_features, dtype=float) + zeros,
                   np.asarray(g.in_features, dtype=float) + zeros)
                  for name, g in zip(("fc1", "fc2"), expert_linears, strict=True))
    return MoeLayerBreakdown(phases=phases, exposed_host_s=exposed, local_experts=shapes.n_experts / L.ep + zeros,
                             expert_gemms=gemms)


def _ends_tp_comm(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates) -> tuple[np.ndarray, np.ndarray]:
    """(embedding, head) TP traffic per micro-batch: the vocabulary-parallel embedding all-reduces its output; the
    LM head all-reduces its input's gradient and the cross-entropy 3 floats per token (Megatron-LM)."""
    tokens = L.seq * L.mbs / L.cp
    tp_group = Group.of(L, Axis.TP)
    embed = _collective("all_reduce", activation_bytes(L) * tokens * shapes.hidden, tp_group, hw)
    return embed, embed + 3 * _collective("all_reduce", 4.0 * tokens, tp_group, hw)


def step_time(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, stack: ExecutionStack) -> StepTime:
    """Predicted time of one optimizer step, as `stack` runs it, with every term separate (they add up to step_s)."""
    m = L.microbatches
    layers = counts = stage_layers(shapes, L)  # `layers` becomes average-layer times below, `counts` stays counts
    cost = layer_cost(shapes, L, hw, stack)
    if shapes.blocks and np.any(L.pp > 1):  # a hybrid's stages hold its pattern's blocks as they come, not its mix
        layers = hybrid_stage_layers(shapes, L, layers, cost, hw, stack)
    if len(rows := bf16_rows(L)):  # layers kept in bf16 under fp8 (Layout.bf16_first_layers / bf16_last_layers)
        layers = StageLayers(*bf16_stage_layers(shapes, L, (layers.first, layers.middle, layers.last), cost.total_s,
                                                bf16_layer_times(shapes, L, rows, hw, stack)))
    # Per micro-batch time of each stage (the last, or the only one, also runs the LM head and loss); the slowest
    # stage sets the pipeline's pace.
    single = L.pp == 1
    # Multi-token prediction (DeepSeek-V3): each module is one more layer, its projection and one more LM head pass
    # on the last stage (moe_layer.mtp_projection_s).
    mtp = float(shapes.mtp_layers)
    head = (1.0 + mtp) * cost.head_s + (mtp * mtp_projection_s(shapes, L, hw) if mtp else 0.0)
    head_tp = (1.0 + mtp) * cost.head_tp_s
    # Each MTP depth runs one more layer: one of the model's own, or a hybrid's MTP block (ModelShapes.mtp_layer),
    # counted here in the model's average layers.
    mtp_layers = mtp
    mtp_flops = mtp * cost.hardware_flops
    if mtp and shapes.mtp_layer is not None:
        # in bf16 under fp8 where the stack keeps it there (stacks.yaml hybrid_mtp_bf16)
        block = layer_cost(shapes.mtp_layer, as_bf16(L) if stack.hybrid_mtp_bf16 else L, hw, stack)
        mtp_layers = mtp * block.total_s / np.maximum(cost.total_s, TINY_S)
        mtp_flops = mtp * block.hardware_flops
    first_layers = layers.first + np.where(single, mtp_layers, 0.0)
    last_layers = layers.last + mtp_layers
    first_tp = cost.embed_tp_s + np.where(single, head_tp, 0.0)
    first = first_layers * cost.total_s + np.where(single, head, 0.0) + first_tp
    middle = layers.middle * cost.total_s
    last = last_layers * cost.total_s + head + head_tp
    slowest = np.argmax(np.stack([first, middle, last]), axis=0)  # index in POSITIONS
    stage = np.choose(slowest, [first, middle, last])
    slow_layers = np.choose(slowest, [first_layers, layers.middle, last_layers])
    slow_head = np.where(single | (slowest == POSITIONS.index("last")), head, 0.0)
    slow_ends_tp = np.choose(slowest, [first_tp, np.zeros_like(first_tp), head_tp])
    # Pipeline p2p: activations b*s*h (scatter-gather over tp, Narayanan 2021 section 4.1) per chunk boundary.
    pp_group = Group.of(L, Axis.PP)
    # The chain of pp stages: when it spans scale-up domains, its hops across them pace the pipeline.
    n_in, n_out = comm.split_group(pp_group.size, pp_group.stride, hw.domain)
    p2p = _p2p(pipeline_p2p(shapes, L).size_bytes, n_out, hw, Axis.PP)
    pp_comm = np.where(single, 0.0, pp_comm_s(p2p, m, L, stack, stage, hw))
    w_stage = slow_layers * cost.weight_grad_s
    # DualPipe's bubble reads the layer's backward share; no other schedule does (bubble_s).
    backward_share = (cost.backward_s / np.maximum(cost.forward_s + cost.backward_s, TINY_S)
                      if np.any(L.schedule == ScheduleCode.DUALPIPE) else BACKWARD_SHARE_2X)
    bubble = np.where(single, 0.0, bubble_s(stage, w_stage, m, L, hw.host_oversubscription, backward_share))
    dp_exposed = dp_exposed_s(shapes, L, hw, stack, slow_layers, cost.forward_s, cost.backward_s,
                             (cost.comm_slowdown_in, cost.comm_slowdown_out),
                             # MTP modules on a last stage of pp > 1: a layer's parameters each (at pp 1 stage_params
                             # counts them with the head)
                             np.choose(slowest, [counts.first, counts.middle,
                                                 counts.last + np.where(single, 0.0, mtp)]))
    opt = _optimizer_s(shapes, L, hw, counts, stack)  # the stages' parameters: layer counts, not times
    compute = m * (slow_layers * cost.compute_s + slow_head)
    tp_total, cp_total, ep_total, host_total = (m * slow_layers * x for x in (cost.tp_s, cost.cp_s, cost.ep_s,
                                                                              cost.host_s))
    tp_total = tp_total + m * slow_ends_tp
    offload = np.zeros_like(compute)
    if np.any(L.offload_layers > 0):
        kept, _ = unique_per_layer_activation_bytes(shapes, L, stack.selective_recompute,
                                                    stack.sp_saves_gathered_inputs, "swiglu" in stack.fused_kernels,
                                                    stack.compiled, kv_copies=stack.attention_kv_copies,
                                                    fp8_saved=stack_fp8_saved(stack))
        offloaded = np.minimum(L.offload_layers, slow_layers)
        offload = m * offload_exposed_s(kept, offloaded, slow_layers, cost.forward_s, cost.backward_s,
                                        hw.host_link_bytes_per_s)
    step = compute + tp_total + cp_total + ep_total + host_total + pp_comm + bubble + dp_exposed + opt + offload
    # Executed FLOPs over all GPUs: per-rank layer FLOPs x tp x cp ranks sharing a micro-batch, plus the LM head.
    hardware = L.gbs / L.mbs * ((cost.hardware_flops * shapes.n_layers + mtp_flops) * L.tp * L.cp
                                + 6.0 * L.mbs * L.seq * shapes.hidden * (1.0 + mtp) * shapes.vocab
                                + 6.0 * L.mbs * L.seq * mtp * 2.0 * shapes.hidden * shapes.hidden)
    return StepTime(step_s=step, compute_s=compute, tp_comm_s=tp_total, cp_comm_s=cp_total, ep_comm_s=ep_total,
                    host_s=host_total, pp_comm_s=pp_comm, dp_comm_s=dp_exposed, bubble_s=bubble, optimizer_s=opt,
                    model_flops=model_flops_per_step(shapes, L), hardware_flops=hardware, offload_s=offload)


def bf16_layer_times(shapes: ModelShapes, L: LayoutArrays, rows: np.ndarray, hw: HardwareRates,
                     stack: ExecutionStack) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(fp8, bf16) time of one layer of each kind at `rows` (0 elsewhere): the model's layer ("layer"), or each of
    a hybrid's block kinds; what bf16_layers.bf16_stage_layers prices a bf16 layer by."""
    sub = L.take(rows)
    blocks = [(block.block, block) for _, block in shapes.blocks] if shapes.blocks else [("layer", shapes)]
    out = {}
    for kind, block in blocks:
        fp8, bf16 = np.zeros(len(L)), np.zeros(len(L))
        fp8[rows] = layer_cost(block, sub, hw, stack).total_s
        bf16[rows] = layer_cost(block, as_bf16(sub), hw, stack).total_s
        out[kind] = (fp8, bf16)
    return out


def hybrid_stage_layers(shapes: ModelShapes, L: LayoutArrays, layers: StageLayers, cost: LayerCost,
                        hw: HardwareRates, stack: ExecutionStack) -> StageLayers:
    """A hybrid's first, slowest middle and last pipeline ranks in units of its average layer (cost.total_s): each
    rank's blocks as its slice of the pattern holds them (rank_block_counts), priced by kind. What the stage
    times read; a layout whose counts do not add up keeps the average."""
    kinds = {block.block: layer_cost(block, L, hw, stack).total_s for _, block in shapes.blocks}
    symbol = {kind: sym for sym, kind in HYBRID_BLOCK_KINDS.items()}
    first, middle, last = (np.array(x, dtype=float, copy=True) for x in (layers.first, layers.middle, layers.last))
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in np.nonzero(L.pp > 1)[0]:
        counts = rank_block_counts(shapes.n_layers, int(L.pp[i]), float(layers.first[i]), float(layers.middle[i]),
                                   float(layers.last[i]), tuple(L.pp_layers[i]) if L.pp_layers_listed[i] else ())
        if counts is not None:
            groups.setdefault(counts, []).append(int(i))
    average = np.maximum(cost.total_s, TINY_S)
    for counts, members in groups.items():
        idx = np.array(members)
        starts = np.cumsum((0, *counts[:-1]))
        units = [sum(shapes.pattern[s:s + c].count(symbol[k]) * kinds[k][idx] for k in kinds) / average[idx]
                 for s, c in zip(starts, counts, strict=True)]
        first[idx], last[idx] = units[0], units[-1]
        if len(units) > 2:
            middle[idx] = np.max(units[1:-1], axis=0)
    return StageLayers(first, middle, last)


def offload_exposed_s(layer_bytes: np.ndarray, offloaded: np.ndarray, layers: np.ndarray, layer_forward_s: np.ndarray,
                      layer_backward_s: np.ndarray, host_bytes_per_s: float) -> np.ndarray:
    """Exposed time of activation offloading per micro-batch (Megatron-Core cpu_offloading_num_layers = `offloaded`
    of the stage's `layers`), Transformer Engine's OffloadSynchronizer schedule (transformer_engine/pytorch/
    cpu_offload.py, _default_offload_sync_init): layers 0..k-1 are offloaded, layer i's copy starts after its forward
    and must finish before layer n-k+i's forward; in backward layer i's reload starts at layer n-1-k+i's backward and
    must finish before its own. The copies run one after another on one stream, each `layer_bytes` / host rate (T);
    with T beyond a layer's time the queue falls behind most at the last copy, which may start after layer 0 and is
    due at layer n-1: the compute waits max(0, k T - (n-1) t) forward (t = a layer's forward) and as much backward
    (t = its backward). Under TE's schedule the copies hide unless the host link is slow (PCIe) or k near n."""
    copy_s = layer_bytes / host_bytes_per_s
    slack = np.maximum(layers - 1.0, 0.0)
    forward = np.maximum(0.0, offloaded * copy_s - slack * layer_forward_s)
    backward = np.maximum(0.0, offloaded * copy_s - slack * layer_backward_s)
    return np.where(offloaded > 0, forward + backward, 0.0)


def cross_node_p2p_s(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates) -> np.ndarray:
    """One pipeline send/recv of a micro-batch's boundary activation between nodes (collectives.pipeline_p2p): the
    hop that paces a chain of stages spanning scale-up domains, as step_time prices it."""
    return _p2p(pipeline_p2p(shapes, L).size_bytes, np.full(np.shape(L.tp), 2.0), hw, Axis.PP)


def pp_comm_s(p2p: np.ndarray, m: np.ndarray, L: LayoutArrays, stack: ExecutionStack, stage: np.ndarray,
              hw: HardwareRates) -> np.ndarray:
    """Exposed pipeline send/recv per step: 2 (m vpp + pp - 1) transfers (forward activations, backward gradients;
    Narayanan 2021). With the stack's P2P overlap (Megatron --overlap-p2p-comm under interleaving, torch pipelining's
    async isend/irecv) the steady-state m vpp transfers each way run under one chunk's forward or backward (a stage's
    per-micro-batch time / 2 vpp); the 2 (pp - 1) transfers of fill and drain stay on the critical path. A stack whose
    warm-up and cool-down passes send and receive unoverlapped (pp_warmup_exposed: Megatron-Core, "The PP send/recv
    in warmup and flush are exposed by default", Megatron-Bridge docs/performance-guide.md) also exposes the transfers
    of rank 0's warm-up forward and cool-down backward passes (LayoutArrays.interleaved_warmup_passes), 2 (pp - 1)
    + (vpp - 1) pp each way, only the rest of the m vpp overlapped (when every pass is warm-up or cool-down, the
    serial count): the P2P cost that grows with vpp and "cancels off the reduced pipeline bubbles" (NeMo docs,
    communication_overlap.rst); such a stack overlaps only with virtual stages (Megatron-Core sets overlap_p2p_comm
    with vpp > 1 only)."""
    serial = 2.0 * (m * L.vpp + L.pp - 1.0) * p2p
    steady = 2.0 * comm.exposed_s(p2p, stage / (2.0 * L.vpp), hw.comm_overlap)
    alone = L.interleaved_warmup_passes() if stack.pp_warmup_exposed else 0.0
    overlapped = 2.0 * (L.pp - 1.0) * p2p + 2.0 * alone * p2p + (m * L.vpp - alone) * steady
    overlaps = np.isin(L.schedule, [CODES["schedule"][name] for name in stack.pp_overlap_schedules]
                       if stack.pp_overlap else [])
    if stack.pp_warmup_exposed:
        overlaps = overlaps & (L.vpp > 1)
    return np.where(overlaps, overlapped, serial)


def bubble_s(stage: np.ndarray, weight_grad: np.ndarray, m: np.ndarray, L: LayoutArrays,
             oversubscription: float, backward_share: np.ndarray | float = BACKWARD_SHARE_2X) -> np.ndarray:
    """Pipeline bubble per step from the slowest stage's per-micro-batch time `stage` = F + B + W (W: its
    weight-gradient GEMMs, B the rest of backward).

    GPipe / 1F1B: (pp-1)(F+B+W); interleaved over vpp chunks: (pp-1)(F+B+W)/vpp (Narayanan 2021); ZB-H1 moves W into
    the bubble and starts B earlier: (pp-1)(F+B-W), a third of 1F1B's when F = B = W (Qi et al. 2023, section 2.1);
    ZB-V, two chunks of half a stage in a V: (pp-1)(F'+B'-2W') over one chunk = (pp-1)(F+B+W - 3W)/2, zero when
    F = B = W as the paper's comparison states. DualPipe: (pp/2 - 1)(F&B + B - 3W) with B the full backward chunk and
    F&B an overlapped forward + backward pair (DeepSeek-V3, arXiv 2412.19437 Table 2; deepseek-ai/DualPipe README),
    F&B = `stage` (the pair's compute adds up; its all-to-alls run under it) and B = `backward_share` of it (the
    layer's backward over forward + backward). Uneven stages: `stage` is the slowest one (first/last lighter).
    """
    bubble = np.select(
        [L.schedule == ScheduleCode.INTERLEAVED, L.schedule == ScheduleCode.ZB, L.schedule == ScheduleCode.ZBV,
         L.schedule == ScheduleCode.DUALPIPE],
        [stage / L.vpp, stage - 2.0 * weight_grad, (stage - 3.0 * weight_grad) / 2.0,
         stage + backward_share * stage - 3.0 * weight_grad], stage)
    steps = np.where(L.schedule == ScheduleCode.DUALPIPE, L.pp / 2.0 - 1.0, L.pp - 1.0)
    bubble = steps * np.maximum(bubble, 0.0)
    # On a CPU shared by k rank threads per core (calibrated with every rank busy), ranks idle in the bubble lend
    # their cores to the busy ones: a stage's m micro-batches plus its bubble take (m + bubble) / k busy-rank times,
    # and only what exceeds m is lost; k = 1 (GPUs) is the usual bubble.
    units = bubble / np.maximum(stage, TINY_S)
    return stage * np.maximum(0.0, (m + units) / oversubscription - m)


def dp_exposed_s(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, stack: ExecutionStack,
                slow_layers: np.ndarray, layer_f: np.ndarray, layer_b: np.ndarray,
                slowdowns: tuple[np.ndarray | float, np.ndarray | float] = (1.0, 1.0),
                param_layers: np.ndarray | None = None) -> np.ndarray:
    """Data-parallel traffic left exposed after the stack's overlap, plus what its overlapped part costs the compute
    it runs under (`slowdowns`: the layer's compute slowdown beside a collective inside / across scale-up domains,
    LayerCost.comm_slowdown_in / _out).

    ZeRO-0: gradient all-reduce; ZeRO-1/2 (Megatron distributed optimizer): gradient reduce-scatter, then the
    updated weights' all-gather. The reduce hides under the last micro-batch's backward, the all-gather under the next
    step's first forward (Megatron overlap_grad_reduce / overlap_param_gather), each under `dp_overlap_share` of
    that compute; stacks that chunk it (dp_exposed_chunk) always expose the last chunk: Megatron-Core's last DDP
    bucket of each buffer (megatron_dp_chunks), DeepSpeed's last bucket (dp_bucket_bytes), else one layer's share (one
    virtual stage's where dp_chunk_under_pp says so). ZeRO-3 / FSDP: see _zero3_exposed.
    """
    _, gb, _ = bytes_per_param(L)
    # The stage's parameters by its layer count (`param_layers`), where slow_layers counts average-layer times (a
    # hybrid's blocks, bf16 layers under fp8).
    param_layers = slow_layers if param_layers is None else param_layers
    params = stage_params(shapes, L, param_layers, L.pp == 1, L.pp == 1)
    shard = Group.of(L, Axis.DP_SHARD)
    replicate = Group.of(L, Axis.DP_REPLICATE)
    recipe = stack_fp8_recipe(stack)
    compute_wb = param_gather_bytes(L, fsdp_fp8_allgather(stack.fp8_allgather, recipe), recipe)
    dense_grad = params.dense * gb
    expert_grad = params.expert * gb
    edp = Group.of(L, Axis.EDP)
    rs_dense, rs_expert = (_collective("reduce_scatter", dense_grad, shard, hw),
                           _collective("reduce_scatter", expert_grad, edp, hw))
    ag_dense, ag_expert = (_collective("all_gather", params.dense * compute_wb, shard, hw),
                           _collective("all_gather", params.expert * compute_wb, edp, hw))
    ar_dense, ar_expert = (_collective("all_reduce", dense_grad, shard, hw),
                           _collective("all_reduce", expert_grad, edp, hw))
    rs, ag, ar = rs_dense + rs_expert, ag_dense + ag_expert, ar_dense + ar_expert
    hsdp = _collective("all_reduce", (params.dense + params.expert) * gb / (L.dp_shard * L.cp), replicate, hw)
    o = hw.comm_overlap if stack.dp_overlap else 0.0  # comm_overlap: measured by `clusterplan profile` (else 1)
    # ZeRO-2 keeps only its shard of the gradients, so nothing accumulates them across micro-batches: every
    # backward reduce-scatters (Megatron-FSDP optim_grads: grad_reduce_every_bprop; DeepSpeed stage 2 refuses no_sync;
    # FSDP1 SHARD_GRAD_OP), each under its own micro-batch's backward; HSDP's outer reduce still waits for the last.
    # A stack whose ZeRO-2 reshards the weights after each backward gathers them again per micro-batch's forward.
    # torch.distributed.pipelining (pp_impl "torch", pp > 1) is the exception: its stage holds the reduce until the
    # last backward (stage.py backward_maybe_with_nosync), accumulating unsharded gradients (torch_pipeline_bytes).
    torch_pipeline = (L.pp > 1) & (stack.pp_impl == "torch")
    reduces = np.where((L.zero == 2) & ~torch_pipeline, L.microbatches, 1.0)
    gathers = np.where((L.zero == 2) & stack.zero2_gathers_per_microbatch, L.microbatches, 1.0)
    reduce = np.where(L.zero == 0, ar, reduces * rs) + hsdp
    gather = np.where(L.zero == 0, 0.0, gathers * ag)
    if stack.dp_bucket_params:
        # Dense and expert gradients sit in separate buffers, each exposing its own last bucket: the chunk count
        # is the one that leaves that sum exposed.
        dense_chunks = megatron_dp_chunks(params.dense, L, stack)
        expert_chunks = megatron_dp_chunks(params.expert, L, stack)
        last_reduce = (np.where(L.zero == 0, ar_dense, rs_dense) + hsdp) / dense_chunks \
            + np.where(L.zero == 0, ar_expert, rs_expert) / expert_chunks  # the last micro-batch's last bucket
        last_gather = ag_dense / dense_chunks + ag_expert / expert_chunks
        chunks = np.where(last_reduce > 0, np.maximum(1.0, reduce / np.maximum(last_reduce, TINY_S)), 1.0)
        gather_chunks = np.where(last_gather > 0, np.maximum(1.0, gather / np.maximum(last_gather, TINY_S)), chunks)
    else:
        if stack.dp_bucket_bytes:
            chunks = np.maximum(1.0, (dense_grad + expert_grad) / stack.dp_bucket_bytes)
        elif stack.dp_chunk_under_pp == "virtual_stage":
            chunks = np.where(L.pp > 1, L.vpp, np.maximum(slow_layers, 1.0))
        else:
            chunks = np.maximum(slow_layers, 1.0)
        # ZeRO-2: one micro-batch's pieces, times its reduces: the last micro-batch's last piece stays exposed
        chunks, gather_chunks = reduces * chunks, gathers * chunks
    # A stack whose distributed optimizer gathers the updated weights after its step, before the next forward
    # (param_gather_overlap off: nanotron's ZeroDistributedOptimizer all_gather_coalesced), exposes all of it.
    backward_s, forward_s = reduces * slow_layers * layer_b, gathers * slow_layers * layer_f
    gather_exposed = (dp_overlap_exposed_s(gather, forward_s, stack, o, gather_chunks)
                      if stack.param_gather_overlap else gather)
    exposed12 = dp_overlap_exposed_s(reduce, backward_s, stack, o, chunks) + gather_exposed
    # What the overlapped part costs the compute it runs under: all but the always-exposed last chunk runs beside
    # `dp_overlap_share` of that compute on the SMs its NCCL CTAs leave (comm.interference_s).
    slowdown = comm_slowdown(shard, hw, slowdowns)
    beside = o * (1.0 - 1.0 / chunks) if stack.dp_exposed_chunk else o
    gather_beside = beside if stack.param_gather_overlap else 0.0
    interference12 = (comm.interference_s(beside * reduce, stack.dp_overlap_share * backward_s, slowdown)
                      + comm.interference_s(gather_beside * gather, stack.dp_overlap_share * forward_s, slowdown))
    exposed3 = _zero3_exposed(shapes, L, hw, stack, slow_layers, layer_f, layer_b, ag, rs, hsdp, shard, o, slowdown,
                              compute_wb)
    return np.where(L.dp * L.cp > 1, np.where(L.zero == 3, exposed3, exposed12 + interference12), 0.0)


def megatron_dp_chunks(buffer_params: np.ndarray, L: LayoutArrays, stack: ExecutionStack) -> np.ndarray:
    """How many pieces one gradient buffer's reduce (and its parameter all-gather) comes in, seen from the one piece no
    compute hides. Megatron-Core DistributedDataParallel fills buckets of stack.dp_bucket_params parameters in reverse
    order, on the first pipeline stage's first model chunk only ('Turn off bucketing if we are on a pipeline stage
    that is not the first (since data-parallel communication on these stages is not on the critical path)'; later
    virtual stages: disable_bucketing). That chunk finishes its backward last; its last bucket, or the whole chunk
    when smaller, is exposed. `buffer_params`: the rank's parameters in the buffer (dense or expert), 0 for none."""
    first_chunk = np.where(L.pp > 1, buffer_params / L.vpp, buffer_params)
    piece = np.minimum(stack.dp_bucket_params, first_chunk)
    return np.where(buffer_params > 0, np.maximum(1.0, buffer_params / np.maximum(piece, 1.0)), 1.0)


def comm_slowdown(g: Group, hw: HardwareRates, slowdowns: tuple[np.ndarray | float, np.ndarray | float]
                  ) -> np.ndarray:
    """The compute slowdown beside one NCCL collective over the group: (inside, across) scale-up domains."""
    _, n_out = comm.split_group(g.size, g.stride, hw.domain)
    return np.where(n_out > 1, slowdowns[1], slowdowns[0])



def dp_overlap_exposed_s(comm_s: np.ndarray, compute_s: np.ndarray, stack: ExecutionStack, overlap: float,
                         chunks: np.ndarray) -> np.ndarray:
    """Bucketed data-parallel traffic `comm_s` left exposed when it runs under `compute_s`: it hides under
    stack.dp_overlap_share of that compute (as far as `overlap`, the measured comm/compute overlap, allows), and a
    stack that chunks it (dp_exposed_chunk) always exposes the last of its `chunks` (Megatron-Bridge docs: 'exposes
    only one DP communication chunk')."""
    exposed = comm.exposed_s(comm_s, stack.dp_overlap_share * compute_s, overlap)
    return np.maximum(exposed, comm_s / chunks) if stack.dp_exposed_chunk else exposed


def zero3_collectives_per_layer(shapes: ModelShapes, L: LayoutArrays, stack: ExecutionStack,
                                layer_weight_bytes: np.ndarray) -> np.ndarray:
    """Separate all-gathers (and reduce-scatters) one layer's weights take: 1 for FSDP2 / Megatron FSDP (one flat
    buffer per wrapped block), one per parameter tensor (ZeRO-3 of 2021), or one per prefetch bucket (DeepSpeed
    stage3_prefetch_bucket_size)."""
    if stack.fsdp_granularity == "block":
        return np.ones_like(L.tp)
    if stack.fsdp_granularity == "tensor":
        return np.full_like(L.tp, float(shapes.tensors_per_layer))
    return np.maximum(1.0, np.ceil(layer_weight_bytes / stack.fsdp_bucket_bytes))


def _zero3_exposed(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, stack: ExecutionStack,
                   slow_layers: np.ndarray, layer_f: np.ndarray, layer_b: np.ndarray, ag: np.ndarray, rs: np.ndarray,
                   hsdp: np.ndarray, shard: Group, o: float, slowdown: np.ndarray | float,
                   gather_bytes: np.ndarray) -> np.ndarray:
    """ZeRO-3 / FSDP: per layer and micro-batch, the weights' all-gather under forward, all-gather + reduce-scatter
    (+ HSDP's all-reduce of the shard across replicas, FSDP2's post-backward) under backward, each under one layer's
    compute (prefetch one block ahead). The first all-gather and the last reduce-scatter have nothing to hide under
    (dp_exposed_chunk). Beyond the first collective, each further one per layer (per tensor or bucket) adds its
    (n-1) ring latency steps, which bandwidth overlap cannot hide: this is what makes per-tensor ZeRO-3 fall behind
    as dp grows (Narayanan 2021 Table 2) while FSDP2's per-block gather does not. `gather_bytes`: bytes per
    parameter the gathers move (memory.param_gather_bytes)."""
    n = np.maximum(slow_layers, 1.0)
    ag_layer, rs_layer, hsdp_layer = ag / n, rs / n, hsdp / n
    # Under backward the next block's gather runs beside the compute, unless BACKWARD_POST issues it after it.
    beside_b = ag_layer + rs_layer + hsdp_layer
    if stack.fsdp_backward_prefetch == "post":
        backward = fsdp_post_prefetch_backward_s(ag_layer, rs_layer + hsdp_layer, layer_b, o)
        beside_b = rs_layer + hsdp_layer
    else:
        backward = comm.exposed_s(beside_b, layer_b, o)
    per_layer = comm.exposed_s(ag_layer, layer_f, o) + backward
    # The prefetched gather (and the reduce-scatter) run beside the layer's compute on the SMs their CTAs leave.
    interference_f = comm.interference_s(o * ag_layer, layer_f, slowdown)
    per_layer = per_layer + interference_f + comm.interference_s(o * beside_b, layer_b, slowdown)
    edge = 0.0
    if stack.dp_exposed_chunk:
        edge = (ag_layer - comm.exposed_s(ag_layer, layer_f, o)) + (rs_layer - comm.exposed_s(rs_layer, layer_b, o))
    n_in, n_out = comm.split_group(shard.size, shard.stride, hw.domain)
    ag_link = hw.link("all_gather")
    step_lat = np.where(n_out > 1, ag_link.lat_out, ag_link.lat_in)
    one_layer = stage_params(shapes, L, np.ones_like(L.tp), False, False)
    extra = zero3_collectives_per_layer(shapes, L, stack, (one_layer.dense + one_layer.expert) * gather_bytes)
    extra = extra - 1.0 if stack.fsdp_granularity == "block" else extra  # the first is priced in per_layer
    per_collective_lat = extra * (shard.size - 1) * step_lat
    latency = (3.0 + L.full_recompute_share(shapes.n_layers)) * per_collective_lat
    exposed = L.microbatches * (slow_layers * (per_layer + latency) + edge)
    if stack.fsdp_impl == "fsdp2":
        # FSDP2: the block's own gather / reduce-scatter at the edges (not the average layer's, which carries the
        # embedding's share), the root module's and the copy-out kernels (fsdp2_extra_s).
        # (pp > 1 rows are replaced by `once` below.)
        block_ag = _collective("all_gather", one_layer.dense * gather_bytes, shard, hw)
        block_rs = _collective("reduce_scatter", one_layer.dense * bytes_per_param(L)[1], shard, hw)
        exposed = (L.microbatches * (slow_layers * (per_layer + latency) + block_ag + block_rs)
                   + fsdp2_extra_s(shapes, L, hw, shard, slow_layers))
    # Under pp > 1 (torch.distributed.pipelining, torchtitan) a stage gathers its weights once, in the first
    # micro-batch's forward, and reduce-scatters once, after the last backward (its REDUCE_GRAD step, exposed).
    once = (comm.exposed_s(ag_layer, layer_f, o) + interference_f + rs_layer + hsdp_layer
            + 2.0 * per_collective_lat)
    return np.where(L.pp > 1, slow_layers * once, exposed)


def fsdp_post_prefetch_backward_s(all_gather_s: np.ndarray, reduce_s: np.ndarray, compute_s: np.ndarray,
                                  overlap: float) -> np.ndarray:
    """Backward exposure of one FSDP1 block under BackwardPrefetch.BACKWARD_POST (stack fsdp_backward_prefetch
    "post"). PyTorch docs/source/notes/fsdp.rst (FSDP Prefetch Nuances): all-gathers and reduce-scatters run serially
    on one NCCL stream, in CPU issue order; BACKWARD_POST issues the next block's all-gather in the current block's
    post-backward hook, i.e. once the current block's gradients are complete, followed by the current block's
    reduce-scatter. The next block's backward (its recompute too) waits for its parameters, and no computation is
    left to run under that gather: it is exposed whole; the reduce-scatter then runs under the next block's backward.
    (BACKWARD_PRE issues the gather before the current block's gradient computation: both hide under it.)"""
    return np.asarray(all_gather_s, dtype=float) + comm.exposed_s(reduce_s, compute_s, overlap)


FOREACH_ADAMW_BYTES_PER_PARAM = 8.0 + 12.0 + 8.0 + 16.0 + 8.0 + 8.0 + 8.0 + 16.0
"""torch.optim AdamW with foreach=True (torch/optim/adamw.py _multi_tensor_adamw, capturable off), one pass over the
fp32 tensors per op: _foreach_mul_(params) r+w 8, _foreach_lerp_(m, g) 2r+w 12, _foreach_mul_(v) 8,
_foreach_addcmul_(v, g, g) 3r+w 16, _foreach_sqrt(v) 8, _foreach_div_ 8, _foreach_add_(eps) 8,
_foreach_addcdiv_(params, m, denom) 3r+w 16: 84 B per parameter (a fused kernel: 32, as Adam with master weights)."""
FOREACH_CLIP_BYTES_PER_PARAM = 4.0 + 8.0
"""clip_grad_norm_(foreach=True) (torch/nn/utils/clip_grad.py): _foreach_norm reads each fp32 gradient (4 B), the
clip coefficient is applied unconditionally by _foreach_mul_ (read + write, 8 B)."""


def optimizer_bytes_per_param(L: LayoutArrays, stack: ExecutionStack | None = None) -> np.ndarray:
    """HBM bytes one updated parameter costs the optimizer step (+ gradient clipping) as the stack runs it: fused Adam
    with master weights ~32 B (reads/writes each state once), plain Adam 24, SGD 8; stack optimizer_impl "foreach"
    runs one pass per op over the fp32 tensors AdamW updates, FOREACH_ADAMW_BYTES_PER_PARAM, with master weights and
    with plain Adam, whose parameters are then the fp32 copy (validate's runs: fp32 parameters under bf16 autocast;
    our H200 profile, 35.1 ms of AdamW kernels for 1.65 B parameters = 88 B at 4.15 TB/s, reference/step_profile.py);
    grad_clip "foreach" adds FOREACH_CLIP_BYTES_PER_PARAM. bf16 moments (Layout.bf16_moments) read and write m and v
    in 2 B instead of 4: BF16_MOMENTS_SAVED_BYTES_PER_PARAM less."""
    master = L.optimizer == OptimizerCode.ADAM_MASTER
    foreach = stack is not None and stack.optimizer_impl == "foreach"
    adam_master, plain_adam = (FOREACH_ADAMW_BYTES_PER_PARAM,) * 2 if foreach else (32.0, 24.0)
    per_param = np.select([L.optimizer == OptimizerCode.SGD, master, L.optimizer == OptimizerCode.ADAM],
                          [8.0, adam_master, plain_adam], 24.0)
    per_param = per_param - np.where((L.bf16_moments > 0) & (L.optimizer != OptimizerCode.SGD),
                                     BF16_MOMENTS_SAVED_BYTES_PER_PARAM, 0.0)
    clip = FOREACH_CLIP_BYTES_PER_PARAM if stack is not None and stack.grad_clip == "foreach" else 0.0
    return per_param + clip


def fsdp2_extra_s(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, shard: Group,
                  slow_layers: np.ndarray) -> np.ndarray:
    """What torch FSDP2 (stack fsdp_impl "fsdp2", pp 1) adds per step beyond the per-block gathers and
    reduce-scatters (torch/distributed/_composable/fsdp/_fsdp_collectives.py, torchtitan apply_fsdp):
    foreach_all_gather_copy_out copies each gathered block into its unsharded parameters on the compute stream
    (reads the all-gather output, writes the parameters: 2 x the gathered bytes at the HBM rate), 2 n - 1 times per
    micro-batch (forward, and backward for every block resharded after forward, all but the last); the root module's
    own parameters (embeddings, final norm, LM head) are all-gathered before the first block and reduce-scattered
    after the whole backward, with nothing to hide under, plus their copy-out once."""
    block = stage_params(shapes, L, np.ones_like(L.tp), False, False).dense * activation_bytes(L)
    root_params = stage_params(shapes, L, np.zeros_like(L.tp), True, True).dense
    root = root_params * activation_bytes(L)
    gathers = L.microbatches * np.maximum(2.0 * slow_layers - 1.0, 0.0)
    copy_out = (gathers * 2.0 * block + 2.0 * root) / hw.hbm_bytes_per_s
    root_comm = (_collective("all_gather", root, shard, hw)
                 + _collective("reduce_scatter", root_params * bytes_per_param(L)[1], shard, hw))
    return copy_out + root_comm


def _optimizer_s(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, layers: StageLayers,
                 stack: ExecutionStack | None = None) -> np.ndarray:
    """Optimizer step streams its states through HBM (optimizer_bytes_per_param). Under ZeRO >= 1 each rank updates
    its shard: dense parameters over dp_shard * cp, routed experts over the expert-data-parallel group
    (memory.zero_shards)."""
    # every rank steps at once: the one with the most parameters ends last (the first with the embedding, the last
    # with the LM head, or the heaviest middle rank under a per-rank list)
    single = L.pp == 1
    heaviest = np.maximum.reduce([optimizer_step_s(stage_params(shapes, L, n, embed, head), L, hw, stack)
                                  for n, embed, head in ((layers.first, True, single), (layers.middle, False, False),
                                                         (layers.last, single, True))])
    # DualPipe keeps two stages per rank (i and pp-1-i; arXiv 2412.19437 Table 2): twice the parameters to update,
    # priced as twice the heaviest position's, as memory_breakdown counts its states.
    return np.where(L.schedule == ScheduleCode.DUALPIPE, 2.0, 1.0) * heaviest


def optimizer_step_s(params: StageParams, L: LayoutArrays, hw: HardwareRates,
                     stack: ExecutionStack | None = None) -> np.ndarray:
    """One rank's optimizer step over a stage's `params` (memory.stage_params): under ZeRO >= 1 it updates its
    shard, dense parameters over dp_shard * cp, routed experts over the expert-data-parallel group
    (memory.zero_shards), streaming optimizer_bytes_per_param through HBM."""
    dense_shard, expert_shard = zero_shards(L)
    on = L.zero >= 1
    updated = params.dense / np.where(on, dense_shard, 1.0) + params.expert / np.where(on, expert_shard, 1.0)
    return updated * optimizer_bytes_per_param(L, stack) / hw.hbm_bytes_per_s
