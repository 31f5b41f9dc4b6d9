"""Megatron-LM launch scripts (`--to megatron`): bash arrays of `pretrain_gpt.py` arguments (`pretrain_mamba.py` for a
hybrid Mamba-2 / attention stack), as its examples group them.

Flag names from `megatron/training/arguments.py` (research/style-and-ecosystem.md B.2, and the Megatron-FSDP
README for ZeRO-2/3). Megatron derives dp = world / (tp * pp * cp) itself, so dp is never passed.

`runs_as(model, layout)` is the layout `pretrain_gpt.py` runs for the plan (what `check` reads back): 1F1B for
GPipe and zero-bubble plans, fp32 main weights, full recompute in whole blocks per model chunk.
"""

from __future__ import annotations

import shlex
from dataclasses import replace

from clusterplan.errors import InfeasibleError
from clusterplan.frameworks.common import (
    Export,
    Note,
    Stages,
    canonical,
    check_exportable,
    header_lines,
    launch_shape,
    rank_layers,
    slug,
    stage_lines,
    with_stage_ends,
)
from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.layout import (
    Layout,
    chunk_layers,
    megatron_keeps_remainders,
    named_fp8_recipe,
    stage_layers,
)

Args = list[str]
STACK = "megatron-core"
"""The execution stack a Megatron-LM script runs on (its fp8 recipe is the one plans are priced with)."""
CP_COMM_TYPE = {"ring": "p2p", "allgather": "all_gather", "a2a": "a2a", "a2a+p2p": "a2a+p2p"}
"""Layout.cp_kind -> Megatron-LM --cp-comm-type (arguments.py choices); frameworks.read inverts it."""


