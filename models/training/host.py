"""Host (CPU launch) time a layer leaves exposed per micro-batch: the GPU waits on the CPU that issues its kernels.

Dense layers (dense_host_exposed_s): an eager dense layer has no host-device sync between the step's ends (stacks.yaml
dense_host, with its sources), so the host runs ahead of the GPU and its issue time shows only where it exceeds the GPU
time of the same work: exposed = max(0, host - GPU) per layer and micro-batch, the two-stage pipeline below with no
sync inside the step (the layers repeat, so the per-layer excess is the step's). The host time is the layer's calls
(kernel launches, ATen calls that launch nothing, Triton launches, autograd.Function applies) at the host CPU's time
per call; under full recompute the backward re-issues the forward's calls. Small layers over wide tensor parallelism at
one sequence per micro-batch are where this binds (research/nanotron-host.md).

MoE layers:

An eager MoE layer issues a few hundred small ops (router, aux loss, permutes, and per local expert a quantize and a
GEMM per linear in Transformer Engine's GroupedLinear), and Megatron-Core's token dispatcher copies the all-to-all
split sizes to the host and synchronises once per layer forward (stacks.yaml moe_host, with its sources). After that
sync the GPU queue is empty: the GPU runs each kernel only once the host has issued it. Within the stretch between two
syncs the host and the GPU form a two-stage pipeline over the layer's phases p (Lazowska et al. 1984, "Quantitative
System Performance", ch. 3: a closed chain of two servers; here with a fixed sequence of jobs):

    host_end_p = host_end_(p-1) + h_p
    gpu_end_p  = max(gpu_end_(p-1) + g_p, host_end_p + g_p / n_p)

with h_p the phase's host time (ops x the host's time per op), g_p its GPU time and n_p its kernels (the last one can
start only when issued). The stretch lasts gpu_end of its last phase; what exceeds the GPU's own sum of g_p is the
exposed host time. Phases in issue order, forward (from the dispatcher's sync to the next layer's): dispatch all-to-all,
experts, combine all-to-all, then the next layer's attention, router and dispatch preprocess up to its sync. With full
recompute the backward of a layer starts by re-running its forward (the sync included), so backward stretches are
[recomputed dispatch, experts, combine, combine backward, experts backward, dispatch backward, attention/router
backward, the previous layer's recomputed attention/router]. Without recompute backward has no sync: the host may run
ahead, and only what its total exceeds the GPU's total is exposed.

Under Megatron-Core's 1F1B all-to-all overlap (Layout.moe_a2a_overlap) a merged pass issues one micro-batch's layer
forward and another micro-batch's layer backward from the one Python thread (TransformerLayerSchedulePlan.run,
megatron/core/models/common/model_chunk_schedule_plan.py: f.attn, b.combine_bwd, f.dispatch, b.mlp, b.dispatch_bwd,
f.mlp, f.combine, b.attn), so each forward's dispatcher sync also ends the backward's head start: a merged pass is one
stretch [combine backward, dispatch, experts backward, dispatch backward, experts forward, combine, the rest backward,
the next layer's rest forward up to its sync], and the backward's host time no longer hides behind the whole backward.
The warm-up and cool-down passes the schedule runs alone (dispatch.combined_1f1b_unmerged_share) keep the unmerged
pricing. That the overlap costs host time is what NVIDIA reports: Megatron-Bridge PR #1760 ("Disable moe_a2a_overlap
due to CPU overhead", Qwen3-235B on DGX-B200: 20.1 -> 16.9 s per step with VP also turned off), Megatron-LM PR #2168
("EP Overlap brings extra cpu overhead and may cause GPU bubble during execution").

Not priced: the host side of Megatron-Core's selective `moe` recompute module, whose backward re-runs the MoE block
from its router (dispatch sync included; its all-to-alls are priced, collectives.ep_collectives). A stretch
[dispatch, experts, combine, combine backward, experts backward, dispatch backward, rest backward] from that sync
moves the H100 Nemotron 3 Nano fp8 rows from -1.7 / -3.1 % to -11.7 / -13.0 % and the ModelZoo long-context rows by
0.3 points: its size rests on the per-expert fp8 host op counts above, which no trace has checked
(research/moe-host-evidence.md C), so it waits for one.

Token-dropping layers (Layout.moe_capacity_factor, the dispatcher's drop-and-pad path) have no sync: their host
time is priced as the no-sync case above. CUDA graphs (Layout.cuda_graphs): "full" captures the whole iteration (no
host time, no sync); "attn" replays the attention block as one graph launch per pass. A stack without moe_host data prices nothing here. Vectorised over
LayoutArrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from clusterplan.hardware_db.stacks import DenseHost, ExecutionStack, MoeHost
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import PREC_FP8, CudaGraphsCode, LayoutArrays, RecomputeCode
from clusterplan.models.training.dispatch import combined_1f1b_unmerged_share
from clusterplan.models.training.moe_layer import fp8_align_rows, fp8_padding_skipped

ALL_TO_ALL_KERNELS = 1.0
"""The dispatch / combine phase's GPU time is one all-to-all kernel (NCCL all_to_all_single)."""
GRAPH_LAUNCH_OPS = 1.0
"""A captured graph is replayed by one cudaGraphLaunch: counted as one op."""


