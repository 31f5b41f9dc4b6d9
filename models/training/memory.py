"""Memory per GPU of a training layout: weights, gradients, optimizer states, activations, and the rest.

Vectorised over LayoutArrays. Every term is per pipeline stage position (first, middle, last); the most
loaded rank is the maximum. Activation formulas generalise Korthikanti et al. 2022 Table 2 to GQA/MLA,
gated FFNs, MoE, flash attention, sequence and context parallelism.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

import numpy as np

from clusterplan.hardware_db.stacks import ExecutionStack
from clusterplan.models.architecture.shapes import HYBRID_BLOCK_KINDS, ModelShapes
from clusterplan.models.hardware.mamba_kernels import mixer_sizes
from clusterplan.models.hardware.mamba_kernels import saved_bytes as mixer_saved_bytes
from clusterplan.models.training.autocast import (
    AUTOCAST_ATTN_INPUT_CASTS,
    half_autocast,
    layer_matmul_params,
    mlp_input_casts,
)
from clusterplan.models.training.batch import (
    OPT_ADAM,
    OPT_ADAM_MASTER,
    OPT_SGD,
    PREC_BF16,
    PREC_FP8,
    PREC_FP32,
    RECOMPUTE_FULL,
    RECOMPUTE_NONE,
    RECOMPUTE_SELECTIVE,
    SCHEDULE_DUALPIPE,
    SCHEDULE_GPIPE,
    SCHEDULE_INTERLEAVED,
    CpKindCode,
    LayoutArrays,
)
from clusterplan.models.training.bf16_layers import as_bf16, bf16_position_counts
from clusterplan.models.training.host import stack_fp8_recipe
from clusterplan.models.training.layout import RECOMPUTE_MODULES
from clusterplan.models.training.moe_layer import busiest_rank_ratio

GIB = float(2**30)
SELECTIVE_CORE_ATTN, SELECTIVE_OP_SAC = "core_attn", "op_sac"
"""What `recompute=selective` means: Megatron-Core's core-attention checkpoint, torchtitan's op-level SAC."""
# CUDA context + cuBLAS/cuDNN workspaces per process; Galvatron's default `pytorch_context_mem` is 1024 MB.
CUDA_CONTEXT_BYTES = 1.0 * GIB
# NCCL buffers per communicator (NCCL_BUFFSIZE 4 MiB x channels x send/recv; aiconfigurator's `nccl_mem`).
NCCL_BYTES_PER_GROUP = 0.125 * GIB
# Transformer Engine caches each weight's fp8 copy across micro-batches. On Hopper an fp8 GEMM takes only the TN
# layout, so a per-tensor-scaled weight is kept row-wise and transposed: 2 B per parameter beside bf16.
FP8_WEIGHT_COPY_BYTES = 2.0
# Blackwell runs fp8 GEMMs in every layout: Float8Tensor drops the transpose (TE is_non_tn_fp8_gemm_supported(),
# sm100+; Float8Tensor.update_usage needs_data_transpose = False): 1 B per parameter.
FP8_WEIGHT_COPY_BYTES_ALL_LAYOUTS = 1.0
# MXFP8 scales 1x32 blocks along the GEMM's reduction axis, so the weight is quantised twice (row-wise for fprop,
# column-wise for dgrad/wgrad), each with one 1-B E8M0 scale per 32 elements (TE MXFP8Tensor).
MXFP8_WEIGHT_COPY_BYTES = 2.0 * (1.0 + 1.0 / 32)
# NVFP4 keeps the weight row- and column-wise too (its GEMM takes only the TN layout), each 0.5 B per element and an E4M3
# scale per 16 (TE NVFP4Tensor; docs/features/low_precision_training/nvfp4).
NVFP4_WEIGHT_COPY_BYTES = 2.0 * (0.5 + 1.0 / 16)
# What a Transformer Engine linear saves of its input for the weight gradient under fp8: the quantised copy, 1 B per
# element with its scales (Float8Tensor: one per tensor or row, nothing per element; MXFP8Tensor: an E8M0 byte per 32;
# Float8BlockwiseQTensor: an fp32 per 1x128 tile); NVFP4 saves its column-wise 4-bit copy with an E4M3 scale per 16
# (NVFP4Tensor: the wgrad operand, Hadamard-transformed).
FP8_SAVED_INPUT_BYTES = 1.0
MXFP8_SAVED_INPUT_BYTES = 1.0 + 1.0 / 32
BLOCKWISE_SAVED_INPUT_BYTES = 1.0 + 4.0 / 128
NVFP4_SAVED_INPUT_BYTES = 0.5 + 1.0 / 16
SAVED_INPUT_BYTES = {"mxfp8": MXFP8_SAVED_INPUT_BYTES, "blockwise": BLOCKWISE_SAVED_INPUT_BYTES,
                     "nvfp4": NVFP4_SAVED_INPUT_BYTES}
"""Recipes whose saved linear input carries per-element scale bytes; the others FP8_SAVED_INPUT_BYTES."""


def fp8_saved_input_bytes(recipe: str | None) -> float:
    """Bytes per element of a linear's saved input under fp8 `recipe`, scales included (SAVED_INPUT_BYTES)."""
    return SAVED_INPUT_BYTES.get(recipe or "", FP8_SAVED_INPUT_BYTES)


@dataclass(frozen=True, slots=True)
class Fp8Saved:
    """Bytes per element of what fp8 layers save for backward: the recipe's quantised linear inputs, and where the
    stack stores more of its activations in low precision (stacks.yaml fp8_moe_glu_input_bytes,
    fp8_attention_output_bytes)."""

    linear_input_bytes: float = FP8_SAVED_INPUT_BYTES
    """A linear's quantised input for its weight gradient, its scales included (fp8_saved_input_bytes)."""
    moe_glu_input_bytes: float | None = None
    """The MoE experts' gated-activation input (fc1's output); None: the compute dtype."""
    attention_output_bytes: float | None = None
    """The attention output, saved once for the attention backward and the out-projection's weight gradient; None:
    the attention keeps it in the compute dtype and the out-projection its own quantised copy (linear_input_bytes)."""


def stack_fp8_saved(stack: ExecutionStack) -> Fp8Saved:
    """What `stack`'s fp8 layers save under its fp8 recipe, with its low-precision activation storage (stacks.yaml
    fp8_moe_glu_input_bytes, fp8_attention_output_bytes; unset: none)."""
    return Fp8Saved(fp8_saved_input_bytes(stack_fp8_recipe(stack)), stack.fp8_moe_glu_input_bytes,
                    stack.fp8_attention_output_bytes)


FP8_SAVED = Fp8Saved()
"""Transformer Engine's fp8 linears: the quantised input only (FP8_SAVED_INPUT_BYTES)."""

# The low 16 bits of an fp32 master weight whose high 16 bits are the bf16 parameter (Megatron-Core
# OptimizerConfig.store_param_remainders, default True).
PARAM_REMAINDER_BYTES = 2.0


class Remainders(IntEnum):
    """Where a stack's distributed optimizer keeps 2-byte master remainders (bytes_per_param `param_remainders`):
    nowhere, for bf16 training, or also for fp8 training whose recipe keeps them (layout.REMAINDER_FP8_RECIPES:
    Megatron-Core's use_precision_aware_optimizer_no_fp8_or_ds_fp8). False / True read as NONE / BF16."""

    NONE = 0
    BF16 = 1
    BF16_AND_FP8 = 2
# fp8 recipes whose weights torchao's FSDP2 float8 all-gather gathers in fp8 (Float8Linear with dynamic tensorwise
# scaling only: torchao/float8/fsdp_utils.py WeightWithDynamicFloat8CastTensor).
FSDP_FP8_ALLGATHER_RECIPES = ("tensorwise",)
# An fp32 parameter, the master weight where the stack keeps one; an fp8 one (an fp8-gathered unsharded weight).
FP32_PARAM_BYTES, FP8_PARAM_BYTES = 4.0, 1.0
# A bf16 (or fp16) parameter or gradient.
BF16_PARAM_BYTES = 2.0
# Adam's two moments, m and v, each an fp32 tensor the parameter's size (Kingma & Ba 2015; torch.optim.AdamW state).
ADAM_MOMENTS_BYTES = 2 * FP32_PARAM_BYTES
BF16_ADAM_MOMENTS_BYTES = 2 * BF16_PARAM_BYTES
"""Adam's m and v in bf16 (Layout.bf16_moments: Megatron-Core precision-aware optimizer, DeepSeek-V3 Sec. 3.3.3)."""
# bf16 logits and the fp32 copy the vocabulary-parallel cross-entropy computes its softmax in, the gradient written
# into that copy in place (Megatron-LM, Korthikanti 2022's 4sbh(1 + V/h) term): 6 B per logit.
UNFUSED_LOSS_BYTES_PER_LOGIT = 6.0
# PyTorch's caching allocator at an eager F.cross_entropy(logits.float()) outside a pipeline schedule: `del pred`
# (torchtitan train.py) frees the bf16 logits block (2 B per logit) before loss.backward(), whose allocations are all
# fp32 logits-sized (the nll gradient, 4 B, takes the freed fp32 copy's block; log-softmax's input gradient, 4 B,
# needs a new one); a cached block is split only for a smaller request and never merged with another segment
# (c10/cuda/CUDACachingAllocator.cpp), so the bf16 block stays reserved beside the 12 B live at the peak.
EAGER_LOSS_FREED_LOGITS_BYTES = 2.0
# Caching-allocator fragmentation reserve on activations (Megatron's theoretical-memory note adds ~5%).
ALLOCATOR_FRACTION = 0.05


@dataclass(frozen=True, slots=True)
class StageLayers:
    first: np.ndarray
    middle: np.ndarray
    last: np.ndarray


