"""estimate(): memory and step time of one layout, every term visible, as `clusterplan estimate` prints it.

    from clusterplan.models.training.estimate import estimate
    est = estimate(load_model("llama3.1-70b"), load_cluster("dgx-h100:8"), Layout.parse("tp=8,pp=4", world=64))
    est.to_json()["step_time_s"]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from clusterplan.hardware_db import get_gemm_tiling
from clusterplan.hardware_db.stacks import (
    MIXED_PRECISION_AUTOCAST,
    NVFP4_KEEPS_BF16_PARAMS,
    DenseHost,
    ExecutionStack,
    get_stack,
)
from clusterplan.models.architecture.shapes import HYBRID_BLOCK_KINDS, ModelShapes
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.calibration import Calibration
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.hardware.mamba_kernels import (
    SSD_KERNEL_COPY_SHARE,
    backward_bytes,
    forward_bytes,
    mixer_sizes,
    mixer_times,
)
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.bf16_layers import as_bf16, bf16_layers_by_rank
from clusterplan.models.training.compute import MFU_BASIS, layer_time
from clusterplan.models.training.host import dense_layer_calls, dense_layer_host_s, stack_fp8_recipe
from clusterplan.models.training.layout import (
    REMAINDER_FP8_RECIPES,
    Layout,
    bf16_moments_run,
    canonical_fp8_recipe,
    fp8_params_run,
    keeps_master_remainders,
    layout_problems,
    named_fp8_recipe,
    stack_for,
)
from clusterplan.models.training.memory import (
    EAGER_LOSS_FREED_LOGITS_BYTES,
    GIB,
    MemoryBreakdown,
    Remainders,
    fp8_weight_copy_bytes,
    fsdp_fp8_allgather,
    memory_breakdown,
    stack_fp8_saved,
)
from clusterplan.models.training.moe_layer import routing_basis
from clusterplan.models.training.rules import Rule, RuleCode
from clusterplan.models.training.step import Group, StepTime, layer_cost, mamba_cp_s, step_time
from clusterplan.models.training.topology import Axis, axis_links_gb_per_s

TIME_TERMS = ("compute_s", "tp_comm_s", "cp_comm_s", "ep_comm_s", "host_s", "pp_comm_s", "dp_comm_s", "bubble_s",
              "optimizer_s", "offload_s")
DENSE_ABSENT_TERMS = ("host_s",)
"""Terms only MoE layers, or a stack that prices its dense layers' host calls (stacks.yaml dense_host), have: left out
of the JSON of a dense model on any other stack (its JSON is as before they existed)."""
OFFLOAD_TERMS = ("offload_s",)
"""Terms only layouts with activation offloading have: left out of the JSON of the others."""
MEMORY_TERMS = ("weights", "grads", "optimizer", "activations", "other")
POSITIONS = ("first", "middle", "last")


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Vectorised result for a batch of layouts (what `plan` ranks)."""

    memory: MemoryBreakdown
    time: StepTime
    hw: HardwareRates
    tokens_per_step: np.ndarray
    world: int
    stack: ExecutionStack

    @property
    def fits(self) -> np.ndarray:
        return self.memory.peak <= self.hw.memory_bytes

    @property
    def tokens_per_s(self) -> np.ndarray:
        return self.tokens_per_step / self.time.step_s

    @property
    def mfu(self) -> np.ndarray:
        return self.time.model_flops / (self.time.step_s * self.world * self.hw.peak_flops)

    @property
    def hfu(self) -> np.ndarray:
        return self.time.hardware_flops / (self.time.step_s * self.world * self.hw.peak_flops)


def remainders(stack: ExecutionStack, recipe: str | None) -> Remainders:
    """Where `stack`'s distributed optimizer keeps 2-byte master remainders, its fp8 recipe `recipe` considered
    (layout.REMAINDER_FP8_RECIPES)."""
    if not stack.optimizer_param_remainders:
        return Remainders.NONE
    return Remainders.BF16_AND_FP8 if recipe in REMAINDER_FP8_RECIPES else Remainders.BF16


