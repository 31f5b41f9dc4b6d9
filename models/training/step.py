"""Step time of a training layout: pipeline of per-layer compute and communication, bubble, data-parallel
gradient traffic with the part hidden under backward, optimizer step. Vectorised over LayoutArrays.

Mesh order (torchtitan): pp, dp_replicate, dp_shard, cp, tp with tp innermost, so a group's stride is the
product of the degrees inside it; each collective is priced on the links its group actually crosses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware import comm
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import (
    OPT_ADAM_MASTER,
    OPT_SGD,
    SCHEDULE_INTERLEAVED,
    SCHEDULE_ZB,
    LayoutArrays,
)
from clusterplan.models.training.collectives import (
    Collectives,
    activation_bytes,
    ep_collectives,
    pipeline_p2p,
    tp_collectives,
)
from clusterplan.models.training.compute import head_time, layer_time, model_flops_per_step
from clusterplan.models.training.memory import StageLayers, bytes_per_param, stage_layers, stage_params

# Share of backward compute under which data-parallel gradient traffic can hide (bucketed overlap, as
# Megatron-Core's overlap_grad_reduce and FSDP2 do; Galvatron models the residual slowdown with 1.3x).
DP_OVERLAP_SHARE = 0.8


@dataclass(frozen=True, slots=True)
class Group:
    size: np.ndarray
    stride: np.ndarray


def _collective(kind: str, size_bytes: np.ndarray, g: Group, hw: HardwareRates) -> np.ndarray:
    """Time of one collective over a mesh-axis group, flat inside a scale-up domain, ring across nodes.

    Across nodes, NCCL runs one ring per NIC rail, so the group's bus bandwidth is its n_in GPUs' share of the node
    NICs, capped by the scale-up link: min(bw_in, n_in * bw_out) (8 x HDR -> 192 GB/s, NVIDIA/nccl#1576).
    """
    n_in, n_out = comm.split_group(g.size, g.stride, hw.domain)
    inside = n_out <= 1
    r = hw.link(kind)
    bw = np.where(inside, r.bw_in, np.minimum(r.bw_in, n_in * r.bw_out))
    lat = np.where(inside, r.lat_in, r.lat_out)
    fn = {"all_reduce": comm.all_reduce_s, "all_gather": comm.all_gather_s,
          "reduce_scatter": comm.reduce_scatter_s, "all_to_all": comm.all_to_all_s}[kind]
    return np.where(g.size > 1, fn(size_bytes, g.size, bw, lat), 0.0)


def _p2p(size_bytes: np.ndarray, n_out: np.ndarray, hw: HardwareRates) -> np.ndarray:
    """One send/recv between two ranks, across nodes when the pair spans domains (n_out > 1)."""
    r = hw.link("send_recv")
    return comm.p2p_s(size_bytes, np.where(n_out > 1, r.bw_out, r.bw_in), np.where(n_out > 1, r.lat_out, r.lat_in))


def _priced(collectives: tuple[Collectives, ...], g: Group, hw: HardwareRates) -> np.ndarray:
    """Time of every call of `collectives` over the group, one after another."""
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
    pp_comm_s: np.ndarray
    dp_comm_s: np.ndarray
    bubble_s: np.ndarray
    optimizer_s: np.ndarray
    model_flops: np.ndarray
    hardware_flops: np.ndarray


def _layer_comm(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, moe: bool, core_s: np.ndarray):
    """(tp, cp, ep) exposed communication of one layer per micro-batch, forward + backward (+ recompute)."""
    tokens = L.seq * L.mbs / L.cp
    act = activation_bytes(L)
    tp_group = Group(L.tp, np.ones_like(L.tp))
    # Megatron TP / SP per layer (collectives.py; tests/test_validate_collectives.py counts them in torch).
    tp = _priced(tp_collectives(shapes, L), tp_group, hw)
    cp_group = Group(L.cp, L.tp)
    # Ring attention: cp-1 exchanges of this rank's K/V forward, K/V + their grads backward, overlapped with the
    # attention core (Liu et al. 2023); Ulysses: 4 all-to-alls of q,k,v,out forward and 4 backward (Jacobs 2023).
    kv_bytes = act * tokens * shapes.kv_dim / L.tp
    n_in, n_out = comm.split_group(L.cp, L.tp, hw.domain)
    ring_step = _p2p(kv_bytes, n_out, hw)
    o = hw.comm_overlap
    ring = comm.exposed_s((L.cp - 1) * ring_step, core_s, o) + comm.exposed_s(2 * (L.cp - 1) * ring_step, 2.5 * core_s, o)
    a2a_bytes = act * tokens * (shapes.q_dim + shapes.kv_dim + shapes.v_dim) / L.tp
    ulysses = 2 * _collective("all_to_all", a2a_bytes, cp_group, hw) * 4 / 3
    cp = np.where(L.cp > 1, np.where(L.cp_kind == 1, ulysses, ring), 0.0)
    ep = np.zeros_like(tp)
    if moe:
        # Dispatch + combine all-to-all forward and backward (collectives.py ep_collectives).
        ep = _priced((ep_collectives(shapes, L),), Group(L.ep, np.ones_like(L.ep)), hw)
    return tp, cp, ep


@dataclass(frozen=True, slots=True)
class LayerCost:
    """One average layer (dense and MoE layers mixed by their share) per micro-batch, forward + backward."""

    compute_s: np.ndarray
    tp_s: np.ndarray
    cp_s: np.ndarray
    ep_s: np.ndarray
    hardware_flops: np.ndarray
    forward_s: np.ndarray
    backward_s: np.ndarray
    head_s: np.ndarray
    """LM head and loss, forward + backward (last stage only)."""
    embed_tp_s: np.ndarray
    """Vocabulary-parallel embedding's all-reduce of its output, forward (first stage; 0 without tp)."""
    head_tp_s: np.ndarray
    """LM head: all-reduce of its input's gradient, backward, and the vocabulary-parallel cross-entropy's three
    all-reduces of one float per token (max, target logit, sum of exponentials; Megatron-LM) (last stage)."""

    @property
    def total_s(self) -> np.ndarray:
        return self.compute_s + self.tp_s + self.cp_s + self.ep_s


def layer_cost(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates) -> LayerCost:
    moe_share = shapes.moe_fraction
    dense = layer_time(shapes, L, hw, False)
    compute = (1 - moe_share) * (dense.forward_s + dense.backward_s + dense.recompute_s)
    flops = (1 - moe_share) * dense.hardware_flops
    tp_d, cp_d, _ = _layer_comm(shapes, L, hw, False, dense.core_forward_s)
    tp, cp, ep = (1 - moe_share) * tp_d, (1 - moe_share) * cp_d, np.zeros_like(tp_d)
    if moe_share:
        sparse = layer_time(shapes, L, hw, True)
        compute = compute + moe_share * (sparse.forward_s + sparse.backward_s + sparse.recompute_s)
        flops = flops + moe_share * sparse.hardware_flops
        tp_s, cp_s, ep_s = _layer_comm(shapes, L, hw, True, sparse.core_forward_s)
        tp, cp, ep = tp + moe_share * tp_s, cp + moe_share * cp_s, moe_share * ep_s
    head_f, head_b = head_time(shapes, L, hw)
    # Eager layers (validate's runs, with a calibration's `layer` section): unfused kernels scale the compute,
    # DTensor dispatch adds a fixed time per tensor-parallel layer; 1 and 0 otherwise.
    compute = hw.layer_time_factor * compute
    tp = tp + np.where(L.tp > 1, hw.tp_layer_overhead_s, 0.0)
    embed_tp, head_tp = _ends_tp_comm(shapes, L, hw)
    return LayerCost(compute_s=compute, tp_s=tp, cp_s=cp, ep_s=ep, hardware_flops=flops,
                     forward_s=dense.forward_s, backward_s=dense.backward_s, head_s=head_f + head_b,
                     embed_tp_s=embed_tp, head_tp_s=head_tp)


def _ends_tp_comm(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates) -> tuple[np.ndarray, np.ndarray]:
    """(embedding, head) TP traffic per micro-batch: the vocabulary-parallel embedding all-reduces its output; the
    LM head all-reduces its input's gradient and the cross-entropy 3 floats per token (Megatron-LM)."""
    tokens = L.seq * L.mbs / L.cp
    tp_group = Group(L.tp, np.ones_like(L.tp))
    embed = _collective("all_reduce", activation_bytes(L) * tokens * shapes.hidden, tp_group, hw)
    return embed, embed + 3 * _collective("all_reduce", 4.0 * tokens, tp_group, hw)


def step_time(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates) -> StepTime:
    """Predicted time of one optimizer step with every term separate (they add up to step_s)."""
    m = L.microbatches
    layers = stage_layers(shapes, L)
    cost = layer_cost(shapes, L, hw)
    # Per micro-batch time of each stage (the last, or the only one, also runs the LM head and loss); the slowest
    # stage sets the pipeline's pace.
    single = L.pp == 1
    first_tp = cost.embed_tp_s + np.where(single, cost.head_tp_s, 0.0)
    first = layers.first * cost.total_s + np.where(single, cost.head_s, 0.0) + first_tp
    middle = layers.middle * cost.total_s
    last = layers.last * cost.total_s + cost.head_s + cost.head_tp_s
    slowest = np.argmax(np.stack([first, middle, last]), axis=0)  # 0 first, 1 middle, 2 last
    stage = np.choose(slowest, [first, middle, last])
    slow_layers = np.choose(slowest, [layers.first, layers.middle, layers.last])
    slow_head = np.where(single | (slowest == 2), cost.head_s, 0.0)
    slow_ends_tp = np.choose(slowest, [first_tp, np.zeros_like(first_tp), cost.head_tp_s])
    # Pipeline p2p: activations b*s*h (scatter-gather over tp, Narayanan 2021 section 4.1) per chunk boundary.
    pp_group_inner = L.dp * L.cp * L.tp
    n_in, n_out = comm.split_group(2.0, pp_group_inner, hw.domain)
    boundary = pipeline_p2p(shapes, L)  # 2 sends per boundary and micro-batch (collectives.py)
    p2p = _p2p(boundary.size_bytes, n_out, hw)
    pp_comm = np.where(single, 0.0, boundary.calls * (m * L.vpp + L.pp - 1) * p2p)
    # Bubble: (pp-1) stage times for GPipe/1F1B, / vpp interleaved (Narayanan 2021); ZB-H1 removes the
    # weight-gradient third of backward from it (Qi et al. 2023): (pp-1)(t_f + t_b/2).
    bubble_stages = np.where(L.schedule == SCHEDULE_INTERLEAVED, (L.pp - 1) / L.vpp, L.pp - 1.0)
    zb_factor = np.where(L.schedule == SCHEDULE_ZB, 2.0 / 3.0, 1.0)
    # On a CPU shared by k rank threads per core (calibrated with every rank busy), ranks idle in the bubble lend
    # their cores to the busy ones: a stage's m micro-batches plus its bubble take (m + bubble) / k busy-rank times,
    # and only what exceeds m is lost; k = 1 (GPUs) is the usual bubble.
    k = hw.host_oversubscription
    bubble = np.where(single, 0.0, stage * np.maximum(0.0, (m + bubble_stages * zb_factor) / k - m))
    dp_exposed = _dp_exposed(shapes, L, hw, slow_layers, cost.forward_s, cost.backward_s)
    opt = _optimizer_s(shapes, L, hw, layers)
    compute = m * (slow_layers * cost.compute_s + slow_head)
    tp_total, cp_total, ep_total = (m * slow_layers * x for x in (cost.tp_s, cost.cp_s, cost.ep_s))
    tp_total = tp_total + m * slow_ends_tp
    step = compute + tp_total + cp_total + ep_total + pp_comm + bubble + dp_exposed + opt
    # Executed FLOPs over all GPUs: per-rank layer FLOPs x tp x cp ranks sharing a micro-batch, plus the LM head.
    hardware = L.gbs / L.mbs * (cost.hardware_flops * shapes.n_layers * L.tp * L.cp
                                + 6.0 * L.mbs * L.seq * shapes.vocab * shapes.hidden)
    return StepTime(step_s=step, compute_s=compute, tp_comm_s=tp_total, cp_comm_s=cp_total, ep_comm_s=ep_total,
                    pp_comm_s=pp_comm, dp_comm_s=dp_exposed, bubble_s=bubble, optimizer_s=opt,
                    model_flops=model_flops_per_step(shapes, L), hardware_flops=hardware)


def _dp_exposed(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, slow_layers: np.ndarray,
                layer_f: np.ndarray, layer_b: np.ndarray) -> np.ndarray:
    """Data-parallel traffic left exposed after overlap: gradient all-reduce (ZeRO-0), reduce-scatter + weight
    all-gather (ZeRO-1/2, Megatron distributed optimizer) hidden under the last micro-batch's backward; ZeRO-3
    gathers weights per layer in forward and backward and reduce-scatters gradients, each under that layer's compute
    (with pp > 1 once per step, see below)."""
    _, gb, _ = bytes_per_param(L)
    params = stage_params(shapes, L, slow_layers, L.pp == 1, L.pp == 1)
    shard = Group(L.dp_shard * L.cp, L.tp)
    replicate = Group(L.dp_replicate, L.tp * L.cp * L.dp_shard)
    compute_wb = activation_bytes(L)
    dense_grad = params.dense * gb
    expert_grad = params.expert * gb
    edp = Group(np.maximum(1.0, L.dp_shard * L.cp * L.tp / (L.ep * L.etp)), L.ep * L.etp)
    rs = _collective("reduce_scatter", dense_grad, shard, hw) + _collective("reduce_scatter", expert_grad, edp, hw)
    ag = (_collective("all_gather", params.dense * compute_wb, shard, hw)
          + _collective("all_gather", params.expert * compute_wb, edp, hw))
    ar = _collective("all_reduce", dense_grad, shard, hw) + _collective("all_reduce", expert_grad, edp, hw)
    hsdp = _collective("all_reduce", (params.dense + params.expert) * gb / (L.dp_shard * L.cp), replicate, hw)
    zero12 = np.where(L.zero == 0, ar, rs + ag) + hsdp
    o = hw.comm_overlap  # measured by `clusterplan profile` (1 without a calibration)
    under_s = DP_OVERLAP_SHARE * slow_layers * layer_b
    exposed12 = comm.exposed_s(zero12, under_s, o)
    # ZeRO-3 / FSDP: per layer and micro-batch, all-gather under forward, all-gather + reduce-scatter (+ HSDP's
    # all-reduce of the shard across replicas, FSDP2's post-backward) under backward.
    n = np.maximum(slow_layers, 1.0)
    ag_layer, rs_layer, hsdp_layer = ag / n, rs / n, hsdp / n
    per_layer = comm.exposed_s(ag_layer, layer_f, o) + comm.exposed_s(ag_layer + rs_layer + hsdp_layer, layer_b, o)
    # Each parameter tensor is its own ring collective (DeepSpeed ZeRO-3 granularity): (n-1) latency steps each for
    # the forward gather, the recompute gather and the backward gather + reduce-scatter, which bandwidth overlap
    # cannot hide. This is what makes ZeRO-3 fall behind as dp grows (Narayanan 2021 Table 2).
    n_in, n_out = comm.split_group(shard.size, shard.stride, hw.domain)
    ag_link = hw.link("all_gather")
    step_lat = np.where(n_out > 1, ag_link.lat_out, ag_link.lat_in)
    per_collective_lat = shapes.tensors_per_layer * (shard.size - 1) * step_lat
    latency = (3.0 + np.where(L.recompute == 2, 1.0, 0.0)) * per_collective_lat
    exposed3 = L.microbatches * slow_layers * (per_layer + latency)
    # Under pp > 1 (torch.distributed.pipelining, torchtitan) a stage gathers its weights once, in the first
    # micro-batch's forward, and reduce-scatters once, after the last backward (its REDUCE_GRAD step, exposed).
    once = comm.exposed_s(ag_layer, layer_f, o) + rs_layer + hsdp_layer + 2.0 * per_collective_lat
    exposed3 = np.where(L.pp > 1, slow_layers * once, exposed3)
    return np.where(L.dp * L.cp > 1, np.where(L.zero == 3, exposed3, exposed12), 0.0)


def _optimizer_s(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, layers: StageLayers) -> np.ndarray:
    """Optimizer step streams its states through HBM once: Adam with master weights reads/writes ~32 B/param."""
    params = stage_params(shapes, L, layers.first, True, L.pp == 1)
    shard = np.where(L.zero >= 1, L.dp_shard * L.cp, 1.0)
    per_param = np.select([L.optimizer == OPT_SGD, L.optimizer == OPT_ADAM_MASTER], [8.0, 32.0], 24.0)
    return (params.dense + params.expert) / shard * per_param / hw.hbm_bytes_per_s