def recompute_block(layout: Layout) -> int:
    """`--recompute-num-layers` for block recompute: the first N layers of each model chunk recompute."""
    return max(1, layout.recompute_layers // layout.vpp)


def runs_as(model: ModelSpec, layout: Layout) -> Layout:
    """The layout Megatron-LM runs for this plan."""
    L = canonical(model, layout)
    if L.schedule == "dualpipe" and L.pp > 1:
        raise InfeasibleError("Megatron-LM has no DualPipe schedule (pipeline_parallel/schedules.py runs 1F1B and "
                              "interleaved 1F1B); set schedule=1f1b or interleaved-1f1b")
    schedule = L.schedule if L.schedule in ("1f1b", "interleaved-1f1b") else \
        "interleaved-1f1b" if L.vpp > 1 else "1f1b"  # zbv's two chunks per rank run interleaved
    recompute_layers = L.recompute_layers
    if L.recompute == "full" and recompute_layers:
        recompute_layers = recompute_block(L) * L.vpp
        recompute_layers = 0 if recompute_layers >= model.n_layers // L.pp else recompute_layers
    optimizer = "adam-master" if L.optimizer == "adam" else L.optimizer
    # bf16 gradients are a choice only for adam-master under bf16/fp8 (--grad-reduce-in-bf16); activation offloading
    # has no pretrain_gpt.py flag (notes() says how to set it), so the script runs without it.
    fp32_grads = L.fp32_grads or not (optimizer == "adam-master" and L.precision in ("bf16", "fp8"))
    # CUDA graphs are written as a note (notes()): the script runs eager, as Megatron-LM's default.
    return canonical(model, replace(L, schedule=schedule, optimizer=optimizer, recompute_layers=recompute_layers,
                                    fp32_grads=fp32_grads, offload_layers=0, cuda_graphs="none"))


A2A_OVERLAP_CONNECTIONS = "32"
"""CUDA_DEVICE_MAX_CONNECTIONS under the 1F1B all-to-all overlap: the Megatron-MoE-ModelZoo's sbatch_benchmarking.sh
exports 32 whenever A2A_OVERLAP=1; one connection serialises the two streams on one hardware queue (Megatron-LM PR
#6311: the overlap's gain +3.7 % with 1 against +7.8 % with 32; research/moe-a2a-overlap.md)."""


def environment(layout: Layout) -> dict[str, str]:
    """Variables Megatron-Core requires: one CUDA connection with tp or cp > 1, so that the communication kernels
    are queued before the GEMMs they overlap with (Megatron-LM arguments.py asserts it on Hopper/Ampere); many under
    the 1F1B all-to-all overlap, whose two streams must run side by side (A2A_OVERLAP_CONNECTIONS; notes() says what
    that costs TP overlap on Hopper)."""
    if layout.moe_a2a_overlap:
        return {"CUDA_DEVICE_MAX_CONNECTIONS": A2A_OVERLAP_CONNECTIONS}
    return {"CUDA_DEVICE_MAX_CONNECTIONS": "1"} if layout.tp > 1 or layout.cp > 1 else {}


def model_args(model: ModelSpec, layout: Layout) -> Args:
    m = model
    args = ["--num-layers", str(m.n_layers), "--hidden-size", str(m.hidden), "--ffn-hidden-size", str(m.ffn_hidden),
            "--num-attention-heads", str(m.n_heads), "--seq-length", str(layout.seq),
            "--max-position-embeddings", str(max(m.max_positions, layout.seq)),
            "--normalization", "RMSNorm" if m.norm == "rmsnorm" else "LayerNorm"]
    if m.norm_zero_centered:  # arguments.py --apply-layernorm-1p: TENorm's zero_centered_gamma, LayerNorm or RMSNorm
        args.append("--apply-layernorm-1p")
    if m.kv_heads != m.n_heads and not m.is_mla:
        args += ["--group-query-attention", "--num-query-groups", str(m.kv_heads)]
    if m.head_dim is not None and not m.is_mla:
        args += ["--kv-channels", str(m.head_dim)]
    args += activation_args(m)
    if m.position == "rope":
        args += ["--position-embedding-type", "rope", "--rotary-base", _number(m.rope_theta)] + rope_scaling_args(m)
        if m.rotary_fraction != 1.0:  # arguments.py --rotary-percent: the share of each head RoPE rotates
            args += ["--rotary-percent", _number(m.rotary_fraction)]
    elif m.position == "none":  # arguments.py --position-embedding-type: learned_absolute unless told otherwise
        args += ["--position-embedding-type", "none"]
    if not m.tied_embeddings:
        args.append("--untie-embeddings-and-output-weights")
    if not m.linear_bias:
        args.append("--disable-bias-linear")
    if m.attn_bias and not m.linear_bias:
        args.append("--add-qkv-bias")
    if m.qk_norm:
        args.append("--qk-layernorm")
    if not m.dropout:
        args += ["--attention-dropout", "0", "--hidden-dropout", "0"]
    return args + window_args(m) + mla_args(m) + moe_args(m, layout) + hybrid_args(m)


MAMBA_SPEC = ("megatron.core.models.mamba.mamba_layer_specs", "mamba_stack_spec")
"""--spec of a hybrid run: Megatron-Core's MambaStack layer spec (Megatron-LM examples/mamba, pretrain_mamba.py)."""
MAMBA_CHUNK = 128
MAMBA_CONV_KERNEL = 4
"""MambaMixer's chunk_size and d_conv defaults (megatron/core/ssm/mamba_mixer.py), which no flag changes."""


def hybrid_args(m: ModelSpec) -> Args:
    """A hybrid Mamba-2 / attention stack as pretrain_mamba.py builds it (Megatron-LM arguments.py: --is-hybrid-model,
    --hybrid-override-pattern, --mamba-num-heads / --mamba-head-dim / --mamba-state-dim / --mamba-num-groups, the
    TransformerConfig fields of the same names; --spec the MambaStack spec). A pattern that starts with "-" is
    written --flag=value so that argparse does not read it as an option."""
    if not m.is_hybrid:
        return []
    pattern = (f"--hybrid-override-pattern={m.hybrid_pattern}",) if m.hybrid_pattern.startswith("-") else \
        ("--hybrid-override-pattern", m.hybrid_pattern)
    args = ["--is-hybrid-model", *pattern]
    if m.mamba_heads:
        args += ["--mamba-num-heads", str(m.mamba_heads), "--mamba-head-dim", str(m.mamba_head_dim),
                 "--mamba-state-dim", str(m.mamba_state_dim), "--mamba-num-groups", str(m.mamba_groups)]
    return args + ["--spec", *MAMBA_SPEC]


def entry_point(model: ModelSpec) -> str:
    """The Megatron-LM training script: pretrain_mamba.py for a hybrid stack, pretrain_gpt.py otherwise."""
    return "pretrain_mamba.py" if model.is_hybrid else "pretrain_gpt.py"


def activation_args(m: ModelSpec) -> Args:
    """The MLP's activation as Megatron-LM's arguments.py names it (_add_network_size_args): --swiglu (SiLU GLU),
    --squared-relu, --quick-geglu with GPT-OSS's input clamp and (x_linear + 1) offset (--activation-func-clamp-value,
    --glu-linear-offset; transformers GptOssExperts: (up + 1) * glu), default GELU. A gated GELU (GeGLU: Gemma, Grok-1)
    and ReLU (OPT) have no flag: the script keeps the MLP's shape (--swiglu for a gated one) and notes() says so."""
    fn = m.activation_fn
    if m.gated_ffn and fn == "quick_gelu":
        clamp = ["--activation-func-clamp-value", _number(m.activation_clamp), "--glu-linear-offset", "1"] \
            if m.activation_clamp else []
        return ["--quick-geglu", *clamp]
    if m.gated_ffn:
        return ["--swiglu"]
    return ["--squared-relu"] if fn == "relu2" else []


def window_args(m: ModelSpec) -> Args:
    """Sliding-window attention and attention sinks (Megatron-LM arguments.py --window-size, --window-attn-skip-freq,
    --softmax-type): a window of W keys is (W - 1, 0) to Transformer Engine (query i attends keys i - W + 1 .. i, as
    transformers' sliding-window mask i - j < W; Megatron-Bridge's GPT-OSS provider passed (128, 0) in 25.11 and
    (sliding_window - 1, 0) later, research/gpt-oss-2511.md); every
    full_attention_every-th layer full is --window-attn-skip-freq N (Megatron-Core: layer_number % N == 0 attends
    globally, 1-based: the same layers), any other pattern the explicit per-layer list (1 = window, 0 = full).
    Llama 4's chunked attention has no flag (notes())."""
    args: Args = ["--softmax-type", "learnable"] if m.attn_sinks else []
    if m.sliding_window is None or m.local_attention != "sliding":
        return args
    args += ["--window-size", f"{m.sliding_window - 1},0"]
    pattern = [1 if m.is_sliding_layer(i) else 0 for i in range(m.n_layers)]
    if all(pattern):
        return args
    every = m.full_attention_every
    if every and not m.full_attention_first_layers:
        return args + ["--window-attn-skip-freq", str(every)]
    return args + ["--window-attn-skip-freq", "[" + ",".join(map(str, pattern)) + "]"]


def _number(value: float) -> str:
    """500000.0 -> "500000", 2.5 -> "2.5" (argparse reads both as the flag's type)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def rope_scaling_args(m: ModelSpec) -> Args:
    """Long-context RoPE scaling as Megatron-LM's arguments.py names it: Llama 3.1's rule (--use-rope-scaling with
    --rope-scaling-factor), YaRN (--rope-type yarn, --rotary-scaling-factor; MLA models), position interpolation
    (--rotary-seq-len-interpolation-factor)."""
    if m.rope_scaling == "llama3":
        return ["--use-rope-scaling", "--rope-scaling-factor", _number(m.rope_scaling_factor)]
    if m.rope_scaling == "yarn":
        mscale = ["--mscale-all-dim", _number(m.rope_mscale_all_dim)] if m.rope_mscale_all_dim else []
        return ["--rope-type", "yarn", "--rotary-scaling-factor", _number(m.rope_scaling_factor), *mscale]
    if m.rope_scaling == "linear":
        return ["--rotary-seq-len-interpolation-factor", str(round(m.rope_scaling_factor))]
    return []


def mla_args(m: ModelSpec) -> Args:
    if not m.is_mla:
        return []
    args = ["--multi-latent-attention", "--kv-lora-rank", str(m.kv_lora_rank), "--qk-head-dim", str(m.qk_nope_head_dim),
            "--qk-pos-emb-head-dim", str(m.qk_rope_head_dim), "--v-head-dim", str(m.v_head_dim)]
    if m.q_lora_rank:
        args += ["--q-lora-rank", str(m.q_lora_rank)]
    return args


def dispatcher_args(layout: Layout) -> Args:
    """The token dispatcher (Megatron-LM arguments.py _add_moe_args): the NCCL all-to-all, or the flex dispatcher
    with its DeepEP / HybridEP backend (--moe-flex-dispatcher-backend; older releases: --moe-enable-deepep)."""
    if layout.moe_dispatcher == "alltoall":
        return ["--moe-token-dispatcher-type", "alltoall"]
    return ["--moe-token-dispatcher-type", "flex", "--moe-flex-dispatcher-backend", layout.moe_dispatcher]


def token_drop_args(layout: Layout) -> Args:
    """Token-dropping MoE as the plan priced it (Layout.moe_capacity_factor): the capacity factor and padding to
    capacity, Megatron-Core's drop-and-pad path (Megatron-LM arguments.py _add_moe_args --moe-expert-capacity-factor,
    --moe-pad-expert-input-to-capacity; the drop policy stays at its default, probs). Nothing for dropless."""
    if layout.moe_capacity_factor is None:
        return []
    return ["--moe-expert-capacity-factor", _number(layout.moe_capacity_factor), "--moe-pad-expert-input-to-capacity"]


def moe_args(m: ModelSpec, layout: Layout) -> Args:
    if not m.is_moe:
        return []
    args = ["--num-experts", str(m.n_experts), "--moe-router-topk", str(m.top_k),
            "--moe-ffn-hidden-size", str(m.expert_ffn_hidden), "--moe-grouped-gemm",
            *dispatcher_args(layout), *token_drop_args(layout)]
    if m.shared_ffn:
        args += ["--moe-shared-expert-intermediate-size", str(m.shared_ffn)]
    if m.moe_latent:  # arguments.py --moe-latent-size (TransformerConfig moe_latent_size)
        args += ["--moe-latent-size", str(m.moe_latent)]
    # The router as the model trains it (Megatron-LM arguments.py _add_moe_args): score function, DeepSeek-V3's
    # auxiliary-loss-free expert bias, group-limited routing, the top-k weight scale; a softmax kept over all
    # experts (no renormalisation over the top-k) is --moe-router-pre-softmax.
    args += ["--moe-router-score-function", m.router_score]
    if m.router_expert_bias:
        args.append("--moe-router-enable-expert-bias")
    if m.expert_groups > 1:
        args += ["--moe-router-num-groups", str(m.expert_groups),
                 "--moe-router-group-topk", str(m.expert_groups_per_token or m.expert_groups)]
    if m.router_topk_scaling != 1.0:
        args += ["--moe-router-topk-scaling-factor", _number(m.router_topk_scaling)]
    if m.router_score == "softmax" and not m.router_renormalize:
        args.append("--moe-router-pre-softmax")
    if m.mtp_layers and not m.is_hybrid:  # a hybrid's MTP: notes()
        args += ["--mtp-num-layers", str(m.mtp_layers)]
    if m.first_dense_layers:
        args += ["--moe-layer-freq", moe_layer_pattern(m)]
    elif m.moe_every != 1:
        args += ["--moe-layer-freq", str(m.moe_every)]  # N: layer i is MoE when i % N == 0 (moe_freq_type)
    return args


def moe_layer_pattern(m: ModelSpec) -> str:
    """Megatron's list expression, run-length encoded: DeepSeek-V3 -> ([0]*3+[1]*58)."""
    flags = [1 if m.is_moe_layer(i) else 0 for i in range(m.n_layers)]
    runs: list[tuple[int, int]] = []
    for flag in flags:
        if runs and runs[-1][0] == flag:
            runs[-1] = (flag, runs[-1][1] + 1)
        else:
            runs.append((flag, 1))
    return "(" + "+".join(f"[{flag}]*{count}" for flag, count in runs) + ")"


