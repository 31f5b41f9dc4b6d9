"""Execution stacks as data: what each training framework overlaps, fuses and can run (hardware_db/data/stacks.yaml).

    from clusterplan.hardware_db import get_stack
    get_stack("torchtitan").fsdp_granularity   # "block"

The cost model reads these fields instead of assuming one behaviour for every framework (issue #13); each entry
names its sources. The field names are a contract other modules read (coord/STACK_CONTRACT.md): add, never rename.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from clusterplan.errors import BadInputError
from clusterplan.hardware_db.catalog import _read, find_name

DEFAULT_STACK = "megatron-core"
TP_OVERLAPS = ("none", "bulk", "async_tp", "local_shard")
FSDP_GRANULARITIES = ("block", "tensor", "bucket")
DP_CHUNKS = ("layer", "virtual_stage")
FUSED_KERNELS = ("rmsnorm", "swiglu", "rope", "cross_entropy", "bias_dropout_add", "softmax")
ATTENTION_KERNELS = ("fa1", "triton", "fa2", "fa3", "cudnn", "sdpa", "sdpa_cudnn_first", "unfused")
FP8_RECIPES = ("tensorwise", "rowwise", "delayed", "mxfp8", "blockwise", "nvfp4")
"""Low-precision GEMM recipes (Layout.fp8_recipe with precision=fp8): per-tensor current (tensorwise) or delayed
scaling, torchao's rowwise, MXFP8 (1x32 E8M0 blocks), DeepSeek-V3's blockwise, and NVFP4 (Transformer Engine's 4-bit
E2M1 with 1x16 E4M3 block scales: its GEMMs run on fp4 tensor cores, everything else as under fp8)."""
SELECTIVE_RECOMPUTE = ("core_attn", "op_sac", "none")
SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b", "zb", "zbv", "dualpipe")
CP_KINDS = ("ring", "a2a", "allgather", "a2a+p2p")
CP_IMPLS = ("megatron", "torch")
PP_IMPLS = ("megatron", "torch")
PP_SPLITS = ("even", "cost_balanced")
CUDA_GRAPHS = ("none", "attn", "full")
MOE_DISPATCHERS = ("alltoall", "deepep", "hybridep")
OPTIMIZER_IMPLS = ("fused", "foreach")
GRAD_CLIPS = ("none", "foreach")
MIXED_PRECISION_PARAMS, MIXED_PRECISION_AUTOCAST = "params", "autocast"
MIXED_PRECISIONS = (MIXED_PRECISION_PARAMS, MIXED_PRECISION_AUTOCAST)
"""How a stack runs bf16 (ExecutionStack.mixed_precision): in its parameters' bf16 copy, or under torch.autocast over
fp32 parameters."""
LOSS_IMPLS = ("fused", "eager_fp32", "compiled", "sharded_fp32")
FSDP_IMPLS = ("flat", "fsdp2")
FSDP_BACKWARD_PREFETCHES = ("pre", "post")
FSDP_ROOTS = ("outer", "split")
REQUIRED_SOURCES = ("overlap", "fsdp", "kernels", "fp8", "recompute", "schedules", "context_parallel")


HOST_CPUS = ("x86", "grace")
MOE_HOST_COUNTS = ("qk_norm_te_modules", "attention_ops", "router_te_modules", "router_ops", "dispatch_ops",
                   "experts_te_modules", "experts_ops", "combine_ops", "shared_experts_te_modules", "shared_experts_ops",
                   "fp8_padding_ops", "fp8_padding_backward_ops", "fp8_padding_backward_ops_per_expert")
MOE_HOST_SOURCES = ("op_s", "te_module_ops", "te_fp8_factor", "counts", "dispatcher_sync", "split_quantize_ops")
SPLIT_QUANTIZE_RECIPES = ("fp8", "tensorwise")
"""Keys of MoeHost.split_quantize_ops: "fp8" the count expert_linear_ops["fp8"] includes, "tensorwise" per-tensor
current scaling's own."""


NVFP4_KEEPS_BF16_PARAMS = ("NVFP4 keeps bf16 parameters (Megatron-Bridge mixed_precision.py: 'fp4_param and "
                           "fp4_param_gather are not supported for now')")
"""Why fp8_params never run under the nvfp4 recipe (ExecutionStack.fp8_params_refusal, estimate's FP8_PARAMS rule)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MoeHost:
    """Host (CPU) cost of an eager MoE layer, in ops of one eager torch.nn.Linear forward's host time
    (stacks.yaml moe_host; models/training/host.py prices it)."""

    op_s: Mapping[str, float]
    """Host seconds of one op per host CPU ("x86", "grace")."""
    te_module_ops: float
    """Ops one Transformer Engine module call costs (bf16)."""
    te_fp8_factor: float
    """A TE module's host time under fp8 over bf16."""
    attention_te_modules: Mapping[str, float]
    """TE modules of the attention block by kind: "gqa" (MHA / GQA) or "mla" (multi-head latent attention)."""
    qk_norm_te_modules: float
    """More TE modules where the model norms q and k (Qwen3)."""
    attention_ops: float
    router_te_modules: float
    router_ops: float
    """Router, aux loss and the dispatcher's preprocess (split sizes to the host) forward."""
    dispatch_ops: float
    experts_te_modules: float
    experts_ops: float
    expert_linear_ops: Mapping[str, float]
    """Forward ops per local expert and expert linear, by compute dtype ("bf16", "fp8")."""
    expert_linear_backward_ops: Mapping[str, float]
    split_quantize_ops: Mapping[str, float]
    """Ops of quantising one expert's split to fp8 (its kernels and output allocations): "fp8" as included in
    expert_linear_ops["fp8"] / expert_linear_backward_ops["fp8"], "tensorwise" under per-tensor current scaling on a
    GPU that runs every fp8 GEMM layout (one more allocation, the transpose, where fp8 GEMMs are TN only)."""
    transpose_allocation_ops: float
    """The transposed fp8 copy's allocation a tensorwise split adds on a GPU whose fp8 GEMMs are TN only (Hopper)."""
    combine_ops: float
    shared_experts_te_modules: float
    shared_experts_ops: float
    """The shared experts' TE linears and activation (models with shared experts), beside the routed ones."""
    fp8_padding_ops: float
    """Forward ops of the experts' fp8 padding / unpadding (stacks.yaml moe_host comment)."""
    fp8_padding_backward_ops: float
    fp8_padding_backward_ops_per_expert: float
    """Backward ops of the padding's gradients: fixed, and per local expert (one row slice each)."""
    dispatcher_sync: bool
    """The token dispatcher copies its split sizes to the host and synchronises once per MoE layer forward."""
    sources: Mapping[str, str]


