"""Mixed GPU types: pipeline stages assigned to GPU types with an uneven layer split that balances stage times
under each type's memory (Metis / AMP's heterogeneous pipelines), compared with the fastest type alone and with a
naive even split.

Every stage spans the same tp x cp x dp GPUs; a node group of N GPUs hosts N / (tp*cp*dp) consecutive stages.
For a fixed stage order, minimising the slowest stage is separable: stage s can hold at most
min(floor(T / t_s), memory limit) layers, so the best T is the smallest candidate k * t_s whose capacities
sum to the model's layers (exact; binary search over the sorted candidates).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np

from clusterplan.errors import BadInputError, InfeasibleError
from clusterplan.hardware_db.stacks import ExecutionStack, get_stack
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.calibration import Calibration
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.estimate import (
    fp8_all_layouts,
    fp8_hardware_problems,
    remainders,
    stack_memory,
)
from clusterplan.models.training.goodput import time_to_train
from clusterplan.models.training.host import stack_fp8_recipe
from clusterplan.models.training.layout import Layout, fp8_params_run, stack_for, stack_problems
from clusterplan.models.training.memory import (
    GIB,
    ddp_bucket_bytes,
    ends_activation_bytes,
    fp8_weight_copy_bytes,
    layers_activation_bytes,
    other_bytes,
    outside_allocator_bytes,
    per_layer_activation_bytes,
    stack_fp8_saved,
    stage_params,
    state_bytes,
    tp_gather_buffer_bytes,
    zero1_gather_flat_bytes,
)
from clusterplan.models.training.planfile import PipelineStage, first_layers, stage_groups, stage_problems
from clusterplan.models.training.rules import Rule, RuleCode
from clusterplan.models.training.step import (
    LayerCost,
    cross_node_p2p_s,
    dp_exposed_s,
    layer_cost,
    optimizer_step_s,
    pp_comm_s,
    step_time,
)


@dataclass(frozen=True, slots=True)
class StageSplit:
    gpu: tuple[str, ...]
    node: tuple[str, ...]
    """Node preset of each stage's group."""
    layers: tuple[int, ...]
    stage_s: tuple[float, ...]
    """Per micro-batch time of each stage, forward + backward: its layers, plus embedding (first) and head (last)."""
    peak_gib: tuple[float, ...]
    capacity_gib: tuple[float, ...]
    """Memory of each stage's GPU type."""
    headroom_gib: float
    """Memory each GPU keeps free beyond its peak (`--headroom-gib`)."""
    step_time_s: float
    """pipeline_s + pp_comm_s + tail_s (the stage whose gradient sync + optimizer step ends last)."""
    pipeline_s: float
    """m micro-batches at the slowest stage's pace plus pp - 1 stage times of fill and drain (1F1B)."""
    pp_comm_s: float
    """Exposed stage-to-stage sends (step.pp_comm_s), every hop priced across nodes at the slowest group's link."""
    dp_comm_s: tuple[float, ...]
    """Each stage's data-parallel traffic left exposed after its last backward (step.dp_exposed_s on its GPUs)."""
    optimizer_s: tuple[float, ...]
    """Each stage's optimizer step over its own parameters on its GPUs' HBM (step.optimizer_step_s)."""
    fits: bool = True
    """Every stage's peak + headroom within its GPU's memory (a naive even split may not be)."""

    @property
    def stages(self) -> tuple[PipelineStage, ...]:
        return tuple(PipelineStage(gpu=g, node=n, layers=k) for g, n, k in zip(self.gpu, self.node, self.layers,
                                                                              strict=True))

    def to_json(self) -> dict:
        starts = first_layers(self.stages)
        return {"step_time_s": round(self.step_time_s, 6), "pipeline_s": round(self.pipeline_s, 6),
                "pp_comm_s": round(self.pp_comm_s, 6), "tail_s": round(self.tail_s, 6), "fits": self.fits,
                "headroom_gib": self.headroom_gib,
                "stages": [{"gpu": g, "node": n, "layers": k, "first_layer": f, "stage_s": round(t, 6),
                            "dp_comm_s": round(d, 6), "optimizer_s": round(o, 6),
                            "peak_gib": round(p, 3), "capacity_gib": round(c, 3)}
                           for g, n, k, f, t, d, o, p, c in zip(self.gpu, self.node, self.layers, starts, self.stage_s,
                                                                self.dp_comm_s, self.optimizer_s, self.peak_gib,
                                                                self.capacity_gib, strict=True)]}

    @property
    def tail_s(self) -> float:
        """After the pipeline drains: the slowest stage's exposed gradient sync plus optimizer step."""
        return max(d + o for d, o in zip(self.dp_comm_s, self.optimizer_s, strict=True))