@dataclass(frozen=True, slots=True)
class Phase:
    host_s: np.ndarray
    gpu_s: np.ndarray
    kernels: np.ndarray | float


@dataclass(frozen=True, slots=True)
class MoeGpuTimes:
    """GPU seconds of one MoE layer per micro-batch, split as the host phases split it."""

    experts_forward_s: np.ndarray
    experts_backward_s: np.ndarray
    rest_forward_s: np.ndarray
    """Everything else of the layer's forward: attention, norms, router, permutes."""
    rest_backward_s: np.ndarray
    all_to_all_s: np.ndarray
    """One token all-to-all (dispatch or combine, either direction)."""


def pipeline_s(phases: list[Phase]) -> np.ndarray:
    """Seconds from a sync (host and GPU both idle) until the GPU ends the last phase (module docstring)."""
    host = gpu = np.zeros_like(np.asarray(phases[0].gpu_s, dtype=float))
    for p in phases:
        host = host + p.host_s
        gpu = np.maximum(gpu + p.gpu_s, host + p.gpu_s / np.maximum(p.kernels, 1.0))
    return gpu


CURRENT_SCALING_RECIPE = "tensorwise"
"""The fp8 recipe whose expert splits quantise one by one in several launches (stacks.yaml split_quantize_ops)."""


def split_quantize_extra_ops(h: MoeHost, fp8_recipe: str | None, fp8_all_layouts: bool) -> float:
    """Host ops one expert split's fp8 quantisation costs beyond the count the per-expert fp8 ops include
    (stacks.yaml moe_host split_quantize_ops): per-tensor current scaling's memset, amax, scale and cast launches
    and its data / scale_inv allocations, plus the transpose's where fp8 GEMMs are TN only; 0 for other recipes."""
    if fp8_recipe != CURRENT_SCALING_RECIPE:
        return 0.0
    transpose = 0.0 if fp8_all_layouts else h.transpose_allocation_ops
    return h.split_quantize_ops[CURRENT_SCALING_RECIPE] + transpose - h.split_quantize_ops["fp8"]