DENSE_HOST_CALLS = ("kernel_op", "aten_call", "triton_launch", "autograd_function")
"""Kinds of host call an eager dense layer makes (DenseHost.call_s keys): an ATen or NCCL call that launches a kernel,
an ATen call that launches none (views, allocations, splits), a Triton kernel launch, an autograd.Function's own
apply / Python backward (its inner calls counted apart)."""
DENSE_HOST_TIERS = ("tp1", "tp2", "tp_middle")
"""Rows of DenseHost.forward / backward: one layer at tp 1; at tp >= 2 on a rank at an end of the TP group (every rank
at tp 2); on a middle rank (tp >= 3), whose ring-ordered linears issue one more GEMM per split."""
DENSE_HOST_SOURCES = ("call_s", "counts")


@dataclass(frozen=True, slots=True)
class DenseHost:
    """Host (CPU) calls one eager dense decoder layer issues per micro-batch, forward and backward, and what each costs
    per host CPU (stacks.yaml dense_host; models/training/host.py dense_host_exposed_s prices it)."""

    call_s: Mapping[str, Mapping[str, float]]
    """Host seconds of one call, by host CPU ("x86", "grace") and kind (DENSE_HOST_CALLS)."""
    forward: Mapping[str, Mapping[str, float]]
    """Calls of one layer's forward, by tier (DENSE_HOST_TIERS) and kind."""
    backward: Mapping[str, Mapping[str, float]]
    sources: Mapping[str, str]
    uncounted_scale: float = 1.0
    """The layer's host time over what its counted calls cost (>= 1): the share the count leaves out (module calls,
    C++ autograd nodes, the collectives' Python and c10d bookkeeping, the framework's glue). 1 = the count is the
    whole; a stack that gives another value gives its fit (sources.uncounted_scale)."""


def _required_sources(where: str, raw: Mapping[str, Any], keys: tuple[str, ...]) -> Mapping[str, Any]:
    """The block's `sources:`, refusing it when one of `keys` has no source."""
    sources = raw.get("sources") or {}
    missing = [k for k in keys if not str(sources.get(k, "")).strip()]
    if missing:
        raise BadInputError(f"{where}: fields without a source: {', '.join(missing)}")
    return sources


