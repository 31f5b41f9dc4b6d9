"""MoE token dispatchers and Megatron-Core's 1F1B all-to-all overlap (Layout.moe_dispatcher, Layout.moe_a2a_overlap).

Three dispatchers move one MoE layer's routed tokens (Megatron-Core --moe-token-dispatcher-type alltoall | flex with
--moe-flex-dispatcher-backend deepep | hybridep):
- alltoall: NCCL all-to-all of the permuted tokens, one copy per (token, expert) pair: tokens x top_k rows
  (collectives.ep_collectives; step.cross_node_all_to_all_s across nodes).
- deepep / hybridep: one copy per (token, destination GPU); across nodes one RDMA copy per (token, destination node),
  which the GPU that receives it forwards over NVLink to the node's GPUs holding the token's experts (DeepEP README,
  "normal kernels with NVLink and RDMA forwarding"; HybridEP: the same hierarchy on TMA / IBGDA, NVIDIA technical
  blog "Optimizing Communication for Mixture-of-Experts Training with Hybrid Expert Parallel", 2026). The RDMA and
  NVLink stages are pipelined: the slower link sets the time (DeepEP reports each case's "bottleneck bandwidth").
  Their kernels run on a fixed number of SMs (Megatron-Core TransformerConfig moe_deepep_num_sms 20,
  moe_hybridep_num_sms 16), which the compute beside them loses.

Token destinations follow uniform routing: each token picks top_k distinct experts uniformly among n_experts, spread
evenly over the EP ranks; a dropless run's busiest rank scales the bytes (moe_layer.imbalance, in step.flex_dispatch_s).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from clusterplan.models.hardware import comm
from clusterplan.models.hardware.rates import LinkRates
from clusterplan.models.training.batch import LayoutArrays, MoeDispatcherCode

DISPATCHER_SMS = {MoeDispatcherCode.DEEPEP: 20, MoeDispatcherCode.HYBRIDEP: 16}
"""SMs the flex dispatcher's communication kernels hold: Megatron-Core TransformerConfig moe_deepep_num_sms = 20 and
moe_hybridep_num_sms = 16 ("in pure NVL scenarios, 16 SMs can generally achieve good bandwidth"), the defaults
Megatron-Core passes to DeepEP's Buffer.set_num_sms / HybridEP."""


DEEPEP_NVLINK_OVER_BUSBW = 0.82
"""DeepEP's achieved NVLink rate per GPU over the NCCL bus bandwidth of the same link (links.yaml busbw_fraction):
DeepEP's figures are logical, counting the rank's own tokens (README: 'the results are logical bandwidth ... contains
local rank traffic'; tests/test_intranode.py nvl_recv_bytes = all received tokens x hidden x 2), so the physical rate
is (n - 1) / n of them at 8 GPUs: H800 intranode dispatch 153 GB/s logical (README, legacy table) -> 134 GB/s against
NCCL's 160 (0.84); H20 (H100's 18-link NVLink 4) 337 GB/s logical at 24 SMs (deepseek-ai/DeepEP#16) -> 295 GB/s
against 369 (0.80); the mean of the two."""

DEEPEP_RDMA_OVER_BUSBW = 0.92
"""DeepEP's achieved remote RDMA rate per GPU over the NCCL bus bandwidth of the NIC: its internode RDMA figures also
count the copies to the own node (tests/test_internode.py num_rdma_token_sent counts every destination node), so on
H800 + ConnectX-7 400 Gb/s (legacy table, 4,096 tokens, hidden 7,168, top-8 of 256 experts in 4 of 8 groups) EP32's
58 GB/s logical over 3.61 nodes hit, 2.71 remote, is 43.5 GB/s physical, EP64's 51 GB/s over 4 nodes, 3.5 remote,
44.6 GB/s: 0.91 / 0.93 of the 48 GB/s NCCL reaches on the same NIC (links.yaml ib-ndr); the mean of the two."""


def deepep_rates(r: LinkRates) -> LinkRates:
    """The link rates DeepEP's kernels reach: `r`'s bus bandwidths x DEEPEP_NVLINK_OVER_BUSBW in the scale-up domain
    and DEEPEP_RDMA_OVER_BUSBW across it; latencies as NCCL's."""
    return replace(r, bw_in=r.bw_in * DEEPEP_NVLINK_OVER_BUSBW, bw_out=r.bw_out * DEEPEP_RDMA_OVER_BUSBW)