def stack_memory(shapes: ModelShapes, arrays: LayoutArrays, stack: ExecutionStack,
                 fp8_all_layouts: bool = False) -> MemoryBreakdown:
    """Per-GPU memory as `stack` runs the layouts (what its selective recompute keeps, its fp8 weight copies under
    its first fp8 recipe, what its sequence parallelism saves, whether it fuses the gated activation).
    `fp8_all_layouts`: the GPUs run fp8 GEMMs in every layout (Blackwell; see fp8_weight_copy_bytes)."""
    recipe = stack_fp8_recipe(stack)
    copy = fp8_weight_copy_bytes(recipe, fp8_all_layouts, stack.fp8_weight_copy)
    return memory_breakdown(shapes, arrays, stack.selective_recompute, copy, stack.sp_saves_gathered_inputs,
                            fused_glu="swiglu" in stack.fused_kernels, loss_bytes_per_logit=stack.loss_bytes_per_logit,
                            param_remainders=remainders(stack, recipe),
                            loss_parallel_bytes_per_logit=stack.loss_parallel_bytes_per_logit,
                            pp_impl=stack.pp_impl, cp_impl=stack.cp_impl, compiled=stack.compiled,
                            fp32_params=stack.fsdp_impl == "fsdp2",
                            fp8_allgather=fsdp_fp8_allgather(stack.fp8_allgather, recipe),
                            fp8_param_bytes=fp8_weight_copy_bytes(recipe, fp8_all_layouts),
                            freed_logits_bytes_per_logit=EAGER_LOSS_FREED_LOGITS_BYTES
                            if stack.loss_frees_logits else 0.0,
                            fsdp_root=stack.fsdp_root if stack.fsdp_impl == "fsdp2" else None,
                            autocast=stack.mixed_precision == MIXED_PRECISION_AUTOCAST,
                            kv_copies=stack.attention_kv_copies,
                            ddp_bucket_bytes_per_param=stack.ddp_bucket_bytes_per_param,
                            tp_gather_buffers=stack.tp_gather_buffers,
                            zero1_gather_flat_copies=stack.zero1_gather_flat_copies,
                            fp8_saved=stack_fp8_saved(stack),
                            mtp_bf16=stack.hybrid_mtp_bf16 and shapes.mtp_layer is not None)


def fp8_all_layouts(cluster: Cluster) -> bool:
    """Every GPU runs fp8 GEMMs in every operand layout (TE is_non_tn_fp8_gemm_supported: Blackwell, sm100+; the
    GPUs with microscaling tensor cores in hardware_db, mx_formats)."""
    return all(g.gpu.mx_formats for g in cluster.groups)


def evaluate(shapes: ModelShapes, arrays: LayoutArrays, hw: HardwareRates, world: int,
             stack: ExecutionStack | None = None, fp8_all_layouts: bool = False,
             memory: MemoryBreakdown | None = None) -> Evaluation:
    """Memory and step time of every layout in `arrays` as `stack` runs them (None: megatron-core). `memory`:
    their stack_memory, when the caller has it already (a search filters by memory first)."""
    stack = stack or get_stack()
    return Evaluation(memory=memory if memory is not None else stack_memory(shapes, arrays, stack, fp8_all_layouts),
                      time=step_time(shapes, arrays, hw, stack),
                      hw=hw, tokens_per_step=arrays.gbs * arrays.seq, world=world, stack=stack)