@dataclass(frozen=True, slots=True)
class HeteroPlan:
    layout: Layout
    balanced: StageSplit
    even: StageSplit | None
    """The same stages with layers split as evenly as integers allow (may not fit: see `fits`)."""
    fastest_only_step_s: float | None
    """Best homogeneous layout on any one GPU type's nodes alone, same global batch and pins (None if nothing fits)."""
    fastest_only_layout: Layout | None
    fastest_only_gpu: str | None = None
    """The GPU type of that plan."""
    pins_not_applied: tuple[str, ...] = ()
    """Pinned layout keys the mixed pipeline does not take (mixed_pins_not_applied): it is searched without them."""

    def best_choice(self, ranked_best_s: float) -> str:
        """Which of the three answers to a mixed cluster is fastest (ties to the simpler one): "one_gpu_type" (the
        fastest type's nodes alone), "mixed_pipeline" (the balanced split) or "ranked" (plan #1 of the search over
        the whole cluster at an even split, priced at the slowest type's pace)."""
        alone = (self.fastest_only_step_s if self.fastest_only_step_s is not None
                 and self.fastest_only_layout is not None else math.inf)
        if alone < min(self.balanced.step_time_s, ranked_best_s):
            return "one_gpu_type"
        return "mixed_pipeline" if self.balanced.step_time_s < ranked_best_s else "ranked"

    def fastest_only_cluster(self, cluster: Cluster) -> Cluster:
        """The nodes of the fastest GPU type alone (fastest_only_gpu), the cluster that plan runs on."""
        index = next(i for i, g in enumerate(cluster.groups) if g.gpu.name == self.fastest_only_gpu)
        return _sub_cluster(cluster, index)

    def to_json(self) -> dict:
        out = {"layout": self.layout.to_dict(), "balanced": self.balanced.to_json(),
               "even_split": self.even.to_json() if self.even is not None else None, "fastest_type_only": None,
               "pins_not_applied": list(self.pins_not_applied)}
        if self.fastest_only_step_s is not None and self.fastest_only_layout is not None:
            out["fastest_type_only"] = {"gpu": self.fastest_only_gpu, "step_time_s": round(self.fastest_only_step_s, 6),
                                        "layout": self.fastest_only_layout.to_dict()}
            out["gain_vs_fastest_only"] = round(self.fastest_only_step_s / self.balanced.step_time_s - 1, 4)
        if self.even is not None and self.even.fits:
            out["gain_vs_even_split"] = round(self.even.step_time_s / self.balanced.step_time_s - 1, 4)
        return out


def _sub_cluster(cluster: Cluster, index: int) -> Cluster:
    return replace(cluster, groups=(cluster.groups[index],), node_bandwidth_gb_per_s=None)