def stage_layers(shapes: ModelShapes, L: LayoutArrays) -> StageLayers:
    """Layers per pipeline rank at the first, middle and last position (uneven ends allowed). Ends that leave the
    middle ranks fewer than no layers (a layout the rules refuse: layout_problems) give them none, never a negative
    count, so the refused layout's breakdown stays a sum of non-negative terms."""
    n = float(shapes.n_layers)
    even = n / L.pp
    has_first, has_last = L.first_stage_layers > 0, L.last_stage_layers > 0
    n_mid = L.pp - has_first - has_last
    rest = np.maximum(n - L.first_stage_layers - L.last_stage_layers, 0.0)
    middle = np.where(has_first | has_last, np.where(n_mid > 0, rest / np.maximum(n_mid, 1), 0.0), even)
    first = np.where(has_first, L.first_stage_layers, middle)
    last = np.where(has_last, L.last_stage_layers, middle)
    listed = L.pp_layers_listed > 0  # Layout.pp_layers: the ends as given, the heaviest middle rank
    first, middle, last = (np.where(listed, given, derived) for given, derived in
                           ((L.first_stage_layers, first), (L.middle_stage_layers, middle),
                            (L.last_stage_layers, last)))
    one = L.pp == 1
    return StageLayers(np.where(one, n, first), np.where(one, n, middle), np.where(one, n, last))


def fp8_weight_copy_bytes(recipe: str | None, all_layouts: bool, cached: bool = True) -> float:
    """Bytes per parameter of the fp8 weight copies a stack caches beside the bf16 weights under fp8 `recipe`:
    MXFP8 and NVFP4 row- and column-wise with scales; per-tensor scaling (tensorwise/delayed) one copy on GPUs with
    fp8 GEMMs in every layout (`all_layouts`, Blackwell), two (row-wise + transposed) on Hopper; blockwise two."""
    if not cached:
        return 0.0
    if recipe == "mxfp8":
        return MXFP8_WEIGHT_COPY_BYTES
    if recipe == "nvfp4":
        return NVFP4_WEIGHT_COPY_BYTES
    if all_layouts and recipe in ("tensorwise", "delayed"):
        return FP8_WEIGHT_COPY_BYTES_ALL_LAYOUTS
    return FP8_WEIGHT_COPY_BYTES


def fp8_param_gather_bytes(recipe: str | None) -> float:
    """Bytes per parameter the distributed optimizer's all-gather of the updated weights moves for fp8-only
    parameters (Layout.fp8_params): the fp8 data under per-tensor scaling (Megatron-Core gathers the uint8 param
    buffer); bf16 under MXFP8, whose row- and column-wise block scales cannot be derived from one another, so each
    rank requantises the gathered bf16 (Megatron-Core reuse_grad_buf_for_mxfp8_param_ag; Megatron-LM PR #5470)."""
    return BF16_PARAM_BYTES if recipe == "mxfp8" else FP8_PARAM_BYTES


def fsdp_fp8_allgather(fp8_allgather: bool, recipe: str | None) -> bool:
    """The stack's FSDP gathers fp8 weights under this recipe (torchao's float8 all-gather: tensorwise only)."""
    return fp8_allgather and recipe in FSDP_FP8_ALLGATHER_RECIPES


def fp8_only_params(L: LayoutArrays) -> np.ndarray:
    """Layouts whose parameters are fp8 tensors only (Layout.fp8_params under fp8; the FP8_PARAMS rule refuses it
    elsewhere)."""
    return (L.precision == PREC_FP8) & (L.fp8_params > 0)


def main_grad_bytes(L: LayoutArrays) -> np.ndarray:
    """Bytes per element of the main-gradient buffer: fp32 in fp32 training and for adam-master with fp32_grads
    (Megatron-Core DDP: grad buffer dtype = fp32 only if grad_reduce_in_fp32), else the 16-bit parameter dtype."""
    fp32 = L.precision == PREC_FP32
    return np.where(fp32 | ((L.optimizer == OPT_ADAM_MASTER) & (L.fp32_grads > 0)), FP32_PARAM_BYTES,
                    BF16_PARAM_BYTES)


def bytes_per_param(L: LayoutArrays, fp8_copy_bytes: float = FP8_WEIGHT_COPY_BYTES,
                    param_remainders: int = Remainders.NONE,
                    fp32_params: bool = False,
                    fp8_param_bytes: float = FP8_WEIGHT_COPY_BYTES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights, gradients, optimizer) bytes per parameter before sharding.

    Mixed-precision Adam with fp32 master weights and fp32 main gradients: 2 + 4 + 12 = 18 bytes (Megatron-LM,
    Narayanan et al. 2021 / Korthikanti et al. 2022); with `fp32_grads` off the main-gradient buffer is in the
    parameter dtype (Megatron-Core DDP: grad buffer dtype = fp32 only if grad_reduce_in_fp32): 2 + 2 + 12. Plain
    Adam keeps grads in the weight dtype and fp32 m, v; SGD keeps no state. fp8 adds the cached fp8 weight copies
    (`fp8_copy_bytes`, see fp8_weight_copy_bytes); fp32 training needs no master. `param_remainders`: the stack's
    distributed optimizer (ZeRO 1) keeps only the master weights' 16 low bits (2 B) beside the bf16 weights
    (Megatron-Core store_param_remainders, under the precision-aware optimizer: Layout.precision_aware): 2 + 8 =
    10 B of optimizer state. `fp32_params`: the stack keeps the
    (sharded) parameters themselves in fp32 and casts a bf16 copy only for compute (torch FSDP2: torchtitan builds
    the model in fp32, MixedPrecisionPolicy(param_dtype=bf16) casts at the all-gather, fully_shard's sharded fp32
    parameter is what AdamW updates), so there is no separate master: 4 + 4 + 8 = 16 B. Layout.fp8_params: the
    parameter is the fp8 tensor alone, `fp8_param_bytes` (fp8_weight_copy_bytes of the recipe: Hopper per-tensor
    data + its transpose 2 B, Blackwell 1 B, MXFP8 both block-scaled copies), no bf16 copy; the master stays a full
    fp32 shard (Megatron-Core keeps remainders of bf16 parameters only): 12 B. Layout.bf16_moments: m and v in bf16,
    4 B less in each case (8 B beside a full master, 6 B beside remainders).
    """
    fp32 = L.precision == PREC_FP32
    bf16, fp32_b = BF16_PARAM_BYTES, FP32_PARAM_BYTES
    weights = np.where(fp32, fp32_b, np.where(L.precision == PREC_FP8, bf16 + fp8_copy_bytes, bf16))
    grads = main_grad_bytes(L)
    # Adam m, v in fp32 (8 B), in bf16 under Layout.bf16_moments (4 B); with master weights +4 B, unless training is
    # fp32 already.
    moments = np.where(L.bf16_moments > 0, BF16_ADAM_MOMENTS_BYTES, ADAM_MOMENTS_BYTES)
    opt = np.select([L.optimizer == OPT_SGD, (L.optimizer == OPT_ADAM) | fp32], [0.0, moments], moments + fp32_b)
    if fp32_params:  # the bf16 parameter becomes an fp32 one, which is also the master
        mixed = (L.optimizer == OPT_ADAM_MASTER) & ~fp32
        weights = np.where(mixed, weights - bf16 + fp32_b, weights)
        opt = np.where(mixed, opt - fp32_b, opt)
    fp8_only = fp8_only_params(L)
    if param_remainders:
        # bf16 parameters only (distrib_optimizer.py: `store_param_remainders and self.config.bf16`); fp16 ones keep
        # a full fp32 master
        # the distributed optimizer under the precision-aware optimizer (Layout.precision_aware; layout.
        # keeps_master_remainders): Megatron-FSDP (zero 2 / 3 on megatron-core) keeps its own fp32 main parameters,
        # and fp8 keeps them only under a recipe of REMAINDER_FP8_RECIPES
        fp8_keeps = param_remainders == Remainders.BF16_AND_FP8
        remainder = (L.optimizer == OPT_ADAM_MASTER) & ((L.precision == PREC_BF16) | ((L.precision == PREC_FP8)
                                                                                    & fp8_keeps)) \
            & (L.zero == 1) & ~fp8_only & (L.precision_aware > 0)
        opt = np.where(remainder, PARAM_REMAINDER_BYTES + moments, opt)
    weights = np.where(fp8_only, fp8_param_bytes, weights)
    return weights, grads, opt


@dataclass(frozen=True, slots=True)
class StageParams:
    dense: np.ndarray
    """Parameters of this rank that are data-parallel over dp_shard * cp (already divided by tp)."""
    expert: np.ndarray
    """Routed-expert parameters of this rank (already divided by ep * etp)."""


def stage_params(shapes: ModelShapes, L: LayoutArrays, layers: np.ndarray, embed: np.ndarray | bool,
                 head: np.ndarray | bool) -> StageParams:
    """Parameters held by one rank of a stage with `layers` layers, the embedding and/or the LM head."""
    moe_share = shapes.moe_fraction
    per_layer_dense = (shapes.attn_params + (1 - moe_share) * shapes.dense_mlp_params
                       + moe_share * shapes.moe_dense_part_params) / L.tp + shapes.norm_params \
        + moe_share * shapes.latent_params  # a latent MoE's projections: duplicated over tp
    # A tied head needs its own copy on the last stage when pp > 1 (Megatron keeps both in sync).
    head_matrix = np.where(shapes.tied & (L.pp == 1), 0.0, shapes.vocab * shapes.hidden) / L.tp
    final_norm = shapes.head_params - shapes.vocab * shapes.hidden
    dense = (layers * per_layer_dense + np.where(embed, shapes.embed_params / L.tp, 0.0)
             + np.where(head, head_matrix + final_norm, 0.0))
    expert = layers * moe_share * shapes.n_experts * shapes.expert_params / (L.ep * L.etp)
    if shapes.mtp_layers:
        # DeepSeek-V3's MTP modules sit beside the LM head on the last stage (Sec. 2.2, ModelSpec.mtp_params): one
        # more transformer block each, the 2h x h projection M_k (column-parallel over tp) and three RMSNorms.
        # A shared module (ModelSpec.mtp_shared) holds one depth's parameters; a hybrid's MTP block is its
        # transformer layer (ModelShapes.mtp_layer), not its average block.
        mtp = np.where(head, float(min(shapes.mtp_layers, 1) if shapes.mtp_shared else shapes.mtp_layers), 0.0)
        moe = shapes.mtp_layer_moe
        src = shapes.mtp_layer or shapes
        block_dense = (src.attn_params + (src.moe_dense_part_params if moe else src.dense_mlp_params)
                       + 2 * shapes.hidden * shapes.hidden) / L.tp + src.norm_params + 3 * shapes.hidden \
            + (src.latent_params if moe else 0.0)
        dense = dense + mtp * block_dense
        if moe:
            expert = expert + mtp * shapes.n_experts * shapes.expert_params / (L.ep * L.etp)
    return StageParams(dense=dense, expert=expert)


@dataclass(frozen=True, slots=True)
class StateBytes:
    weights: np.ndarray
    grads: np.ndarray
    optimizer: np.ndarray
    fsdp_buffers: np.ndarray
    """ZeRO-3: unsharded weights of the layer in use and the prefetched one, plus one layer's unsharded gradients;
    under pipeline parallelism the whole stage's unsharded weights and gradients."""