@dataclass(frozen=True, slots=True)
class Estimate:
    model: ModelSpec
    cluster: Cluster
    layout: Layout
    reasons: tuple[Rule, ...]
    """Rules the layout breaks (divisibility, out of memory); empty = feasible."""
    evaluation: Evaluation | None
    index: int = 0

    @property
    def feasible(self) -> bool:
        return not self.reasons

    def value(self, array: np.ndarray) -> float:
        return float(array[self.index])

    def to_json(self) -> dict[str, Any]:
        """The stable JSON shape other tools read (see README "estimate JSON")."""
        out: dict[str, Any] = {"layout": self.layout.to_dict(), "feasible": self.feasible,
                               "reasons": [str(r) for r in self.reasons],
                               "reason_codes": [r.code.name for r in self.reasons], "model": self.model.name,
                               "cluster": self.cluster.describe()}
        ev = self.evaluation
        if ev is None:
            return out
        v = self.value
        mem = {f"{term}_gib": _r(v(getattr(ev.memory, term)) / GIB) for term in MEMORY_TERMS}
        mem["peak_gib"] = _r(v(ev.memory.peak) / GIB)
        mem["capacity_gib"] = _r(ev.hw.memory_bytes / GIB)
        mem["headroom_gib"] = _r((ev.hw.memory_bytes - v(ev.memory.peak)) / GIB)
        mem["peak_stage"] = POSITIONS[int(ev.memory.peak_position[self.index])]
        mem["by_stage"] = {pos: {f"{term}_gib": _r(float(ev.memory.by_position[i, j, self.index]) / GIB)
                                 for j, term in enumerate(MEMORY_TERMS + ("total",))}
                           for i, pos in enumerate(POSITIONS)}
        out.update({
            "step_time_s": _r(v(ev.time.step_s)),
            "tokens_per_s": _r(v(ev.tokens_per_s)),
            "tflops_per_gpu": _r(v(ev.time.model_flops) / v(ev.time.step_s) / ev.world / 1e12),
            "mfu": _r(v(ev.mfu)),
            "hfu": _r(v(ev.hfu)),
            "mfu_basis": MFU_BASIS,
            "memory": mem,
            "time": {term: _r(v(getattr(ev.time, term))) for term in TIME_TERMS
                     if (self.model.is_moe or ev.stack.dense_host is not None or term not in DENSE_ABSENT_TERMS)
                     and (self.layout.offload_layers or term not in OFFLOAD_TERMS)},
            "stack": ev.stack.name,
            "hardware": {"gpu": ev.hw.gpu_name, "calibrated": ev.hw.calibrated, "comm_overlap": _r(ev.hw.comm_overlap),
                         "gemm_best_shape_tflops": {"bf16": _r(ev.hw.gemm_max_flops / 1e12),
                                                    "fp8": _r(ev.hw.gemm_max_flops_fp8 / 1e12)},
                         "gemm_sustained_scale": _r(ev.hw.gemm_sustained_scale)},
        })
        placement = scale_up_placement(self.cluster)
        if placement:
            out["hardware"]["scale_up_placement"] = placement
        recipe = stack_fp8_recipe(ev.stack) if self.layout.precision == "fp8" else None
        if recipe:  # the recipe priced, named also where the layout leaves it to the stack ("")
            out["fp8_recipe"] = recipe
        if recipe in ("mxfp8", "nvfp4"):  # block-scaled GEMMs at their own rate (HardwareRates.for_fp8_recipe)
            rates = out["hardware"]["gemm_best_shape_tflops"]
            rates[recipe] = _r(ev.hw.for_fp8_recipe(recipe).gemm_max_flops_fp8 / 1e12)
        if self.model.is_moe:
            L = self.layout
            out["moe_routing"] = routing_basis(L.moe_imbalance, L.ep, L.moe_capacity_factor is not None)
        if self.layout.precision == "fp8" and ev.stack.keeps_fp8_params:
            out["fp8_weights"] = FP8_WEIGHTS[self.layout.fp8_params]
        if self.model.is_hybrid:
            out["hybrid_blocks"] = hybrid_blocks_json(self.model, self.layout, ev.hw, ev.stack)
        if self.layout.precision == "fp8" and (self.layout.bf16_first_layers or self.layout.bf16_last_layers):
            out["bf16_layers"] = bf16_layers_json(self.model, self.layout, ev.hw, ev.stack)
        if ev.stack.dense_host is not None and not self.model.is_moe:
            share = float(LayoutArrays.from_layouts([self.layout]).full_recompute_share(self.model.n_layers)[0])
            out["dense_host"] = dense_host_json(ev.stack.dense_host, self.layout.tp, ev.hw.host_cpu, share)
        return out