def phase_ops(h: MoeHost, shapes: ModelShapes, L: LayoutArrays, fp8_recipe: str | None = None,
              fp8_all_layouts: bool = False) -> dict[str, np.ndarray]:
    """Host ops of each phase of one MoE layer, forward and backward (stacks.yaml moe_host counts), for the
    stack's fp8 recipe (None: the recipe-independent count) on a GPU whose fp8 GEMMs take every layout or not."""
    fp8 = L.precision == PREC_FP8
    te = h.te_module_ops * np.where(fp8, h.te_fp8_factor, 1.0)
    local = shapes.n_experts / L.ep
    # Forward quantises each expert linear's input split, backward its output gradient's (split_quantize_extra_ops).
    quantize = split_quantize_extra_ops(h, fp8_recipe, fp8_all_layouts)
    linear_f = np.where(fp8, h.expert_linear_ops["fp8"] + quantize, h.expert_linear_ops["bf16"])
    linear_b = np.where(fp8, h.expert_linear_backward_ops["fp8"] + quantize, h.expert_linear_backward_ops["bf16"])
    modules = h.attention_te_modules["mla" if shapes.mla_up_proj else "gqa"]
    modules += h.qk_norm_te_modules if shapes.qk_norm else 0.0
    attention = modules * te + h.attention_ops
    attention = np.where(L.cuda_graphs == CudaGraphsCode.ATTN, GRAPH_LAUNCH_OPS, attention)
    rest = attention + h.router_te_modules * te + h.router_ops
    experts = h.experts_te_modules * te + h.experts_ops
    if shapes.shared_ffn:  # the shared experts run beside the routed ones (SharedExpertMLP)
        experts = experts + h.shared_experts_te_modules * te + h.shared_experts_ops
    # fp8: the experts' padding / unpadding calls (stacks.yaml moe_host fp8_padding_*; moe_layer.fp8_padding_bytes).
    # Drop-and-pad with aligned splits: TE returns the input untouched (moe_layer.fp8_padding_skipped; the two
    # module calls that find nothing to pad are left out).
    padded = fp8 & ~fp8_padding_skipped(shapes, L, fp8_align_rows(fp8_recipe))
    pad_f = np.where(padded, h.fp8_padding_ops, 0.0)
    pad_b = np.where(padded, h.fp8_padding_backward_ops + local * h.fp8_padding_backward_ops_per_expert, 0.0)
    return {"dispatch": np.full_like(local, h.dispatch_ops), "combine": np.full_like(local, h.combine_ops),
            "rest": rest, "experts_forward": experts + 2.0 * local * linear_f + pad_f,
            "experts_backward": experts + 2.0 * local * linear_b + pad_b}


def stack_fp8_recipe(stack: ExecutionStack) -> str | None:
    """The fp8 recipe the stack runs (its first; estimate puts a requested recipe first), None without fp8."""
    return stack.fp8_recipes[0] if stack.fp8_recipes else None


