"""Layout: one parallel layout of a training job (the "plan" input, never mixed with model or cluster).

Mesh axes are named once, in torchtitan's order; tp is innermost (fastest-varying rank):
    pp, dp_replicate, dp_shard, cp, tp        world = pp * dp * cp * tp, dp = dp_replicate * dp_shard
Expert parallelism folds over dp_shard * cp * tp (ep * etp must divide it), as in torchtitan and Megatron-Core.

    Layout.parse("tp=8,pp=4,mbs=1,gbs=512,seq=8192,recompute=selective", world=256)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from clusterplan.errors import BadInputError, InfeasibleError
from clusterplan.hardware_db.stacks import FP8_RECIPES, ExecutionStack
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.training.rules import FIXES, Rule, RuleCode

MESH_AXES = ("pp", "dp_replicate", "dp_shard", "cp", "tp")
Recompute = Literal["none", "selective", "full"]
Schedule = Literal["gpipe", "1f1b", "interleaved-1f1b", "zb", "zbv", "dualpipe"]
Precision = Literal["bf16", "fp16", "fp8", "fp32"]
Optimizer = Literal["adam-master", "adam", "sgd"]
CpKind = Literal["ring", "a2a", "allgather", "a2a+p2p"]
CudaGraphs = Literal["none", "attn", "full"]
MoeDispatcher = Literal["alltoall", "deepep", "hybridep"]

MAX_INT = 2**53
"""Largest degree, batch or length accepted: the cost model computes in float64, exact up to here."""
MAX_STEP_TOKENS = 10**12
"""Most tokens one training step may hold (gbs x seq): the README's 10^12 tokens per request, about 16,000x the largest
published batch (DeepSeek-V3's 15,360 x 4,096 = 63 M); more is a typo, priced as years per step."""


def check_step_tokens(gbs: int, seq: int, what: str) -> None:
    """Refuse a batch of more than MAX_STEP_TOKENS tokens per step (`what` names the options or keys given)."""
    if gbs * seq > MAX_STEP_TOKENS:
        raise BadInputError(f"{what}: gbs x seq = {gbs:,} x {seq:,} = {gbs * seq:,} tokens per step, over the "
                            "10^12 a step may hold; give a smaller gbs or seq")
CHOICES: dict[str, tuple[str, ...]] = {
    "recompute": ("none", "selective", "full"),
    "schedule": ("gpipe", "1f1b", "interleaved-1f1b", "zb", "zbv", "dualpipe"),
    "precision": ("bf16", "fp16", "fp8", "fp32"),
    "optimizer": ("adam-master", "adam", "sgd"),
    "cp_kind": ("ring", "a2a", "allgather", "a2a+p2p"),
    "cuda_graphs": ("none", "attn", "full"),
    "moe_dispatcher": ("alltoall", "deepep", "hybridep"),
}
RECOMPUTE_MODULES = ("core_attn", "moe_act", "layernorm", "mla_up_proj", "mlp", "moe", "shared_experts")
"""Megatron-Core's selective recompute modules (TransformerConfig.recompute_modules, --recompute-modules): core
attention, the experts' activation, norms not fused into a linear, MLA's q/kv up-projections, the dense MLP, the whole
MoE block, the shared experts. Bit i of LayoutArrays.recompute_modules is module i."""


def recompute_modules_mask(text: str) -> int:
    """Bitmask of a '+'-separated module list (RECOMPUTE_MODULES order); '' = 0 (the stack's selective default)."""
    mask = 0
    for name in filter(None, (m.strip() for m in text.split("+"))):
        if name not in RECOMPUTE_MODULES:
            raise BadInputError(f"layout: recompute_modules {name!r} is not a module; use '+'-separated names from "
                                f"{', '.join(RECOMPUTE_MODULES)}")
        mask |= 1 << RECOMPUTE_MODULES.index(name)
    return mask


def recompute_modules_text(mask: int) -> str:
    """The canonical '+'-separated list of a bitmask (RECOMPUTE_MODULES order)."""
    return "+".join(m for i, m in enumerate(RECOMPUTE_MODULES) if mask >> i & 1)


MAX_IMBALANCE = 1024.0
"""Most Layout.moe_imbalance can be on any model: the busiest of ep ranks holds at most ep times the mean, and ep is at
most n_experts (no model has 1,024 experts per layer); each model's own bound is the IMBALANCE rule."""


def fp8_params_run(precision: str, zero: int, optimizer: str) -> bool:
    """Where fp8-only parameters (Layout.fp8_params) can run: fp8 training (the parameters are fp8 tensors only under
    an fp8 recipe), the distributed optimizer or FSDP (Megatron-LM arguments.py: "--fp8-param-gather only supported
    with distributed optimizer, torch fsdp2, megatron fsdp") and adam-master (its fp32 master shard is the weights'
    only high-precision copy)."""
    return precision == "fp8" and zero >= 1 and optimizer == "adam-master"


def cp_label(cp: int, cp_kind: str, cp_a2a: int) -> str:
    """A layout's context parallelism in its labels (Layout.short, plan tables): cp16, cp16a2a, cp16a2a4+p2p4."""
    kind = f"a2a{cp_a2a}+p2p{cp // cp_a2a}" if cp_kind == "a2a+p2p" else "" if cp_kind == "ring" else cp_kind
    return f"cp{cp}{kind}"


def precision_label(precision: str, fp8_recipe: str, fp8_params: bool) -> str:
    """A layout's precision in its labels: fp8, fp8:mxfp8, fp8:nvfp4, fp8-params (fp8 weights kept between steps)."""
    return (precision + (f":{fp8_recipe}" if fp8_recipe else "")
            + ("-params" if fp8_params and precision == "fp8" else ""))


def bf16_layers_label(first: int, last: int) -> str:
    """The short label of layers kept in bf16 under fp8 (Layout.bf16_first_layers / bf16_last_layers): "" = none."""
    return f"bf16-layers:{first}+{last}" if first or last else ""


def named_fp8_recipe(layout: Layout, stack: ExecutionStack) -> str:
    """The fp8 recipe `layout` runs on `stack`: its own, else the stack's first; "" for a layout that is not fp8 or
    a stack without fp8."""
    if layout.precision != "fp8":
        return ""
    return layout.fp8_recipe or (stack.fp8_recipes[0] if stack.fp8_recipes else "")


def canonical_fp8_recipe(recipe: str | None, stack: ExecutionStack) -> str:
    """Layout.fp8_recipe's one spelling of `recipe` on `stack`: "" where it is the stack's first (its default)."""
    return "" if not recipe or (stack.fp8_recipes and recipe == stack.fp8_recipes[0]) else recipe


def stack_for(layout: Layout, stack: ExecutionStack) -> ExecutionStack:
    """`stack` running the layout's fp8 recipe (ExecutionStack.running), where the layout trains in fp8."""
    return stack.running(layout.fp8_recipe) if layout.precision == "fp8" else stack


REMAINDER_FP8_RECIPES = ("delayed", "nvfp4")
"""fp8 recipes under which Megatron-Core keeps the master remainders: OptimizerConfig.__post_init__ sets
use_precision_aware_optimizer_no_fp8_or_ds_fp8 only for fp8_recipe None or "delayed" (with fp32 main parameters),
and without it distrib_optimizer.py keeps a full fp32 clone of each shard; NVFP4 runs with --fp8-recipe at
Megatron-LM's default, delayed."""


def keeps_master_remainders(layout: Layout, fp8_recipe: str = "") -> bool:
    """Where Layout.precision_aware matters: the distributed optimizer (zero 1) updating bf16 parameters with
    Megatron's adam (fp32 master weights), which the precision-aware optimizer keeps as 2-byte remainders
    (megatron/core/optimizer/distrib_optimizer.py: `store_param_remainders and self.config.bf16`), in bf16 training or
    under an fp8 recipe of REMAINDER_FP8_RECIPES (`fp8_recipe`: the one the layout runs, named_fp8_recipe);
    fp8-only parameters keep a full master either way."""
    L = layout
    if not (L.zero == 1 and L.optimizer == "adam-master"):
        return False
    return L.precision == "bf16" or (L.precision == "fp8" and fp8_recipe in REMAINDER_FP8_RECIPES
                                     and not L.fp8_params)


def megatron_keeps_remainders(layout: Layout) -> bool:
    """keeps_master_remainders as megatron-core runs the layout (its fp8 recipe, else the stack's first)."""
    from clusterplan.hardware_db.stacks import get_stack  # the stack whose distributed optimizer keeps them

    return keeps_master_remainders(layout, named_fp8_recipe(layout, get_stack("megatron-core")))


def bf16_moments_run(zero: int, optimizer: str) -> bool:
    """Where bf16 Adam moments (Layout.bf16_moments) can run: Megatron-Core OptimizerConfig.__post_init__ asserts
    "--use-precision-aware-optimizer only supported with adam" (Megatron's adam keeps fp32 master weights:
    adam-master) and "... only supported with distributed optimizer" (zero >= 1)."""
    return zero >= 1 and optimizer == "adam-master"


@dataclass(frozen=True, kw_only=True, slots=True)
class Layout:
    dp: int = 1
    """Data-parallel degree (replicate x shard)."""
    dp_replicate: int = 1
    """Replicated part of dp (HSDP); the rest, dp // dp_replicate, is the sharded part."""
    tp: int = 1
    pp: int = 1
    vpp: int = 1
    """Virtual pipeline stages (model chunks) per pipeline rank; > 1 with the interleaved schedule."""
    cp: int = 1
    cp_kind: CpKind = "ring"
    """Context parallel exchange: ring attention (p2p of K/V blocks), all-to-all (Ulysses), an all-gather of K/V
    (Megatron --cp-comm-type allgather, torchtitan's default rotate method), or Megatron's hierarchical a2a+p2p: an
    all-to-all inside groups of cp_a2a ranks, a ring across the cp / cp_a2a groups."""
    cp_a2a: int = 1
    """With cp_kind=a2a+p2p: ranks of each all-to-all group (Megatron --hierarchical-context-parallel-sizes cp_a2a
    cp/cp_a2a: adjacent CP ranks, e.g. those inside one node); 1 otherwise."""
    ep: int = 1
    etp: int = 1
    """Tensor parallelism inside each expert."""
    flash_attn: bool = True
    """Fused (flash) attention: no s^2 score matrix is stored and the causal half is skipped."""
    sp: bool | None = None
    """Megatron sequence parallelism (norms/dropout sharded over tp; all-gather/reduce-scatter). Unset: on when
    tp > 1, as Megatron-Core, torchtitan and NeMo recipes run TP; give sp=0 to pin it off."""
    zero: int = 1
    """0 = DDP, 1 = optimizer states sharded (distributed optimizer), 2 = + gradients, 3 = + weights (FSDP)."""
    mbs: int = 1
    """Micro-batch size in sequences."""
    gbs: int = 512
    """Global batch size in sequences per optimizer step."""
    seq: int = 4096
    """Sequence length in tokens."""
    recompute: Recompute = "selective"
    recompute_layers: int = 0
    """With recompute=full: layers per pipeline rank that recompute (0 = all)."""
    schedule: Schedule = "1f1b"
    precision: Precision = "bf16"
    fp8_recipe: str = ""
    """With precision=fp8: the scaling recipe its GEMMs run (hardware_db.stacks.FP8_RECIPES: tensorwise = Transformer
    Engine per-tensor current scaling, delayed, mxfp8 = 1x32 microscaling on Blackwell, blockwise = DeepSeek-V3's
    1x128 / 128x128 tiles, rowwise = torchao's); "" = the stack's first (stacks.yaml fp8_recipes, e.g. tensorwise for
    megatron-core). Megatron-LM --fp8-recipe; a `plan` searches the stack's first unless pinned (--fix fp8_recipe=X)."""
    bf16_first_layers: int = 0
    """With precision=fp8: the model's first layers that keep their GEMMs in bf16 (Megatron-Core
    first_last_layers_bf16 with num_layers_at_start_in_bf16: fp8_utils.get_fp8_context / fp4_utils.get_fp4_context
    return a null context for them); 0 = none. Counted in global layer order (a hybrid's pattern characters)."""
    bf16_last_layers: int = 0
    """With precision=fp8: the model's last layers kept in bf16 (num_layers_at_end_in_bf16; Megatron-Bridge's
    Nemotron 3 Super NVFP4 recipe keeps 14); 0 = none."""
    optimizer: Optimizer = "adam-master"
    first_stage_layers: int = 0
    """Layers on the first pipeline stage (0 = even split); the embedding lives there too."""
    last_stage_layers: int = 0
    """Layers on the last pipeline stage (0 = even split); the LM head and loss live there."""
    pp_layers: tuple[int, ...] = ()
    """Transformer layers of each pipeline rank, all its virtual chunks together (torchtitan's per-stage module
    lists, Megatron-Core's --pipeline-model-parallel-layout, nanotron's cost-balanced split): pp counts summing to
    n_layers; the first rank also holds the embedding, the last the LM head and loss (either may hold 0 layers).
    Empty = first_stage_layers / last_stage_layers and the rest split evenly. Priced exactly for the slowest rank's
    time; the middle ranks' memory at the heaviest middle rank with the second rank's micro-batches in flight (the
    most any middle rank holds under 1F1B), an upper bound."""
    recompute_modules: str = ""
    """With recompute=selective: Megatron-Core's recompute modules, '+'-separated (e.g. mla_up_proj+moe_act, see
    RECOMPUTE_MODULES); empty = the stack's own selective recompute (Megatron core_attn, torchtitan op-level SAC)."""
    fp32_grads: bool = True
    """adam-master main gradients in fp32 (Megatron-LM forces --accumulate-allreduce-grads-in-fp32 with bf16);
    false = in the parameter dtype, as NeMo / Megatron-Bridge performance recipes run (grad_reduce_in_fp32=False)."""
    fp8_params: bool = False
    """Parameters kept in fp8 only (Megatron-LM --fp8-param-gather, Transformer Engine fp8_model_init; on in every
    Megatron-Bridge / NeMo fp8 recipe: tensorwise, delayed, mxfp8): no bf16 copy beside TE's fp8 one, the distributed
    optimizer's fp32 master shard requantised each step and all-gathered in fp8 (MXFP8: in bf16 through the gradient
    buffer). Needs precision=fp8 and the distributed optimizer or FSDP (zero >= 1); false = Megatron-LM's default."""
    bf16_moments: bool = False
    """Adam's first and second moments kept in bf16, the fp32 master and main gradients unchanged (Megatron-Core
    --use-precision-aware-optimizer --exp-avg-dtype bf16 --exp-avg-sq-dtype bf16 through Transformer Engine's
    FusedAdam; DeepSeek-V3, arXiv 2412.19437 Sec. 3.3.3; the Megatron-MoE-ModelZoo launcher sets it on every fp8 and
    MXFP8 run): 4 B of optimizer state per parameter instead of 8. Needs Megatron's adam (adam-master) and the
    distributed optimizer (zero >= 1: OptimizerConfig.__post_init__ asserts both); false = fp32 moments."""
    precision_aware: bool = True
    """Megatron-Core's precision-aware optimizer (--use-precision-aware-optimizer: Transformer Engine's FusedAdam).
    Under the distributed optimizer (zero 1) with bf16 parameters it keeps each fp32 master weight as the 2 low bytes
    beside the bf16 parameter (OptimizerConfig.store_param_remainders, passed to FusedAdam only inside `if
    config.use_precision_aware_optimizer`, megatron/core/optimizer/__init__.py): 10 B of optimizer state instead of
    12. Default true, so plans count on the remainders and the Megatron-LM export writes the flag; false =
    Megatron-LM's default, a full fp32 master shard (what `check` reads from a config without the flag, or where
    the fp8 recipe turns the remainders off: layout.keeps_master_remainders). No effect on other stacks, at other
    ZeRO stages, under fp8 recipes other than delayed or with fp8-only parameters; bf16_moments needs it."""
    offload_layers: int = 0
    """Layers whose activations are offloaded to host memory between forward and backward (Megatron-Core
    cpu_offloading_num_layers; pipeline parallelism 1 only)."""
    cuda_graphs: CudaGraphs = "none"
    """CUDA graphs (Megatron-Core cuda_graph_impl / cuda_graph_scope): none = eager, every kernel launched by the host;
    attn = Transformer Engine graphs of the attention block (scope attn); full = the whole iteration captured
    (cuda_graph_impl local, scope full_iteration; MoE layers then run the dispatcher's drop-and-pad path, no host
    sync). Prices the host time of MoE layers (models/training/host.py)."""
    moe_dispatcher: MoeDispatcher = "alltoall"
    """MoE token dispatcher (Megatron-Core --moe-token-dispatcher-type alltoall, or flex with
    --moe-flex-dispatcher-backend deepep | hybridep): alltoall = NCCL all-to-all of every routed token copy; deepep /
    hybridep send a token once per destination GPU (once per destination node over RDMA, then NVLink forwarding)
    on communication kernels that hold SMs (models/training/dispatch.py)."""
    moe_a2a_overlap: bool = False
    """Megatron-Core's 1F1B all-to-all overlap (--overlap-moe-expert-parallel-comm): one micro-batch's forward and
    another's backward run merged layer by layer, each one's all-to-alls under the other's compute
    (megatron/core/pipeline_parallel/combined_1f1b.py; models/training/dispatch.py)."""
    moe_capacity_factor: float | None = None
    """Token-dropping MoE (Megatron-Core --moe-expert-capacity-factor C with --moe-pad-expert-input-to-capacity, the
    drop-and-pad path; Megatron-Bridge apply_moe_token_drop: C = 1.0 with padding): each expert takes exactly
    capacity = ceil(C x tokens x top_k / n_experts) rows of every rank's tokens, the rest dropped, the gaps padded;
    no device-to-host sync, so full-iteration CUDA graphs capture it. None = dropless (every routed token reaches its
    experts). Padding is implied: a capacity factor without it keeps the dropless path's sync and, under the balanced
    routing priced here, its row count (models/training/moe_layer.py capacity_rows)."""
    moe_imbalance: float = 1.0
    """Routed token-expert rows the busiest expert-parallel rank receives over the mean, dropless (>= 1). 1.0 =
    force-balanced routing (Megatron-Core --moe-router-force-load-balancing), as NVIDIA's MoE benchmarks run; a run
    whose router learns (aux-loss or bias balancing) waits at every MoE layer for its busiest rank: that rank's expert
    GEMMs, their activations, sorts and all-to-all bytes are priced at this multiple (moe_layer.busiest_rank_ratio;
    moe_layer.DROPLESS_IMBALANCE_EARLY is what one early-training run measured). No effect with ep 1 (one rank holds
    every expert and waits for no other) or on the drop-and-pad path (moe_capacity_factor), which pads every expert
    to its capacity."""

    def __post_init__(self) -> None:
        for name in ("dp", "dp_replicate", "tp", "pp", "vpp", "cp", "cp_a2a", "ep", "etp", "mbs", "gbs", "seq"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BadInputError(f"layout: {name} must be a positive integer, got {value!r}")
            if value > MAX_INT:
                raise BadInputError(f"layout: {name}({value}) is over 2**53; check the value")
        check_step_tokens(self.gbs, self.seq, "layout")
        for name in ("recompute_layers", "first_stage_layers", "last_stage_layers", "offload_layers",
                     "bf16_first_layers", "bf16_last_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0 or value > MAX_INT:
                raise BadInputError(f"layout: {name} must be an integer >= 0 (and <= 2**53), got {value!r}")
        object.__setattr__(self, "pp_layers", parse_pp_layers(self.pp_layers, "layout: pp_layers"))
        if self.sp is None:
            object.__setattr__(self, "sp", isinstance(self.tp, int) and self.tp > 1)
        for name in ("sp", "flash_attn", "fp32_grads", "fp8_params", "bf16_moments", "precision_aware",
                     "moe_a2a_overlap"):
            if not isinstance(getattr(self, name), bool):
                raise BadInputError(f"layout: {name} must be true or false, got {getattr(self, name)!r}")
        if self.bf16_moments and not self.precision_aware:
            raise BadInputError("layout: bf16_moments needs precision_aware=1 (the precision-aware optimizer keeps "
                                "Adam's moments in bf16); set precision_aware=1 or bf16_moments=0")
        cf = self.moe_capacity_factor
        if cf is not None:
            if isinstance(cf, bool) or not isinstance(cf, int | float) or not math.isfinite(cf) or cf <= 0:
                raise BadInputError(f"layout: moe_capacity_factor must be a number > 0 (e.g. 1.0) or unset for "
                                    f"dropless MoE, got {cf!r}")
            object.__setattr__(self, "moe_capacity_factor", float(cf))
        imb = self.moe_imbalance
        if (isinstance(imb, bool) or not isinstance(imb, int | float) or not math.isfinite(imb) or imb < 1
                or imb > MAX_IMBALANCE):
            raise BadInputError(f"layout: moe_imbalance must be a number from 1 to {MAX_IMBALANCE:g} (busiest "
                                f"expert-parallel rank's tokens over the mean; 1 = force-balanced), got {imb!r}")
        object.__setattr__(self, "moe_imbalance", float(imb))
        if self.zero not in (0, 1, 2, 3):
            raise BadInputError(f"layout: zero must be 0, 1, 2 or 3 (3 = FSDP), got {self.zero!r}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise BadInputError(f"layout: {name}={getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if self.cp_a2a != 1 and self.cp_kind != "a2a+p2p":
            raise BadInputError(f"layout: cp_a2a={self.cp_a2a} is the all-to-all group of cp_kind=a2a+p2p, got "
                                f"cp_kind={self.cp_kind}; set cp_kind=a2a+p2p or drop cp_a2a")
        if self.fp8_recipe not in ("", *FP8_RECIPES):
            raise BadInputError(f"layout: fp8_recipe={self.fp8_recipe!r}; choose one of {', '.join(FP8_RECIPES)} "
                                "(or leave it out for the stack's first)")
        if self.fp8_recipe and self.precision != "fp8":
            raise BadInputError(f"layout: fp8_recipe={self.fp8_recipe} needs precision=fp8, got "
                                f"precision={self.precision}; set precision=fp8 or drop fp8_recipe")
        if (self.bf16_first_layers or self.bf16_last_layers) and self.precision != "fp8":
            raise BadInputError(f"layout: bf16_first_layers / bf16_last_layers keep layers out of fp8 and need "
                                f"precision=fp8, got precision={self.precision}; set precision=fp8 or drop them")
        if not isinstance(self.recompute_modules, str):
            raise BadInputError(f"layout: recompute_modules must be '+'-separated names, got {self.recompute_modules!r}")
        object.__setattr__(self, "recompute_modules", recompute_modules_text(recompute_modules_mask(self.recompute_modules)))
        if self.recompute_modules and self.recompute != "selective":
            raise BadInputError(f"layout: recompute_modules={self.recompute_modules} needs recompute=selective, "
                                f"got recompute={self.recompute}")
        if self.offload_layers and self.pp > 1:
            raise BadInputError(f"layout: offload_layers({self.offload_layers}) needs pp = 1 (Megatron-Core has no "
                                "activation offloading with pipeline parallelism); set offload_layers=0 or pp=1")
        if self.dp % self.dp_replicate:
            raise BadInputError(f"layout: dp({self.dp}) % dp_replicate({self.dp_replicate}) != 0; pick a "
                                f"dp_replicate that divides dp (HSDP replicas of dp / dp_replicate shards each)")

    # ---- derived ----------------------------------------------------------------------------
    @property
    def dp_shard(self) -> int:
        return self.dp // self.dp_replicate

    @property
    def world(self) -> int:
        return self.pp * self.dp * self.cp * self.tp

    @property
    def microbatches(self) -> int:
        """Micro-batches per pipeline per step (gradient accumulation steps when pp = 1)."""
        return max(1, self.gbs // (self.dp * self.mbs))

    @property
    def tokens_per_step(self) -> int:
        return self.gbs * self.seq

    def mesh(self) -> dict[str, int]:
        """Mesh degrees in torchtitan order (pp, dp_replicate, dp_shard, cp, tp)."""
        return {"pp": self.pp, "dp_replicate": self.dp_replicate, "dp_shard": self.dp_shard, "cp": self.cp,
                "tp": self.tp}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["cuda_graphs"] == "none":  # left out at its default: layouts without it serialise as before
            del out["cuda_graphs"]
        if not out["fp8_params"]:
            del out["fp8_params"]
        if not out["fp8_recipe"]:  # the stack's first: left out, so layouts without one serialise as before
            del out["fp8_recipe"]
        if out["cp_a2a"] == 1:
            del out["cp_a2a"]
        if not out["bf16_moments"]:
            del out["bf16_moments"]
        if out["precision_aware"]:  # at its default: layouts without it serialise as before
            del out["precision_aware"]
        for name in ("bf16_first_layers", "bf16_last_layers"):  # 0: left out, so other layouts serialise as before
            if not out[name]:
                del out[name]
        if out["moe_dispatcher"] == "alltoall":  # likewise at their defaults
            del out["moe_dispatcher"]
        if not out["moe_a2a_overlap"]:
            del out["moe_a2a_overlap"]
        if out["moe_capacity_factor"] is None:
            del out["moe_capacity_factor"]
        if out["moe_imbalance"] == 1.0:
            del out["moe_imbalance"]
        if out["pp_layers"]:
            out["pp_layers"] = list(out["pp_layers"])
        else:
            del out["pp_layers"]
        return out

    def short(self) -> str:
        parts = [f"tp{self.tp}", f"pp{self.pp}" + (f"v{self.vpp}" if self.vpp > 1 else ""), f"dp{self.dp}"]
        if self.dp_replicate > 1:
            parts[-1] += f"({self.dp_replicate}x{self.dp_shard})"
        if self.cp > 1:
            parts.append(cp_label(self.cp, self.cp_kind, self.cp_a2a))
        if self.ep > 1:
            parts.append(f"ep{self.ep}" + (f"etp{self.etp}" if self.etp > 1 else ""))
        parts += [f"mbs{self.mbs}", f"z{self.zero}", self.recompute[:3] + ("+sp" if self.sp else "")]
        if self.precision != "bf16":
            parts.append(precision_label(self.precision, self.fp8_recipe, self.fp8_params))
        if self.fp8_params and self.precision != "fp8":
            parts.append("fp8-params")
        if self.bf16_first_layers or self.bf16_last_layers:
            parts.append(bf16_layers_label(self.bf16_first_layers, self.bf16_last_layers))
        if self.bf16_moments:
            parts.append("bf16-moments")
        if not self.precision_aware and megatron_keeps_remainders(self):
            parts.append("fp32-master")
        if self.cuda_graphs != "none":
            parts.append(f"graphs:{self.cuda_graphs}")
        if self.moe_dispatcher != "alltoall":
            parts.append(self.moe_dispatcher)
        if self.moe_a2a_overlap:
            parts.append("a2a-overlap")
        if self.moe_capacity_factor is not None:
            parts.append(f"drop{self.moe_capacity_factor:g}")
        if self.moe_imbalance != 1.0:
            parts.append(f"imbalance{self.moe_imbalance:g}")
        if self.pp_layers:
            parts.append("layers " + "/".join(map(str, self.pp_layers)))
        return " ".join(parts)

    # ---- parsing ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, world: int | None = None, where: str = "layout") -> Layout:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInputError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known: "
                                f"{', '.join(sorted(known))}")
        values = dict(data)
        for key in ("tp", "pp", "cp", "vpp"):  # read below, before __post_init__ checks them
            value = values.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BadInputError(f"{where}: {key} must be a positive integer, got {value!r}")
        if "dp" not in values and world is not None:
            inner = values.get("tp", 1) * values.get("pp", 1) * values.get("cp", 1)
            if world % inner:
                raise InfeasibleError(
                    f"{where}: tp({values.get('tp', 1)}) * pp({values.get('pp', 1)}) * cp({values.get('cp', 1)}) "
                    f"= {inner} does not divide world({world}); use degrees whose product divides {world}, or a "
                    f"cluster whose GPU count is a multiple of {inner}")
            values["dp"] = world // inner
        if values.get("schedule") is None and values.get("vpp", 1) > 1:
            values["schedule"] = "interleaved-1f1b"
        if ((values.get("fp8_recipe") or values.get("bf16_first_layers") or values.get("bf16_last_layers"))
                and "precision" not in values):  # a recipe, or layers kept out of fp8, name fp8 training
            values["precision"] = "fp8"
        return cls(**values)

    @classmethod
    def parse(cls, text: str, *, world: int | None = None, defaults: Mapping[str, Any] | None = None,
              option: str = "--layout") -> Layout:
        """Parse `key=value,key=value`; keys as the fields; booleans as 0/1/true/false. `defaults` fill the keys
        the text does not give (e.g. the stack's own ZeRO stage) before the fields' defaults. `option` is what the
        errors name (plan's --fix takes the same keys)."""
        types = {f.name: f.type for f in fields(cls)}
        data: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key:
                raise BadInputError(f"{option}: {item!r} is not key=value (e.g. tp=8,pp=4,mbs=1)")
            if key not in types:
                raise BadInputError(f"{option}: unknown key {key!r}; known: {', '.join(sorted(types))}")
            if key in data:
                raise BadInputError(f"{option}: {key} is given twice; give each key once")
            data[key] = _convert(key, value, str(types[key]), option)
        return cls.from_dict({**(defaults or {}), **data}, world=world, where=option)

    def with_(self, **changes: Any) -> Layout:
        return replace(self, **changes)


def parse_pp_layers(value: Any, where: str) -> tuple[int, ...]:
    """Layout.pp_layers from a list / tuple of counts or text `6/5/5/0` (what --layout and --fix take)."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace(":", "/").split("/")] if value.strip() else []
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise BadInputError(f"{where}: {value!r} must be layer counts per pipeline rank separated by '/', "
                                "e.g. 6/5/5/0") from None
    if not isinstance(value, list | tuple) or any(isinstance(n, bool) or not isinstance(n, int) or n < 0
                                                  or n > MAX_INT for n in value):
        raise BadInputError(f"{where}: must be layer counts >= 0, one per pipeline rank (e.g. 6/5/5/0), got "
                            f"{value!r}")
    return tuple(value)


def _convert(key: str, value: str, type_name: str, option: str) -> Any:
    if key == "pp_layers":
        return parse_pp_layers(value, f"{option}: pp_layers")
    if type_name.startswith("bool"):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise BadInputError(f"{option}: {key}={value!r} must be 0/1 or true/false")
    if type_name == "int":
        try:
            return int(value)
        except ValueError:
            raise BadInputError(f"{option}: {key}={value!r} must be an integer") from None
    if type_name.startswith("float"):
        if value.lower() in ("none", "dropless", ""):
            return None
        try:
            return float(value)
        except ValueError:
            raise BadInputError(f"{option}: {key}={value!r} must be a number (e.g. 1.0) or none") from None
    return value


def stage_layers(model: ModelSpec, layout: Layout) -> tuple[int, int, int]:
    """Transformer layers on the (first, middle, last) pipeline ranks, all virtual chunks together."""
    return layer_split(model.n_layers, layout)


def layer_split(n: int, layout: Layout) -> tuple[int, int, int]:
    """stage_layers for a model of `n` layers."""
    pp = layout.pp
    if pp == 1:
        return n, n, n
    if layout.pp_layers:  # the heaviest middle rank stands for the middle (Layout.pp_layers); none at pp 2
        ranks = layout.pp_layers
        return ranks[0], max(ranks[1:-1], default=0), ranks[-1]
    first, last = layout.first_stage_layers, layout.last_stage_layers
    if not first and not last:
        per = n // pp
        return per, per, per
    middle_total = n - (first or 0) - (last or 0)
    n_middle = pp - (1 if first else 0) - (1 if last else 0)
    per = middle_total // n_middle if n_middle else 0
    return (first or per), per, (last or per)


def rank_layer_counts(model: ModelSpec, layout: Layout) -> list[int]:
    """Transformer layers of each pipeline rank, all its virtual chunks together: Layout.pp_layers as given, else the
    first / middle / last split (stage_layers) written out rank by rank."""
    if layout.pp > 1 and layout.pp_layers:
        return list(layout.pp_layers)
    if layout.pp == 1:
        return [model.n_layers]
    first, middle, last = stage_layers(model, layout)
    return [first, *([middle] * (layout.pp - 2)), last]


def chunk_layers(model: ModelSpec, layout: Layout) -> list[int]:
    """Transformer layers of each model chunk in model order; chunk c runs on pipeline rank c % pp.

    Megatron-LM interleaving (Narayanan et al. 2021, Sec. 2.2): rank r holds chunks r, r + pp, r + 2pp, ... Middle
    ranks split evenly; a first or last rank that holds fewer (or more) layers takes the difference in the chunk
    with the embedding (chunk 0) or the head (the last chunk), as Megatron's --pipeline-model-parallel-layout does.
    """
    return chunk_layer_counts(model.n_layers, layout)


def chunk_layer_counts(n_layers: int, layout: Layout) -> list[int]:
    """chunk_layers for a model of `n_layers` layers (all it reads of the model)."""
    pp, vpp = layout.pp, layout.vpp
    if pp == 1:
        return [n_layers]
    first, middle, last = layer_split(n_layers, layout)
    uneven = layout.first_stage_layers or layout.last_stage_layers or layout.pp_layers
    per_chunk = middle // vpp if pp > 2 or not uneven else max(first, last) // vpp
    counts = [per_chunk] * (pp * vpp)
    if layout.pp_layers:  # each middle rank's own layers over its chunks, a remainder to its earliest ones
        for rank in range(1, pp - 1):
            base, extra = divmod(layout.pp_layers[rank], vpp)
            for v in range(vpp):
                counts[v * pp + rank] = base + (1 if v < extra else 0)
    for rank, total, order in ((0, first, range(vpp)), (pp - 1, last, reversed(range(vpp)))):
        diff = total - per_chunk * vpp
        for v in order:  # chunk of this rank nearest the end it serves first
            c = v * pp + rank
            take = max(diff, -counts[c])
            counts[c] += take
            diff -= take
            if diff == 0:
                break
    return counts


def uneven_split(n_layers: int, pp: int, vpp: int = 1, whole_chunks: bool = False) -> tuple[int, int] | None:
    """The first / last stage layers that split n_layers over pp ranks with the middle ranks even (a multiple of vpp
    each, Megatron-Core's --decoder-first/last-pipeline-num-layers) and the ends holding at most a middle rank's
    layers, as equal as the rest allows (the first takes the smaller half); with `whole_chunks` the ends are
    multiples of vpp too, as Megatron-Core's TransformerConfig wants the two flags (clusterplan's own export writes
    other ends as a --pipeline-model-parallel-layout). At pp 2 the two ends are the whole split. None where no such
    split exists."""
    unit = vpp if whole_chunks else 1
    if pp < 2:
        return None
    if pp == 2:
        first = n_layers // 2 // unit * unit
        last = n_layers - first
        return (first, last) if first >= 1 and last % unit == 0 else None
    per = -(-n_layers // (pp * vpp)) * vpp  # the smallest even middle share >= the mean, in whole chunks
    while per >= vpp:
        rest = n_layers - (pp - 2) * per
        first = rest // 2 // unit * unit
        last = rest - first
        if 1 <= first and last <= per and last % unit == 0:
            return first, last
        per -= vpp
    return None


def layout_problems(model: ModelSpec, layout: Layout, world: int) -> list[Rule]:
    """Every divisibility and size rule the layout breaks (rules.py), each message printing its factors.
    Empty = valid."""
    L = layout
    problems: list[Rule] = []
    add = lambda code, message: problems.append(Rule.broken(code, message))  # noqa: E731
    if L.world != world:
        add(RuleCode.WORLD, f"pp({L.pp}) * dp({L.dp}) * cp({L.cp}) * tp({L.tp}) = {L.world} != world({world})")
    if model.n_heads % L.tp:
        add(RuleCode.HEADS_TP, f"n_heads({model.n_heads}) % tp({L.tp}) != 0")
    kv = model.kv_heads
    if not model.is_mla and kv % L.tp and L.tp % kv:
        add(RuleCode.KV_HEADS_TP, f"kv heads({kv}) and tp({L.tp}): neither divides the other, so kv heads cannot be "
                                  "split or replicated evenly")
    if model.ffn_hidden % L.tp:
        add(RuleCode.FFN_TP, f"ffn_hidden({model.ffn_hidden}) % tp({L.tp}) != 0")
    # Transformer Engine's all-to-all (context_parallel.py flash_attn_a2a_communicate) and DeepSpeed-Ulysses scatter
    # k and v by heads too: each rank's kv heads (kv / tp, or 1 where tp replicates them) split over cp
    local_kv = max(1, kv // L.tp) if not model.is_mla else model.n_heads // L.tp
    if L.cp_kind == "a2a" and L.cp > 1 and (model.n_heads % (L.tp * L.cp) or local_kv % L.cp):
        add(RuleCode.A2A_HEADS,
            f"all-to-all context parallel needs n_heads({model.n_heads}) % (tp({L.tp}) * cp({L.cp})) == 0 and the "
            f"{local_kv} local kv heads % cp == 0")
    # the same all-to-all over the cp_a2a ranks of each group
    if L.cp_kind == "a2a+p2p" and (not 1 < L.cp_a2a < L.cp or L.cp % L.cp_a2a
                                   or model.n_heads % (L.tp * L.cp_a2a) or local_kv % L.cp_a2a):
        add(RuleCode.CP_HIERARCHY, f"hierarchical context parallel needs 1 < cp_a2a({L.cp_a2a}) < cp({L.cp}), "
                                   f"cp % cp_a2a == 0, n_heads({model.n_heads}) % (tp({L.tp}) * cp_a2a) == 0 and "
                                   f"the {local_kv} local kv heads % cp_a2a == 0")
    if model.is_hybrid:
        problems += hybrid_problems(model, L)
    if L.recompute_layers and L.recompute != "full":
        add(RuleCode.RECOMPUTE_LAYERS, f"recompute_layers({L.recompute_layers}) needs recompute=full, got "
                                       f"recompute={L.recompute}")
    elif L.recompute_layers > (most := max(1, *stage_layers(model, L))):
        add(RuleCode.RECOMPUTE_LAYERS, f"recompute_layers({L.recompute_layers}) > the {most} layers a pipeline rank "
                                       f"holds (n_layers {model.n_layers}, pp {L.pp})")
    # Megatron-Core TransformerConfig.__post_init__, under fp8 only (fp4 training runs no fp8: no limit there): per
    # pipeline stage at most n_layers // pp
    most_bf16 = model.n_layers // L.pp
    for name in ("bf16_first_layers", "bf16_last_layers"):
        if getattr(L, name) > most_bf16 and L.fp8_recipe != "nvfp4":
            add(RuleCode.BF16_LAYERS, f"{name}({getattr(L, name)}) > n_layers({model.n_layers}) // pp({L.pp}) = "
                                      f"{most_bf16} (Megatron-Core's limit per pipeline stage)")
    chunks = L.pp * L.vpp
    uneven = L.first_stage_layers or L.last_stage_layers
    if L.pp_layers:
        problems += pp_layers_problems(model, L)
    elif L.pp == 1 and uneven:
        add(RuleCode.UNEVEN_NEEDS_PP, "first_stage_layers/last_stage_layers need pp > 1")
    elif uneven:
        first, per, last = stage_layers(model, L)
        n_mid = L.pp - (1 if L.first_stage_layers else 0) - (1 if L.last_stage_layers else 0)
        if L.first_stage_layers + L.last_stage_layers > model.n_layers:
            add(RuleCode.STAGE_LAYERS_SUM, f"first_stage_layers({L.first_stage_layers}) + last_stage_layers("
                                           f"{L.last_stage_layers}) exceed n_layers({model.n_layers})")
        elif n_mid and per < 1 <= max(L.first_stage_layers, L.last_stage_layers):
            given = " + ".join(f"{end}({n})" for end, n in (("first", L.first_stage_layers),
                                                            ("last", L.last_stage_layers)) if n)
            others = "middle" if L.first_stage_layers and L.last_stage_layers else "other"
            add(RuleCode.NO_MIDDLE_LAYERS, f"{given} of n_layers({model.n_layers}) leave no layers for the {n_mid} "
                                           f"{others} stages")
        elif L.first_stage_layers + L.last_stage_layers + per * n_mid != model.n_layers or min(first, last) < 1:
            # an end left unset is one of the n_mid stages that share the rest evenly (stage_layers)
            parts = [f"first({L.first_stage_layers})"] if L.first_stage_layers else []
            parts.append(f"{n_mid} {'stages' if n_mid != 1 else 'stage'} x {per}")
            parts += [f"last({L.last_stage_layers})"] if L.last_stage_layers else []
            add(RuleCode.STAGE_LAYERS_SUM, f"{' + '.join(parts)} != n_layers({model.n_layers})")
        elif per % L.vpp:
            # The first and last ranks may hold fewer layers than their vpp chunks share evenly (Megatron's
            # --pipeline-model-parallel-layout, torchtitan's per-stage layer lists); the middle ranks split evenly.
            add(RuleCode.STAGE_LAYERS_VPP, f"middle stage layers ({per}) not divisible by vpp({L.vpp})")
    elif model.n_layers % chunks:
        split = uneven_split(model.n_layers, L.pp, L.vpp)
        middle = f"{L.pp - 2} x {(model.n_layers - sum(split)) // (L.pp - 2)} + " if split and L.pp > 2 else ""
        fix = FIXES[RuleCode.LAYERS_PP] + (
            f": first_stage_layers={split[0]},last_stage_layers={split[1]} gives {split[0]} + {middle}{split[1]} = "
            f"{model.n_layers}" if split else "")
        problems.append(Rule(code=RuleCode.LAYERS_PP, fix=fix,
                             message=f"n_layers({model.n_layers}) % (pp({L.pp}) * vpp({L.vpp})) != 0; set "
                                     "first_stage_layers/last_stage_layers for an uneven split"))
    if L.pp == 1 and (L.vpp > 1 or L.schedule in ("gpipe", "interleaved-1f1b", "zb")):
        add(RuleCode.SCHEDULE_NEEDS_PP, f"vpp({L.vpp}) and schedule {L.schedule} need pp > 1: one stage runs no "
                                        "pipeline schedule")
    if L.vpp > 1 and L.schedule not in ("interleaved-1f1b", "zbv"):
        add(RuleCode.VPP_SCHEDULE,
            f"vpp({L.vpp}) > 1 needs schedule=interleaved-1f1b (or zbv with vpp 2), got {L.schedule}")
    if L.schedule == "zbv" and (L.vpp != 2 or L.pp < 2):
        add(RuleCode.ZBV_CHUNKS, f"schedule zbv runs exactly 2 chunks per pipeline rank (torchtitan ZBVZeroBubble): "
                                 f"needs pp > 1 and vpp = 2, got pp({L.pp}) vpp({L.vpp})")
    if L.schedule == "dualpipe" and (L.pp < 2 or L.pp % 2 or L.vpp != 1 or L.microbatches % 2
                                     or L.microbatches < 2 * L.pp):
        # deepseek-ai/DualPipe dualpipe.py DualPipe.step: assert num_ranks % 2 == 0; num_chunks % 2 == 0 and
        # num_chunks >= num_ranks * 2 (half the micro-batches enter from each end); its two stages per rank are
        # the schedule's own, not virtual stages.
        add(RuleCode.DUALPIPE_SHAPE, f"schedule dualpipe needs an even pp > 1, vpp = 1 and an even number of "
                                     f"micro-batches >= 2 * pp; got pp({L.pp}) vpp({L.vpp}) "
                                     f"micro-batches({L.microbatches})")
    if L.schedule == "interleaved-1f1b" and L.pp > 1 and L.microbatches % L.pp:
        add(RuleCode.INTERLEAVED_MICROBATCHES,
            f"interleaved 1F1B needs micro-batches({L.microbatches}) % pp({L.pp}) == 0 (Megatron-LM)")
    if L.gbs % (L.dp * L.mbs):
        add(RuleCode.GBS_DP_MBS, f"gbs({L.gbs}) % (dp({L.dp}) * mbs({L.mbs})) != 0")
    if L.sp and L.tp > 1 and L.seq % (L.tp * L.cp):
        add(RuleCode.SP_SEQ, f"sequence parallel needs seq({L.seq}) % (tp({L.tp}) * cp({L.cp})) == 0")
    if L.cp > 1 and L.seq % (2 * L.cp):
        add(RuleCode.CP_SEQ, f"context parallel needs seq({L.seq}) % (2 * cp({L.cp})) == 0 (load-balanced chunks)")
    if L.fp8_params and not fp8_params_run(L.precision, L.zero, L.optimizer):
        add(RuleCode.FP8_PARAMS, f"fp8_params needs precision=fp8, zero >= 1 (the distributed optimizer or FSDP) and "
                                 f"optimizer=adam-master (its fp32 master is the weights' only high-precision copy), "
                                 f"got precision={L.precision} zero={L.zero} optimizer={L.optimizer}")
    # Megatron-Core 0.16 TransformerConfig.__post_init__: "CUDA graphs not supported with CPU offloading." (any
    # cuda_graph_impl), and "full recompute is only supported with full iteration CUDA graph."
    if L.cuda_graphs != "none" and L.offload_layers:
        add(RuleCode.CUDA_GRAPHS, f"cuda_graphs={L.cuda_graphs} with offload_layers={L.offload_layers}: Megatron-Core "
                                  "captures no graphs beside activation offloading")
    if L.cuda_graphs == "attn" and L.recompute == "full":
        add(RuleCode.CUDA_GRAPHS, "cuda_graphs=attn with recompute=full: Megatron-Core runs full recompute only under "
                                  "a full-iteration graph (cuda_graphs=full)")
    if L.bf16_moments and not bf16_moments_run(L.zero, L.optimizer):
        add(RuleCode.BF16_MOMENTS, f"bf16_moments needs optimizer=adam-master and zero >= 1 (Megatron-Core's "
                                   f"precision-aware optimizer: adam with the distributed optimizer), got "
                                   f"zero={L.zero} optimizer={L.optimizer}")
    problems += _moe_problems(model, L)
    return problems


def hybrid_problems(model: ModelSpec, L: Layout) -> list[Rule]:
    """What a hybrid Mamba-2 / attention stack cannot run: MambaMixer asserts each tp rank gets whole heads and at
    least one group (mamba_heads % tp, mamba_groups % tp); Megatron-Core 0.16's MambaStack asserts no virtual
    pipeline, has no full (whole-block) recompute (ssm/mamba_block.py checkpoints nothing) and splits the pipeline
    by count only (num_layers_in_first / last_pipeline_stage, no per-rank layout); Mamba context parallelism
    (ssm/mamba_context_parallel.py MambaContextParallel) asserts each cp rank whole heads (mamba_heads / tp % cp) and
    whole groups, or a whole number of cp ranks per group (groups / tp % cp, or cp % groups / tp) (research/
    hybrid-mamba.md sec. 1). Selective recompute modules act inside the attention, MLP and MoE blocks
    (TransformerLayer), not the Mamba blocks."""
    broken = []
    if model.mamba_heads and (model.mamba_heads % L.tp or model.mamba_groups % L.tp):
        broken.append(f"mamba_heads({model.mamba_heads}) and mamba_groups({model.mamba_groups}) % tp({L.tp}) != 0")
    elif model.mamba_heads and L.cp > 1:
        heads, groups = model.mamba_heads // L.tp, model.mamba_groups // L.tp
        if heads % L.cp or (groups % L.cp if groups >= L.cp else L.cp % groups):
            broken.append(f"Mamba context parallelism needs mamba_heads / tp ({heads}) % cp({L.cp}) == 0 and "
                          f"mamba_groups / tp ({groups}) and cp dividing one another")
    if L.vpp > 1:
        broken.append(f"vpp({L.vpp}) > 1: Megatron-Core's MambaStack runs no interleaved pipeline")
    if L.recompute == "full":
        broken.append("recompute=full: Megatron-Core's MambaStack has no full recompute")
    if L.pp_layers:
        broken.append("pp_layers: Megatron-Core's MambaStack takes first / last stage counts, no per-rank layout")
    return [Rule.broken(RuleCode.HYBRID, f"hybrid {model.name}: {b}") for b in broken]


def pp_layers_problems(model: ModelSpec, L: Layout) -> list[Rule]:
    """What a per-rank layer list (Layout.pp_layers) must keep: pp > 1, one count per rank, the counts summing to
    n_layers, every middle rank holding a layer in each of its vpp chunks (the ends may hold the embedding or the
    head alone), and no first/last_stage_layers beside it. A middle rank's layers need not divide by vpp: its
    earliest chunks take the remainder (chunk_layers), as torchtitan's default split does."""
    ranks, problems = L.pp_layers, []
    add = lambda code, message: problems.append(Rule.broken(code, message))  # noqa: E731
    text = "/".join(map(str, ranks))
    if L.pp == 1:
        add(RuleCode.UNEVEN_NEEDS_PP, f"pp_layers({text}) needs pp > 1")
        return problems
    if L.first_stage_layers or L.last_stage_layers:
        add(RuleCode.PP_LAYERS, f"pp_layers({text}) and first_stage_layers({L.first_stage_layers}) / "
                                f"last_stage_layers({L.last_stage_layers}) both given")
    if len(ranks) != L.pp:
        add(RuleCode.PP_LAYERS, f"pp_layers({text}) has {len(ranks)} counts for pp({L.pp}) ranks")
    elif sum(ranks) != model.n_layers:
        add(RuleCode.PP_LAYERS, f"pp_layers({text}) sum to {sum(ranks)} != n_layers({model.n_layers})")
    elif min(ranks[1:-1], default=L.vpp) < L.vpp:
        add(RuleCode.PP_LAYERS, f"pp_layers({text}) leave a middle pipeline rank fewer layers than its vpp({L.vpp}) "
                                "chunks")
    return problems


def max_imbalance(model: ModelSpec, ep: int) -> float:
    """The most Layout.moe_imbalance can be: every token sends each of its top_k copies to one rank's
    n_experts / ep experts where it can, min(top_k, n_experts / ep) copies, against top_k / ep on average."""
    return ep * min(model.top_k, model.n_experts // ep) / model.top_k


def _moe_problems(model: ModelSpec, L: Layout) -> list[Rule]:
    problems: list[Rule] = []
    add = lambda code, message: problems.append(Rule.broken(code, message))  # noqa: E731
    if not model.is_moe:
        if L.ep > 1 or L.etp > 1:
            add(RuleCode.EP_DENSE, f"ep({L.ep}) / etp({L.etp}) > 1 need a mixture-of-experts model")
        given = [f"{name}={shown}" for name, shown, is_set in (
            ("moe_dispatcher", L.moe_dispatcher, L.moe_dispatcher != "alltoall"),
            ("moe_a2a_overlap", int(L.moe_a2a_overlap), L.moe_a2a_overlap),
            ("moe_capacity_factor", L.moe_capacity_factor, L.moe_capacity_factor is not None),
            ("moe_imbalance", f"{L.moe_imbalance:g}", L.moe_imbalance != 1.0)) if is_set]
        if given:  # only the fields the layout sets away from their defaults
            add(RuleCode.MOE_FIELDS_DENSE, f"{' / '.join(given)} need{'s' if len(given) == 1 else ''} a "
                                           "mixture-of-experts model")
        return problems
    if L.moe_capacity_factor is not None:
        problems += token_drop_problems(model, L)
    if L.moe_dispatcher != "alltoall" and L.ep * L.etp < 2:
        # Megatron-Core MoEFlexTokenDispatcher.__init__: assert tp_size * ep_size > 1 (the expert tp x ep group).
        add(RuleCode.FLEX_DISPATCHER, f"moe_dispatcher={L.moe_dispatcher} needs ep * etp > 1, got ep({L.ep}) "
                                      f"etp({L.etp})")
    if model.n_experts % L.ep:
        add(RuleCode.EXPERTS_EP, f"n_experts({model.n_experts}) % ep({L.ep}) != 0")
    elif L.ep > 1 and L.moe_imbalance > (most := max_imbalance(model, L.ep)):  # ep 1: no effect (moe_layer.imbalance)
        add(RuleCode.IMBALANCE, f"moe_imbalance({L.moe_imbalance:g}) > {most:g}: the busiest of ep({L.ep}) ranks "
                                f"receives at most ep x min(top_k({model.top_k}), experts per rank("
                                f"{model.n_experts // L.ep})) / top_k times the mean")
    fold = L.dp_shard * L.cp * L.tp
    if fold % (L.ep * L.etp):
        add(RuleCode.EP_FOLD,
            f"ep({L.ep}) * etp({L.etp}) must divide dp_shard({L.dp_shard}) * cp({L.cp}) * tp({L.tp}) = {fold}")
    if model.expert_ffn_hidden % L.etp:
        add(RuleCode.EXPERT_FFN_ETP, f"expert_ffn_hidden({model.expert_ffn_hidden}) % etp({L.etp}) != 0")
    problems += a2a_overlap_problems(L)
    return problems


def token_drop_problems(model: ModelSpec, L: Layout) -> list[Rule]:
    """What the drop-and-pad path requires (Megatron-Core): the alltoall dispatcher (TransformerConfig.__post_init__:
    "Flex token dispatcher does not support moe_pad_expert_input_to_capacity"), and a capacity no larger than the
    rank's tokens (topk_softmax_with_capacity keeps each expert's top `capacity` tokens with torch.topk over the
    rank's tokens, which needs capacity <= tokens, i.e. C <= n_experts / top_k)."""
    broken = []
    if L.moe_dispatcher != "alltoall":
        broken.append(f"runs on the alltoall dispatcher only, got moe_dispatcher={L.moe_dispatcher}")
    cap_max = model.n_experts / model.top_k
    if L.moe_capacity_factor is not None and L.moe_capacity_factor > cap_max:
        broken.append(f"({L.moe_capacity_factor:g}) exceeds n_experts({model.n_experts}) / top_k({model.top_k}) = "
                      f"{cap_max:g}: each expert's capacity would exceed the rank's tokens")
    return [Rule.broken(RuleCode.TOKEN_DROP, f"moe_capacity_factor {b}") for b in broken]


def a2a_overlap_problems(L: Layout) -> list[Rule]:
    """What --overlap-moe-expert-parallel-comm requires (Megatron-Core TransformerConfig.__post_init__): expert
    parallelism, the interleaved schedule when pp > 1 (virtual_pipeline_model_parallel_size set), no full
    recompute, a bf16 / fp16 model (fp8 runs keep bf16 weights), and no 'moe' recompute module (its recompute
    re-runs the dispatch)."""
    if not L.moe_a2a_overlap:
        return []
    broken = []
    if L.ep < 2:
        broken.append(f"needs ep > 1, got ep({L.ep})")
    if L.pp > 1 and L.schedule != "interleaved-1f1b":
        broken.append(f"with pp({L.pp}) > 1 needs schedule=interleaved-1f1b (vpp > 1), got {L.schedule}")
    if L.recompute == "full":
        broken.append("does not run with recompute=full")
    if L.precision == "fp32":
        broken.append("needs a bf16 / fp16 / fp8 model, got precision=fp32")
    if "moe" in L.recompute_modules.split("+"):
        broken.append("does not run with the 'moe' recompute module")
    return [Rule.broken(RuleCode.A2A_OVERLAP, f"moe_a2a_overlap {b}") for b in broken]


def stack_problems(layout: Layout, stack: ExecutionStack) -> list[Rule]:
    """What of the layout the execution stack cannot run (hardware_db/data/stacks.yaml), each with the Layout field
    it is about. Empty = it runs."""
    L, broken = layout, []
    add = lambda field, message: broken.append(Rule.broken(RuleCode.STACK, message, field))  # noqa: E731
    for field, degree in (("tp", L.tp), ("etp", L.etp)):
        if stack.max_tp is not None and degree > stack.max_tp:
            add(field, f"stack {stack.name} runs tensor parallelism up to {stack.max_tp} only (dense and expert), "
                       f"got {field}={degree}; set {field}={stack.max_tp}")
    if L.tp > 1 and not L.sp and stack.tp_sequence_parallel_always:
        add("sp", f"stack {stack.name}'s tensor parallelism always shards the sequence (sequence parallelism); "
                  "set sp=1")
    if L.tp > 1 and L.sp and not stack.tp_sequence_parallel:
        add("sp", f"stack {stack.name}'s tensor parallelism all-reduces whole activations (no sequence "
                  "parallelism); set sp=0")
    if L.tp > 1 and stack.tp_max_zero is not None and L.zero > stack.tp_max_zero:
        add("zero", f"stack {stack.name} runs tensor parallelism with zero <= {stack.tp_max_zero} only, got "
                    f"zero={L.zero}; set zero={stack.tp_max_zero} or tp=1")
    if L.tp > 1 and stack.tp_alone and max(L.pp, L.cp, L.ep) > 1:
        add("tp", f"stack {stack.name} runs tensor parallelism beside data parallelism only (pp={L.pp}, cp={L.cp}, "
                  f"ep={L.ep}); set tp=1 or those to 1")
    if L.recompute == "full" and L.recompute_layers and stack.recompute_layers_per_chunk and L.recompute_layers % L.vpp:
        add("recompute_layers", f"stack {stack.name} recomputes whole layers per model chunk: recompute_layers("
                                f"{L.recompute_layers}) per rank must be a multiple of vpp({L.vpp})")
    if L.zero == 0 and L.dp > 1 and stack.ddp_alone and max(L.tp, L.pp, L.cp, L.ep) > 1:
        add("zero", f"stack {stack.name} runs plain data parallelism (zero=0) only without tp, pp, cp or ep; shard "
                    f"with zero={max(stack.zero_stages)} (FSDP)")
    if (L.pp > 1 and L.schedule in ("zb", "zbv") and stack.can_run("schedule", L.schedule)
            and (L.first_stage_layers or L.last_stage_layers or L.pp_layers)):
        add("schedule", f"stack {stack.name} runs {L.schedule} as ZBVZeroBubble, two even chunks per rank: no "
                        "uneven first / last stage or per-rank layers; drop them or use schedule 1f1b")
    if L.pp > 1 and not stack.pp_uneven_ends and (L.first_stage_layers or L.last_stage_layers or L.pp_layers):
        add("first_stage_layers", f"stack {stack.name} splits pipeline stages by its own rule, with no first / last "
                                  "stage size or per-rank list to give; use an even split (pp dividing the layers)")
    if L.dp_replicate > 1 and not stack.hsdp:
        add("dp_replicate", f"stack {stack.name} shards over the whole data-parallel group (no hybrid sharding); "
                            "set dp_replicate=1")
    if L.pp > 1 and not stack.schedules:
        add("pp", f"stack {stack.name} has no pipeline parallelism; set pp=1")
    elif L.pp > 1 and not stack.can_run("schedule", L.schedule):
        add("schedule", f"stack {stack.name} has no {L.schedule} schedule; it runs {', '.join(stack.schedules)}")
    if L.cp > 1 and not stack.can_run("cp_kind", L.cp_kind):
        runs = ", ".join(stack.cp_kinds) or "no context parallelism"
        add("cp_kind", f"stack {stack.name} has no cp_kind={L.cp_kind} context parallelism; it runs {runs}")
    if (L.dp > 1 or L.zero == 0) and not stack.can_run("zero", L.zero):
        add("zero", f"stack {stack.name} has no zero={L.zero}; it runs zero {', '.join(map(str, stack.zero_stages))}")
    if L.pp > 1 and stack.schedules and L.zero > stack.pp_max_zero:
        add("zero", f"stack {stack.name} runs pipeline parallelism with zero <= {stack.pp_max_zero} only, "
                    f"got zero={L.zero}")
    if not stack.can_run("recompute", L.recompute):
        add("recompute", f"stack {stack.name} has no selective recompute (it checkpoints whole layers only); set "
                         "recompute=none or recompute=full")
    if L.recompute_modules and stack.selective_recompute != "core_attn":
        add("recompute_modules", f"stack {stack.name} has no Megatron recompute modules ({L.recompute_modules}); its "
                                 f"selective recompute is {stack.selective_recompute}: drop recompute_modules")
    if L.precision == "fp8" and not stack.fp8_recipes:
        add("precision", f"stack {stack.name} has no fp8 training recipe")
    if L.offload_layers and not stack.activation_offload:
        add("offload_layers", f"stack {stack.name} offloads no activations to host memory (Megatron-Core "
                              "cpu_offloading_num_layers); set offload_layers=0")
    if (L.bf16_first_layers or L.bf16_last_layers) and not stack.bf16_end_layers:
        add("bf16_first_layers", f"stack {stack.name} keeps no layers out of fp8 by position (Megatron-Core "
                                 "--first-last-layers-bf16); set bf16_first_layers=0 and bf16_last_layers=0")
    if L.bf16_moments and not stack.bf16_moments:
        add("bf16_moments", f"stack {stack.name} keeps Adam's moments in fp32 only (no precision-aware optimizer); "
                            "set bf16_moments=0")
    if L.fp8_params and not stack.fp8_param_gather:
        add("fp8_params", f"stack {stack.name} keeps no fp8-only parameters (Megatron-Core --fp8-param-gather); "
                          "set fp8_params=0")
    if not stack.can_run("moe_dispatcher", L.moe_dispatcher):
        add("moe_dispatcher", f"stack {stack.name} has no {L.moe_dispatcher} token dispatcher (it runs "
                              f"{', '.join(stack.moe_dispatchers)}); set moe_dispatcher=alltoall")
    if L.moe_capacity_factor is not None and not stack.moe_token_drop:
        add("moe_capacity_factor", f"stack {stack.name} has no token-dropping MoE (its experts are dropless); "
                                   "drop moe_capacity_factor")
    if L.moe_a2a_overlap and not stack.moe_a2a_overlap:
        add("moe_a2a_overlap", f"stack {stack.name} has no 1F1B all-to-all overlap; set moe_a2a_overlap=0")
    if not stack.can_run("cuda_graphs", L.cuda_graphs):
        add("cuda_graphs", f"stack {stack.name} has no cuda_graphs={L.cuda_graphs} (it runs "
                           f"{', '.join(stack.cuda_graphs)}); set cuda_graphs=none")
    return broken