def scale_up_placement(cluster: Cluster) -> str:
    """How the job's nodes fill multi-node scale-up domains (NVL72 racks), '' where a node is its own domain."""
    g = cluster.primary
    if g.scale_up_domain <= g.gpus_per_node or not cluster.is_homogeneous:
        return ""
    per_rack = g.scale_up_domain // g.gpus_per_node
    segment = g.job_domain // g.gpus_per_node
    if g.count <= per_rack:
        return f"all {g.count} nodes ({g.count * g.gpus_per_node} GPUs) in one scale-up domain"
    return (f"{g.count // segment} scale-up domains of {g.job_domain} GPUs ({segment} of each rack's {per_rack} nodes,"
            f" Slurm --segment={segment} as Megatron-Bridge launches); a mesh group that does not tile them is"
            f" priced as its worst group, across two")


def bf16_layers_json(model: ModelSpec, layout: Layout, hw: HardwareRates, stack: ExecutionStack) -> dict[str, Any]:
    """Layers kept in bf16 under fp8 (bf16_layers.py): how many each pipeline rank runs (model order of the global
    layer numbers, Megatron-Core is_first_last_bf16_layer) and what one costs over its fp8 self per micro-batch, by
    kind for a hybrid: the breakdown behind the stage times' bf16 term."""
    shapes, L = ModelShapes.of(model), LayoutArrays.from_layouts([layout])
    running = stack_for(layout, stack)
    kinds = [(b.block, b) for _, b in shapes.blocks] if shapes.blocks else [("layer", shapes)]
    extra = {kind: _r(float(layer_cost(b, as_bf16(L), hw, running).total_s[0]
                            - layer_cost(b, L, hw, running).total_s[0]) * 1e3) for kind, b in kinds}
    return {"first": layout.bf16_first_layers, "last": layout.bf16_last_layers,
            "per_rank": [len(r) for r in bf16_layers_by_rank(model.n_layers, layout)],
            "extra_ms_per_layer": extra}


def hybrid_blocks_json(model: ModelSpec, layout: Layout, hw: HardwareRates, stack: ExecutionStack) -> dict[str, Any]:
    """A hybrid's blocks by kind, one micro-batch on one rank: their count, each block's forward and backward time
    (recompute and exposed communication left out) and, for a Mamba block, its mixer kernels' share of both with
    the bytes they move per token (hardware.mamba_kernels): the breakdown behind the average layer."""
    L = LayoutArrays.from_layouts([layout])
    counts = dict(zip(HYBRID_BLOCK_KINDS.values(), (model.hybrid_pattern.count(c) for c in HYBRID_BLOCK_KINDS),
                      strict=True))
    out: dict[str, Any] = {}
    for _, block in ModelShapes.of(model).blocks:
        lt = layer_time(block, L, hw, block.block == "moe", stack_for(layout, stack))
        entry = {"count": counts[block.block], "forward_ms": _r(float(lt.forward_s[0]) * 1e3),
                 "backward_ms": _r(float(lt.backward_s[0]) * 1e3)}
        if block.block == "mamba":
            sizes = mixer_sizes(block.mamba_inner, block.mamba_heads, block.mamba_groups, block.mamba_state,
                                block.mamba_chunk, L.tp, L.cp)
            tokens = L.seq * L.mbs  # the mixer runs the whole sequence under context parallelism (mixer_sizes)
            f, b = mixer_times(sizes, tokens, L.mbs, hw.hbm_bytes_per_s, hw.gemm_max_flops, hw.sm_count)
            entry.update(mixer_forward_ms=_r(float(f[0]) * 1e3), mixer_backward_ms=_r(float(b[0]) * 1e3),
                         mixer_bytes_per_token={"forward": _r(float(forward_bytes(sizes, tokens, L.mbs)[0] / tokens[0])),
                                                "backward": _r(float(backward_bytes(sizes, tokens, L.mbs, hw.sm_count)[0]
                                                                     / tokens[0]))},
                         mixer_rate_share=SSD_KERNEL_COPY_SHARE)
            if layout.cp > 1:  # Megatron-Core MambaContextParallel's all-to-alls and copies (step.mamba_cp_s)
                cp_s = mamba_cp_s(block, L, tokens / L.cp, Group.of(L, Axis.CP), hw)
                entry["cp_all_to_all_ms"] = _r(float(cp_s[0]) * 1e3)
        out[block.block] = entry
    return out