def moe_host_exposed_s(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, stack: ExecutionStack,
                       gpu: MoeGpuTimes) -> np.ndarray:
    """Exposed host seconds of one MoE layer per micro-batch (forward, recompute and backward), as the module
    docstring derives it; 0 under full-iteration CUDA graphs or for a stack without moe_host data."""
    h = stack.moe_host
    if h is None:
        return np.zeros_like(gpu.rest_forward_s)
    op_s = h.op_s[hw.host_cpu]
    ops = phase_ops(h, shapes, L, stack_fp8_recipe(stack), hw.fp8_all_layouts)
    a2a = gpu.all_to_all_s

    def phase(name: str, gpu_s: np.ndarray, kernels: np.ndarray | float | None = None) -> Phase:
        return Phase(ops[name] * op_s, gpu_s, ops[name] if kernels is None else kernels)

    # The all-to-all phases' GPU time is the one NCCL kernel's: it starts only when issued.
    dispatch, combine = phase("dispatch", a2a, ALL_TO_ALL_KERNELS), phase("combine", a2a, ALL_TO_ALL_KERNELS)
    experts_f, experts_b = phase("experts_forward", gpu.experts_forward_s), phase("experts_backward",
                                                                                 gpu.experts_backward_s)
    rest_f, rest_b = phase("rest", gpu.rest_forward_s), phase("rest", gpu.rest_backward_s)
    forward_phases = [dispatch, combine, experts_f, rest_f]
    backward_phases = [combine, experts_b, dispatch, rest_b]
    gpu_f = sum(p.gpu_s for p in forward_phases)
    gpu_b = sum(p.gpu_s for p in backward_phases)
    # No sync anywhere: the host runs ahead; only its excess over the GPU shows.
    forward = np.maximum(0.0, sum(p.host_s for p in forward_phases) - gpu_f)
    with_recompute = forward + np.maximum(0.0, sum(p.host_s for p in backward_phases) - gpu_b)
    if h.dispatcher_sync:
        # The drop-and-pad path (Layout.moe_capacity_factor) has fixed, equal splits and returns from
        # MoEAlltoAllTokenDispatcher.preprocess before any device-to-host copy (cuda_sync_point stays "no_sync"):
        # only the dropless rows sync.
        sync = ~L.token_drop
        forward = np.where(sync, pipeline_s([dispatch, experts_f, combine, rest_f]) - gpu_f, forward)
        with_recompute = np.where(sync, pipeline_s([dispatch, experts_f, combine, combine, experts_b, dispatch,
                                                    rest_b, rest_f]) - gpu_f - gpu_b, with_recompute)
    backward = np.maximum(0.0, sum(p.host_s for p in backward_phases) - gpu_b)
    full = L.recompute == RecomputeCode.FULL
    share = L.full_recompute_share(shapes.n_layers)  # recompute_layers of a rank's layers recompute
    exposed = forward + share * with_recompute + (1.0 - share) * backward
    if h.dispatcher_sync and np.any(L.moe_a2a_overlap > 0):
        merged = np.maximum(0.0, pipeline_s([combine, dispatch, experts_b, dispatch, experts_f, combine, rest_b,
                                             rest_f]) - gpu_f - gpu_b)
        alone = combined_1f1b_unmerged_share(L)
        exposed = np.where((L.moe_a2a_overlap > 0) & ~L.token_drop & ~full,
                           alone * exposed + (1.0 - alone) * merged, exposed)
    return np.where(L.cuda_graphs == CudaGraphsCode.FULL, 0.0, np.maximum(exposed, 0.0))


def dense_layer_calls(h: DenseHost, tp: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Host calls of one dense layer per micro-batch, forward and backward, by kind (stacks.yaml dense_host): the tp1
    row at tp 1, the tp2 row at tp 2 (every rank ends the TP group), the tp_middle row at tp >= 3 (the step waits on
    the slowest rank, a middle one, at every collective)."""
    def pick(rows: Mapping[str, Mapping[str, float]]) -> dict[str, np.ndarray]:
        return {k: np.where(tp <= 1, rows["tp1"][k], np.where(tp == 2, rows["tp2"][k], rows["tp_middle"][k]))
                for k in rows["tp1"]}
    return pick(h.forward), pick(h.backward)


def dense_layer_host_s(h: DenseHost, tp: np.ndarray, host_cpu: str) -> tuple[np.ndarray, np.ndarray]:
    """Host seconds of one dense layer per micro-batch, forward and backward: its calls at the CPU's time per call,
    times what the count leaves out (DenseHost.uncounted_scale)."""
    call_s = h.call_s[host_cpu]
    forward, backward = dense_layer_calls(h, tp)
    return (h.uncounted_scale * sum(n * call_s[k] for k, n in forward.items()),
            h.uncounted_scale * sum(n * call_s[k] for k, n in backward.items()))


def dense_host_exposed_s(L: LayoutArrays, hw: HardwareRates, stack: ExecutionStack, n_layers: int,
                         gpu_s: np.ndarray) -> np.ndarray:
    """Exposed host seconds of one dense layer per micro-batch: max(0, host - GPU) (module docstring), with gpu_s the
    layer's GPU time (compute, recompute and exposed communication); 0 under full-iteration CUDA graphs or for a stack
    without dense_host data."""
    h = stack.dense_host
    if h is None:
        return np.zeros_like(gpu_s)
    forward, backward = dense_layer_host_s(h, L.tp, hw.host_cpu)
    host = forward + backward + L.full_recompute_share(n_layers) * forward
    return np.where(L.cuda_graphs == CudaGraphsCode.FULL, 0.0, np.maximum(0.0, host - gpu_s))