def _stage_memory(shapes: ModelShapes, one: LayoutArrays, stage: int, pp: int, layers: np.ndarray,
                  fp8_bytes: tuple[float, float], stack: ExecutionStack) -> np.ndarray:
    """Peak bytes of pipeline stage `stage` holding `layers` layers (1F1B: pp - stage micro-batches in flight).
    `fp8_bytes`: the stage GPU's (fp8 weight copy, fp8-only parameter) bytes per parameter (_fp8_bytes); the stack's
    extra K/V copies, DDP buckets and persistent gather buffers count as in estimate's stack_memory."""
    first, last = stage == 0, stage == pp - 1
    arr = LayoutArrays.from_columns(**{f: np.repeat(getattr(one, f), len(layers)) for f in one.__dataclass_fields__})
    copy_b, param_b = fp8_bytes
    params = stage_params(shapes, arr, layers, first, last)
    st = state_bytes(shapes, arr, params, layers, fp8_copy_bytes=copy_b, fp8_param_bytes=param_b,
                     param_remainders=remainders(stack, stack_fp8_recipe(stack)))  # as estimate's stack_memory
    saved = stack_fp8_saved(stack)
    kept = per_layer_activation_bytes(shapes, arr, kv_copies=stack.attention_kv_copies, fp8_saved=saved)
    per_layer = layers_activation_bytes(shapes, arr, np.ones_like(layers), "last", per_layer=kept,
                                        fp8_saved=saved)  # one in flight
    inflight = min(pp - stage, float(one.microbatches[0]))
    acts = inflight * per_layer * layers + ends_activation_bytes(shapes, arr, first, last)
    buffers = tp_gather_buffer_bytes(shapes, arr, stack.tp_gather_buffers)
    state = st.weights + st.grads + st.optimizer + st.fsdp_buffers + ddp_bucket_bytes(
        arr, params, stack.ddp_bucket_bytes_per_param)
    peak = state + acts + other_bytes(arr, acts) + buffers
    if stack.zero1_gather_flat_copies:  # the optimizer step's own moment (memory.memory_breakdown)
        peak = np.maximum(peak, state + zero1_gather_flat_bytes(arr, params) + outside_allocator_bytes(arr) + buffers)
    return peak


def _balance(per_layer_s: list[float], cap: list[int], n_layers: int, head_s: float,
             embed_s: float = 0.0) -> list[int] | None:
    """Layers per stage minimising the slowest stage time under per-stage layer caps (exact); the first stage
    also spends `embed_s`, the last `head_s`."""
    pp = len(per_layer_s)
    extra = [embed_s] + [0.0] * (pp - 2) + [head_s]
    candidates = sorted({k * t + e for t, c, e in zip(per_layer_s, cap, extra, strict=True) for k in range(1, c + 1)})

    def take(limit: float) -> list[int]:
        # relative slack only absorbs float rounding of (k*t + e) / t, never lets a stage exceed the limit
        return [max(0, min(c, math.floor((limit - e) / t * (1 + 1e-12)))) for t, c, e in zip(per_layer_s, cap, extra, strict=True)]

    def feasible(limit: float) -> bool:  # monotone in the limit: every stage holds >= 1 layer, all hold >= n
        layers = take(limit)
        return min(layers) >= 1 and sum(layers) >= n_layers

    lo, hi = 0, len(candidates) - 1
    if hi < 0 or not feasible(candidates[hi]):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if feasible(candidates[mid]):
            hi = mid
        else:
            lo = mid + 1
    layers = take(candidates[lo])
    # Give back any surplus from the slowest stages first (never raises the max).
    surplus = sum(layers) - n_layers
    for s in sorted(range(pp), key=lambda i: -(layers[i] * per_layer_s[i] + extra[i])):
        drop = min(surplus, layers[s] - 1)
        layers[s] -= drop
        surplus -= drop
    return layers if surplus == 0 and min(layers) >= 1 else None