def zero_shards(L: LayoutArrays) -> tuple[np.ndarray, np.ndarray]:
    """Ranks a ZeRO stage (distributed optimizer) shards one rank's (dense, routed-expert) parameter states over: dense
    parameters over their data-parallel group dp_shard * cp; routed experts over the expert-data-parallel group,
    the ranks holding the same experts, dp_shard * cp * tp / (ep * etp) (Megatron-Core parallel_state: expert DP =
    world / (pp * ep * etp); its distributed optimizer shards expert buffers over that group)."""
    return L.dp_shard * L.cp, np.maximum(1.0, L.dp_shard * L.cp * L.tp / (L.ep * L.etp))


def fsdp_gathered_weight_bytes(L: LayoutArrays, fp8_allgather: bool) -> np.ndarray:
    """Bytes per parameter of a block's weight as ZeRO-3 / FSDP gathers it: fp32 under fp32 training, fp8 under fp8
    with the stack's fp8 all-gather, else bf16. torchtitan turns torchao's float8 all-gather on only when the batch is
    sharded over data-parallel ranks (torchtitan/float8.py Float8Handler, Dec 2024: enable_fsdp_float8_all_gather =
    parallel_dims.dp_shard_enabled and the config flag): with dp_shard 1 (FSDP over the cp ranks alone) FSDP2 gathers
    bf16 weights."""
    fp8_gathered = (L.precision == PREC_FP8) & fp8_allgather & (L.dp_shard > 1)
    return np.where(L.precision == PREC_FP32, FP32_PARAM_BYTES, np.where(fp8_gathered, FP8_PARAM_BYTES,
                                                                         BF16_PARAM_BYTES))


def param_gather_bytes(L: LayoutArrays, fp8_allgather: bool, recipe: str | None) -> np.ndarray:
    """Bytes per parameter of the data-parallel all-gather of weights (the distributed optimizer's updated weights,
    ZeRO-3 / FSDP's per-block gathers): fp8_param_gather_bytes for fp8-only parameters, else as FSDP gathers them
    (fsdp_gathered_weight_bytes: the compute dtype, fp8 under torchao's float8 all-gather)."""
    return np.where(fp8_only_params(L), fp8_param_gather_bytes(recipe), fsdp_gathered_weight_bytes(L, fp8_allgather))


def state_bytes(shapes: ModelShapes, L: LayoutArrays, params: StageParams, layers: np.ndarray,
                fp8_copy_bytes: float = FP8_WEIGHT_COPY_BYTES, param_remainders: int = Remainders.NONE,
                fp32_params: bool = False, fp8_allgather: bool = False,
                fp8_param_bytes: float = FP8_WEIGHT_COPY_BYTES) -> StateBytes:
    """Weights, gradients and optimizer states of one rank under its ZeRO stage (ZeRO paper, Rajbhandari 2020).
    `fp32_params`: see bytes_per_param; `fp8_allgather`: ZeRO-3 gathers fp8 weights under fp8 when dp_shard > 1,
    whose unsharded copies are 1 B per parameter (torchao enable_fsdp_float8_all_gather: fsdp_post_all_gather wraps
    the gathered bytes in a Float8Tensor, which the forward uses as the unsharded parameter); `fp8_param_bytes`: an
    fp8-only parameter (Layout.fp8_params), sharded and gathered as it is (bytes_per_param)."""
    wb, gb, ob = bytes_per_param(L, fp8_copy_bytes, param_remainders, fp32_params, fp8_param_bytes)
    dense_shard, expert_shard = zero_shards(L)
    p_dense, p_exp = params.dense, params.expert

    def sharded(per_param: np.ndarray, from_stage: int) -> np.ndarray:
        on = L.zero >= from_stage
        return per_param * (np.where(on, p_dense / dense_shard, p_dense) + np.where(on, p_exp / expert_shard, p_exp))

    per_layer = (p_dense + p_exp) / np.maximum(layers, 1)
    compute_wb = np.where(fp8_only_params(L), fp8_param_bytes, fsdp_gathered_weight_bytes(L, fp8_allgather))
    # With pp > 1, torch.distributed.pipelining keeps an FSDP2 stage unsharded from its first forward to the
    # gradient reduction after its last backward (reshard_after_forward=False, as torchtitan sets it under PP;
    # no gradient sync between micro-batches): the whole stage's weights and gradients, not two layers.
    whole_stage = (p_dense + p_exp) * (compute_wb + gb)
    fsdp = np.where(L.zero == 3, np.where(L.pp > 1, whole_stage, per_layer * (2 * compute_wb + gb)), 0.0)
    return StateBytes(weights=sharded(wb, 3), grads=sharded(gb, 2), optimizer=sharded(ob, 1), fsdp_buffers=fsdp)


FSDP_ROOT_OUTER, FSDP_ROOT_SPLIT = "outer", "split"
"""How torch FSDP2 wraps the parameters outside the blocks (stack fsdp_root; fsdp2_peak_buffers)."""