def parse_dense_host(where: str, raw: Mapping[str, Any] | None) -> DenseHost | None:
    if raw is None:
        return None
    where = f"{where} dense_host"
    sources = _required_sources(where, raw, DENSE_HOST_SOURCES)

    def table(key: str, rows: tuple[str, ...]) -> Mapping[str, Mapping[str, float]]:
        value = raw.get(key)
        if not isinstance(value, Mapping) or set(value) != set(rows):
            raise BadInputError(f"{where}: {key} must have the rows {', '.join(rows)}, got {value!r}")
        out = {}
        for row in rows:
            calls = value[row]
            if not isinstance(calls, Mapping) or set(calls) != set(DENSE_HOST_CALLS):
                raise BadInputError(f"{where}: {key}.{row} must map {', '.join(DENSE_HOST_CALLS)} to numbers, "
                                    f"got {calls!r}")
            for k, v in calls.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                    raise BadInputError(f"{where}: {key}.{row}.{k} must be a number >= 0, got {v!r}")
            # counts stay whole numbers where the file gives them so (hw show prints 24, not 24.0)
            out[row] = MappingProxyType({k: calls[k] if isinstance(calls[k], int) else float(calls[k])
                                         for k in DENSE_HOST_CALLS})
        return MappingProxyType(out)

    scale = raw.get("uncounted_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 1:
        raise BadInputError(f"{where}: uncounted_scale must be a number >= 1, got {scale!r}")
    if scale != 1:
        _required_sources(where, raw, ("uncounted_scale",))
    return DenseHost(call_s=table("call_s", HOST_CPUS), forward=table("forward", DENSE_HOST_TIERS),
                     backward=table("backward", DENSE_HOST_TIERS),
                     sources=MappingProxyType({k: str(v) for k, v in sources.items()}), uncounted_scale=float(scale))


def parse_moe_host(where: str, raw: Mapping[str, Any] | None) -> MoeHost | None:
    if raw is None:
        return None
    where = f"{where} moe_host"
    sources = _required_sources(where, raw, MOE_HOST_SOURCES)

    def count(value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise BadInputError(f"{where}: {key} must be a number >= 0, got {value!r}")
        return float(value)

    def by(key: str, names: tuple[str, ...]) -> Mapping[str, float]:
        table = raw.get(key)
        if not isinstance(table, Mapping) or set(table) != set(names):
            raise BadInputError(f"{where}: {key} must map {', '.join(names)} to numbers, got {table!r}")
        return MappingProxyType({k: count(table[k], f"{key}.{k}") for k in names})

    linear = by("expert_linear_ops", ("bf16", "fp8"))
    linear_backward = by("expert_linear_backward_ops", ("bf16", "fp8"))
    split_quantize = by("split_quantize_ops", SPLIT_QUANTIZE_RECIPES)
    linear_fp8 = min(linear["fp8"], linear_backward["fp8"])
    if split_quantize["fp8"] > linear_fp8:
        raise BadInputError(f"{where}: split_quantize_ops.fp8 ({split_quantize['fp8']:g}) is part of "
                            f"expert_linear_ops.fp8 and expert_linear_backward_ops.fp8 and cannot exceed "
                            f"{linear_fp8:g}; lower it or raise those")
    return MoeHost(op_s=by("op_s", HOST_CPUS), te_module_ops=count(raw.get("te_module_ops"), "te_module_ops"),
                   te_fp8_factor=count(raw.get("te_fp8_factor"), "te_fp8_factor"),
                   **{k: count(raw.get(k), k) for k in MOE_HOST_COUNTS},
                   attention_te_modules=by("attention_te_modules", ("gqa", "mla")),
                   expert_linear_ops=linear, expert_linear_backward_ops=linear_backward,
                   split_quantize_ops=split_quantize,
                   transpose_allocation_ops=count(raw.get("transpose_allocation_ops"), "transpose_allocation_ops"),
                   dispatcher_sync=_flag(where, raw, "dispatcher_sync"),
                   sources=MappingProxyType({k: str(v) for k, v in sources.items()}))


TE_UB_COMM_SMS = 16
"""Transformer Engine's default userbuffers config (transformer_engine/pytorch/module/base.py initialize_ub,
get_default_config): num_sm 16 with set_sm_margin for the "pipeline" and "bulk" overlaps, the SMs the GEMM gives up."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ExecutionStack:
    name: str
    description: str
    sources: Mapping[str, str]
    """Source of each group of fields: overlap, fsdp, kernels, fp8, recompute, schedules, context_parallel."""
    tp_overlap: str
    """"none" | "bulk" (TE userbuffers comm-GEMM overlap, Megatron --tp-comm-overlap) | "async_tp" (torchtitan) |
    "local_shard" (nanotron tp_linear_async_communication: each all-gather under its local shard's matmul, the
    input gradient's reduce-scatter under the weight gradient; models/training/tp_overlap.py)."""
    tp_overlap_share: float
    """Share of TP communication hidden under the layer's GEMMs by "bulk" overlap (0 otherwise: "none" hides
    nothing, "async_tp" is priced per fused op, models/training/tp_overlap.py)."""
    tp_overlap_bulk_sm_margin: int = TE_UB_COMM_SMS
    """SMs a Transformer Engine userbuffers bulk overlap (qkv / fc1 dgrad and wgrad) takes from the GEMM beside it
    (TE's set_sm_margin with num_sm): absent, TE's default, TE_UB_COMM_SMS; 0 where the stack's recipes pass tuned
    configs with set_sm_margin False (NeMo / Megatron-Bridge userbuffers.py)."""
    pp_overlap: bool
    """Pipeline send/recv runs under the next chunk's compute (Megatron --overlap-p2p-comm)."""
    pp_overlap_schedules: tuple[str, ...]
    """Schedules under which pp_overlap applies (Megatron-Bridge turns overlap_p2p_comm on only with vpp > 1)."""
    pp_warmup_exposed: bool = False
    """Under an overlapped interleaved schedule, every warm-up forward and cool-down backward chunk pass also sends
    and receives on the critical path, besides the 2 (pp - 1) transfers of the fill and drain (Megatron-Core's
    overlap_p2p_comm_warmup_flush off, its default), and there is no overlap without virtual stages."""
    dp_overlap: bool
    """Bucketed gradient reduce (and parameter all-gather) overlapped with backward (forward)."""
    dp_overlap_share: float
    """Share of the backward compute under which data-parallel traffic can hide (replaces DP_OVERLAP_SHARE)."""
    dp_exposed_chunk: bool
    """The last gradient chunk (one layer's, or one bucket's) cannot overlap: it is always exposed."""
    dp_bucket_bytes: float
    """Gradient bucket of the bucketed reduce (0: one chunk per layer, as Megatron-Core and FSDP2 chunk it)."""
    dp_chunk_under_pp: str
    """Gradient chunk under pipeline parallelism, for a stack without dp_bucket_params / dp_bucket_bytes: "layer" or
    "virtual_stage" (the layers of one virtual pipeline stage form one chunk)."""
    fsdp_granularity: str
    """"block" (one flat all-gather / reduce-scatter per wrapped block) | "tensor" (per parameter) | "bucket"."""
    fsdp_bucket_bytes: float
    """For "bucket": bytes per coalesced all-gather / reduce-scatter (DeepSpeed ZeRO-3 bucket sizes)."""
    fused_kernels: frozenset[str]
    attention_kernel: str
    """The attention core's kernel (ATTENTION_KERNELS): a kernel family, or `sdpa` (F.scaled_dot_product_attention in
    PyTorch's own backend order) / `sdpa_cudnn_first` (the same call with the cuDNN backend put first)."""
    fp8_recipes: tuple[str, ...]
    """fp8 recipes the stack runs; empty = no fp8."""
    fp8_weight_copy: bool
    """Keeps an fp8 copy of the weights beside the bf16 ones (Transformer Engine)."""
    fp8_allgather: bool
    """FSDP all-gathers weights in fp8 (torchtitan float8 all-gather)."""
    fp8_tp_allgather_recipes: tuple[str, ...]
    """fp8 recipes under which the sequence-parallel TP all-gathers (a block's input forward, the row-parallel
    output's gradient backward) move fp8 data, cast before the gather (torchao Float8ColwiseParallel /
    Float8RowwiseParallel / PrepareFloat8ModuleInput: tensorwise only); empty: they move the compute dtype."""
    loss_bytes_per_logit: float
    """Peak bytes per logit at the loss (forward and the head's backward), as the stack computes the cross-entropy."""
    optimizer_param_remainders: bool
    """The distributed optimizer (ZeRO 1/2) keeps only the fp32 master weights' 16 low bits beside the bf16 weights
    (Megatron-Core store_param_remainders): 10 B of Adam state per parameter instead of 12."""
    selective_recompute: str
    """What "selective" recomputes: "core_attn" (Megatron) | "op_sac" (torchtitan op-level SAC) | "none"."""
    schedules: tuple[str, ...]
    """Pipeline schedules the stack can run (Layout.schedule values)."""
    compiled: bool
    sp_saves_gathered_inputs: bool
    """Under sequence parallelism, the column-parallel linears keep their all-gathered (full-sequence) input for
    backward: DTensor's redistribute in torchtitan's SequenceParallel plan. Megatron-Core keeps the sequence shard and
    all-gathers it again in backward (Korthikanti et al. 2022, Sec. 4.2.2)."""
    cp_kinds: tuple[str, ...]
    """Context-parallel exchanges the stack runs (Layout.cp_kind values); empty = no context parallelism."""
    zero_stages: tuple[int, ...]
    """Layout.zero values the stack runs (0 DDP, 1 distributed optimizer, 2 + gradients, 3 FSDP / ZeRO-3)."""
    pp_max_zero: int
    """Highest ZeRO stage that runs together with pipeline parallelism (DeepSpeed: 1)."""
    moe_host: MoeHost | None = None
    """Host cost of its eager MoE layers (None: not priced for this stack)."""
    dense_host: DenseHost | None = None
    """Host calls of its eager dense layers (None: not priced for this stack: the host is taken to keep ahead)."""
    fp8_moe_glu_input_bytes: float | None = None
    """Bytes per element in which its fp8 layers save the routed experts' gated-activation input (fc1's output) for
    backward (None: the compute dtype, as Transformer Engine's grouped linears leave it)."""
    fp8_attention_output_bytes: float | None = None
    """Bytes per element of the one copy of the attention output its fp8 layers save for both the attention backward
    and the out-projection's weight gradient (None: the attention keeps a bf16 copy and the out-projection its own
    quantised one)."""
    attention_kv_copies: int = 0
    """More copies of K and V each layer's attention keeps for backward beside the packed q, k, v (nanotron: 1, the
    contiguous K/V it hands FlashAttention while q stays a view of the packed projection; absent: 0)."""
    ddp_bucket_bytes_per_param: float = 0.0
    """PyTorch DDP's flat gradient buckets beside the .grad tensors, bytes per parameter (dp > 1, ZeRO < 3; absent: 0,
    the stack's data parallelism reduces from the gradient buffer itself)."""
    zero1_gather_flat_copies: bool = False
    """ZeRO-1 gathers the updated weights through flat copies during the optimizer step (memory.zero1_gather_flat_bytes;
    absent: false, the gather writes in place)."""
    tp_gather_buffers: int = 0
    """Persistent full-sequence [tokens, hidden] buffers its TP linears all-gather into (absent: 0, transient)."""
    cuda_graphs: tuple[str, ...] = ("none",)
    """Layout.cuda_graphs values the stack runs (absent in stacks.yaml: eager only)."""
    fp8_expert_padding: bool = False
    """Under fp8 the MoE experts' input is padded to the fp8 GEMM row alignment per expert and the output unpadded,
    two copies of the routed tokens each way (Megatron-Core TEGroupedMLP with TE Fp8Padding / Fp8Unpadding;
    models/training/moe_layer.py fp8_padding_bytes; absent in stacks.yaml: false)."""
    cp_impl: str = "megatron"
    """How its context parallelism runs attention: "megatron" (Megatron-Core / TE: per-step fused attention with
    in-kernel softmax correction) | "torch" (torch.distributed.tensor.experimental context_parallel: one SDPA call
    per KV block, logsumexp merges and fp32 gradient accumulation as separate elementwise ops; absent: megatron)."""
    loss_parallel_bytes_per_logit: float | None = None
    """Peak bytes per logit of the cross-entropy when tp > 1 and the logits stay sharded over the vocabulary (torch
    loss_parallel); None (absent in stacks.yaml): loss_bytes_per_logit at every tp."""
    pp_split: str = "even"
    """How it splits layers over pipeline ranks when the layout gives no split: "even" (n_layers / pp, the ends as
    first/last_stage_layers say) | "cost_balanced" (nanotron's build_model: by cumulative block cost, the LM head
    counted; models/training/pipeline_split.py). Absent: even."""
    pp_impl: str = "megatron"
    """How its pipeline stages hold their buffers: "megatron" (Megatron-Core schedules: one receive buffer per
    transfer, output tensors' data freed after the send) | "torch" (torch.distributed.pipelining: one receive
    buffer per micro-batch, stage outputs kept for backward, the last stage's outputs kept until the step's merge;
    models/training/memory.py torch_pipeline_bytes). Absent: megatron."""
    optimizer_impl: str = "fused"
    """How its Adam step runs: "fused" (one kernel per tensor group: Megatron/TE FusedAdam, torch fused=True) |
    "foreach" (torch.optim multi-tensor AdamW, one _foreach pass per operation; models/training/step.py
    FOREACH_ADAMW_BYTES_PER_PARAM). Absent: fused."""
    grad_clip: str = "none"
    """Gradient-norm clipping priced per step: "none" | "foreach" (torch _foreach_norm + _foreach_mul_ over the local
    gradient shards, step.py FOREACH_CLIP_BYTES_PER_PARAM). Absent: none."""
    mixed_precision: str = MIXED_PRECISION_PARAMS
    """How bf16 runs: "params" (the compute uses the parameters' bf16 copy: Megatron-Core bf16 parameters, FSDP2's
    MixedPrecisionPolicy, DeepSpeed bf16) | "autocast" (torch.autocast over fp32 parameters, as plain PyTorch AMP:
    fp32 residual stream, per-use bf16 casts of each matmul's operands and cached bf16 weight copies;
    models/training/memory.py autocast_weight_copy_bytes). Absent: params."""
    loss_impl: str = "fused"
    """How its cross-entropy streams the logits: "fused" (compute.py FUSED_LOSS_BYTES_PER_LOGIT each way) |
    "eager_fp32" (F.cross_entropy(logits.float()) as eager PyTorch kernels, EAGER_FP32_LOSS_*_BYTES) | "compiled"
    (the same under torch.compile: Inductor reads the bf16 logits, COMPILED_LOSS_*_BYTES) | "sharded_fp32"
    (Megatron-style vocab-parallel cross-entropy as eager ops over fp32 logits, nanotron's _ShardedCrossEntropy:
    SHARDED_FP32_LOSS_*_BYTES). Absent: fused."""
    dp_bucket_params: float = 0.0
    """Megatron-Core DDP's gradient bucket, in parameters, as the stack's recipes set it (NeMo 2.0 / Megatron-Bridge
    CommOverlapConfig: 128 Mi with dp > 1). Megatron-Core buckets only the first pipeline stage's first model chunk
    (step.megatron_dp_chunks). 0 (absent): the stack chunks as dp_bucket_bytes / dp_chunk_under_pp say."""
    loss_frees_logits: bool = False
    """Its train loop drops the bf16 logits (`del pred`) between the eager fp32 loss's forward and backward, so the
    caching allocator keeps their freed block reserved beside the loss's peak (memory.py
    EAGER_LOSS_FREED_LOGITS_BYTES, pp = 1). Separate from loss_impl, which prices the loss's time: another eager fp32
    loss (DeepSpeed's Hugging Face models) keeps its logits in the model output. Absent: false."""
    fsdp_impl: str = "flat"
    """ZeRO-3 as "flat" buffers priced per average layer | "fsdp2" (torch fully_shard: the all-gather copy-out
    kernel on the compute stream per gather, and the root module's embedding + head + final norm gathered first and
    reduce-scattered last, exposed; step.py fsdp2_extra_s). Absent: flat."""
    qkv_layout_copies: bool = False
    """Its attention reorders the packed q, k, v projection from sequence-first to batch-first with a contiguous copy,
    concatenates K and V and copies them again into one KV tensor for the rotary kernel, and with more than one
    sequence per micro-batch copies the attention output back to sequence-first for the output projection
    (nanotron's CausalSelfAttention); compute.py qkv_layout_copy_times prices the copies. Absent: false."""
    glu_split_cat: bool = False
    """Its gated MLP runs one merged gate-and-up projection and splits the output in halves, so backward concatenates
    the halves' gradients (nanotron's MLP); compute.py glu_split_backward_s prices the copy. Absent: false."""
    attention_unpad: bool = False
    """The attention call first gathers q, k and v into unpadded (varlen) buffers and scatters its output back
    (flash_attn.bert_padding unpad_input / index_first_axis and pad_input, as llm-foundry's flash_attn_fn calls
    flash_attn_varlen_func); compute.py unfused_extra_bytes prices the copies. Absent: false."""
    zero2_gathers_per_microbatch: bool = False
    """Its ZeRO-2 shards the parameters between micro-batches too and gathers them again for every micro-batch's
    forward (PyTorch FSDP1 ShardingStrategy.SHARD_GRAD_OP: 'unshards before the forward, does not reshard them after
    the forward, and only reshards them after the backward computation'), not once per step after the optimizer
    (Megatron-FSDP optim_grads, DeepSpeed ZeRO-2 keep whole parameters). Absent: false."""
    fsdp_backward_prefetch: str = "pre"
    """When ZeRO-3 / FSDP issues a block's backward all-gather: "pre" (before the block after it in backward computes
    its gradients, so the gather runs under that compute: FSDP1 BACKWARD_PRE, FSDP2's and Megatron FSDP's explicit
    prefetch) | "post" (FSDP1 BACKWARD_POST: only once that block's gradients are complete, so nothing computes under
    the gather; step.py fsdp_post_prefetch_backward_s). Absent: pre."""

    fsdp_root: str = "outer"
    """Under fsdp_impl "fsdp2", how the parameters outside the transformer blocks are wrapped: "outer" (the root
    module holds the embedding, the final norm and the LM head, which FSDP2 keeps unsharded from forward through
    backward; the last block is not resharded after forward: torchtitan apply_fsdp before pytorch/torchtitan#1094) |
    "split" (tok_embeddings wrapped alone and resharded after forward, [norm, output] wrapped together and kept
    unsharded, every block resharded: torchtitan since #1094, Aug 2025). Prices memory.fsdp2_peak_buffers. Absent:
    outer."""
    tp_replicates_kv_heads: bool = True
    """Its tensor parallelism replicates K/V heads when tp exceeds them (tp a multiple of the kv heads, as
    Megatron-Core does); false: tp must divide the kv heads (torchtitan). Absent: true."""
    max_tp: int | None = None
    """Largest tensor-parallel degree the stack runs, for the dense layers (Layout.tp) and the experts (Layout.etp);
    None (absent in stacks.yaml): no limit beyond the scale-up domain the search keeps tp in."""
    tp_sequence_parallel: bool = True
    """Its tensor parallelism can shard the sequence between the parallel regions (Megatron sequence parallelism,
    Layout.sp); False: the TP regions all-reduce whole activations (DeepSpeed AutoTP), sp must be off. Absent: true."""
    tp_max_zero: int | None = None
    """Highest ZeRO stage that runs together with tp > 1 (DeepSpeed AutoTP: 2); None (absent): any."""
    tp_alone: bool = False
    """Tensor parallelism runs beside data parallelism only, not with pp, cp or ep > 1 (DeepSpeed AutoTP). Absent:
    false."""
    moe_dispatchers: tuple[str, ...] = ("alltoall",)
    """Layout.moe_dispatcher values the stack runs (absent in stacks.yaml: the NCCL all-to-all only)."""
    moe_a2a_overlap: bool = False
    """Runs the 1F1B all-to-all overlap (Layout.moe_a2a_overlap; absent: false)."""
    moe_token_drop: bool = False
    """Runs token-dropping MoE with padding to capacity (Layout.moe_capacity_factor; absent: false, dropless only)."""
    fp8_param_gather: bool = False
    """Can keep the parameters in fp8 only (Layout.fp8_params: Megatron-Core --fp8-param-gather, Transformer Engine
    fp8_model_init); absent: false."""
    grad_accum_bytes_per_param: float = 0.0
    """HBM bytes per parameter of a separate gradient-accumulation pass after each micro-batch's backward (nanotron's
    FP32GradientAccumulator: fp32_grad += bf16 grad, 2 + 4 read, 4 written); 0 (absent): accumulated inside the
    weight-gradient GEMM (Megatron-Core gradient_accumulation_fusion) or not priced."""
    wgrad_accumulation_fusion: bool = False
    """The weight-gradient GEMMs accumulate into the main-gradient buffer in place (C = dW + C, beta = 1), so each
    reads and writes its output in the main gradients' dtype (Megatron-Core gradient_accumulation_fusion, Transformer
    Engine fuse_wgrad_accumulation); absent: false, the GEMM writes a fresh 16-bit dW."""
    param_gather_overlap: bool = True
    """The distributed optimizer's all-gather of the updated weights runs under the next step's forward (Megatron-Core
    overlap_param_gather); false: after the optimizer step, exposed (nanotron). Absent: true, as dp_overlap says."""
    mamba_blocks: bool = False
    """Trains hybrid Mamba-2 / attention stacks (ModelSpec.hybrid_pattern: Megatron-Core's MambaModel / MambaStack);
    absent: false."""
    tp_sequence_parallel_always: bool = False
    """Its tensor parallelism always shards the norms and residual stream over the sequence (torchtitan's TP plan
    applies SequenceParallel unconditionally): sp=0 with tp > 1 does not run; absent: false."""
    recompute_layers_per_chunk: bool = False
    """Full recompute of part of the layers counts them per model chunk (Megatron-Core's block method: the first N
    layers of each virtual-pipeline chunk), so a rank's recomputed layers are a multiple of vpp; absent: false."""
    ddp_alone: bool = False
    """Plain data parallelism (zero 0) runs only without tp, pp, cp or ep (torchtitan's apply_ddp takes a 1-D mesh);
    absent: false."""
    pp_uneven_ends: bool = True
    """Takes first / last pipeline stages of their own size or per-rank layer lists (Megatron-Core's
    --decoder-first/last-pipeline-num-layers and layout, torchtitan's module lists); false: an even split only
    (DeepSpeed's PipelineModule partitions by its partition_method). Absent: true."""
    hsdp: bool = True
    """Shards ZeRO over part of the data-parallel group and replicates across the parts (Layout.dp_replicate > 1:
    FSDP2's HSDP mesh, Megatron-Core's num_distributed_optimizer_instances); absent: true."""
    parallel_blocks: bool = False
    """Trains layers whose attention and MLP run in parallel (ModelSpec.parallel_block: Falcon, GPT-NeoX / Pythia,
    Cohere), as a stack does that trains the Hugging Face model itself; absent: false."""
    activation_offload: bool = False
    """Offloads the activations of whole layers to host memory between forward and backward (Layout.offload_layers:
    Megatron-Core cpu_offloading_num_layers); absent: false."""
    hybrid_mtp_bf16: bool = False
    """Runs a hybrid's MTP block (ModelShapes.mtp_layer) in bf16 under fp8 (Megatron-Bridge keep_mtp_spec_in_bf16);
    absent: false (in the layers' recipe)."""
    bf16_end_layers: bool = False
    """Can keep the model's first / last layers' GEMMs in bf16 under fp8 (Layout.bf16_first_layers /
    bf16_last_layers: Megatron-Core first_last_layers_bf16); absent: false."""
    bf16_moments: bool = False
    """Can keep Adam's moments in bf16 (Layout.bf16_moments: Megatron-Core's precision-aware optimizer, Transformer
    Engine FusedAdam exp_avg_dtype / exp_avg_sq_dtype); absent: false."""
    eager_expert_bias: bool = False
    """Adds the routed experts' fc2 bias, scaled by each token's routing prob, as eager per-expert PyTorch ops after
    the grouped GEMM (Megatron-Core TEGroupedMLP._apply_bias; models/training/moe_layer.py expert_bias_bytes);
    absent: false (not priced)."""

    @property
    def torch_sdpa(self) -> bool:
        """The attention is F.scaled_dot_product_attention (torchtitan's Attention: K/V repeat_kv'd to the query heads
        and transposed before the call), whatever backend it picks."""
        return self.attention_kernel in ("sdpa", "sdpa_cudnn_first")

    @property
    def default_zero(self) -> int:
        """Layout.zero when a layout names none: ZeRO-1 (Layout's default, Megatron's distributed optimizer) where the
        stack runs it, else its highest stage (torchtitan, llm-foundry: 3, their default full sharding)."""
        return 1 if 1 in self.zero_stages else max(self.zero_stages)

    @property
    def fp8_tp_gathers_fp8(self) -> bool:
        """Whether the stack's fp8 recipe (its first) casts before the tensor-parallel all-gather, so the gather
        moves fp8 (fp8_tp_allgather_recipes); False without an fp8 recipe."""
        return bool(self.fp8_recipes) and self.fp8_recipes[0] in self.fp8_tp_allgather_recipes

    @property
    def keeps_fp8_params(self) -> bool:
        """Whether fp8-only parameters (Layout.fp8_params) run under the stack's fp8 recipe (its first): where it has
        them (fp8_param_gather), under every recipe but NVFP4 (fp8_params_refusal says why not)."""
        return not self.fp8_params_refusal

    @property
    def fp8_params_refusal(self) -> str:
        """Why fp8-only parameters cannot run under the stack's first fp8 recipe, in words; "" where they can."""
        if not self.fp8_param_gather or not self.fp8_recipes:
            return f"stack {self.name} keeps no fp8-only parameters"
        return NVFP4_KEEPS_BF16_PARAMS if self.fp8_recipes[0] == "nvfp4" else ""

    def running(self, fp8_recipe: str | None) -> ExecutionStack:
        """This stack running `fp8_recipe` (one of its fp8_recipes; Layout.fp8_recipe): the recipe moved first, where
        every cost term reads it; None or "" = the stack as it is (its first recipe, its default)."""
        if not fp8_recipe or fp8_recipe not in self.fp8_recipes or fp8_recipe == self.fp8_recipes[0]:
            return self
        return replace(self, fp8_recipes=(fp8_recipe, *(r for r in self.fp8_recipes if r != fp8_recipe)))

    def can_run(self, feature: str, value: Any) -> bool:
        """Whether the stack runs Layout field `feature` = `value` (schedule, cp_kind, zero, cuda_graphs,
        moe_dispatcher, recompute)."""
        table = {"schedule": self.schedules, "cp_kind": self.cp_kinds, "zero": self.zero_stages,
                 "cuda_graphs": self.cuda_graphs, "moe_dispatcher": self.moe_dispatchers,
                 "recompute": self.recompute_modes}
        return feature not in table or value in table[feature]

    @property
    def recompute_modes(self) -> tuple[str, ...]:
        """Layout.recompute values the stack runs: every stack runs none and whole-layer (full) recompute; selective
        only where it has a selective mode (selective_recompute is not "none")."""
        return ("none", "full") if self.selective_recompute == "none" else ("none", "selective", "full")

    @property
    def default_recompute(self) -> str:
        """Layout.recompute when a layout names none: selective (Layout's default) where the stack runs it, else
        none (nanotron, DeepSpeed, llm-foundry checkpoint whole layers only when asked)."""
        return "selective" if "selective" in self.recompute_modes else "none"


def _choice(where: str, raw: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = raw.get(key)
    if value not in allowed:
        raise BadInputError(f"{where}: {key}={value!r}; choose one of {', '.join(allowed)}")
    return value


def _subset(where: str, raw: Mapping[str, Any], key: str, allowed: tuple) -> tuple:
    values = raw.get(key)
    if values is None or not isinstance(values, list):
        raise BadInputError(f"{where}: {key} must be a list (may be empty), got {values!r}")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise BadInputError(f"{where}: {key} has {bad}; allowed: {', '.join(map(str, allowed))}")
    return tuple(values)


def _share(where: str, raw: Mapping[str, Any], key: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise BadInputError(f"{where}: {key} must be a number in [0, 1], got {value!r}")
    return float(value)


def _bytes(where: str, raw: Mapping[str, Any], key: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise BadInputError(f"{where}: {key} must be a number of bytes >= 0, got {value!r}")
    return float(value)


def _zero_stage(where: str, raw: Mapping[str, Any], key: str) -> int:
    value = raw.get(key)
    if value not in (0, 1, 2, 3) or isinstance(value, bool):
        raise BadInputError(f"{where}: {key} must be 0, 1, 2 or 3, got {value!r}")
    return int(value)


def _degree(where: str, raw: Mapping[str, Any], key: str) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInputError(f"{where}: {key} must be a whole number >= 1, got {value!r}")
    return value


def _count(where: str, raw: Mapping[str, Any], key: str) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadInputError(f"{where}: {key} must be a whole number >= 0, got {value!r}")
    return value


def _flag(where: str, raw: Mapping[str, Any], key: str) -> bool:
    value = raw.get(key)
    if not isinstance(value, bool):
        raise BadInputError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def parse_stack(name: str, raw: Mapping[str, Any]) -> ExecutionStack:
    where = f"stacks.yaml: {name}"
    sources = raw.get("sources") or {}
    missing = [k for k in REQUIRED_SOURCES if not str(sources.get(k, "")).strip()]
    if missing:
        raise BadInputError(f"{where}: fields without a source: {', '.join(missing)}")
    description = raw.get("description")
    if not isinstance(description, str) or not description.strip():
        raise BadInputError(f"{where}: missing description")
    tp_overlap = _choice(where, raw, "tp_overlap", TP_OVERLAPS)
    share = _share(where, raw, "tp_overlap_share")
    if tp_overlap != "bulk" and share:
        raise BadInputError(f"{where}: tp_overlap {tp_overlap} with tp_overlap_share {share}; set the share to 0 "
                            "(only bulk overlap hides a share; async TP is priced per fused op)")
    zero = raw.get("zero_stages")
    if not isinstance(zero, list) or any(z not in (0, 1, 2, 3) for z in zero) or not zero:
        raise BadInputError(f"{where}: zero_stages must be a non-empty list of 0, 1, 2, 3, got {zero!r}")
    pp_max_zero = _zero_stage(where, raw, "pp_max_zero")
    return ExecutionStack(
        name=name, description=description, sources=MappingProxyType({k: str(v) for k, v in sources.items()}),
        tp_overlap=tp_overlap, tp_overlap_share=share,
        tp_overlap_bulk_sm_margin=_sourced(where, raw, "tp_overlap_bulk_sm_margin",
                                           lambda: _count(where, raw, "tp_overlap_bulk_sm_margin"), TE_UB_COMM_SMS),
        pp_overlap=_flag(where, raw, "pp_overlap"),
        pp_overlap_schedules=_subset(where, raw, "pp_overlap_schedules", SCHEDULES),
        pp_warmup_exposed=_sourced(where, raw, "pp_warmup_exposed", lambda: _flag(where, raw, "pp_warmup_exposed"),
                                   False),
        dp_overlap=_flag(where, raw, "dp_overlap"), dp_overlap_share=_share(where, raw, "dp_overlap_share"),
        dp_exposed_chunk=_flag(where, raw, "dp_exposed_chunk"), dp_bucket_bytes=_bytes(where, raw, "dp_bucket_bytes"),
        dp_chunk_under_pp=_choice(where, raw, "dp_chunk_under_pp", DP_CHUNKS),
        fsdp_granularity=_choice(where, raw, "fsdp_granularity", FSDP_GRANULARITIES),
        fsdp_bucket_bytes=_bytes(where, raw, "fsdp_bucket_bytes"),
        dp_bucket_params=_sourced(where, raw, "dp_bucket_params", lambda: _count(where, raw, "dp_bucket_params"), 0.0),
        fused_kernels=frozenset(_subset(where, raw, "fused_kernels", FUSED_KERNELS)),
        attention_kernel=_choice(where, raw, "attention_kernel", ATTENTION_KERNELS),
        fp8_recipes=_subset(where, raw, "fp8_recipes", FP8_RECIPES),
        fp8_weight_copy=_flag(where, raw, "fp8_weight_copy"), fp8_allgather=_flag(where, raw, "fp8_allgather"),
        fp8_tp_allgather_recipes=_subset(where, raw, "fp8_tp_allgather_recipes", FP8_RECIPES),
        optimizer_param_remainders=_flag(where, raw, "optimizer_param_remainders"),
        loss_bytes_per_logit=_bytes(where, raw, "loss_bytes_per_logit"),
        selective_recompute=_choice(where, raw, "selective_recompute", SELECTIVE_RECOMPUTE),
        schedules=_subset(where, raw, "schedules", SCHEDULES), compiled=_flag(where, raw, "compiled"),
        sp_saves_gathered_inputs=_flag(where, raw, "sp_saves_gathered_inputs"),
        cp_kinds=_subset(where, raw, "cp_kinds", CP_KINDS), zero_stages=tuple(zero), pp_max_zero=pp_max_zero,
        moe_host=parse_moe_host(where, raw.get("moe_host")),
        dense_host=parse_dense_host(where, raw.get("dense_host")),
        fp8_moe_glu_input_bytes=_sourced(where, raw, "fp8_moe_glu_input_bytes",
                                         lambda: _bytes(where, raw, "fp8_moe_glu_input_bytes"), None),
        fp8_attention_output_bytes=_sourced(where, raw, "fp8_attention_output_bytes",
                                            lambda: _bytes(where, raw, "fp8_attention_output_bytes"), None),
        attention_kv_copies=_sourced(where, raw, "attention_kv_copies",
                                     lambda: _count(where, raw, "attention_kv_copies"), 0),
        ddp_bucket_bytes_per_param=_sourced(where, raw, "ddp_bucket_bytes_per_param",
                                            lambda: _bytes(where, raw, "ddp_bucket_bytes_per_param"), 0.0),
        tp_gather_buffers=_sourced(where, raw, "tp_gather_buffers", lambda: _count(where, raw, "tp_gather_buffers"), 0),
        zero1_gather_flat_copies=_sourced(where, raw, "zero1_gather_flat_copies",
                                          lambda: _flag(where, raw, "zero1_gather_flat_copies"), False),
        cuda_graphs=_subset(where, raw, "cuda_graphs", CUDA_GRAPHS) if "cuda_graphs" in raw else ("none",),
        cp_impl=_choice(where, raw, "cp_impl", CP_IMPLS) if "cp_impl" in raw else "megatron",
        loss_parallel_bytes_per_logit=(_bytes(where, raw, "loss_parallel_bytes_per_logit")
                                       if "loss_parallel_bytes_per_logit" in raw else None),
        pp_impl=_choice(where, raw, "pp_impl", PP_IMPLS) if "pp_impl" in raw else "megatron",
        pp_split=_sourced(where, raw, "pp_split", lambda: _choice(where, raw, "pp_split", PP_SPLITS), "even"),
        optimizer_impl=_choice(where, raw, "optimizer_impl", OPTIMIZER_IMPLS) if "optimizer_impl" in raw else "fused",
        grad_clip=_choice(where, raw, "grad_clip", GRAD_CLIPS) if "grad_clip" in raw else "none",
        mixed_precision=(_choice(where, raw, "mixed_precision", MIXED_PRECISIONS) if "mixed_precision" in raw
                         else MIXED_PRECISION_PARAMS),
        loss_impl=_choice(where, raw, "loss_impl", LOSS_IMPLS) if "loss_impl" in raw else "fused",
        loss_frees_logits=_sourced(where, raw, "loss_frees_logits", lambda: _flag(where, raw, "loss_frees_logits"),
                                   False),
        fsdp_impl=_choice(where, raw, "fsdp_impl", FSDP_IMPLS) if "fsdp_impl" in raw else "flat",
        attention_unpad=_flag(where, raw, "attention_unpad") if "attention_unpad" in raw else False,
        qkv_layout_copies=_sourced(where, raw, "qkv_layout_copies", lambda: _flag(where, raw, "qkv_layout_copies"),
                                   False),
        glu_split_cat=_sourced(where, raw, "glu_split_cat", lambda: _flag(where, raw, "glu_split_cat"), False),
        zero2_gathers_per_microbatch=_sourced(where, raw, "zero2_gathers_per_microbatch",
                                              lambda: _flag(where, raw, "zero2_gathers_per_microbatch"), False),
        fsdp_backward_prefetch=(_choice(where, raw, "fsdp_backward_prefetch", FSDP_BACKWARD_PREFETCHES)
                                if "fsdp_backward_prefetch" in raw else "pre"),
        fp8_expert_padding=_padding_flag(where, raw),
        fsdp_root=_sourced(where, raw, "fsdp_root", lambda: _choice(where, raw, "fsdp_root", FSDP_ROOTS), "outer"),
        max_tp=_sourced(where, raw, "max_tp", lambda: _degree(where, raw, "max_tp"), None),
        tp_replicates_kv_heads=_sourced(where, raw, "tp_replicates_kv_heads",
                                        lambda: _flag(where, raw, "tp_replicates_kv_heads"), True),
        tp_sequence_parallel=_sourced(where, raw, "tp_sequence_parallel",
                                      lambda: _flag(where, raw, "tp_sequence_parallel"), True),
        tp_max_zero=_sourced(where, raw, "tp_max_zero", lambda: _zero_stage(where, raw, "tp_max_zero"), None),
        tp_alone=_sourced(where, raw, "tp_alone", lambda: _flag(where, raw, "tp_alone"), False),
        moe_dispatchers=_sourced(where, raw, "moe_dispatchers",
                                 lambda: _subset(where, raw, "moe_dispatchers", MOE_DISPATCHERS), ("alltoall",)),
        moe_a2a_overlap=_sourced(where, raw, "moe_a2a_overlap", lambda: _flag(where, raw, "moe_a2a_overlap"), False),
        moe_token_drop=_sourced(where, raw, "moe_token_drop", lambda: _flag(where, raw, "moe_token_drop"), False),
        eager_expert_bias=_sourced(where, raw, "eager_expert_bias", lambda: _flag(where, raw, "eager_expert_bias"),
                                   False),
        fp8_param_gather=_sourced(where, raw, "fp8_param_gather", lambda: _flag(where, raw, "fp8_param_gather"),
                                  False),
        bf16_moments=_sourced(where, raw, "bf16_moments", lambda: _flag(where, raw, "bf16_moments"), False),
        bf16_end_layers=_sourced(where, raw, "bf16_end_layers", lambda: _flag(where, raw, "bf16_end_layers"), False),
        hybrid_mtp_bf16=_sourced(where, raw, "hybrid_mtp_bf16", lambda: _flag(where, raw, "hybrid_mtp_bf16"), False),
        mamba_blocks=_sourced(where, raw, "mamba_blocks", lambda: _flag(where, raw, "mamba_blocks"), False),
        parallel_blocks=_sourced(where, raw, "parallel_blocks", lambda: _flag(where, raw, "parallel_blocks"), False),
        hsdp=_sourced(where, raw, "hsdp", lambda: _flag(where, raw, "hsdp"), True),
        pp_uneven_ends=_sourced(where, raw, "pp_uneven_ends", lambda: _flag(where, raw, "pp_uneven_ends"), True),
        ddp_alone=_sourced(where, raw, "ddp_alone", lambda: _flag(where, raw, "ddp_alone"), False),
        tp_sequence_parallel_always=_sourced(where, raw, "tp_sequence_parallel_always",
                                             lambda: _flag(where, raw, "tp_sequence_parallel_always"), False),
        recompute_layers_per_chunk=_sourced(where, raw, "recompute_layers_per_chunk",
                                            lambda: _flag(where, raw, "recompute_layers_per_chunk"), False),
        activation_offload=_sourced(where, raw, "activation_offload",
                                    lambda: _flag(where, raw, "activation_offload"), False),
        param_gather_overlap=_sourced(where, raw, "param_gather_overlap",
                                      lambda: _flag(where, raw, "param_gather_overlap"), True),
        wgrad_accumulation_fusion=_sourced(where, raw, "wgrad_accumulation_fusion",
                                           lambda: _flag(where, raw, "wgrad_accumulation_fusion"), False),
        grad_accum_bytes_per_param=_sourced(where, raw, "grad_accum_bytes_per_param",
                                            lambda: float(raw["grad_accum_bytes_per_param"]), 0.0))


def _sourced(where: str, raw: Mapping[str, Any], key: str, parse: Any, default: Any) -> Any:
    """An optional field (absent: `default`); given, it needs its own entry under sources."""
    if key not in raw:
        return default
    if not str((raw.get("sources") or {}).get(key, "")).strip():
        raise BadInputError(f"{where}: {key} without a source; add sources.{key}")
    return parse()


def _padding_flag(where: str, raw: Mapping[str, Any]) -> bool:
    """fp8_expert_padding (absent: false); true needs its source under sources.fp8_expert_padding."""
    if "fp8_expert_padding" not in raw:
        return False
    on = _flag(where, raw, "fp8_expert_padding")
    if on and not str((raw.get("sources") or {}).get("fp8_expert_padding", "")).strip():
        raise BadInputError(f"{where}: fp8_expert_padding without a source (add sources.fp8_expert_padding)")
    return on


@lru_cache(maxsize=1)
def load_stacks() -> Mapping[str, ExecutionStack]:
    raw = _read("stacks.yaml").get("stacks") or {}
    return MappingProxyType({name: parse_stack(name, entry) for name, entry in raw.items()})


def list_stacks() -> tuple[str, ...]:
    """Names of the shipped stacks, in file order."""
    return tuple(load_stacks())


def get_stack(name: str | None = None) -> ExecutionStack:
    """The stack called `name` (None: the default, megatron-core); unknown names suggest the closest, and an empty
    name is bad input, not the default."""
    if name is not None and not name.strip():
        raise BadInputError(f"--stack '': give a stack name, one of {', '.join(load_stacks())}")
    return find_name("execution stack", name or DEFAULT_STACK, load_stacks(), list_cmd="estimate --help")