@dataclass(frozen=True, slots=True)
class _Pipeline:
    """A stage order on given GPU groups: per-layer, head and embedding times and memory of each stage.

    hetero_plan balances layers over it; evaluate_stages prices a plan file's split with it, so that `check` and
    `estimate --plan` print the numbers `plan` printed.
    """

    shapes: ModelShapes
    one: LayoutArrays
    names: tuple[str, ...]
    nodes: tuple[str, ...]
    per_layer_s: tuple[float, ...]
    head_s: tuple[float, ...]
    embed_s: tuple[float, ...]
    capacity_b: tuple[float, ...]
    headroom_b: float
    fp8_bytes: tuple[tuple[float, float], ...]
    """Each stage's (fp8 weight copy, fp8-only parameter) bytes per parameter on its GPU type (_fp8_bytes)."""
    stack: ExecutionStack
    rates: tuple[HardwareRates, ...]
    """Each stage's GPU group priced alone."""
    costs: tuple[LayerCost, ...]
    """Each stage's layer cost on its GPU group."""

    @classmethod
    def of(cls, stage_group: list[int], cluster: Cluster, costs: list, rates: list[HardwareRates],
           shapes: ModelShapes, one: LayoutArrays, headroom_gib: float, stack: ExecutionStack) -> _Pipeline:
        return cls(shapes=shapes, one=one, names=tuple(cluster.groups[g].gpu.name for g in stage_group),
                   fp8_bytes=tuple(_fp8_bytes(stack, cluster.groups[g].gpu.mx_formats) for g in stage_group),
                   nodes=tuple(cluster.groups[g].preset for g in stage_group),
                   per_layer_s=tuple(float(costs[g].total_s[0]) for g in stage_group),
                   # LM head, loss and their TP traffic (last stage); the embedding's TP all-reduce (first stage)
                   head_s=tuple(float(costs[g].head_s[0] + costs[g].head_tp_s[0]) for g in stage_group),
                   embed_s=tuple(float(costs[g].embed_tp_s[0]) for g in stage_group),
                   capacity_b=tuple(float(rates[g].memory_bytes) for g in stage_group), headroom_b=headroom_gib * GIB,
                   stack=stack, rates=tuple(rates[g] for g in stage_group), costs=tuple(costs[g] for g in stage_group))

    @property
    def pp(self) -> int:
        return len(self.names)

    def memory_b(self, stage: int, layers: np.ndarray) -> np.ndarray:
        return _stage_memory(self.shapes, self.one, stage, self.pp, layers, self.fp8_bytes[stage], self.stack)

    def fits_b(self, stage: int, peak_b: np.ndarray) -> np.ndarray:
        """Peak plus the headroom within the stage's GPU memory (the one test for caps and for `fits`)."""
        return peak_b + self.headroom_b <= self.capacity_b[stage]

    def caps(self) -> list[int]:
        """Most layers each stage holds within its GPU's memory less the headroom (0: not even one)."""
        grid = np.arange(1, self.shapes.n_layers + 1, dtype=float)
        out = []
        for s in range(self.pp):
            ok = self.fits_b(s, self.memory_b(s, grid))
            out.append(int(grid[ok].max()) if ok.any() else 0)
        return out

    def split(self, layers: list[int] | tuple[int, ...]) -> StageSplit:
        pp, m = self.pp, float(self.one.microbatches[0])
        stage_s = [n * self.per_layer_s[s] + (self.head_s[s] if s == pp - 1 else 0.0)
                   + (self.embed_s[s] if s == 0 else 0.0) for s, n in enumerate(layers)]
        peaks_b = [float(self.memory_b(s, np.array([float(n)]))[0]) for s, n in enumerate(layers)]
        # Pipeline: m micro-batches at the slowest stage's pace plus (pp-1) stage times of fill and drain.
        pace = max(stage_s)
        pipeline = (m + pp - 1) * pace
        pp_comm = self.pp_comm_s(pace)
        dp_comm, opt = zip(*(self.tail(s, n) for s, n in enumerate(layers)), strict=True)
        tail = max(d + o for d, o in zip(dp_comm, opt, strict=True))
        return StageSplit(gpu=self.names, node=self.nodes, layers=tuple(int(n) for n in layers),
                          stage_s=tuple(stage_s), peak_gib=tuple(p / GIB for p in peaks_b),
                          capacity_gib=tuple(c / GIB for c in self.capacity_b), headroom_gib=self.headroom_b / GIB,
                          step_time_s=pipeline + pp_comm + tail, pipeline_s=pipeline, pp_comm_s=pp_comm,
                          dp_comm_s=tuple(dp_comm), optimizer_s=tuple(opt),
                          fits=all(bool(self.fits_b(s, p)) for s, p in enumerate(peaks_b)))

    def pp_comm_s(self, pace_s: float) -> float:
        """Exposed sends of the pipeline whose slowest stage takes `pace_s` per micro-batch: a chain over several node
        groups spans scale-up domains, so its cross-node hops pace it (as step_time), at the slowest group's link."""
        hops = [float(cross_node_p2p_s(self.shapes, self.one, hw)[0]) for hw in self.rates]
        slow = int(np.argmax(hops))
        return float(pp_comm_s(np.array([hops[slow]]), self.one.microbatches, self.one, self.stack,
                               np.array([pace_s]), self.rates[slow])[0])

    def tail(self, stage: int, n_layers: int) -> tuple[float, float]:
        """(exposed gradient sync, optimizer step) of stage `stage` holding `n_layers` layers, on its own GPUs: what
        it runs after its last backward (step.dp_exposed_s, step.optimizer_step_s). The mix's tail is the stage
        where the two end last; step_time, whose stages share one GPU type, adds the slowest stage's sync and the
        heaviest rank's step."""
        hw, cost, layers = self.rates[stage], self.costs[stage], np.array([float(n_layers)])
        dp = dp_exposed_s(self.shapes, self.one, hw, self.stack, layers, cost.forward_s, cost.backward_s,
                          (cost.comm_slowdown_in, cost.comm_slowdown_out))
        params = stage_params(self.shapes, self.one, layers, stage == 0, stage == self.pp - 1)
        return float(dp[0]), float(optimizer_step_s(params, self.one, hw, self.stack)[0])