def fsdp2_peak_buffers(shapes: ModelShapes, L: LayoutArrays, fsdp_root: str, fp8_allgather: bool,
                       grad_bytes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(at the head's loss, inside a block's backward): what torch FSDP2 holds on one rank at pp 1, ZeRO-3, beyond
    the sharded states, in the caching allocator whose reserved bytes torchtitan logs as its peak memory
    (torchtitan components/metrics.py DeviceMemoryMonitor: reserved_bytes.all.peak).
    - The outer group's unsharded parameters, bf16 (fp32 under fp32 training; torchao's float8 converts only the
      blocks' linears, filter_fqns ["output"]): `fsdp_root` "outer", the embedding + final norm + LM head, which
      FSDP2 keeps unsharded from the forward through the backward (torch _fsdp_state.py _lazy_init: the root's
      post_forward_mesh_info = None); "split", only [norm, output], wrapped with reshard_after_forward False
      (pytorch/torchtitan#1094).
    - At the loss: under "outer" the last block too, unsharded (torchtitan apply_fsdp: reshard_after_forward =
      layer_id < n_layers - 1); no gradient exists yet. Inside a block's backward: the running block and the
      prefetched one unsharded plus one block's unsharded gradients (`grad_bytes` per parameter), as state_bytes
      prices the average layer, here with a block's own parameters.
    - The all-gather stream's pool: foreach_all_gather allocates each all-gather output (and the shard cast to the
      gather dtype, 1/N of it) under `with stream(all_gather_copy_in_stream)`, and the caching allocator reuses a
      freed block only on the stream it was allocated on (c10/cuda/CUDACachingAllocator.cpp get_free_block), so
      the compute stream never gets these bytes back: the largest outer group's output, held (AllGatherState, in
      forward) until the first block's copy-out, plus that block's gather: G + max(G / N, B (1 + 1/N)) bytes,
      G = the largest outer group's gathered bytes, B = a block's, N = the FSDP degree (dp_shard x cp).
    """
    n = len(L)
    block = stage_params(shapes, L, np.ones(n), False, False)
    block_params = block.dense + block.expert
    embed = stage_params(shapes, L, np.zeros(n), True, False).dense
    head = stage_params(shapes, L, np.zeros(n), False, True).dense
    fp32 = L.precision == PREC_FP32
    outer_wb = np.where(fp32, FP32_PARAM_BYTES, BF16_PARAM_BYTES)
    block_wb = fsdp_gathered_weight_bytes(L, fp8_allgather)
    if fsdp_root == FSDP_ROOT_OUTER:
        held, last_block, largest = (embed + head) * outer_wb, block_params * block_wb, embed + head
    elif fsdp_root == FSDP_ROOT_SPLIT:
        held, last_block, largest = head * outer_wb, np.zeros(n), np.maximum(embed, head)
    else:
        raise ValueError(f"fsdp_root {fsdp_root!r}: choose {FSDP_ROOT_OUTER} or {FSDP_ROOT_SPLIT}")
    shards = zero_shards(L)[0]
    outer_gather, block_gather = largest * outer_wb, block_params * block_wb
    pool = outer_gather + np.maximum(outer_gather / shards, block_gather * (1.0 + 1.0 / shards))
    at_loss = held + last_block + pool
    in_block = held + block_params * (2.0 * block_wb + grad_bytes) + pool
    return at_loss, in_block


def op_sac_bytes(shapes: ModelShapes, L: LayoutArrays, moe: bool, compiled: bool = False) -> np.ndarray:
    """Bytes one layer keeps under torchtitan's op-level selective activation checkpointing (per micro-batch, one
    rank): the layer input, the outputs of the ops in its save list (matmuls, SDPA with its log-sum-exp,
    reduce-scatters) except every other matmul, which is recomputed with every elementwise op (torchtitan
    `_save_list`, policy "save every other mm", parallelize_llama.py at 9dec370). Dense-layer matmul order wq, wk,
    wv, wo, w1, w3, w2 marks wq, wv, w1, w2 MUST_SAVE; MoE experts run grouped matmuls outside the alternation and
    are kept with their gate/up outputs.

    Eager (`compiled` False) keeps every MUST_SAVE output, needed by a backward formula or not: torch/utils/
    checkpoint.py _CachingTorchDispatchMode stores each one at forward and the recompute pops it when it replays the
    block, so w2's local output (tokens x h, the partial sum before the reduce-scatter under TP) and the MLP's
    reduce-scatter output stay until the block's backward. Compiled blocks keep only what the backward graph reads:
    AOTAutograd's min-cut partitioner (torch/_functorch/partitioners.py) saves a MUST_SAVE node only when a backward
    node depends on it, and nothing in a block's backward reads w2's output or the block output it reduces to."""
    h = shapes.hidden
    tokens = L.seq * L.mbs / L.cp
    t = L.tp
    act = np.where(L.precision == PREC_FP32, 4.0, 2.0)
    kv_half = shapes.kv_dim / 2  # the v projection (k and v are equally wide)
    attn = tokens * (h / L.sp_div * act + act * (shapes.q_dim + kv_half + shapes.v_dim) / t
                     + 4.0 * shapes.n_heads / t)
    # SP reduce-scatter outputs are in the save list: the attention's (the residual the MLP norm is recomputed from)
    # and, eager only, the MLP's (the block output).
    rs = np.where((L.sp > 0) & (L.tp > 1), (1.0 if compiled else 2.0) * tokens * h / L.sp_div * act, 0.0)  # tp 1: no SP
    if moe:
        # drop-and-pad: padded rows; imbalanced dropless: the busiest rank's (moe_layer.busiest_rank_ratio)
        routed = tokens * shapes.top_k / L.sp_div * busiest_rank_ratio(shapes, L)
        mlp = act * routed * shapes.expert_ffn * (2 if shapes.gated else 1) / L.etp + act * routed * h
        if shapes.shared_ffn:
            mlp = mlp + act * tokens * (shapes.shared_ffn + h) / t
    else:
        # w1's output (w3 is the recomputed one); eager also w2's local output, full width on every TP rank.
        mlp = act * tokens * shapes.ffn / t + (0.0 if compiled else act * tokens * h)
    return attn + rs + mlp


def glu_saved_widths(shapes: ModelShapes, fused_glu: bool) -> float:
    """FFN-wide tensors the activation keeps for backward: a fused (bias-)SwiGLU/GeGLU saves only its input, the
    gate and up halves (Megatron-Core fusions/fused_bias_swiglu.py SwiGLUFunction: save_for_backward(input));
    unfused, autograd keeps gate, up and act(gate) (silu saves its input, the product both factors); 1 ungated."""
    if not shapes.gated:
        return 1.0
    return 2.0 if fused_glu else 3.0


def selective_module(L: LayoutArrays, mode: np.ndarray, name: str) -> np.ndarray:
    """Per candidate: does selective recompute (`mode`) recompute Megatron-Core module `name`? An empty module list
    means Megatron's default, core_attn (TransformerConfig.recompute_modules default ["core_attn"])."""
    bit = (L.recompute_modules.astype(np.int64) >> RECOMPUTE_MODULES.index(name)) & 1
    on = (bit > 0) | ((L.recompute_modules == 0) & (name == "core_attn"))
    return (mode == RECOMPUTE_SELECTIVE) & on


def autocast_weight_copy_bytes(shapes: ModelShapes, L: LayoutArrays, layers: np.ndarray, head: np.ndarray | bool,
                               autocast: bool) -> np.ndarray:
    """The bf16 copies torch.autocast makes of a stage's matmul weights: a parameter (a leaf that requires grad) is
    cast once and cached until the outermost autocast region exits (aten/src/ATen/autocast_mode.cpp cached_cast;
    torch.autocast.__exit__ clears the cache), so every layer's linear weights and the LM head's stay live in bf16
    for the whole step, beside the fp32 parameters and whatever the recompute mode keeps: 2 B per matmul parameter,
    once per step. Norm weights and the embedding table (a lookup, not a matmul) are not cast; a tied head casts the
    shared table once."""
    if not autocast:
        return np.zeros(len(L))
    moe = shapes.moe_fraction
    per_layer = (1 - moe) * layer_matmul_params(shapes, L, False) + (
        moe * layer_matmul_params(shapes, L, True) if moe else 0.0)
    matmul = layers * per_layer + np.where(head, shapes.vocab * shapes.hidden / L.tp, 0.0)
    return np.where(half_autocast(L, autocast), BF16_PARAM_BYTES * matmul, 0.0)