def dense_host_json(h: DenseHost, tp: int, host_cpu: str, recompute_share: float = 0.0) -> dict[str, Any]:
    """One dense layer's host calls per micro-batch as the stack counts them (stacks.yaml dense_host) and their host
    time on this CPU: what time.host_s exposes where it outlasts the layer's GPU time (host.dense_host_exposed_s).
    `recompute_share`: the layers fully recomputed, whose backward re-issues the forward's calls (layer_ms counts
    them)."""
    tps = np.array([tp])
    forward, backward = dense_layer_calls(h, tps)
    forward_s, backward_s = dense_layer_host_s(h, tps, host_cpu)
    f, b = float(forward_s[0]), float(backward_s[0])
    return {"host_cpu": host_cpu, "call_us": {k: _r(v * 1e6) for k, v in h.call_s[host_cpu].items()},
            "calls_forward": {k: _r(float(v[0])) for k, v in forward.items()},
            "calls_backward": {k: _r(float(v[0])) for k, v in backward.items()},
            "uncounted_scale": _r(h.uncounted_scale),
            "forward_ms": _r(f * 1e3), "backward_ms": _r(b * 1e3), "recompute_share": _r(recompute_share),
            "layer_ms": _r((f + b + recompute_share * f) * 1e3)}


FP8_WEIGHTS = {
    True: "fp8 only (fp8_params=1, Megatron-LM --fp8-param-gather): no bf16 copy, the weights all-gathered in fp8 "
          "(in bf16 under MXFP8, then requantised)",
    False: "bf16 beside Transformer Engine's fp8 copies (fp8_params=0, Megatron-LM's default); Megatron-Bridge's fp8 "
           "recipes run fp8_params=1: 2 B per parameter less, and half the weights' all-gather under per-tensor "
           "scaling",
}
"""How an fp8 layout keeps its weights, said by estimate on a stack that can keep them fp8 only (Layout.fp8_params)."""


def _r(x: float) -> float:
    """Round to 6 significant digits so JSON is stable and readable."""
    return float(f"{x:.6g}")


def precision_problems(cluster: Cluster, layout: Layout, stack: ExecutionStack,
                       fp8_recipe: str | None = None) -> list[Rule]:
    """fp8 needs a stack with an fp8 recipe and fp8 tensor cores on every GPU; MXFP8 needs microscaling tensor
    cores (Blackwell, CDNA 4)."""
    broken = lambda message: [Rule.broken(RuleCode.PRECISION, message)]  # noqa: E731
    if layout.precision == "bf16" and (lacking := no_bf16_gpus(cluster)):
        return broken(f"precision bf16: {', '.join(lacking)} has no bf16 tensor cores; use precision=fp16")
    if layout.precision != "fp8":
        return []
    if not stack.fp8_recipes:
        return broken(f"precision fp8: stack {stack.name} has no fp8 recipe; use precision=bf16 or another --stack")
    fp8_recipe = fp8_recipe or stack.fp8_recipes[0]
    if fp8_recipe not in stack.fp8_recipes:
        return broken(f"fp8 recipe {fp8_recipe!r}: stack {stack.name} runs {', '.join(stack.fp8_recipes)}")
    if fp8_recipe == "delayed" and (layout.bf16_first_layers or layout.bf16_last_layers):
        # Megatron-Core TransformerConfig.__post_init__: "Delayed scaling does not support first / last layer in BF16."
        return [Rule.broken(RuleCode.BF16_LAYERS, "fp8 recipe delayed: Megatron-Core keeps no first / last layers in "
                                                  "bf16 under delayed scaling; use the tensorwise recipe or set "
                                                  "bf16_first_layers=0 and bf16_last_layers=0")]
    return fp8_hardware_problems(cluster, layout, fp8_recipe)