def _fp8_bytes(stack: ExecutionStack, all_layouts: bool) -> tuple[float, float]:
    """(fp8 weight copy, fp8-only parameter) bytes per parameter under the stack's fp8 recipe on a GPU that runs fp8
    GEMMs in every layout or not (as estimate's stack_memory: memory.fp8_weight_copy_bytes)."""
    recipe = stack_fp8_recipe(stack)
    return (fp8_weight_copy_bytes(recipe, all_layouts, stack.fp8_weight_copy),
            fp8_weight_copy_bytes(recipe, all_layouts))


MIXED_PINS = frozenset({"tp", "cp", "dp", "pp", "mbs", "recompute", "zero", "precision", "fp8_params", "optimizer",
                        "sp", "flash_attn", "fp32_grads", "bf16_moments", "precision_aware"})
"""Layout keys a pin of which the mixed-GPU pipeline search takes; it prices a 1F1B pipeline of equal-width
stages, balanced layer counts and no experts' or context's variants, so pins of the other keys (vpp, schedule,
ep, stage ends, ...) are named as not applied (mixed_pins_not_applied) rather than silently dropped."""


def mixed_pins_not_applied(fixed: dict) -> tuple[str, ...]:
    """The pinned keys (`plan --fix`) the mixed-GPU pipeline search does not take, sorted."""
    return tuple(sorted(k for k in fixed if k not in MIXED_PINS))


def _mixed_precisions(cluster: Cluster, stack: ExecutionStack, fixed: dict) -> tuple[str, ...]:
    """Precisions the mixed pipeline tries: as the homogeneous search (solver.search.precision_options), fp8 only
    where every GPU type and the stack run it. A pinned fp8 recipe is not applied here (MIXED_PINS: it is named as
    not applied), so it narrows nothing."""
    from clusterplan.solver.search import precision_options  # search imports this module's callers

    return precision_options(cluster, stack, {k: v for k, v in fixed.items() if k != "fp8_recipe"})


def _group_rates(cluster: Cluster, calibration: Calibration | None) -> list[HardwareRates]:
    """Each node group priced alone (its own GPU, scale-up link and NICs)."""
    return [HardwareRates.of(_sub_cluster(cluster, i), calibration) for i in range(len(cluster.groups))]


def mixed_problems(model: ModelSpec, cluster: Cluster, layout: Layout) -> list[Rule]:
    """The rules a mixed-GPU layout breaks: its split is given per stage, so only the even-split rule may break;
    and its precision where a GPU type lacks it (fp8, MXFP8, NVFP4 tensor cores: fp8_hardware_problems)."""
    bf16_layers = ([Rule.broken(RuleCode.BF16_LAYERS, "bf16_first_layers / bf16_last_layers are not priced on a "
                                                      "pipeline across GPU types; set them to 0 or run one GPU type")]
                   if layout.bf16_first_layers or layout.bf16_last_layers else [])
    return (stage_problems(model, layout, cluster.world_size) + bf16_layers
            + fp8_hardware_problems(cluster, layout, layout.fp8_recipe or None))