def layer_activation_bytes(shapes: ModelShapes, L: LayoutArrays, moe: bool, mode: np.ndarray,
                           selective: str = SELECTIVE_CORE_ATTN, sp_gathered: bool = False,
                           fused_glu: bool = True, compiled: bool = False, autocast: bool = False,
                           kv_copies: float = 0.0, fp8_saved: Fp8Saved = FP8_SAVED) -> np.ndarray:
    """Bytes one transformer layer keeps for backward, per micro-batch, on one rank (Korthikanti 2022 Table 2).

    `mode` is the recompute code per candidate (none/selective/full); full keeps only the layer input. What
    selective keeps follows the stack (`selective`): Megatron's recompute modules (L.recompute_modules; default
    core_attn) or torchtitan's op-level SAC (eager or `compiled`, op_sac_bytes). `fused_glu`: the stack fuses the
    gated activation (glu_saved_widths). `autocast`: the stack's mixed precision is torch.autocast over fp32
    parameters (half_autocast: an fp32 residual stream, one bf16 cast of a norm output per linear reading it).
    `kv_copies`: more copies of K and V the stack's attention keeps beside the packed q, k, v (stacks.yaml
    attention_kv_copies). `fp8_saved`: what fp8 layers save, in bytes per element (Fp8Saved).
    GPT check (a heads, f = 4h, dropout, no flash): s*b*h*(34 + 5*a*s/h) with no parallelism.
    """
    h = shapes.hidden
    tokens = L.seq * L.mbs / L.cp
    t, spd = L.tp, L.sp_div
    act = np.where(L.precision == PREC_FP32, 4.0, 2.0)  # bf16; fp32 runs 4
    fp8 = L.precision == PREC_FP8
    # Under fp8, Transformer Engine's linears save their quantised input for wgrad (fp8_saved.linear_input_bytes) in
    # place of
    # the bf16 norm outputs and FFN product; the out-projection's fp8 copy comes on top of the attention output the
    # attention core keeps in bf16.
    lin_in = np.where(fp8, fp8_saved.linear_input_bytes, act)
    drop = 1.0 if shapes.dropout else 0.0
    module = lambda name: selective_module(L, mode, name)  # noqa: E731
    casting = half_autocast(L, autocast) if autocast else None
    # Two norm inputs and dropout masks on sequence shards under SP; the qkv and MLP inputs too (Megatron keeps the
    # shard and re-gathers in backward), or whole when the stack's SP saves the gathered input (`sp_gathered`).
    # Under autocast the residual stream, and so each norm's saved input, stays fp32.
    lin_div = 1.0 if sp_gathered else spd
    residual = act if casting is None else np.where(casting, FP32_PARAM_BYTES, act)
    # one norm input per residual block; a parallel layer's norms both read the layer input (ModelShapes.norm_inputs_kept)
    norm_inputs = tokens * h * shapes.norm_inputs_kept * (residual + drop) / spd
    # The attention's input norm output: the fused norm-qkv linear's saved input. MLA's q/kv down-projections
    # read a separate norm module, which "layernorm" recompute discards (Megatron-Core CheckpointWithoutOutput).
    # Under autocast (models/training/autocast.py) the norm output is fp32 and each of q, k, v saves its own bf16
    # cast of it.
    attn_norm_out = tokens * h * lin_in / lin_div if shapes.has_attention else 0.0
    if casting is not None:
        attn_norm_out = attn_norm_out * np.where(casting, AUTOCAST_ATTN_INPUT_CASTS, 1.0)
    if shapes.mla_latent:
        attn_norm_out = np.where(module("layernorm"), 0.0, attn_norm_out)
    qkv = act * tokens * (shapes.q_dim + shapes.kv_dim) / t
    if shapes.mla_latent:
        # MLA trains on per-head tensors: q (heads x (nope + rope)), k expanded per head (same width), v (heads x
        # v_head), plus the low-rank intermediates (DeepSeek-V2 Sec. 2.1; Megatron-Core MLA), not the cached latent.
        # "mla_up_proj" recompute discards the up-projections' per-head outputs after the core attention and
        # recomputes them from the kept latents (Megatron-Core MLA qkv_up_checkpoint).
        per_head = act * tokens * (2 * shapes.q_dim + shapes.v_dim) / t
        qkv = np.where(module("mla_up_proj"), 0.0, per_head) + act * tokens * shapes.mla_latent
    if kv_copies:
        qkv = qkv + kv_copies * act * tokens * shapes.kv_dim / t
    # A stack that stores the attention output once in low precision (DeepSeek-V3's E5M6) keeps that one copy.
    one_copy = fp8_saved.attention_output_bytes
    attn_out = np.where(fp8, act + fp8_saved.linear_input_bytes if one_copy is None else one_copy,
                        act) * tokens * shapes.v_dim / t
    keys = L.seq  # every query attends to the full (causal) sequence
    scores = np.where(L.flash_attn > 0, 4.0 * tokens * shapes.n_heads / t,  # fp32 log-sum-exp per row
                      (act + 3 * drop) * shapes.n_heads * tokens * keys / t)  # softmax (+ mask + dropout out)
    # Selective (Megatron core_attn checkpoint) keeps the core's inputs q, k, v (kept above) and recomputes the rest:
    # unfused, the s^2 softmax/dropout tensors (Korthikanti 2022); with flash only its log-sum-exp (the output is
    # kept by the out-projection anyway).
    scores = np.where(module("core_attn") | (not shapes.has_attention), 0.0, scores)
    glu = glu_saved_widths(shapes, fused_glu)
    if moe:
        # The pre-MLP norm is its own module here (the router and the dispatcher read it): the router keeps its
        # output in bf16 for its weight gradient, unless "layernorm" recompute discards it.
        mlp_norm_out = np.where(module("layernorm"), 0.0, act * tokens * h / lin_div)
        # Rows this rank's experts receive; drop-and-pad: capacity x n_experts, padding included; imbalanced
        # dropless: the busiest rank's, which sets the peak (moe_layer.busiest_rank_ratio).
        routed = tokens * shapes.top_k / spd * busiest_rank_ratio(shapes, L)
        # Router probabilities (fp32 per expert); per routed token the grouped fc1 keeps its input (fp8 under fp8),
        # the activation its input, fc2 its input. The router probabilities are applied inside the activation
        # (Megatron-Core TEGroupedMLP weighted_bias_swiglu_impl), so the unpermute keeps no copy of the expert output.
        # "moe_act" recompute discards the activation's output, fc2's input (TEGroupedMLP activation_checkpoint;
        # under fp8 fc2 saves that original input, set_save_original_input).
        fc2_in = np.where(module("moe_act"), 0.0, lin_in)
        # An eager input clamp (GPT-OSS; compute.clamp_bytes) keeps the fc1 output alive for the clamps' backward
        # and the fused activation saves the clamped copy: 2 more FFN widths, unless moe_act recompute drops both.
        clamp_in = np.where(module("moe_act"), 0.0, 2.0 * act) if shapes.activation_clamp else 0.0
        # A latent MoE's experts read the latent width, and its latent -> h projection keeps its input.
        latent_out = act * tokens * shapes.moe_latent / spd
        # A stack that saves the gated activation's input in low precision (DeepSeek-V3's fp8 SwiGLU inputs in the
        # MoE layer, routed and shared experts) keeps that width per element in place of the compute dtype.
        glu_in = act if fp8_saved.moe_glu_input_bytes is None else np.where(fp8, fp8_saved.moe_glu_input_bytes, act)
        mlp = (4.0 * tokens * shapes.n_experts / spd + lin_in * routed * shapes.routed_width + latent_out
               + (glu * glu_in + clamp_in + fc2_in) * routed * shapes.expert_ffn / L.etp)
        if shapes.shared_ffn:
            shared = (glu * glu_in + lin_in) * tokens * shapes.shared_ffn / t
            mlp = mlp + np.where(module("shared_experts"), 0.0, shared)
        # "moe" recompute checkpoints the whole MoE block from the norm output (kept as the checkpoint's input).
        mlp = np.where(module("moe"), 0.0, mlp)
        mlp_norm_out = np.where(module("moe"), act * tokens * h / lin_div, mlp_norm_out)
    elif shapes.block == "attention":  # a hybrid's attention block: no MLP
        mlp_norm_out = mlp = 0.0
    else:
        # Under autocast the gate and up projections (w1, w3) each save their own cast of the norm output. A parallel
        # layer with one norm hands the MLP the tensor the qkv projection already keeps (ModelShapes.shared_norm).
        # (Under autocast that MLP still saves its own bf16 casts of it.)
        mlp_norm_out = tokens * h * lin_in / lin_div
        shared = 0.0 if shapes.shared_norm else 1.0
        if casting is not None:
            mlp_norm_out = mlp_norm_out * np.where(casting, mlp_input_casts(shapes, False), shared)
        else:
            mlp_norm_out = mlp_norm_out * shared
        # the activation's saved input(s) and the fc2 input (fp8 under fp8); a Mamba block (in_proj's input is the
        # norm output above): its mixer's saved tensors and out_proj's input (mamba_kernels.saved_bytes)
        mlp = (glu * act + lin_in) * tokens * shapes.ffn / t if shapes.block != "mamba" else mixer_saved_bytes(
            mixer_sizes(shapes.mamba_inner, shapes.mamba_heads, shapes.mamba_groups, shapes.mamba_state,
                        shapes.mamba_chunk, t, L.cp), tokens * L.cp, lin_in)  # whole sequence, heads / cp
        # "mlp" recompute checkpoints the dense MLP (its fused norm included) from the residual input; no recompute
        # module reaches a Mamba block (Megatron-Core's MambaLayer is not a TransformerLayer).
        if shapes.block != "mamba":
            mlp = np.where(module("mlp"), 0.0, mlp)
            mlp_norm_out = np.where(module("mlp"), 0.0, mlp_norm_out)
    stored = norm_inputs + attn_norm_out + mlp_norm_out + qkv + attn_out + scores + mlp
    if selective == SELECTIVE_OP_SAC:
        stored = np.where(mode == RECOMPUTE_SELECTIVE, op_sac_bytes(shapes, L, moe, compiled), stored)
    return np.where(mode == RECOMPUTE_FULL, act * tokens * h / spd, stored)


def inflight_microbatches(L: LayoutArrays, position: str) -> np.ndarray:
    """Micro-batches whose activations a stage holds at its peak (Narayanan 2021; Megatron theoretical memory).

    GPipe: all m. 1F1B: pp - i on stage i (first stage: pp). Interleaved with v chunks: the first stage holds
    pp * (1 + (pp-1)/(pp*v)) micro-batches of its layers. DualPipe: pp + 1 on every rank, counted in one stage's
    layers (pp - i of the forward direction's stage i, i + 1 of the reverse direction's stage pp-1-i; DeepSeek-V3,
    arXiv 2412.19437 Table 2). Capped by m. pp = 1: one at a time.
    """
    m = L.microbatches
    index = {"first": 0.0, "middle": 1.0, "last": L.pp - 1}[position]
    one_f_one_b = np.minimum(L.pp - index, m)
    # Megatron's interleaved warm-up on pipeline rank i: (pp - i - 1) * 2 + (v - 1) * pp chunks, plus the one in
    # flight, each 1/v of the rank's layers; rank 0 gives pp + (pp-1)/v (measured by `clusterplan validate`).
    interleaved = np.minimum(((L.pp - index - 1) * 2 + (L.vpp - 1) * L.pp + 1) / L.vpp, m * 1.0)
    held = np.select([L.schedule == SCHEDULE_GPIPE, L.schedule == SCHEDULE_INTERLEAVED,
                      L.schedule == SCHEDULE_DUALPIPE], [m, interleaved, np.minimum(L.pp + 1.0, m)], one_f_one_b)
    return np.where(L.pp == 1, 1.0, np.maximum(held, 1.0))


def per_layer_activation_bytes(shapes: ModelShapes, L: LayoutArrays, selective: str = SELECTIVE_CORE_ATTN,
                               sp_gathered: bool = False, fused_glu: bool = True,
                               compiled: bool = False, autocast: bool = False,
                               kv_copies: float = 0.0, fp8_saved: Fp8Saved = FP8_SAVED
                               ) -> tuple[np.ndarray, np.ndarray]:
    """(kept, full): bytes one layer keeps per micro-batch under the layout's recompute (full recompute's layers
    counted as none: layers_activation_bytes splits them off), and under full recompute. The same at every pipeline
    position, so memory_breakdown computes them once."""
    if shapes.blocks:  # a hybrid: its block kinds by their share of the layers
        parts = [(share, per_layer_activation_bytes(block, L, selective, sp_gathered, fused_glu, compiled, autocast,
                                                    kv_copies, fp8_saved)) for share, block in shapes.blocks]
        return (sum(share * kept for share, (kept, _) in parts), sum(share * full for share, (_, full) in parts))
    kept_mode = np.where(L.recompute == RECOMPUTE_FULL, RECOMPUTE_NONE, L.recompute)
    full_mode = np.full(len(L), RECOMPUTE_FULL)
    moe_share = shapes.moe_fraction
    per_layer_kept = ((1 - moe_share) * layer_activation_bytes(shapes, L, False, kept_mode, selective, sp_gathered,
                                                               fused_glu, compiled, autocast, kv_copies,
                                                               fp8_saved)
                      + (moe_share * layer_activation_bytes(shapes, L, True, kept_mode, selective, sp_gathered,
                                                            fused_glu, compiled, autocast, kv_copies, fp8_saved)
                         if moe_share else 0.0))
    return per_layer_kept, layer_activation_bytes(shapes, L, False, full_mode, autocast=autocast)


PER_LAYER_ACTIVATION_FIELDS = ("tp", "etp", "ep", "cp", "mbs", "seq", "sp", "flash_attn", "precision", "recompute",
                               "recompute_modules", "moe_capacity_factor", "moe_imbalance")
"""The LayoutArrays columns per_layer_activation_bytes reads (sp_div: sp, tp); tests/test_plan_speed.py checks it."""
DEDUPE_MIN_ROWS = 4096
"""Below this many candidates the per-layer activations are computed on every row."""