def no_bf16_gpus(cluster: Cluster) -> list[str]:
    """The cluster's GPUs without bf16 tensor cores (no published bf16 peak: V100), sorted: they train in fp16."""
    return sorted({g.gpu.name for g in cluster.groups if "bf16" not in g.gpu.peak_tflops})


def fp8_hardware_problems(cluster: Cluster, layout: Layout, fp8_recipe: str | None = None) -> list[Rule]:
    """The GPU side of precision_problems, whatever the stack: fp8 needs fp8 tensor cores on every GPU, the MXFP8
    recipe microscaling ones (Blackwell, CDNA 4), the NVFP4 recipe FP4 ones with a published GEMM rate (gemm.yaml)
    and bf16 parameters (an FP8_PARAMS rule, not a PRECISION one)."""
    broken = lambda message: [Rule.broken(RuleCode.PRECISION, message)]  # noqa: E731
    if layout.precision != "fp8":
        return []
    gpus = {g.gpu.name: g.gpu for g in cluster.groups}
    lacking = sorted(n for n, g in gpus.items() if not g.has_fp8)
    if lacking:
        instead = "fp16" if no_bf16_gpus(cluster) else "bf16"
        return broken(f"precision fp8: {', '.join(lacking)} has no fp8 tensor cores; use precision={instead}")
    no_mx = sorted(n for n, g in gpus.items() if not g.mx_formats)
    if fp8_recipe == "mxfp8" and no_mx:
        return broken(f"fp8 recipe mxfp8: {', '.join(no_mx)} has no MXFP8 tensor cores (Blackwell / CDNA 4 only); "
                      "use the tensorwise or blockwise recipe")
    if fp8_recipe == "nvfp4":
        no_fp4 = sorted(n for n, g in gpus.items() if not g.has_nvfp4)
        if no_fp4:
            return broken(f"fp8 recipe nvfp4: {', '.join(no_fp4)} has no NVFP4 tensor cores (NVIDIA Blackwell only); "
                          "use the tensorwise recipe")
        unpriced = sorted(n for n in gpus if not ((t := get_gemm_tiling(n)) and t.nvfp4_gemm_time_ratio))
        if unpriced:
            return broken(f"fp8 recipe nvfp4: no NVFP4 GEMM rate is published for {', '.join(unpriced)} "
                          "(hardware_db gemm.yaml nvfp4_gemm_time_ratio); use the tensorwise recipe")
        if layout.fp8_params:  # a rule on fp8_params: its fix is to drop them, not another precision
            return [Rule.broken(RuleCode.FP8_PARAMS, f"fp8 recipe nvfp4: {NVFP4_KEEPS_BF16_PARAMS}; set fp8_params=0")]
    return []