def choice_time_to_train(plan: HeteroPlan, choice: str, model: ModelSpec, cluster: Cluster, tokens: float,
                         stack: ExecutionStack | None = None) -> dict | None:
    """Expected days and dollars to train `tokens`, failures and checkpoints included (goodput.time_to_train, as the
    table's rows have them), of a mixed cluster's fastest answer (HeteroPlan.best_choice): the balanced pipeline on
    the whole cluster, or the fastest type's nodes alone (they fail less often and cost less per hour). None for
    "ranked": plan #1's row carries its own."""
    stack = stack or get_stack()
    if choice == "one_gpu_type" and plan.fastest_only_layout is not None and plan.fastest_only_step_s is not None:
        where, layout, step_s = plan.fastest_only_cluster(cluster), plan.fastest_only_layout, plan.fastest_only_step_s
    elif choice == "mixed_pipeline":
        where, layout, step_s = cluster, plan.layout, plan.balanced.step_time_s
    else:
        return None
    shapes, arrays = ModelShapes.of(model), LayoutArrays.from_layouts([layout])
    # the checkpoint's bytes (what a save writes) are the layout's whatever its layer split: stack_memory's terms
    memory = stack_memory(shapes, arrays, stack, fp8_all_layouts(where))
    tokens_per_s = np.array([layout.gbs * layout.seq / step_s])
    return time_to_train(tokens, tokens_per_s, shapes, arrays, memory, where).to_json(0)


TRAIN_KEYS = {"time-to-train": "days", "cost-to-train": "usd"}
"""The time_to_train field each to-train objective ranks by (search.py ranks the table's rows alike)."""

CHOICE_ORDER = ("ranked", "one_gpu_type", "mixed_pipeline")
"""Ties go to the simpler answer: plan #1 of the table, then one type's nodes alone, then the balanced pipeline."""


def best_choice_to_train(plan: HeteroPlan, ranked_train: dict | None, objective: str, model: ModelSpec,
                         cluster: Cluster, tokens: float, stack: ExecutionStack | None = None
                         ) -> tuple[str, dict | None]:
    """Which of a mixed cluster's three answers (HeteroPlan.best_choice's) trains `tokens` in the fewest expected
    days (`objective` time-to-train) or dollars (cost-to-train), failures and checkpoints included, with its
    time_to_train (choice_time_to_train; None for "ranked", whose row `ranked_train` is plan #1's own). The fastest
    step is not always the fewest days: the fastest type's nodes alone fail less often. An answer without the number
    (no price) never wins; none with it: ("ranked", None)."""
    key = TRAIN_KEYS[objective]
    trains = {"ranked": ranked_train,
              "one_gpu_type": choice_time_to_train(plan, "one_gpu_type", model, cluster, tokens, stack),
              "mixed_pipeline": choice_time_to_train(plan, "mixed_pipeline", model, cluster, tokens, stack)}

    def value(choice: str) -> float:
        train = trains[choice]
        got = None if train is None else train.get(key)
        return math.inf if got is None else float(got)

    best = min(CHOICE_ORDER, key=lambda c: (value(c), CHOICE_ORDER.index(c)))
    return best, (None if best == "ranked" else trains[best])