def unique_per_layer_activation_bytes(shapes: ModelShapes, L: LayoutArrays, selective: str = SELECTIVE_CORE_ATTN,
                                      sp_gathered: bool = False, fused_glu: bool = True,
                                      compiled: bool = False, autocast: bool = False, kv_copies: float = 0.0,
                                      fp8_saved: Fp8Saved = FP8_SAVED
                                      ) -> tuple[np.ndarray, np.ndarray]:
    """per_layer_activation_bytes once per distinct combination of PER_LAYER_ACTIVATION_FIELDS, broadcast back: the
    same numbers (every term is elementwise per candidate), for a search's millions of candidates."""
    unique = L.unique_rows(PER_LAYER_ACTIVATION_FIELDS) if len(L) >= DEDUPE_MIN_ROWS else None
    if unique is None or len(unique[0]) == len(L):
        return per_layer_activation_bytes(shapes, L, selective, sp_gathered, fused_glu, compiled, autocast,
                                          kv_copies, fp8_saved)
    first, inverse = unique
    kept, full = per_layer_activation_bytes(shapes, L.take(first), selective, sp_gathered, fused_glu, compiled,
                                            autocast, kv_copies, fp8_saved)
    return kept[inverse], full[inverse]


def layers_activation_bytes(shapes: ModelShapes, L: LayoutArrays, layers: np.ndarray, position: str,
                            selective: str = SELECTIVE_CORE_ATTN, sp_gathered: bool = False,
                            fused_glu: bool = True,
                            per_layer: tuple[np.ndarray, np.ndarray] | None = None,
                            compiled: bool = False, working_set: bool = True,
                            fp8_saved: Fp8Saved = FP8_SAVED) -> np.ndarray:
    """Activations the transformer layers of a stage hold at its peak: in-flight micro-batches x layers, plus the
    working set of the layer being recomputed under full recompute (recompute_working_bytes; left out when
    `working_set` is False), less the layers offloaded to host memory. `per_layer`: per_layer_activation_bytes of the
    same arguments, when the caller has it."""
    full_layers = full_recompute_layers(L, layers)
    per_layer_kept, per_layer_full = per_layer if per_layer is not None else per_layer_activation_bytes(
        shapes, L, selective, sp_gathered, fused_glu, compiled)
    # Activation offloading (Megatron-Core cpu_offloading_num_layers through TE's CPU offload context, pp = 1): those
    # layers' saved tensors move to host memory after their forward and return before their backward; the layer
    # being copied out or back in stays on the GPU, one layer's set.
    offloaded = np.minimum(L.offload_layers, layers - full_layers)
    staged = np.where(offloaded > 0, 1.0, 0.0)
    per_micro = full_layers * per_layer_full + (layers - full_layers - offloaded + staged) * per_layer_kept
    held = inflight_microbatches(L, position) * per_micro
    if not working_set:
        return held
    recomputed = per_layer_kept
    if shapes.blocks:  # a hybrid recomputes block by block: the largest block's set is the one live at the peak
        recomputed = np.max([per_layer_activation_bytes(block, L, selective, sp_gathered, fused_glu, compiled,
                                                        fp8_saved=fp8_saved)[0]
                             for _, block in shapes.blocks], axis=0)
    return held + recompute_working_bytes(L, layers, recomputed)


def full_recompute_layers(L: LayoutArrays, layers: np.ndarray) -> np.ndarray:
    """Layers of a stage with `layers` layers that full recompute checkpoints (all, or recompute_layers of them)."""
    return np.where(L.recompute == RECOMPUTE_FULL,
                    np.where(L.recompute_layers > 0, np.minimum(L.recompute_layers, layers), layers), 0.0)


def recompute_working_bytes(L: LayoutArrays, layers: np.ndarray, per_layer_kept: np.ndarray) -> np.ndarray:
    """While a fully recomputed layer runs backward, its whole activation set is live once more: one layer's
    `per_layer_kept` when the stage recomputes any layer in full."""
    return np.where(full_recompute_layers(L, layers) > 0, per_layer_kept, 0.0)


def loss_peak_bytes_per_logit(L: LayoutArrays, loss_bytes_per_logit: float,
                              loss_parallel_bytes_per_logit: float | None = None) -> np.ndarray:
    """Peak bytes per logit of the stack's cross-entropy: `loss_bytes_per_logit`, or under tp > 1
    `loss_parallel_bytes_per_logit` when the stack keeps the logits vocabulary-sharded through the loss (torch
    loss_parallel, torch/distributed/tensor/parallel/loss.py _nll_loss_and_log_softmax_backward: the saved fp32
    log-softmax output, zeros_like(x), exp(x) and their sum live together, 4 B each: 16 B)."""
    if loss_parallel_bytes_per_logit is None:
        return np.full(len(L), loss_bytes_per_logit)
    return np.where(L.tp > 1, loss_parallel_bytes_per_logit, loss_bytes_per_logit)


def ends_activation_bytes(shapes: ModelShapes, L: LayoutArrays, embed: np.ndarray | bool,
                          head: np.ndarray | bool, sp_gathered: bool = False,
                          loss_bytes_per_logit: float = UNFUSED_LOSS_BYTES_PER_LOGIT,
                          loss_parallel_bytes_per_logit: float | None = None,
                          freed_logits_bytes_per_logit: float = 0.0, autocast: bool = False) -> np.ndarray:
    """Embedding output (first stage, per in-flight micro-batch; fp32 under `autocast`, half_autocast) and loss
    logits (last stage); with `sp_gathered`
    the LM head also keeps its all-gathered input (last stage, one micro-batch in flight there at its peak);
    `loss_bytes_per_logit`: the peak bytes per logit of the stack's cross-entropy (ExecutionStack), replaced under
    tp > 1 by `loss_parallel_bytes_per_logit` when the stack has one (loss_peak_bytes_per_logit);
    `freed_logits_bytes_per_logit`: what the allocator keeps reserved beside it (EAGER_LOSS_FREED_LOGITS_BYTES), pp = 1
    only: under a pipeline schedule the last stage keeps every micro-batch's logits (torch_pipeline_bytes)."""
    tokens = L.seq * L.mbs / L.cp
    fp32 = L.precision == PREC_FP32
    residual = np.where((fp32 | half_autocast(L, autocast)) if autocast else fp32, 4.0, 2.0)
    embed_out = (inflight_microbatches(L, "first") * tokens * shapes.hidden * (residual + shapes.dropout)
                 / L.sp_div)
    # bf16 logits + their fp32 upcast for the cross-entropy (Megatron: 4*s*b*h*(1+V/h) form, vocab-parallel);
    # fp32 training has no upcast: 4 bytes per logit.
    # Mixed precision: as the stack computes the loss (hardware_db stacks.yaml loss_bytes_per_logit, each with its
    # source: TE's fused cross-entropy 2 B, Megatron's vocab-parallel one on an fp32 copy 6 B, PyTorch's eager
    # F.cross_entropy on logits.float() 12 B at the head's backward).
    per_logit = np.where(fp32, 4.0, loss_peak_bytes_per_logit(L, loss_bytes_per_logit, loss_parallel_bytes_per_logit)
                         + np.where(L.pp == 1, freed_logits_bytes_per_logit, 0.0))
    logits = np.where(L.schedule == SCHEDULE_GPIPE, L.microbatches, 1.0) * per_logit * tokens * shapes.vocab / L.tp
    head_in = np.where(L.sp > 0, tokens * shapes.hidden * np.where(fp32, 4.0, 2.0) * (1 - 1 / L.tp), 0.0) \
        if sp_gathered else 0.0
    return np.where(embed, embed_out, 0.0) + np.where(head, logits + head_in, 0.0)


def torch_pipeline_bytes(shapes: ModelShapes, L: LayoutArrays, position: str) -> np.ndarray:
    """Bytes torch.distributed.pipelining holds on a pipeline rank beyond its layers' saved activations (pp > 1;
    torch/distributed/pipelining/stage.py, PipelineStage). `io`: one micro-batch's stage input or output (the
    residual stream, sequence-sharded under SP); m micro-batches; v stages per rank.
    - one activation receive buffer per micro-batch and stage that has a previous stage (_prepare_forward_infra), of
      which the in-flight micro-batches' are their first layer's saved input already: (m - in flight) io each;
    - one gradient receive buffer per micro-batch and stage that has a next stage (_prepare_backward_infra);
    - each in-flight micro-batch's stage output, kept in fwd_cache until its backward (no layer saves it);
    - last stage: the receive buffers' .grad, kept until clear_runtime_states ((m - 1) io at the last backward), and
      every micro-batch's output, the logits in the compute dtype, in output_chunks until the step's merge."""
    if position not in POSITION_NAMES:
        raise ValueError(f"position {position!r}: choose one of {', '.join(POSITION_NAMES)}")
    act = np.where(L.precision == PREC_FP32, 4.0, 2.0)
    tokens = L.seq * L.mbs / L.cp
    io = act * tokens * shapes.hidden / L.sp_div
    m = L.microbatches * 1.0
    held = inflight_microbatches(L, position)
    first, last = position == "first", position == "last"
    recv_stages = L.vpp - (1.0 if first else 0.0)
    grad_stages = L.vpp - (1.0 if last else 0.0)
    buffers = (recv_stages * np.maximum(m - held, 0.0) + grad_stages * m + grad_stages * held) * io
    if last:
        logits = act * tokens * shapes.vocab / L.tp
        buffers = buffers + (m - 1.0) * io + m * logits
    return np.where(L.pp > 1, buffers, 0.0)


def torch_cp_gathered_kv_bytes(shapes: ModelShapes, L: LayoutArrays) -> np.ndarray:
    """The all-gathered K and V one layer's context-parallel attention holds while it runs (torch context_parallel
    with rotate_method allgather, torch/distributed/tensor/experimental/_attention.py _AllGatherRotater: the whole
    sequence's K and V, as SDPA receives them after torchtitan's repeat_kv: n_heads wide). Transient, one layer at
    a time; the local chunk is counted with the layer's q, k, v. cp = 1: nothing."""
    act = np.where(L.precision == PREC_FP32, 4.0, 2.0)
    gathered = act * L.seq * L.mbs * (shapes.q_dim + shapes.v_dim) / L.tp
    return np.where(L.cp > 1, gathered, 0.0)