def first_last_expresses(ranks: list[int]) -> bool:
    """Whether --decoder-first/last-pipeline-num-layers give this split: Megatron spreads the rest evenly over the
    middle ranks (TransformerConfig num_layers_in_first/last_pipeline_stage)."""
    return len(set(ranks[1:-1])) <= 1


def pipeline_layout(model: ModelSpec, chunks: list[int]) -> str:
    """Megatron-Core's --pipeline-model-parallel-layout for the transformer layers of each model chunk in model
    order (one per rank, or pp x vpp interleaved: chunk c on rank c % pp): `Et*16|t*17|t*47L` (E embedding,
    t transformer layer, m MTP layer, L loss; megatron/core/transformer/pipeline_parallel_layer_layout.py)."""
    text = [f"t*{n}" if n > 1 else "t" * n for n in chunks]
    text[0] = "E" + text[0]
    text[-1] += "m" * model.mtp_layers + "L"
    return "|".join(text)


def ends_divide_by_vpp(layout: Layout) -> bool:
    """Whether --decoder-first/last-pipeline-num-layers with virtual stages give this split: Megatron-Core needs the
    first and last stage layers divisible by vpp (TransformerConfig.__post_init__); otherwise the per-chunk
    --pipeline-model-parallel-layout says it (chunk_layers)."""
    return not any(x % layout.vpp for x in (layout.first_stage_layers, layout.last_stage_layers))