def estimate(model: ModelSpec, cluster: Cluster, layout: Layout, calibration: Calibration | None = None,
             node_order: tuple[int, ...] | None = None, eager_layers: bool = False,
             stack: ExecutionStack | None = None, fp8_recipe: str | None = None) -> Estimate:
    """Predict one layout; divisibility problems and out-of-memory are reasons, not exceptions.

    `node_order[logical node] = physical node` places the mesh on a cluster with a measured bandwidth matrix
    (default: nodes in order); each axis's scale-out traffic is priced at the slowest link its hops cross there.
    `eager_layers` applies the calibration's eager-layer section (validate's plain-PyTorch runs).
    `stack` is the execution stack that runs the layout (hardware_db/stacks.yaml; None: megatron-core);
    `fp8_recipe` picks one of the stack's fp8 recipes and is written into the layout (None: the layout's,
    Layout.fp8_recipe, else the stack's first).
    """
    stack = stack or get_stack()
    if fp8_recipe and layout.precision == "fp8":  # the recipe asked for is the layout's: one place says what ran
        layout = replace(layout, fp8_recipe=canonical_fp8_recipe(fp8_recipe, stack))
    reasons = rule_problems(model, cluster, layout, stack, layout.fp8_recipe or None)
    links = axis_links_gb_per_s(layout, cluster, node_order, model.is_moe) if not reasons else None
    hw = HardwareRates.of(cluster, calibration, links, eager_layers=eager_layers)
    stack = stack_for(layout, stack)  # the chosen recipe first: what runs
    # per GPU of the layout's own ranks: the cluster's where they match (a rule says so where they do not, and a
    # layout priced as written runs on its tp x pp x cp x dp GPUs, not on the cluster's count)
    ev = evaluate(ModelShapes.of(model), LayoutArrays.from_layouts([layout]), hw, layout.world, stack,
                  fp8_all_layouts(cluster))
    if not bool(ev.fits[0]):
        reasons.append(Rule.out_of_memory(f"out of memory: peak {float(ev.memory.peak[0]) / GIB:.1f} GiB on the "
                                          f"{POSITIONS[int(ev.memory.peak_position[0])]} pipeline stage > "
                                          f"{hw.memory_bytes / GIB:.1f} GiB of {hw.gpu_name}", **memory_knobs(layout, stack)))
    return Estimate(model=model, cluster=cluster, layout=layout, reasons=tuple(reasons), evaluation=ev)


def memory_knobs(layout: Layout, stack: ExecutionStack) -> dict[str, Any]:
    """What of the layout an out-of-memory fix may still turn (Rule.out_of_memory)."""
    return dict(zero=layout.zero, recompute=layout.recompute, mbs=layout.mbs,
                fp8_params_off=not layout.fp8_params and stack.keeps_fp8_params
                and fp8_params_run(layout.precision, layout.zero, layout.optimizer),
                bf16_moments_off=not layout.bf16_moments and stack.bf16_moments
                and bf16_moments_run(layout.zero, layout.optimizer),
                precision_aware_off=not layout.precision_aware and stack.optimizer_param_remainders
                and keeps_master_remainders(layout, named_fp8_recipe(layout, stack)))


def rule_problems(model: ModelSpec, cluster: Cluster, layout: Layout, stack: ExecutionStack,
                  fp8_recipe: str | None = None) -> list[Rule]:
    """The rules estimate() applies before pricing: the layout's divisibility, the precision's and what the stack's
    context parallelism cannot run for this model."""
    return (layout_problems(model, layout, cluster.world_size) + precision_problems(cluster, layout, stack, fp8_recipe)
            + cp_window_problems(model, layout, stack) + hybrid_stack_problems(model, stack)
            + parallel_block_problems(model, stack) + kv_heads_tp_problems(model, layout, stack))


def stack_splits_kv_heads(model: ModelSpec, tp: int, stack: ExecutionStack) -> bool:
    """Whether `stack` runs `tp` over the model's kv heads: tp must divide them on a stack that cannot replicate them
    (stacks.yaml tp_replicates_kv_heads: torchtitan); layout_problems already requires one of the two to divide the
    other."""
    return stack.tp_replicates_kv_heads or model.is_mla or model.kv_heads % tp == 0


def kv_heads_tp_problems(model: ModelSpec, layout: Layout, stack: ExecutionStack) -> list[Rule]:
    """The stack_splits_kv_heads rule of a layout."""
    if stack_splits_kv_heads(model, layout.tp, stack):
        return []
    return [Rule.broken(RuleCode.STACK, f"stack {stack.name} needs tp to divide the kv heads({model.kv_heads}), "
                                        f"got tp={layout.tp}; set tp to a divisor of {model.kv_heads}")]