def outside_allocator_bytes(L: LayoutArrays) -> np.ndarray:
    """The CUDA context and NCCL's buffers of each process group in use: device memory PyTorch's caching allocator
    does not hold (torch.cuda.max_memory_reserved leaves them out)."""
    groups = sum((getattr(L, axis) > 1).astype(float) for axis in ("tp", "pp", "dp", "cp", "ep"))
    # hierarchical CP builds its all-to-all and ring groups beside the CP group (parallel_state
    # create_hierarchical_groups)
    groups = groups + 2.0 * (L.cp_kind == CpKindCode.A2A_P2P)
    return CUDA_CONTEXT_BYTES + NCCL_BYTES_PER_GROUP * groups


def other_bytes(L: LayoutArrays, activations: np.ndarray) -> np.ndarray:
    """CUDA context, NCCL buffers of each process group in use, allocator reserve: explicit, documented terms."""
    return outside_allocator_bytes(L) + ALLOCATOR_FRACTION * activations


def ddp_bucket_bytes(L: LayoutArrays, params: StageParams, bytes_per_param: float) -> np.ndarray:
    """PyTorch DistributedDataParallel's flat gradient buckets: the reducer allocates a bucket buffer beside the
    parameters' .grad tensors (gradient_as_bucket_view=False, the default; torch/nn/parallel/distributed.py), in the
    gradients' dtype, whenever there is more than one data-parallel rank. FSDP (ZeRO-3) has no DDP wrapper."""
    return np.where((L.dp > 1) & (L.zero < 3), bytes_per_param * (params.dense + params.expert), 0.0)


def zero1_gather_flat_bytes(L: LayoutArrays, params: StageParams) -> np.ndarray:
    """ZeRO-1's all-gather of the updated weights through flat buffers (nanotron optim/zero.py _all_gather_params ->
    nanotron.distributed.all_gather_coalesced: this rank's shards flattened into one buffer, 2/dp B per parameter in
    bf16, every rank's output slices flattened into another, 2 B, before the all-gather and the copy back), held
    during the optimizer step on top of the state; one data-parallel rank gathers nothing."""
    return np.where((L.zero == 1) & (L.dp > 1), 2.0 * (params.dense + params.expert) * (1.0 + 1.0 / L.dp), 0.0)


def tp_gather_buffer_bytes(shapes: ModelShapes, L: LayoutArrays, buffers: float) -> np.ndarray:
    """Persistent full-sequence buffers the stack's tensor-parallel linears gather into, [tokens of one micro-batch,
    hidden] each, in the activation dtype (nanotron's MemoryBuffer "allgather" and "allgather2": grown, never freed;
    only its sequence-parallel linears, tp_mode REDUCE_SCATTER, gather); tp = 1 or no sequence parallelism: none."""
    act = np.where(L.precision == PREC_FP32, 4.0, 2.0)
    return np.where((L.tp > 1) & (L.sp > 0), buffers * act * L.seq * L.mbs / L.cp * shapes.hidden, 0.0)


POSITION_NAMES = ("first", "middle", "last")
BREAKDOWN_TERMS = ("weights", "grads", "optimizer", "activations", "other", "total")


@dataclass(frozen=True, slots=True)
class MemoryBreakdown:
    weights: np.ndarray
    grads: np.ndarray
    optimizer: np.ndarray
    activations: np.ndarray
    other: np.ndarray
    peak: np.ndarray
    peak_position: np.ndarray
    """0 first, 1 middle, 2 last pipeline stage: which rank is most loaded."""
    by_position: np.ndarray
    """All terms at every position: [position (first, middle, last), term (as above, then total), candidate]."""

    def take(self, index: np.ndarray) -> MemoryBreakdown:
        """The breakdown of the candidates at `index` (what a search keeps after the memory filter)."""
        return MemoryBreakdown(self.weights[index], self.grads[index], self.optimizer[index],
                               self.activations[index], self.other[index], self.peak[index],
                               self.peak_position[index], self.by_position[:, :, index])


def rank_block_counts(n_layers: int, pp: int, first: float, middle: float, last: float,
                      listed: tuple[int, ...]) -> tuple[int, ...] | None:
    """Blocks each pipeline rank holds, in order (Megatron-Core MambaStack: by count of pattern characters,
    regardless of kind; the ends' own counts where given): the listed counts, or first, the middles, last; None
    where they do not add up to the model (a layout the rules refuse)."""
    counts = tuple(listed) if listed else (round(first), *(round(middle),) * (pp - 2), round(last))
    return counts if len(counts) == pp and sum(counts) == n_layers and min(counts) >= 0 else None


def hybrid_position_shares(shapes: ModelShapes, L: LayoutArrays, layers: StageLayers) -> dict[str, tuple] | None:
    """A hybrid's blocks by kind on its first, middle and last pipeline ranks, as shares of each rank's blocks (its
    slice of the pattern: rank_block_counts), per row; None for a model of one kind or where no row has pp > 1. The
    middle is the middle rank holding the most attention blocks (their saved K / V make it the heaviest), ties to the
    earliest. Rows at pp 1, or whose counts do not add up, keep the model's mix."""
    if not shapes.blocks or not np.any(L.pp > 1):
        return None
    symbol = {kind: sym for sym, kind in HYBRID_BLOCK_KINDS.items()}
    kinds = [block.block for _, block in shapes.blocks]
    shares = {k: tuple(np.full(len(L), share) for _ in range(3)) for k, (share, _) in
              zip(kinds, shapes.blocks, strict=True)}
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in np.nonzero(L.pp > 1)[0]:
        counts = rank_block_counts(shapes.n_layers, int(L.pp[i]), float(layers.first[i]), float(layers.middle[i]),
                                   float(layers.last[i]), tuple(L.pp_layers[i]) if L.pp_layers_listed[i] else ())
        if counts is not None:
            groups.setdefault(counts, []).append(int(i))
    for counts, members in groups.items():
        starts = np.cumsum((0, *counts[:-1]))
        slices = [shapes.pattern[s:s + c] for s, c in zip(starts, counts, strict=True)]
        middle = max(slices[1:-1], key=lambda p: p.count(symbol["attention"]), default=slices[0])
        for k in kinds:
            for position, part in enumerate((slices[0], middle, slices[-1])):
                shares[k][position][members] = part.count(symbol[k]) / len(part) if part else 0.0
    return shares


def hybrid_composition(shapes: ModelShapes, L: LayoutArrays, layers: StageLayers, activation_args: tuple
                       ) -> list[tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] | None:
    """Per position (first, middle, last): a hybrid rank's per-layer (kept, full) activation bytes mixed by its own
    blocks' shares (hybrid_position_shares), and the ratio of its blocks' (dense, expert) parameters per layer to the
    model mix's, which scales the average stage_params; None for a model of one kind or pp 1 everywhere.
    `activation_args`: per_layer_activation_bytes' arguments after L."""
    shares = hybrid_position_shares(shapes, L, layers)
    if shares is None:
        return None
    blocks = {block.block: (share, block) for share, block in shapes.blocks}
    acts = {k: per_layer_activation_bytes(b, L, *activation_args) for k, (_, b) in blocks.items()}
    one = np.ones(len(L))
    params = {k: stage_params(b, L, one, False, False) for k, (_, b) in blocks.items()}
    model_dense = sum(s * params[k].dense for k, (s, _) in blocks.items())
    model_expert = sum(s * params[k].expert for k, (s, _) in blocks.items())
    out = []
    for position in range(3):
        kept = sum(shares[k][position] * acts[k][0] for k in blocks)
        full = sum(shares[k][position] * acts[k][1] for k in blocks)
        dense = sum(shares[k][position] * params[k].dense for k in blocks)
        expert = sum(shares[k][position] * params[k].expert for k in blocks)
        ratio = (np.where(model_dense > 0, dense / np.maximum(model_dense, 1e-30), 1.0),
                 np.where(model_expert > 0, expert / np.maximum(model_expert, 1e-30), 1.0))
        out.append(((kept, full), ratio))
    return out


def mtp_bf16_states(shapes: ModelShapes, L: LayoutArrays, states: StateBytes, head: np.ndarray | bool,
                    *state_args) -> StateBytes:
    """`states` with the head stage's MTP modules held in bf16 under fp8 (stacks.yaml hybrid_mtp_bf16): their
    weights, gradients and optimizer state as bf16 training keeps them, no fp8 copies. `state_args`: state_bytes'
    keywords after `layers`, in order."""
    zero = np.zeros(len(L))
    with_mtp = stage_params(shapes, L, zero, False, head)
    without = stage_params(replace(shapes, mtp_layers=0), L, zero, False, head)
    mtp = StageParams(dense=with_mtp.dense - without.dense, expert=with_mtp.expert - without.expert)
    ones = np.ones(len(L))
    fp8, bf16 = (state_bytes(shapes, rows, mtp, ones, *state_args) for rows in (L, as_bf16(L)))
    return replace(states, **{name: getattr(states, name) + getattr(bf16, name) - getattr(fp8, name)
                              for name in ("weights", "grads", "optimizer")})