def hetero_plan(model: ModelSpec, cluster: Cluster, gbs: int, seq: int, calibration: Calibration | None = None,
                fixed: dict | None = None, stack: ExecutionStack | None = None,
                headroom_gib: float = 0.0) -> HeteroPlan:
    """The best stage-to-type assignment and layer split over tp, cp, dp, micro-batch and recompute, as `stack`
    (None: megatron-core) runs it, every stage keeping `headroom_gib` of its GPU's memory free."""
    stack = stack or get_stack()
    if cluster.is_homogeneous:
        raise InfeasibleError("hetero_plan needs a cluster with more than one GPU type")
    if "1f1b" not in stack.schedules:
        raise InfeasibleError(f"stack {stack.name} runs no 1F1B pipeline, so no pipeline across GPU types; the plans "
                              "above run on the cluster as one type")
    if stack.pp_split != "even":  # stacks.yaml pp_split: the stack places layers itself (nanotron: by block cost)
        raise InfeasibleError(f"stack {stack.name} splits its pipeline by its own rule ({stack.pp_split}) and takes no "
                              "per-stage layer counts to balance across GPU types; the plans above run on the cluster "
                              "as one type")
    if model.is_hybrid:  # layout.hybrid_problems: MambaStack takes first / last stage counts, no per-stage split
        raise InfeasibleError(f"{model.name} is a hybrid Mamba stack, whose pipeline Megatron-Core splits by count "
                              "(first / last stage only), not per stage to balance across GPU types; the plans above "
                              "run on the cluster as one type")
    shapes = ModelShapes.of(model)
    sizes = [g.count * g.gpus_per_node for g in cluster.groups]
    rates = _group_rates(cluster, calibration)
    domain = min(g.gpus_per_node for g in cluster.groups)
    best: tuple[float, Layout, StageSplit, StageSplit | None] | None = None
    fixed = fixed or {}
    optimizer = str(fixed.get("optimizer", "adam-master"))
    # The distributed optimizer where the stack runs it, else its first ZeRO stage that runs beside a pipeline
    # (torchtitan: FSDP, its DDP takes no pipeline: stacks.yaml ddp_alone).
    runs = [z for z in stack.zero_stages if z <= stack.pp_max_zero and not (z == 0 and stack.ddp_alone)]
    zero_stage = int(fixed.get("zero", 1 if stack.can_run("zero", 1) else min(runs or stack.zero_stages)))
    for tp, cp, mbs, recompute, zero, precision in itertools.product(
            [fixed["tp"]] if "tp" in fixed else [t for t in (1, 2, 4, 8) if t <= domain],
            [fixed.get("cp", 1)], [fixed["mbs"]] if "mbs" in fixed else (1, 2, 4),
            [fixed["recompute"]] if "recompute" in fixed else ("none", "full"), [zero_stage],
            _mixed_precisions(cluster, stack, fixed)):
        for dp in (d for d in range(1, min(sizes) + 1) if all(n % (tp * cp * d) == 0 for n in sizes)):
            stages = [n // (tp * cp * dp) for n in sizes]
            pp = sum(stages)
            if pp < 2 or pp > model.n_layers or gbs % (dp * mbs) or fixed.get("dp", dp) != dp \
                    or fixed.get("pp", pp) != pp:
                continue
            # fp8-only parameters wherever they run, as the homogeneous search turns them on (unless pinned).
            fp8_params = bool(fixed.get("fp8_params", stack.keeps_fp8_params
                                        and fp8_params_run(precision, zero, optimizer)))
            if fp8_params and not fp8_params_run(precision, zero, optimizer):
                continue
            layout = Layout(tp=tp, cp=cp, dp=dp, pp=pp, mbs=mbs, gbs=gbs, seq=seq, recompute=recompute, zero=zero,
                            sp=bool(fixed.get("sp", tp > 1 and stack.tp_sequence_parallel)), precision=precision,
                            optimizer=optimizer,
                            fp8_params=fp8_params, flash_attn=bool(fixed.get("flash_attn", True)),
                            fp32_grads=bool(fixed.get("fp32_grads", True)),
                            bf16_moments=bool(fixed.get("bf16_moments", False)),
                            precision_aware=bool(fixed.get("precision_aware", True)))
            # The balanced split is uneven by design: only the even-split rule may break; and only what the stack
            # runs (a pipeline at all, ZeRO with pp, tensor parallelism beside it).
            if mixed_problems(model, cluster, layout) or stack_problems(layout, stack):
                continue
            one = LayoutArrays.from_layouts([layout])
            costs = [layer_cost(shapes, one, hw, stack) for hw in rates]
            for order_idx in itertools.permutations(range(len(cluster.groups))):
                stage_group = [g for g in order_idx for _ in range(stages[g])]
                result = _try_order(_Pipeline.of(stage_group, cluster, costs, rates, shapes, one, headroom_gib,
                                                 stack))
                if result and (best is None or result[0].step_time_s < best[0]):
                    best = (result[0].step_time_s, layout, result[0], result[1])
    if best is None:
        pinned = ", ".join(f"{k}={fixed[k]}" for k in sorted(fixed) if k in MIXED_PINS)
        raise InfeasibleError(f"no pipeline split of {model.name} fits the GPU types of {cluster.describe()} with "
                              f"{headroom_gib:g} GiB headroom per GPU" + (f" and {pinned}" if pinned else "")
                              + "; lower --headroom-gib, unpin, or add nodes")
    _, layout, balanced, even = best
    # The fastest type alone: the best plan on any one group's nodes (types of one GEMM rate differ in memory and
    # bandwidth), with the same pins but its own structure (dp and pp are the mix's).
    fast_fixed = {k: v for k, v in fixed.items() if k not in ("dp", "pp")}
    alone = [(*_fastest_only(model, _sub_cluster(cluster, i), gbs, seq, calibration, stack, headroom_gib, fast_fixed),
              g.gpu.name) for i, g in enumerate(cluster.groups)]
    fast_step, fast_layout, fast_gpu = min((a for a in alone if a[0] is not None), key=lambda a: a[0],
                                           default=(None, None, None))
    return HeteroPlan(layout=layout, balanced=balanced, even=even, fastest_only_step_s=fast_step,
                      fastest_only_layout=fast_layout, fastest_only_gpu=fast_gpu,
                      pins_not_applied=mixed_pins_not_applied(fixed))


def _try_order(pipe: _Pipeline) -> tuple[StageSplit, StageSplit] | None:
    n_layers, pp = pipe.shapes.n_layers, pipe.pp
    caps = pipe.caps()
    if min(caps) < 1:
        return None
    layers = _balance(list(pipe.per_layer_s), caps, n_layers, pipe.head_s[-1], pipe.embed_s[0])
    if layers is None:
        return None
    even_layers = [n_layers // pp + (1 if s < n_layers % pp else 0) for s in range(pp)]
    return pipe.split(layers), pipe.split(even_layers)


def evaluate_stages(model: ModelSpec, cluster: Cluster, layout: Layout, stages: tuple[PipelineStage, ...],
                    calibration: Calibration | None = None, stack: ExecutionStack | None = None,
                    headroom_gib: float = 0.0) -> StageSplit:
    """Per-stage memory and the step time of a given mixed-GPU split (a plan file's `stages:`), priced exactly as
    hetero_plan prices the split it chose. The layout must pass mixed_problems."""
    stack = stack_for(layout, stack or get_stack())  # the layout's fp8 recipe, as estimate runs it
    groups = stage_groups(model, cluster, layout, stages)
    shapes = ModelShapes.of(model)
    one = LayoutArrays.from_layouts([layout])
    rates = _group_rates(cluster, calibration)
    costs = [layer_cost(shapes, one, hw, stack) for hw in rates]
    return _Pipeline.of(list(groups), cluster, costs, rates, shapes, one, headroom_gib, stack).split(
        [st.layers for st in stages])


def _fastest_only(model, sub: Cluster, gbs: int, seq: int, calibration, stack: ExecutionStack,
                  headroom_gib: float, fixed: dict) -> tuple[float | None, Layout | None]:
    from clusterplan.solver.search import search

    try:
        result = search(model, sub, gbs, seq, fixed=fixed, top=1, calibration=calibration, stack=stack,
                        headroom_gib=headroom_gib, suggest=False)
    except (InfeasibleError, BadInputError):  # a pin the fastest type's nodes alone cannot take: nothing to compare
        return None, None
    return result.plans[0].to_json()["step_time_s"], result.plans[0].layout


__all__ = ["MIXED_PINS", "HeteroPlan", "StageSplit", "evaluate_stages", "hetero_plan", "mixed_pins_not_applied",
           "mixed_problems", "step_time"]