def hybrid_stack_problems(model: ModelSpec, stack: ExecutionStack) -> list[Rule]:
    """A hybrid Mamba-2 / attention stack trains on a stack with Mamba blocks only (stacks.yaml mamba_blocks:
    Megatron-Core)."""
    if not model.is_hybrid or stack.mamba_blocks:
        return []
    return [Rule.broken(RuleCode.STACK, f"stack {stack.name} has no Mamba blocks for hybrid {model.name}; use --stack "
                                        "megatron-core")]


def parallel_block_problems(model: ModelSpec, stack: ExecutionStack) -> list[Rule]:
    """A parallel attention / MLP model trains on a stack that runs its Hugging Face model as built (stacks.yaml
    parallel_blocks: DeepSpeed); Megatron-Core, torchtitan and nanotron build their own sequential blocks."""
    if not model.parallel_block or stack.parallel_blocks:
        return []
    return [Rule.broken(RuleCode.STACK, f"stack {stack.name} builds attention and MLP one after the other; "
                                        f"{model.name} runs them in parallel: use --stack deepspeed")]


def cp_window_problems(model: ModelSpec, layout: Layout, stack: ExecutionStack) -> list[Rule]:
    """Megatron-Core's context parallelism runs Transformer Engine's, whose attn_forward_func_with_cp asserts "The
    context parallel running configs cannot support sliding window attention!" for every cp_comm_type but a2a
    (all_gather only on flash-attn, and the stack runs cuDNN's FusedAttention): a model with sliding-window layers
    runs a2a CP there, nothing else."""
    if stack.cp_impl != "megatron" or layout.cp == 1 or model.sliding_window is None or layout.cp_kind == "a2a":
        return []
    return [Rule.broken(RuleCode.CP_WINDOW, f"{model.name} has sliding-window layers, which Transformer Engine's "
                                            f"context parallelism runs under a2a only, not cp_kind={layout.cp_kind}")]


def passes_rules(model: ModelSpec, cluster: Cluster, layout: Layout, stack: ExecutionStack | None = None) -> bool:
    """Whether estimate(model, cluster, layout, stack=stack) would come out feasible, decided without pricing the
    step: the same rules (rule_problems) and the memory rule (memory needs no time or links). What a search for the
    nearest fitting change runs before it prices a candidate (solver/feasible.py)."""
    stack = stack or get_stack()
    if rule_problems(model, cluster, layout, stack, layout.fp8_recipe or None):
        return False
    stack = stack_for(layout, stack)
    memory = stack_memory(ModelShapes.of(model), LayoutArrays.from_layouts([layout]), stack, fp8_all_layouts(cluster))
    return bool(memory.peak[0] <= cluster.min_memory_bytes)


def step_times_on_links(model: ModelSpec, cluster: Cluster, layout: Layout,
                        axis_links_gb_per_s: dict[str, np.ndarray], calibration: Calibration | None = None,
                        stack: ExecutionStack | None = None) -> np.ndarray:
    """Step time of `layout` under k sets of per-axis links (each axis an array of k whole-node GB/s, as
    topology.links_of_orders gives for k node orders), in one vectorised evaluation: entry i equals
    estimate(..., node_order=order i)'s step time. What the node-order optimiser (solver/links.py) compares."""
    k = max((len(v) for v in axis_links_gb_per_s.values()), default=1)
    one = LayoutArrays.from_layouts([layout])
    arrays = replace(one, **{f: np.repeat(getattr(one, f), k) for f in one.__dataclass_fields__})
    hw = HardwareRates.of(cluster, calibration, axis_links_gb_per_s)
    return step_time(ModelShapes.of(model), arrays, hw, stack_for(layout, stack or get_stack())).step_s