def memory_breakdown(shapes: ModelShapes, L: LayoutArrays, selective: str = SELECTIVE_CORE_ATTN,
                     fp8_copy_bytes: float = FP8_WEIGHT_COPY_BYTES, sp_gathered: bool = False,
                     fused_glu: bool = True, loss_bytes_per_logit: float = UNFUSED_LOSS_BYTES_PER_LOGIT,
                     param_remainders: int = Remainders.BF16, loss_parallel_bytes_per_logit: float | None = None,
                     pp_impl: str = "megatron", cp_impl: str = "megatron", compiled: bool = False,
                     fp32_params: bool = False, fp8_allgather: bool = False,
                     freed_logits_bytes_per_logit: float = 0.0, fsdp_root: str | None = None,
                     autocast: bool = False, fp8_param_bytes: float = FP8_WEIGHT_COPY_BYTES,
                     kv_copies: float = 0.0, ddp_bucket_bytes_per_param: float = 0.0,
                     tp_gather_buffers: float = 0.0, zero1_gather_flat_copies: bool = False,
                     fp8_saved: Fp8Saved = FP8_SAVED, mtp_bf16: bool = False) -> MemoryBreakdown:
    """Per-GPU memory (bytes) of the most loaded pipeline rank, by term. The keywords are the execution stack's
    (selective_recompute, its fp8 weight cache in bytes per parameter (fp8_weight_copy_bytes),
    sp_saves_gathered_inputs, swiglu in fused_kernels, loss_bytes_per_logit, optimizer_param_remainders,
    loss_parallel_bytes_per_logit, pp_impl: "torch" adds torch_pipeline_bytes, cp_impl: "torch" adds
    torch_cp_gathered_kv_bytes, both to "other"; compiled: the blocks run torch.compile'd (op_sac_bytes);
    fp32_params, fp8_allgather: torch FSDP2's fp32 sharded parameters and fp8 weight gathers (state_bytes);
    freed_logits_bytes_per_logit: the eager loss's freed logits block (ends_activation_bytes); fsdp_root: the stack
    runs torch FSDP2 with this wrapping of the outer parameters, whose buffers replace state_bytes' average-layer
    ones at pp 1 under ZeRO-3 (fsdp2_peak_buffers; None: state_bytes' everywhere)); autocast: the stack's mixed
    precision is torch.autocast over fp32 parameters (its casts in the layers' activations, the weights' bf16 copies,
    autocast_weight_copy_bytes, with them); fp8_param_bytes: an fp8-only parameter's bytes under the recipe
    (Layout.fp8_params; bytes_per_param); kv_copies: more K / V copies each layer's attention keeps
    (layer_activation_bytes); ddp_bucket_bytes_per_param: PyTorch DDP's flat gradient buckets beside the .grad
    tensors (ddp_bucket_bytes); tp_gather_buffers: persistent full-sequence all-gather buffers under TP
    (tp_gather_buffer_bytes); zero1_gather_flat_copies: ZeRO-1's weight all-gather copies into flat buffers during
    the optimizer step (zero1_gather_flat_bytes), a moment of its own: where the state and those copies outlast the
    forward / backward peak, "other" takes the difference); fp8_saved: what fp8 layers save for backward, by the
    fp8 recipe and the stack's low-precision activation storage (Fp8Saved); mtp_bf16: the MTP modules' weights are bf16 under fp8, no fp8 copies (stacks.yaml
    hybrid_mtp_bf16))."""
    layers = stage_layers(shapes, L)
    single = L.pp == 1
    # Written in place (position x term x candidate): a search prices millions of candidates, so no row is copied
    # twice.
    stacked = np.empty((len(POSITION_NAMES), len(BREAKDOWN_TERMS), len(L)))
    per_layer = unique_per_layer_activation_bytes(shapes, L, selective, sp_gathered, fused_glu, compiled, autocast,
                                                  kv_copies, fp8_saved)
    gather_buffers = tp_gather_buffer_bytes(shapes, L, tp_gather_buffers)
    # Framework buffers and transients no layer saves for backward go to "other" (validate measures activations as
    # the tensors autograd saves): torch context_parallel's gathered K/V, torch pipelining's buffers.
    cp_gathered = torch_cp_gathered_kv_bytes(shapes, L) if cp_impl == "torch" else 0.0
    fsdp2 = (fsdp2_peak_buffers(shapes, L, fsdp_root, fp8_allgather,
                                bytes_per_param(L, fp8_copy_bytes, param_remainders, fp32_params, fp8_param_bytes)[1])
             if fsdp_root is not None else None)
    fsdp2_on = (L.pp == 1) & (L.zero == 3)
    # Layers kept in bf16 under fp8 (Layout.bf16_first_layers / bf16_last_layers): bf16 saved inputs, no fp8 weight
    # copies (and bf16 parameters under fp8_params: Megatron-Core builds them outside the fp8 init context).
    bf16_counts = bf16_position_counts(shapes.n_layers, L)
    if bf16_counts is not None:
        as_bf16_rows = as_bf16(L)
        bf16_kept = unique_per_layer_activation_bytes(shapes, as_bf16_rows, selective, sp_gathered, fused_glu,
                                                      compiled, autocast, kv_copies, fp8_saved)[0]
    composition = hybrid_composition(shapes, L, layers, (selective, sp_gathered, fused_glu, compiled, autocast,
                                                         kv_copies, fp8_saved))
    for i, (position, n_layers) in enumerate(zip(POSITION_NAMES, (layers.first, layers.middle, layers.last), strict=True)):
        embed = position == "first"
        head = single if embed else position == "last"
        params = stage_params(shapes, L, n_layers, embed, head)
        position_per_layer = per_layer
        if composition is not None:  # a hybrid rank's own blocks (its slice of the pattern), not the model's mix
            position_per_layer, (dense_ratio, expert_ratio) = composition[i]
            ends = stage_params(shapes, L, np.zeros(len(L)), embed, head)
            params = StageParams(dense=ends.dense + (params.dense - ends.dense) * dense_ratio,
                                 expert=ends.expert + (params.expert - ends.expert) * expert_ratio)
        states = state_bytes(shapes, L, params, n_layers, fp8_copy_bytes, param_remainders, fp32_params, fp8_allgather,
                             fp8_param_bytes)
        if mtp_bf16 and np.any(head):  # the head stage's MTP modules, held in bf16 (no fp8 copies)
            states = mtp_bf16_states(shapes, L, states, head, fp8_copy_bytes, param_remainders, fp32_params,
                                     fp8_allgather, fp8_param_bytes)
        if bf16_counts is not None:
            count = bf16_counts[i]
            ends_params = stage_params(shapes, L, count, False, False)
            as_fp8, as_bf16_state = (state_bytes(shapes, rows, ends_params, count, fp8_copy_bytes, param_remainders,
                                                 fp32_params, fp8_allgather, fp8_param_bytes)
                                     for rows in (L, as_bf16_rows))
            states = replace(states, **{name: getattr(states, name) + getattr(as_bf16_state, name)
                                        - getattr(as_fp8, name) for name in ("weights", "grads", "optimizer")})
        if ddp_bucket_bytes_per_param:
            states = replace(states, grads=states.grads + ddp_bucket_bytes(L, params, ddp_bucket_bytes_per_param))
        if np.any(L.schedule == SCHEDULE_DUALPIPE):
            # DualPipe keeps two stages per rank (i and pp-1-i): 2x the parameters, their gradients and optimizer
            # states (arXiv 2412.19437 Table 2), counted as twice this position's stage.
            two = np.where(L.schedule == SCHEDULE_DUALPIPE, 2.0, 1.0)
            states = replace(states, weights=two * states.weights, grads=two * states.grads,
                             optimizer=two * states.optimizer)
        ends = [ends_activation_bytes(shapes, L, e, h, sp_gathered, loss_bytes_per_logit, loss_parallel_bytes_per_logit,
                                      freed_logits_bytes_per_logit, autocast) for e, h in ((embed, False), (False, head))]
        # The loss's logits peak in the head's forward and backward, outside every layer, and are freed before the
        # last layer's backward recomputes it: the transients of a running layer (the recompute working set, torch
        # context_parallel's gathered K/V) and the logits are never live together; the larger peak counts.
        working = recompute_working_bytes(L, n_layers, position_per_layer[0])
        # FSDP buffers differ between the two moments under FSDP2 (fsdp2_peak_buffers), so they join the comparison.
        fsdp_loss = fsdp_layer = states.fsdp_buffers
        if fsdp2 is not None:
            fsdp_loss, fsdp_layer = (np.where(fsdp2_on, b, states.fsdp_buffers) for b in fsdp2)
        in_layer = working + cp_gathered + fsdp_layer > ends[1] + fsdp_loss
        acts = (layers_activation_bytes(shapes, L, n_layers, position, selective, sp_gathered, fused_glu,
                                        position_per_layer, working_set=False, fp8_saved=fp8_saved)
                + ends[0] + np.where(in_layer, working, ends[1])
                + autocast_weight_copy_bytes(shapes, L, n_layers, head, autocast))
        if bf16_counts is not None:  # kept layers only: a fully recomputed layer keeps its input, bf16 either way
            kept_bf16 = np.maximum(bf16_counts[i] - full_recompute_layers(L, n_layers), 0.0)
            acts = acts + inflight_microbatches(L, position) * kept_bf16 * (bf16_kept - per_layer[0])
        other = other_bytes(L, acts) + np.where(in_layer, fsdp_layer + cp_gathered, fsdp_loss) + gather_buffers
        if zero1_gather_flat_copies:
            # The optimizer step's moment: the state, the flat gather copies, the buffers no step frees.
            step = (states.weights + states.grads + states.optimizer + zero1_gather_flat_bytes(L, params)
                    + outside_allocator_bytes(L) + gather_buffers)
            activation_moment = states.weights + states.grads + states.optimizer + acts + other
            other = other + np.maximum(0.0, step - activation_moment)
        if pp_impl == "torch":
            other = other + torch_pipeline_bytes(shapes, L, position)
        total = states.weights + states.grads + states.optimizer + acts + other
        for j, term in enumerate((states.weights, states.grads, states.optimizer, acts, other, total)):
            stacked[i, j] = term
    first, middle, last = stacked[:, -1]
    # argmax over the positions (the first of equal maxima wins), without a strided reduction.
    worst = np.where(middle > first, 1, 0)
    worst = np.where(last > np.maximum(first, middle), 2, worst)
    pick = [np.where(worst == 2, stacked[2, j], np.where(worst == 1, stacked[1, j], stacked[0, j]))
            for j in range(len(BREAKDOWN_TERMS))]
    return MemoryBreakdown(*pick, peak_position=worst, by_position=stacked)