def parallel_args(model: ModelSpec, layout: Layout, stages: Stages = ()) -> Args:
    L = layout
    args = ["--tensor-model-parallel-size", str(L.tp), "--pipeline-model-parallel-size", str(L.pp)]
    uneven = bool(L.first_stage_layers or L.last_stage_layers or L.pp_layers)
    ranks = rank_layers(model, L, stages)
    # a per-rank list (Layout.pp_layers) is always written as the layout string: chunk by chunk, ends of 0 layers too
    per_chunk = uneven and (bool(L.pp_layers) or not ends_divide_by_vpp(L))
    if stages and not first_last_expresses(ranks):
        # per-rank layer lists beyond first/last: Megatron-LM's --pipeline-model-parallel-layout (arguments.py
        # validate_args; not combined with --decoder-first/last-pipeline-num-layers)
        args += ["--pipeline-model-parallel-layout", pipeline_layout(model, ranks)]
    elif per_chunk:  # uneven ends that vpp does not divide: every chunk's layers, which sets vpp too
        args += ["--pipeline-model-parallel-layout", pipeline_layout(model, chunk_layers(model, L))]
    elif uneven:
        first, _, last = stage_layers(model, L)
        args += ["--decoder-first-pipeline-num-layers", str(first), "--decoder-last-pipeline-num-layers", str(last)]
    if L.vpp > 1 and not per_chunk:  # the per-chunk layout sets vpp itself
        args += (["--num-virtual-stages-per-pipeline-rank", str(L.vpp)] if uneven else
                 ["--num-layers-per-virtual-pipeline-stage", str(model.n_layers // (L.pp * L.vpp))])
    args += ["--context-parallel-size", str(L.cp)]
    if L.cp > 1:
        args += ["--cp-comm-type", CP_COMM_TYPE[L.cp_kind]]
        if L.cp_kind == "a2a+p2p":  # TransformerConfig.hierarchical_context_parallel_sizes: the a2a group first
            args += ["--hierarchical-context-parallel-sizes", str(L.cp_a2a), str(L.cp // L.cp_a2a)]
    if model.is_moe:
        args += ["--expert-model-parallel-size", str(L.ep), "--expert-tensor-parallel-size", str(L.etp)]
        if L.moe_a2a_overlap:
            # The merged passes as priced (dispatch.merged_layer_exposed_s): the experts' weight gradients run
            # after their backward all-to-all is issued (--delay-wgrad-compute; the ModelZoo adds it with the overlap)
            args += ["--overlap-moe-expert-parallel-comm", "--delay-wgrad-compute"]
    if L.sp and L.tp > 1:
        args.append("--sequence-parallel")
    return args + data_parallel_args(L)


def data_parallel_args(layout: Layout) -> Args:
    """ZeRO-1 = distributed optimizer; ZeRO-2/3 = Megatron-FSDP sharding strategies optim_grads/_params."""
    L = layout
    if L.zero == 0:
        return []
    args = ["--use-distributed-optimizer", "--overlap-grad-reduce", "--overlap-param-gather"]
    if L.zero >= 2:
        strategy = "optim_grads_params" if L.zero == 3 else "optim_grads"
        args += ["--use-megatron-fsdp", "--data-parallel-sharding-strategy", strategy,
                 "--no-gradient-accumulation-fusion", "--ckpt-format", "fsdp_dtensor"]
    if L.dp_replicate > 1:
        args += ["--num-distributed-optimizer-instances", str(L.dp_replicate)]
    return args


def attention_backend(model: ModelSpec, layout: Layout) -> str:
    """--attention-backend: flash; fused (cuDNN) where the model has attention sinks (window_args' --softmax-type
    learnable: Transformer Engine's FlashAttention 2 / 3 / 4 take no softmax_type but "vanilla", and Megatron-Core
    asserts TE >= 2.8 for it); unfused without flash attention."""
    if not layout.flash_attn:
        return "unfused"
    return "fused" if model.attn_sinks else "flash"


FAMILY_SCALARS = {
    "granite": "its embeddings, attention, residuals and logits by constants (GraniteConfig embedding_multiplier, "
               "attention_multiplier, residual_multiplier, logits_scaling)",
    "granitemoe": "its embeddings, attention, residuals and logits by constants (GraniteMoeConfig multipliers)",
    "gemma": "its embeddings by sqrt(hidden) (GemmaModel)",
    "gemma2": "its embeddings by sqrt(hidden) and caps attention and final logits (Gemma2Config softcapping)",
    "gemma3": "its embeddings by sqrt(hidden) and its queries by query_pre_attn_scalar (Gemma3TextConfig)",
}
"""Families whose parameter-free scalings Megatron-LM's GPT has no flag for (the model cards' config classes)."""


def training_args(layout: Layout, backend: str) -> Args:
    """Batch, recompute, precision, optimizer and gradient flags; `backend`: attention_backend's choice."""
    L = layout
    args = ["--micro-batch-size", str(L.mbs), "--global-batch-size", str(L.gbs)]
    if L.recompute == "selective":
        args += ["--recompute-granularity", "selective"]
        if L.recompute_modules:  # Megatron-LM --recompute-modules (nargs *): the layout's modules, '+' -> words
            args += ["--recompute-modules", *L.recompute_modules.split("+")]
    elif L.recompute == "full":
        # block N recomputes the first N layers of each model chunk; the plan counts layers per pipeline rank
        method = ["block", str(recompute_block(L))] if L.recompute_layers else ["uniform", "1"]
        args += ["--recompute-granularity", "full", "--recompute-method", method[0], "--recompute-num-layers", method[1]]
    recipe = named_fp8_recipe(L, get_stack(STACK))
    if recipe == "nvfp4":  # Megatron-LM --fp4-format e2m1 --fp4-recipe nvfp4 (TE NVFP4BlockScaling); fp8 flags exclude it
        args += ["--bf16", "--fp4-format", "e2m1", "--fp4-recipe", "nvfp4"]
    else:
        args += {"bf16": ["--bf16"], "fp16": ["--fp16"], "fp8": ["--bf16", "--fp8-format", "hybrid"],
                 "fp32": []}[L.precision]
    if recipe and recipe != "nvfp4":  # the recipe the plan was priced with; Megatron-LM defaults to delayed
        args += ["--fp8-recipe", recipe]
    if L.fp8_params and L.precision == "fp8":
        if recipe == "nvfp4":
            raise InfeasibleError("NVFP4 keeps bf16 parameters (Megatron-Bridge refuses fp4_param); set "
                                  "fp8_params=0 in the plan")
        args += ["--fp8-param-gather"]
    if L.bf16_first_layers or L.bf16_last_layers:  # Megatron-Core first_last_layers_bf16 (defaults 1 and 1)
        args += ["--first-last-layers-bf16", "--num-layers-at-start-in-bf16", str(L.bf16_first_layers),
                 "--num-layers-at-end-in-bf16", str(L.bf16_last_layers)]
    args += ["--attention-backend", backend]
    if L.optimizer == "sgd":
        args += ["--optimizer", "sgd"]
    if L.bf16_moments:  # Megatron-Core OptimizerConfig: Transformer Engine FusedAdam with bf16 m and v
        args += ["--use-precision-aware-optimizer", "--exp-avg-dtype", "bf16", "--exp-avg-sq-dtype", "bf16"]
    elif keeps_remainders(L):
        args += ["--use-precision-aware-optimizer"]
    return args + _grad_args(L)


def keeps_remainders(layout: Layout) -> bool:
    """Whether the plan runs the precision-aware optimizer for its 2-byte master remainders (Layout.precision_aware
    where it matters, layout.keeps_master_remainders): the script then turns it on with fp32 moments, its default;
    Megatron-LM's default keeps a full fp32 master shard."""
    master = "adam-master" if layout.optimizer == "adam" else layout.optimizer  # Megatron's adam keeps a master
    return layout.precision_aware and megatron_keeps_remainders(replace(layout, optimizer=master))


def _grad_args(layout: Layout) -> Args:
    L = layout
    args: Args = []
    if not L.fp32_grads and L.optimizer in ("adam-master", "adam") and L.precision in ("bf16", "fp8"):
        # Megatron-LM turns fp32 gradient accumulation/reduce on for bf16 unless --grad-reduce-in-bf16 (arguments.py)
        args += ["--grad-reduce-in-bf16"]
    return args


def notes(model: ModelSpec, layout: Layout) -> list[Note]:
    L = layout
    out = []
    if model.position == "alibi":
        out.append(Note("Megatron-LM GPT has no ALiBi positions; it trains with learned absolute positions instead"))
    fn = model.activation_fn
    if (model.gated_ffn and fn not in ("silu", "quick_gelu")) or (not model.gated_ffn and fn not in ("gelu", "relu2")):
        kind = f"a gated {fn.upper()} MLP (GeGLU)" if model.gated_ffn and fn == "gelu" else f"{fn} activation"
        runs = "SwiGLU (--swiglu, the same matrices)" if model.gated_ffn else "GELU (the default)"
        out.append(Note(f"{model.name} has {kind}, which pretrain_gpt.py has no flag for (arguments.py: --swiglu, "
                        f"--squared-relu, --quick-geglu); the script trains {runs}: set activation_func in a "
                        "Megatron-Bridge model provider to train the model itself"))
    if model.attn_out_bias is not None and model.attn_out_bias != model.linear_bias:
        runs = "with" if model.linear_bias else "without"
        out.append(Note(f"{model.name} {'biases' if model.attn_out_bias else 'does not bias'} its attention output "
                        f"projection {'but not' if model.attn_out_bias else 'but does'} its MLP; Megatron-LM's "
                        f"--add-bias-linear / --disable-bias-linear set both, so it trains {runs} the out-projection "
                        f"bias ({model.n_layers} x {model.hidden} parameters)"))
    if model.lm_head_bias:
        out.append(Note(f"{model.name} biases its LM head ({model.vocab} parameters); Megatron-LM's output layer has "
                        "no bias, so it trains without it"))
    if model.norms_per_layer == 4:
        out.append(Note(f"{model.name} norms each sublayer's output as well as its input (four norms per layer); "
                        "pretrain_gpt.py builds the two pre-norms only: set post_self_attn_layernorm / "
                        "post_mlp_layernorm in a Megatron-Bridge layer spec to train the model itself"))
    if model.family in FAMILY_SCALARS:
        out.append(Note(f"{model.name} scales {FAMILY_SCALARS[model.family]}, which pretrain_gpt.py has no flags for: "
                        "the script trains without them"))
    if model.qk_norm and model.qk_norm_full_width:
        out.append(Note(f"{model.name} norms q and k over all heads at once; --qk-layernorm norms each head"))
    if model.embed_norm:
        out.append(Note(f"{model.name} norms the token embedding; pretrain_gpt.py has no embedding norm"))
    if model.sliding_window is not None and model.local_attention == "chunked":
        out.append(Note(f"{model.name} attends in chunks of {model.sliding_window} tokens on its local layers; "
                        "pretrain_gpt.py has no chunked-attention flag, so the script attends over the whole sequence "
                        "(more attention work than planned)"))
    if L.recompute == "full" and L.recompute_layers % L.vpp:
        out.append(Note(f"recompute_layers({L.recompute_layers}) per rank is not a multiple of vpp({L.vpp}); "
                        f"Megatron recomputes {max(1, L.recompute_layers // L.vpp)} per model chunk"))
    if L.pp > 1 and L.schedule == "gpipe":
        out.append(Note("Megatron-LM has no GPipe schedule; it runs 1F1B, same bubble, fewer activations in flight",
                        "schedule"))
    if L.pp > 1 and L.schedule == "zb":
        out.append(Note("Megatron-LM main has no zero-bubble schedule; it runs 1F1B, so the bubble is larger than "
                        "planned", "schedule"))
    if L.sp and L.tp == 1:
        out.append(Note("sequence parallel needs tp > 1; Megatron-LM turns it off at tp=1"))
    if L.optimizer == "adam":
        out.append(Note("Megatron-LM keeps fp32 main weights with bf16/fp16 training; optimizer memory is "
                        "adam-master's"))
    if L.offload_layers:
        out.append(Note(f"offload_layers({L.offload_layers}): pretrain_gpt.py has no activation-offloading flag; set "
                        f"TransformerConfig cpu_offloading=True, cpu_offloading_num_layers={L.offload_layers} "
                        "(Megatron-Bridge model config) or the plan's activations will not fit"))
    if L.moe_a2a_overlap and (L.tp > 1 or L.cp > 1):
        out.append(Note(f"the all-to-all overlap runs with CUDA_DEVICE_MAX_CONNECTIONS={A2A_OVERLAP_CONNECTIONS}; on "
                        "Hopper tp/cp > 1 want 1 for their own overlap (Megatron-LM arguments.py warns that the two do "
                        "not combine well): expect some of the TP/CP communication exposed"))
    if model.is_hybrid and model.mtp_layers:
        out.append(Note(f"{model.name} trains {model.mtp_layers} MTP depths of '*{'E' if model.is_moe else '-'}'"
                        f"{' sharing one module' if model.mtp_shared else ''}, priced in the plan; pretrain_mamba.py "
                        "on Megatron-Core 0.16 builds no MTP for a hybrid stack (newer Megatron-LM: the pattern's '/' "
                        "depths with --mtp-num-layers and --mtp-use-repeated-layer), so the script trains without "
                        "them"))
    if model.is_hybrid and L.precision == "fp8" and named_fp8_recipe(L, get_stack(STACK)) == "nvfp4":
        # megatron/core/ssm/mamba_block.py MambaStack.forward enters get_fp8_context only (config.fp8), never the fp4
        # one: on Megatron-Core 0.16 the --fp4-format flags leave every block in bf16
        out.append(Note(f"NVFP4 on a hybrid: Megatron-Core 0.16's MambaStack enters no fp4 context, so "
                        f"pretrain_mamba.py there trains {model.name} in bf16; the plan's NVFP4 needs the newer "
                        "Megatron-Core of the 26.x containers (Megatron-Bridge's Nemotron 3 Super recipes)"))
    if model.is_hybrid and (model.mamba_chunk, model.mamba_conv_kernel) != (MAMBA_CHUNK, MAMBA_CONV_KERNEL):
        out.append(Note(f"{model.name}'s Mamba mixer has chunk {model.mamba_chunk} and conv kernel "
                        f"{model.mamba_conv_kernel}; MambaMixer builds {MAMBA_CHUNK} and {MAMBA_CONV_KERNEL} (no "
                        "pretrain_mamba.py flag): set chunk_size / d_conv in the Mamba layer spec"))
    if L.cuda_graphs != "none":
        dropless = model.is_moe and L.moe_capacity_factor is None
        scope = {"full": "--cuda-graph-impl local --cuda-graph-scope full_iteration" + (
                     " (dropless MoE layers cannot be captured: set moe_capacity_factor to run the drop-and-pad path, "
                     "or expect them eager)" if dropless else ""),
                 "attn": "--cuda-graph-impl transformer_engine --cuda-graph-scope attn"}[L.cuda_graphs]
        out.append(Note(f"cuda_graphs={L.cuda_graphs}: the script runs eager; add {scope} (Megatron-Core >= 0.14) to "
                        "run the plan's CUDA graphs, whose MoE host time the plan priced"))
    return out


def _word(arg: str) -> str:
    """Shell-quote an argument; `${VAR:-default}` stays expandable."""
    return f'"{arg}"' if arg.startswith("${") else shlex.quote(arg)


def _array(name: str, args: Args) -> list[str]:
    """A bash array, one flag (with its values: several for an nargs flag) per line."""
    lines, i = [f"{name}=("], 0
    while i < len(args):
        take = 1
        while i + take < len(args) and not args[i + take].startswith("--"):
            take += 1
        lines.append("    " + " ".join(_word(a) for a in args[i:i + take]))
        i += take
    return lines + [")"]


def export_megatron(model: ModelSpec, cluster: Cluster, layout: Layout, stages: Stages = ()) -> Export:
    """A bash script that runs `pretrain_gpt.py` (a hybrid Mamba stack: `pretrain_mamba.py`) with the plan on mock
    data; run it on every node. A mixed-GPU plan
    (`stages`) carries its per-rank layers and says which node ranks start on which GPU type."""
    check_exportable(model, cluster, layout, stages)
    layout = with_stage_ends(layout, stages)
    runs_as(model, layout)
    shape = launch_shape(cluster)
    filename = f"megatron_{slug(model.name)}.sh"
    launch = f"NODE_RANK=<0..{shape.nnodes - 1}> MASTER_ADDR=<head node> bash {filename}"
    found = notes(model, layout)
    lines = ["#!/bin/bash", *(f"# {h}" for h in header_lines(model, cluster, layout, "Megatron-LM")),
             f"# launch (every node, from the Megatron-LM checkout): {launch}",
             *(f"# {h}" for h in stage_lines(cluster, layout, stages, "NODE_RANK")),
             "# DATA_ARGS train on mock data; replace them with --data-path and your tokenizer for real runs.",
             *(f"# note: {n.text}" for n in found), "set -euo pipefail", ""]
    lines += [f"export {k}={v}" for k, v in environment(layout).items()]
    distributed = ["--nproc-per-node", str(shape.gpus_per_node), "--nnodes", str(shape.nnodes),
                   "--node-rank", "${NODE_RANK:-0}", "--master-addr", "${MASTER_ADDR:-localhost}",
                   "--master-port", "${MASTER_PORT:-29500}"]
    lines += _array("DISTRIBUTED_ARGS", distributed)
    lines += _array("MODEL_ARGS", model_args(model, layout))
    lines += _array("MODEL_PARALLEL_ARGS", parallel_args(model, layout, stages))
    lines += _array("TRAINING_ARGS", training_args(layout, attention_backend(model, layout))
                    + ["--train-iters", "100", "--lr", "3e-4", "--lr-decay-style", "cosine"])
    lines += _array("DATA_ARGS", ["--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", str(model.vocab)])
    lines.append(f'torchrun "${{DISTRIBUTED_ARGS[@]}}" {entry_point(model)} "${{MODEL_ARGS[@]}}" '
                 '"${MODEL_PARALLEL_ARGS[@]}" \\')
    lines.append('    "${TRAINING_ARGS[@]}" "${DATA_ARGS[@]}"')
    return Export(text="\n".join(lines) + "\n", filename=filename, launch=launch, noted=tuple(found))