def p_no_expert_in(experts_there: np.ndarray | float, n_experts: int, top_k: int) -> np.ndarray:
    """Probability that a token's top_k distinct experts (uniform among n_experts) miss all `experts_there` experts
    of one rank or node: C(E - e, k) / C(E, k) = prod_{i<k} (E - e - i) / (E - i) (hypergeometric)."""
    e = np.asarray(experts_there, dtype=float)
    p = np.ones_like(e)
    for i in range(top_k):
        p = p * np.maximum(n_experts - e - i, 0.0) / (n_experts - i)
    return p


def dedup_copies(n_experts: int, top_k: int, n_in: np.ndarray, n_out: np.ndarray,
                 max_nodes: np.ndarray | float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(RDMA, NVLink) copies a deduplicating dispatcher sends per token, over an EP group of n_out nodes x n_in GPUs.

    RDMA: one per destination node other than the token's own: (n_out - 1) / n_out of the nodes hit,
    n_out (1 - P(no expert in a node's E / n_out)), at most `max_nodes` (node-limited routing, e.g. DeepSeek-V3's
    4 of 8 groups; None: no limit). NVLink: one per destination GPU other than the one the token lands on in its node
    (the source GPU in its own node, the RDMA receiver in another): (n_in - 1) / n_in of the GPUs hit,
    ep (1 - P(no expert in a GPU's E / ep))."""
    n_in = np.asarray(n_in, dtype=float)
    n_out = np.asarray(n_out, dtype=float)
    ep = n_in * n_out
    nodes_hit = n_out * (1.0 - p_no_expert_in(n_experts / n_out, n_experts, top_k))
    if max_nodes is not None:
        nodes_hit = np.minimum(nodes_hit, max_nodes)
    gpus_hit = ep * (1.0 - p_no_expert_in(n_experts / ep, n_experts, top_k))
    rdma = np.where(n_out > 1, nodes_hit * (n_out - 1.0) / n_out, 0.0)
    nvlink = gpus_hit * (n_in - 1.0) / n_in
    return rdma, nvlink


def dedup_all_to_all_s(token_bytes: np.ndarray, n_experts: int, top_k: int, n_in: np.ndarray, n_out: np.ndarray,
                       r: LinkRates, max_nodes: np.ndarray | float | None = None) -> np.ndarray:
    """One DeepEP / HybridEP dispatch (or combine) of `token_bytes` (tokens per rank x hidden x bytes per element):
    the RDMA and NVLink copies of dedup_copies, pipelined, so the slower link sets the time (DeepEP README
    "bottleneck bandwidth"), plus one latency per peer node (lat_out) and per peer GPU in the node (lat_in)."""
    rdma, nvlink = dedup_copies(n_experts, top_k, n_in, n_out, max_nodes)
    n_in = np.asarray(n_in, dtype=float)
    n_out = np.asarray(n_out, dtype=float)
    transfer = np.maximum(rdma * token_bytes / r.bw_out, nvlink * token_bytes / r.bw_in)
    latency = np.maximum(n_out - 1.0, 0.0) * r.lat_out + np.maximum(n_in - 1.0, 0.0) * r.lat_in
    return np.where(n_in * n_out > 1, transfer + latency, 0.0)


def dispatcher_slowdown(L: LayoutArrays, sm_count: int, nccl_slowdown: np.ndarray | float) -> np.ndarray:
    """Compute slowdown beside the dispatcher's kernels: SMs / (SMs - DISPATCHER_SMS) for DeepEP / HybridEP (the
    ideal wave count on the SMs left, as compute.comm_sm_slowdown without a GEMM shape model; 1 without an SM
    count), `nccl_slowdown` (the layer's, beside NCCL CTAs) for the NCCL all-to-all."""
    out = np.broadcast_to(np.asarray(nccl_slowdown, dtype=float), np.shape(L.moe_dispatcher)).copy()
    for code, sms in DISPATCHER_SMS.items():
        if sm_count > sms:
            out = np.where(L.moe_dispatcher == code, sm_count / (sm_count - sms), out)
    return out


def combined_1f1b_unmerged_share(L: LayoutArrays) -> np.ndarray:
    """Share of a rank's forward (and backward) chunk passes that Megatron-Core's combined 1F1B schedule runs alone,
    not merged with another micro-batch's backward (forward): the warm-up forwards and the cool-down backwards.
    pp = 1 (combined_1f1b_schedule_for_no_pipelining): the first forward and the last backward, 1 of m.
    Interleaved (schedules.py get_pp_rank_microbatches, rank 0, microbatch_group_size_per_vp_stage = pp):
    (pp - 1) x 2 + (vpp - 1) x pp + 1 warm-up passes (the + 1 is the a2a overlap's) of m x vpp, at most all."""
    m = L.microbatches
    interleaved = np.minimum(L.interleaved_warmup_passes() + 1.0, m * L.vpp) / (m * L.vpp)
    return np.where(L.pp > 1, interleaved, 1.0 / m)


def merged_layer_exposed_s(a2a_s: np.ndarray, rest_forward_s: np.ndarray, rest_backward_s: np.ndarray,
                           experts_forward_s: np.ndarray, experts_backward_s: np.ndarray) -> np.ndarray:
    """All-to-all time one merged MoE layer pair leaves exposed: the time of Megatron-Core's
    TransformerLayerSchedulePlan.run (megatron/core/models/common/model_chunk_schedule_plan.py) for one layer's
    forward (f, one micro-batch) and another's backward (b) minus their compute. Two streams, each in issue order:
    communication b.combine_bwd, f.dispatch, b.dispatch_bwd, f.combine; compute f.attn (the layer's non-expert
    forward), b.mlp dgrad, b.mlp wgrad (backward_dw), f.mlp, b.attn (non-expert backward); each waits for what it
    consumes: b.mlp for b.combine_bwd, f.dispatch for f.attn, b.dispatch_bwd for b.mlp dgrad, f.mlp for f.dispatch,
    f.combine for f.mlp, b.attn for b.dispatch_bwd. The experts' backward splits evenly into dgrad and wgrad (two
    GEMMs of equal FLOPs per linear). `a2a_s`: one all-to-all (all four equal)."""
    c = np.asarray(a2a_s, dtype=float)
    half_b = 0.5 * np.asarray(experts_backward_s, dtype=float)
    start = np.maximum(rest_forward_s, c)  # f.dispatch after f.attn and b.combine_bwd; b.mlp after b.combine_bwd
    dispatch_f_end = start + c
    dgrad_end = start + half_b
    dispatch_b_end = np.maximum(dispatch_f_end, dgrad_end) + c
    mlp_f_end = np.maximum(dgrad_end + half_b, dispatch_f_end) + experts_forward_s
    combine_f_end = np.maximum(dispatch_b_end, mlp_f_end) + c
    attn_b_end = np.maximum(mlp_f_end, dispatch_b_end) + rest_backward_s
    compute = rest_forward_s + experts_backward_s + experts_forward_s + rest_backward_s
    return np.maximum(combine_f_end, attn_b_end) - compute


def a2a_overlap_exposed_s(ep_s: np.ndarray, rest_forward_s: np.ndarray, rest_backward_s: np.ndarray,
                          experts_forward_s: np.ndarray, experts_backward_s: np.ndarray, unmerged: np.ndarray,
                          overlap: float, slowdown: np.ndarray | float) -> np.ndarray:
    """One MoE layer's all-to-all time per micro-batch under the 1F1B all-to-all overlap
    (--overlap-moe-expert-parallel-comm; megatron/core/pipeline_parallel/combined_1f1b.py runs a forward chunk and
    another micro-batch's backward chunk merged layer by layer, each all-to-all on the communication stream).

    Merged passes leave merged_layer_exposed_s exposed (its four all-to-alls of ep_s / 4 each), as far as `overlap`
    (the measured comm/compute overlap) allows, and the compute the hidden part runs beside is slowed by the SMs the
    communication kernels hold (comm.interference_s at `slowdown`). The `unmerged` share of passes
    (combined_1f1b_unmerged_share: warm-up forwards, cool-down backwards) exposes its all-to-alls whole."""
    merged_exposed = merged_layer_exposed_s(0.25 * ep_s, rest_forward_s, rest_backward_s, experts_forward_s,
                                            experts_backward_s)
    exposed = overlap * merged_exposed + (1.0 - overlap) * ep_s
    hidden = ep_s - exposed
    compute = rest_forward_s + rest_backward_s + experts_forward_s + experts_backward_s
    merged = exposed + comm.interference_s(hidden, compute, slowdown)
    return unmerged * ep_s + (1.0 - unmerged) * merged
