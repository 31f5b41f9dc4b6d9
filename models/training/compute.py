"""Compute time of one transformer layer per micro-batch on one rank: GEMMs on an efficiency curve,
attention, and memory-bound elementwise kernels. Vectorised over LayoutArrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clusterplan.hardware_db.stacks import MIXED_PRECISION_AUTOCAST, ExecutionStack, get_stack
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.attention import AttentionRates, flash_backward_flops_over_forward
from clusterplan.models.hardware.gemm import OUTPUT_BYTES
from clusterplan.models.hardware.mamba_kernels import mixer_sizes, mixer_times, ssd_flops
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.autocast import (
    activation_cast_times,
    cast_times,
    half_autocast,
    layer_matmul_params,
    weight_cast_times,
)
from clusterplan.models.training.batch import PREC_FP8, CpKindCode, LayoutArrays, RecomputeCode
from clusterplan.models.training.memory import SELECTIVE_OP_SAC, main_grad_bytes
from clusterplan.models.training.moe_layer import (
    busiest_rank_ratio,
    capacity_ratio,
    expert_bias_bytes,
    expert_rows_sd,
    fp8_align_rows,
    fp8_padding_bytes,
    grouped_gemm_time_s,
    routing_times,
)
from clusterplan.models.training.tp_overlap import (
    UB_COMM_SMS,
    AsyncTpBlock,
    LocalShardBlock,
    TpRole,
    async_tp_gathers_fused,
    overlapped_times,
    tp_overlap_runs,
)

DEFAULT_FP8_RECIPE = "tensorwise"
"""Megatron-Bridge's FP8-CS: Transformer Engine per-tensor current scaling (Float8CurrentScaling)."""
FP8_QUANT_BYTES_PER_ELEMENT = {
    # TE current scaling reads the tensor twice, once for the amax and once to scale and cast (TE docs, FP8 Current
    # Scaling, "Performance analysis"); on Hopper the cast writes row- and column-major (transposed) fp8 copies
    "tensorwise": 2.0 + 2.0 + 2.0,
    # amax fused into the cast-transpose, scale taken from the amax history (TE DelayedScaling)
    "delayed": 2.0 + 2.0,
    # one read; row- and column-wise copies, each with one E8M0 scale byte per 32 elements: the scaling blocks run
    # along the GEMM's reduction axis, so the two are quantised separately from the bf16 data on every GPU (TE docs,
    # MXFP8, "Handling transposes"; OCP MX spec v1.0)
    "mxfp8": 2.0 + 2.0 + 2.0 / 32,
    # DeepSeek-V3 fine-grained: 1x128 activation / 128x128 weight tiles, one fp32 scale per 128 (DeepSeek-V3 Sec. 3.3)
    "blockwise": 2.0 + 2.0 + 2 * 4.0 / 128,
    # torchao float8 rowwise (torchtitan): the row-wise and the column-wise scaled copies are cast separately, each
    # with its own amax read: 2 x (2 + 2 + 1)
    "rowwise": 2 * (2.0 + 2.0 + 1.0),
    # TE NVFP4BlockScaling (quantizer.cpp NVFP4Quantizer): one pass reads the bf16 tensor for the row-wise amax and the
    # post-Hadamard column-wise amax (nvte_hadamard_transform_amax), a second reads it again and writes both 4-bit
    # copies, each 0.5 B + one E4M3 scale per 16 elements (nvte_quantize_with_hadamard_transform; weights: amax then
    # one quantize_transpose, the same bytes): the GEMM takes only the TN layout on every GPU
    "nvfp4": 2.0 + 2.0 + 2 * (0.5 + 1.0 / 16),
}
"""HBM bytes per element of quantising one GEMM operand to fp8 (the cast/amax kernels of each recipe) on GPUs whose
fp8 GEMMs take only the TN layout (Hopper, Ada)."""
FP8_QUANT_BYTES_ALL_LAYOUTS = {
    # Blackwell runs fp8 GEMMs in every layout, so one per-tensor scaled copy serves row- and column-wise use (TE docs,
    # FP8 Current Scaling, "Transpose handling: Blackwell and later"): amax read + cast read + one 1-B write
    "tensorwise": 2.0 + 2.0 + 1.0,
    "delayed": 2.0 + 1.0,
}
"""Recipes whose quantisation writes less where the GPU runs fp8 GEMMs in every layout (HardwareRates.fp8_all_layouts);
the others as FP8_QUANT_BYTES_PER_ELEMENT."""
FP8_GRAD_RESCALE_BYTES_PER_ELEMENT = {
    # torchao rowwise: the gradient GEMMs (dX, dW) run without fast accumulation, which torchao sends to the per-tensor
    # cuBLAS kernel with unit scales and then multiplies the bf16 output by the row and column scales
    # (float8_ops.addmm_float8_unwrapped); Inductor emits one extra kernel per GEMM for it (pytorch/ao#2184):
    # read + write 2 B per output element
    "rowwise": 2.0 + 2.0,
}
"""HBM bytes per output element of the kernel that rescales each backward gradient GEMM's output after it ran, for
recipes whose gradient GEMMs cannot apply their scales themselves; other recipes: none."""


def fp8_quant_bytes_per_element(recipe: str, all_layouts: bool) -> float:
    """HBM bytes per element of quantising one GEMM operand under `recipe` (see FP8_QUANT_BYTES_*)."""
    if all_layouts and recipe in FP8_QUANT_BYTES_ALL_LAYOUTS:
        return FP8_QUANT_BYTES_ALL_LAYOUTS[recipe]
    return FP8_QUANT_BYTES_PER_ELEMENT[recipe]


@dataclass(frozen=True, slots=True)
class LayerTime:
    forward_s: np.ndarray
    backward_s: np.ndarray
    recompute_s: np.ndarray
    """Extra forward work redone in backward (full: whole layer; selective: the attention core)."""
    core_forward_s: np.ndarray
    """Attention core (scores and weighted values) forward, the part ring context parallel overlaps with."""
    core_backward_s: np.ndarray
    """Attention core backward (flash: its backward kernel at the measured rate; unfused: the gradient GEMMs), the
    part ring context parallel's backward K/V traffic overlaps with."""
    linear_s: np.ndarray
    """Weight GEMMs forward + backward (+ recompute): what tensor-parallel comm overlap hides under."""
    weight_grad_s: np.ndarray
    """The weight-gradient (dW) GEMMs of backward: zero-bubble schedules move them into the bubble."""
    hardware_flops: np.ndarray
    """FLOPs executed per micro-batch, forward + backward + recompute (for HFU)."""
    experts_forward_s: np.ndarray | float = 0.0
    """Of forward_s, the routed experts' GEMMs and fp8 casts (what GroupedLinear issues per expert; 0 dense)."""
    experts_backward_s: np.ndarray | float = 0.0
    """Of backward_s, the routed experts' gradient GEMMs and fp8 casts."""
    async_tp_blocks: tuple[AsyncTpBlock, ...] = ()
    """The tensor-parallel blocks' chunked matmuls as async TP fuses them with its collectives (stack tp_overlap
    "async_tp"; empty otherwise): what step.tp_comm_s hides each fused collective under."""
    local_shard_blocks: tuple[LocalShardBlock, ...] = ()
    """The tensor-parallel blocks' matmuls nanotron's asynchronous TP runs its collectives under (stack tp_overlap
    "local_shard"; empty otherwise)."""
    comm_slowdown_in: np.ndarray | float = 1.0
    """How much slower the layer's compute runs while a NCCL collective inside the scale-up domain holds
    HardwareRates.comm_ctas_in SMs (comm_sm_slowdown; 1 where the GPU's SMs or CTAs are unknown)."""
    comm_slowdown_out: np.ndarray | float = 1.0
    """The same while a collective across nodes holds comm_ctas_out SMs."""


def gemm_s(flops: np.ndarray, count: float | np.ndarray, rate: np.ndarray | float, half_flops: float) -> np.ndarray:
    # Saturating efficiency in GEMM size, rate * F / (F + F_half) (Calculon-style size curve): time (F + F_half) / rate.
    return count * (flops + half_flops) / rate


@dataclass(frozen=True, slots=True)
class Linear:
    """One weight matrix's GEMM per rank: tokens x out_features, reduced over in_features (both already / tp)."""

    tokens: np.ndarray
    in_features: np.ndarray | float
    out_features: np.ndarray | float
    count: np.ndarray | float = 1.0
    streamed: bool = False
    """The `count` GEMMs are a rank's local experts run by Transformer Engine's GroupedLinear (moe_layer)."""
    tp_role: TpRole = TpRole.NONE
    """Column- or row-parallel GEMM of a tensor-parallel block (its communication may overlap it: tp_overlap.py)."""
    rows_sd: np.ndarray | float = 0.0
    """Standard deviation of each of the `count` GEMMs' tokens about `tokens` (a dropless expert's routed rows:
    moe_layer.expert_rows_sd); prices their expected row tiles in the GEMMs whose m is the tokens."""


@dataclass(frozen=True, slots=True)
class TpOverlap:
    """Where tensor-parallel communication overlaps the GEMMs: the stack's kind ("bulk" TE userbuffers, "async_tp")
    and the layouts it applies to (sequence parallel with tp > 1)."""

    kind: str
    active: np.ndarray
    tp: np.ndarray
    gather_fused: np.ndarray | bool = True
    """Async TP: where its all-gathers fuse with their matmuls (tp_overlap.async_tp_gathers_fused)."""
    bulk_sm_margin: int = UB_COMM_SMS
    """SMs the userbuffers bulk overlaps take from their GEMMs (ExecutionStack.tp_overlap_bulk_sm_margin)."""


def stack_tp_overlap(stack: ExecutionStack, L: LayoutArrays, hw: HardwareRates, fp8: np.ndarray
                     ) -> TpOverlap | None:
    """How `stack`'s TP overlap chunks the GEMMs where it runs (tp_overlap.tp_overlap_runs); None: no overlap."""
    if stack.tp_overlap == "none":
        return None
    return TpOverlap(stack.tp_overlap, tp_overlap_runs(stack.tp_overlap, L.sp, L.tp, hw.domain), L.tp,
                     async_tp_gathers_fused(stack, fp8), stack.tp_overlap_bulk_sm_margin)


def comm_sm_slowdown(linears: list[Linear], hw: HardwareRates, fp8: np.ndarray, comm_ctas: float
                     ) -> np.ndarray | float:
    """Time of the layer's forward weight GEMMs on the SMs a concurrent collective's `comm_ctas` CTAs leave over their
    time on all SMs: each GEMM's tiles fill ceil(tiles / (SMs - CTAs)) waves instead of ceil(tiles / SMs) (wave
    quantisation over fewer SMs, models/hardware/gemm.py; NCCL CTAs share no SM with compute, NVIDIA/nccl#689).
    Without a GEMM shape model (calibrated curve) the ideal SMs / (SMs - CTAs); 1 without SM or CTA counts."""
    ctas = int(comm_ctas)
    if not ctas or not hw.sm_count or ctas >= hw.sm_count:
        return 1.0
    if hw.gemm_shape is None:
        return hw.sm_count / (hw.sm_count - ctas)
    full = held = 0.0
    for g in linears:
        full = full + hw.gemm_time_s(g.tokens, g.out_features, g.in_features, fp8, g.count)
        held = held + hw.gemm_time_s(g.tokens, g.out_features, g.in_features, fp8, g.count, sm_margin=ctas)
    full = np.asarray(full, dtype=float)
    return np.divide(held, full, out=np.ones_like(full), where=full > 0)


def linear_gemm_shapes(tokens: np.ndarray | float, fan_in: np.ndarray | float, fan_out: np.ndarray | float
                       ) -> tuple[tuple[np.ndarray | float, ...], ...]:
    """(m, n, k) of a linear's three GEMMs: forward Y = X W (tokens, out, in), input gradient dX = dY W^T (tokens, in,
    out) and weight gradient dW = X^T dY (in, out, tokens)."""
    return (tokens, fan_out, fan_in), (tokens, fan_in, fan_out), (fan_in, fan_out, tokens)


def linear_gemm_time_s(g: Linear, rates: HardwareRates, m: np.ndarray | float, n: np.ndarray | float, k: np.ndarray | float,
                       fp8: np.ndarray, output_bytes: np.ndarray | float = OUTPUT_BYTES,
                       m_sd: np.ndarray | float = 0.0) -> np.ndarray:
    """Seconds of `g`'s `count` equal m x n x k GEMMs: all at once, or, for a rank's local experts,
    GROUPED_GEMM_STREAMS at a time as Transformer Engine runs them (moe_layer.grouped_gemm_time_s); `m_sd` the
    spread of their rows (g.rows_sd for the forward and input-gradient GEMMs, whose m is the tokens)."""
    if g.streamed:
        return grouped_gemm_time_s(rates, m, n, k, fp8, g.count, output_bytes, m_sd)
    return rates.gemm_time_s(m, n, k, fp8, g.count, output_bytes=output_bytes, m_sd=m_sd)


def wgrad_output_bytes(L: LayoutArrays, stack: ExecutionStack) -> np.ndarray | float:
    """HBM bytes per weight element a weight-gradient GEMM moves for its output: where the stack accumulates into the
    main gradients inside the GEMM (ExecutionStack.wgrad_accumulation_fusion: beta = 1), it reads and writes them in
    their dtype (memory.main_grad_bytes: 2 x 4 B fp32, 2 x 2 B bf16); else it writes a 16-bit dW (OUTPUT_BYTES).
    Only a GEMM of short depth k (a local expert's few routed rows) is bound by it: its intensity is about k / 4
    FLOP/B at 8 B. Not under ZeRO 2 / 3, which Megatron-Core runs as Megatron-FSDP with --no-gradient-accumulation-
    fusion (its user guide; frameworks/megatron.py exports it so): the GEMM writes a fresh dW there."""
    if not stack.wgrad_accumulation_fusion:
        return OUTPUT_BYTES
    return np.where(L.sharded_grads > 0, OUTPUT_BYTES, 2.0 * main_grad_bytes(L))


def linear_times(linears: list[Linear], hw: HardwareRates, fp8: np.ndarray, overlap: TpOverlap | None = None,
                 forward_hw: HardwareRates | None = None, wgrad_bytes: np.ndarray | float = OUTPUT_BYTES
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(forward, backward, the backward's weight-gradient part) seconds of `linears`: Y = X W forward;
    dX = dY W^T and dW = X^T dY backward, the forward at `forward_hw`'s rates where given (a recipe whose forward
    GEMM runs another kernel: HardwareRates.for_fp8_recipe), dW moving `wgrad_bytes` per element of its output
    (wgrad_output_bytes). Where `overlap` is active, the tensor-parallel GEMMs run chunked as the overlap issues them
    (tp_overlap.py)."""
    fhw = forward_hw or hw
    fwd = bwd = wgrad = 0.0
    for g in linears:
        t, i, o = g.tokens, g.in_features, g.out_features
        overlapped = overlap is not None and g.tp_role != TpRole.NONE and overlap.active.any()
        if overlapped:
            of, odx, odw = overlapped_times(hw.gemm_time_s, g.tp_role, overlap.kind, t, i, o, fp8, overlap.tp,
                                            overlap.gather_fused, overlap.bulk_sm_margin, wgrad_bytes)
            if fhw is not hw:
                of = overlapped_times(fhw.gemm_time_s, g.tp_role, overlap.kind, t, i, o, fp8, overlap.tp,
                                      overlap.gather_fused, overlap.bulk_sm_margin)[0]
        if overlapped and overlap.active.all():
            f, dx, dw = of, odx, odw
        else:  # whole GEMMs, where no overlap chunks them
            forward, dgrad, wgrad_shape = linear_gemm_shapes(t, i, o)
            f, dx, dw = (linear_gemm_time_s(g, fhw, *forward, fp8, m_sd=g.rows_sd),
                         linear_gemm_time_s(g, hw, *dgrad, fp8, m_sd=g.rows_sd),
                         linear_gemm_time_s(g, hw, *wgrad_shape, fp8, wgrad_bytes))
            if overlapped:
                f, dx, dw = (np.where(overlap.active, a, b) for a, b in ((of, f), (odx, dx), (odw, dw)))
        fwd = fwd + f
        wgrad = wgrad + dw
        bwd = bwd + dx + dw
    return np.asarray(fwd), np.asarray(bwd), np.asarray(wgrad)


def tp_block_pairs(linears: list[Linear]) -> list[tuple[Linear, Linear]]:
    """The (column, row) GEMM pair of each tensor-parallel block of `linears` (layer_linears order)."""
    pairs = []
    column = None
    for g in linears:
        if g.tp_role == TpRole.COLUMN:
            column = g
        elif g.tp_role == TpRole.ROW and column is not None:
            pairs.append((column, g))
            column = None
    return pairs


def async_tp_blocks(linears: list[Linear], hw: HardwareRates, fp8: np.ndarray,
                    tp: np.ndarray, forward_hw: HardwareRates | None = None) -> tuple[AsyncTpBlock, ...]:
    """Each tensor-parallel block's (column, row) GEMM pair of `linears` (layer_linears order) with the seconds of
    the chunked matmuls async TP runs its collectives under (tp_overlap.py); forwards at `forward_hw`'s rates."""
    fhw = forward_hw or hw
    blocks = []
    for column, g in tp_block_pairs(linears):
        cf, _, _ = overlapped_times(fhw.gemm_time_s, TpRole.COLUMN, "async_tp", column.tokens,
                                    column.in_features, column.out_features, fp8, tp)
        rf = overlapped_times(fhw.gemm_time_s, TpRole.ROW, "async_tp", g.tokens, g.in_features,
                              g.out_features, fp8, tp)[0]
        _, rdx, _ = overlapped_times(hw.gemm_time_s, TpRole.ROW, "async_tp", g.tokens, g.in_features,
                                     g.out_features, fp8, tp)
        blocks.append(AsyncTpBlock(column_forward_s=cf, row_forward_s=rf, row_dgrad_s=rdx))
    return tuple(blocks)


def local_shard_blocks(linears: list[Linear], hw: HardwareRates, fp8: np.ndarray, tp: np.ndarray,
                       forward_hw: HardwareRates | None = None) -> tuple[LocalShardBlock, ...]:
    """Each tensor-parallel block's (column, row) pair of `linears` with the seconds of the matmuls nanotron's
    asynchronous TP issues its collectives beside (tp_overlap.py): the column forward's and the row input gradient's
    local-shard rows, the column weight gradient; forwards at `forward_hw`'s rates."""
    fhw = forward_hw or hw
    return tuple(LocalShardBlock(
        column_local_s=fhw.gemm_time_s(column.tokens / tp, column.out_features, column.in_features, fp8),
        row_dgrad_local_s=hw.gemm_time_s(row.tokens / tp, row.in_features, row.out_features, fp8),
        column_wgrad_s=hw.gemm_time_s(column.in_features, column.out_features, column.tokens, fp8))
        for column, row in tp_block_pairs(linears))


def fp8_cast_times(linears: list[Linear], L: LayoutArrays, hw: HardwareRates, recipe: str,
                   weight_copy: bool) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) seconds of the fp8 quantisation kernels around `linears`: the input X and the weight W
    forward, the output gradient dY backward, each fp8_quant_bytes_per_element(recipe) at the HBM rate; backward
    also the recipe's rescale of the gradient GEMMs' outputs dX (tokens x in) and dW (in x out),
    FP8_GRAD_RESCALE_BYTES_PER_ELEMENT. A cached fp8 weight copy (Transformer Engine) quantises W once per optimizer
    step, i.e. 1/micro-batches per micro-batch."""
    per_element = fp8_quant_bytes_per_element(recipe, hw.fp8_all_layouts) / hw.hbm_bytes_per_s
    rescale = FP8_GRAD_RESCALE_BYTES_PER_ELEMENT.get(recipe, 0.0) / hw.hbm_bytes_per_s
    weight_share = 1.0 / L.microbatches if weight_copy else 1.0
    fwd = bwd = 0.0
    for g in linears:
        fwd = fwd + g.count * (g.tokens * g.in_features + weight_share * g.in_features * g.out_features) * per_element
        bwd = bwd + g.count * (g.tokens * g.out_features * per_element
                               + (g.tokens * g.in_features + g.in_features * g.out_features) * rescale)
    return np.asarray(fwd), np.asarray(bwd)


def op_sac_recomputed_linears(shapes: ModelShapes, L: LayoutArrays, moe: bool) -> list[Linear]:
    """The matmuls torchtitan's op-level SAC recomputes: of wq, wk, wv, wo, w1, w3, w2 every second one, i.e. wk,
    wo and w3 (w2 for a two-matrix MLP); MoE expert grouped matmuls are not in the alternation."""
    tokens = L.seq * L.mbs / L.cp
    h = shapes.hidden
    out = [Linear(tokens, h, shapes.kv_dim / 2 / L.tp), Linear(tokens, shapes.v_dim / L.tp, h)]
    if not moe:
        out.append(Linear(tokens, h, shapes.ffn / L.tp) if shapes.gated else Linear(tokens, shapes.ffn / L.tp, h))
    return out


def _block(tokens: np.ndarray, hidden: int, params: float, inner: float, shard: np.ndarray,
           count: np.ndarray | float = 1.0, streamed: bool = False, tp_block: bool = False,
           rows_sd: np.ndarray | float = 0.0) -> list[Linear]:
    """A hidden -> inner-ish -> hidden pair (attention in/out projections, an MLP, an expert): the output projection
    has `inner` inputs, the input projections get the remaining parameters; both sharded by `shard` (Megatron TP:
    column- then row-parallel; `tp_block`: their TP communication may overlap them). The FLOPs equal
    2 x tokens x params / shard exactly."""
    first = (params - inner * hidden) / hidden
    column, row = (TpRole.COLUMN, TpRole.ROW) if tp_block else (TpRole.NONE, TpRole.NONE)
    return [Linear(tokens, hidden, first / shard, count, streamed, column, rows_sd),
            Linear(tokens, inner / shard, hidden, count, streamed, row, rows_sd)]


def layer_linears(shapes: ModelShapes, L: LayoutArrays, moe: bool) -> list[Linear]:
    """The weight GEMMs of one layer on one rank, with their shapes (tokens = seq x mbs / cp)."""
    tokens = L.seq * L.mbs / L.cp
    # A hybrid block holds one of the two (ModelShapes.block): a Mamba block's in_proj / out_proj are its MLP pair.
    out = _block(tokens, shapes.hidden, shapes.attn_params, shapes.v_dim, L.tp, tp_block=True) \
        if shapes.has_attention else []
    if shapes.block == "attention":
        return out
    if moe:
        # Balanced routing: a tp group's tokens are split over its ranks for the experts (Megatron-Core EP/ETP);
        # each of the n_experts / ep local experts receives tokens x top_k x ep / n_experts of them.
        # Drop-and-pad: exactly capacity rows per expert from each rank (moe_layer.capacity_ratio).
        # Imbalanced dropless routing: the busiest EP rank's rows, which every rank waits for (busiest_rank_ratio).
        per_expert = tokens * shapes.top_k * L.ep / (shapes.n_experts * L.tp) * busiest_rank_ratio(shapes, L)
        # Dropless, an expert's rows vary about that mean (moe_layer.expert_rows_sd): their expected row tiles.
        out += _block(per_expert, shapes.routed_width, shapes.expert_params, shapes.expert_ffn, np.ones_like(L.tp),
                      count=shapes.n_experts / L.ep, streamed=True, rows_sd=expert_rows_sd(shapes, L))
        out += _block(tokens, shapes.hidden, shapes.moe_dense_part_params, shapes.shared_ffn, L.tp)
        if shapes.moe_latent:  # h -> latent before the dispatch, latent -> h after the combine, on the rank's tokens
            out += [Linear(tokens / L.tp, shapes.hidden, shapes.moe_latent),
                    Linear(tokens / L.tp, shapes.moe_latent, shapes.hidden)]
    else:
        out += _block(tokens, shapes.hidden, shapes.dense_mlp_params, shapes.ffn, L.tp, tp_block=True)
    return out


def layer_flops(shapes: ModelShapes, L: LayoutArrays, moe: bool) -> tuple[np.ndarray, np.ndarray]:
    """(linear GEMM FLOPs, executed attention-core FLOPs) of one layer's forward
    on one rank. Linear: 2 x tokens x matmul parameters (Kaplan 2020 / Narayanan 2021 Eq. 3). Core: 2 b s^2 per
    score and value width; flash attention skips the masked causal half (Dao 2022), the model count does not."""
    tokens = L.seq * L.mbs / L.cp
    t = L.tp
    attn = 2 * tokens * shapes.attn_params / t
    if moe:
        # Balanced routing: a tp group's tokens are split over its ranks for the experts (Megatron-Core EP/ETP).
        # Executed: drop-and-pad runs the padded rows too (moe_layer.capacity_ratio); model FLOPs (MFU) count top_k.
        routed = 2 * tokens * shapes.top_k * shapes.expert_params / L.tp * capacity_ratio(shapes, L)
        mlp = routed + 2 * tokens * shapes.moe_dense_part_params / t + 2 * tokens * shapes.latent_params / t
    else:
        mlp = 2 * tokens * shapes.dense_mlp_params / t
    core_model = 2 * tokens * L.seq * (shapes.q_dim + shapes.v_dim) / t
    core_exec = np.where(L.flash_attn > 0, causal_share(shapes, L.seq), 1.0) * core_model
    return attn + mlp, core_exec


def causal_share(shapes: ModelShapes, seq: np.ndarray) -> np.ndarray:
    """Share of the s x s score blocks a causal kernel computes, averaged over the layers: a full causal layer
    1/2; a windowed layer local_share."""
    n_sl = shapes.n_sliding_layers
    return ((shapes.n_layers - n_sl) * 0.5 + n_sl * local_share(shapes, seq)) / shapes.n_layers


def local_share(shapes: ModelShapes, seq: np.ndarray) -> np.ndarray:
    """Share of the s x s score blocks one windowed layer computes. Sliding window w (< s): sum_i min(i, w) / s^2 =
    w/s - w^2 / (2 s^2) (Beltagy 2020). Chunked (Llama 4, chunk c): each of the k = floor(s / c) whole chunks is a
    causal c x c block and the remainder r = s - k c an r x r one: (k c^2 + r^2) / (2 s^2); both are 1/2 when the
    window covers the sequence."""
    w = np.minimum(float(shapes.sliding_window or 0), seq) if shapes.sliding_window else seq
    if shapes.chunked_attention:
        whole = np.floor(seq / w)
        rest = seq - whole * w
        return (whole * w * w + rest * rest) / (2 * seq * seq)
    return w / seq - w * w / (2 * seq * seq)


def norm_bytes(shapes: ModelShapes, L: LayoutArrays) -> np.ndarray:
    """HBM bytes of one layer's norms forward, one per block (read + write h at 2 B each; the `outside` share of
    elementwise_bytes): two in a transformer layer, one in a hybrid block or a parallel layer with a shared norm."""
    return L.seq * L.mbs / L.cp * shapes.hidden * 4 * shapes.norms_run / L.sp_div


def activation_fn_bytes(shapes: ModelShapes, L: LayoutArrays, moe: bool) -> np.ndarray:
    """HBM bytes of one layer's MLP / expert activation function forward (gated: 3 reads + 1 write of the FFN
    width at 2 B; the `act` share of elementwise_bytes). None in a hybrid's attention or Mamba block (the Mamba
    mixer's SiLU runs inside its conv1d kernel: hardware.mamba_kernels.forward_bytes)."""
    if shapes.block in ("attention", "mamba"):
        return np.zeros_like(L.tp, dtype=float)
    ffn = shapes.top_k * shapes.expert_ffn * busiest_rank_ratio(shapes, L) if moe else shapes.ffn
    return L.seq * L.mbs / L.cp * ffn * (8 if shapes.gated else 4) / L.tp


CLAMP_FORWARD_ELEMENTS = 2 * (1 + 1) + (2 + 2)
"""Elements of the FFN width F moved per routed token by an eager input clamp of a gated activation (Megatron-Core
megatron/core/fusions/fused_bias_geglu.py weighted_bias_quick_geglu_impl with clamp_value, GPT-OSS: the fc1 output
is chunked, x_glu.clamp and x_linear.clamp each read and write F, torch.cat reads and writes 2F; only then does the
jit-fused GLU kernel run). 2 B each (bf16)."""
CLAMP_BACKWARD_ELEMENTS = 2 * (1 + 1 + 1) + (2 + 2)
"""Its autograd backward: each ClampBackward reads the gradient and the saved input and writes F (where(mask, g, 0));
the chunk's backward concatenates the two halves' gradients (reads and writes 2F)."""


def clamp_bytes(shapes: ModelShapes, L: LayoutArrays, moe: bool, compiled: bool) -> tuple[np.ndarray, float]:
    """(forward, backward / forward) HBM bytes of the eager activation clamp of one layer on one rank
    (CLAMP_FORWARD_ELEMENTS, CLAMP_BACKWARD_ELEMENTS at 2 B); 0 without a clamp or under torch.compile, which fuses
    the clamp into the activation kernel."""
    if not shapes.activation_clamp or compiled:
        return np.zeros_like(L.tp, dtype=float), 0.0
    ffn = shapes.top_k * shapes.expert_ffn * busiest_rank_ratio(shapes, L) if moe else shapes.ffn
    forward = L.seq * L.mbs / L.cp * ffn * 2.0 * CLAMP_FORWARD_ELEMENTS / L.tp
    return forward, CLAMP_BACKWARD_ELEMENTS / CLAMP_FORWARD_ELEMENTS


def elementwise_bytes(shapes: ModelShapes, L: LayoutArrays, moe: bool) -> np.ndarray:
    """HBM bytes the memory-bound kernels of one layer's forward move on one rank.

    Norms read+write h (4 B/token-hidden each, one per block), a bias-dropout-add per block (7 with masks, else 6),
    activation read+write
    of the FFN width (gated: 3 reads + 1 write), rotary on q/k, and without flash the fused softmax
    (+ dropout) over the score matrix (read+write 2 B, mask 1 B): the fused kernels of Megatron-LM.
    """
    tokens = L.seq * L.mbs / L.cp
    drop = 1.0 if shapes.dropout else 0.0
    residual_adds = tokens * shapes.hidden * shapes.blocks_per_layer * (6 + drop) / L.sp_div
    rope = 4.0 * tokens * (shapes.q_dim + shapes.kv_dim) / L.tp
    scores = np.where((L.flash_attn > 0) | (not shapes.has_attention), 0.0,
                      (4 + 5 * drop) * shapes.n_heads * tokens * L.seq / L.tp)
    return norm_bytes(shapes, L) + residual_adds + activation_fn_bytes(shapes, L, moe) + rope + scores


# HBM bytes per element of the eager PyTorch kernels a stack runs where it has no fused kernel (stack fused_kernels),
# read + written, from the model code torchtitan ran for its published runs (torchtitan 9dec370, Dec 2024).
# Hugging Face Llama under DeepSpeed runs the same RMSNorm and SwiGLU sequences and the same repeat_kv / transpose
# copies around SDPA; its rotate_half RoPE moves slightly more than the complex one (priced as the complex one).
# RMSNorm, torchtitan models/norms.py RMSNorm.forward
# `(x.float() * rsqrt(x.float().pow(2).mean(-1) + eps)).type_as(x) * weight`: x.float() 2 + 4, pow 4 + 4, mean 4,
# x * rsqrt 4 + 4, type_as 4 + 2, * weight 2 + 2 = 36 (a fused kernel: 2 + 2).
EAGER_RMSNORM_BYTES = 36.0
FUSED_NORM_BYTES = 4.0
# RoPE, torchtitan models/llama/model.py apply_rotary_emb on q and k: x.float() 2 + 4, complex multiply 4 + 4,
# type_as 4 + 2 = 20 per element (fused: 2 + 2, compute.py elementwise_bytes's rope term).
EAGER_ROPE_BYTES = 20.0
FUSED_ROPE_BYTES = 4.0
# SwiGLU, torchtitan FeedForward `w2(F.silu(w1(x)) * w3(x))`: silu 2 + 2, mul 2 + 2 + 2 = 10 per FFN element
# (elementwise_bytes prices the fused kernel at 8).
UNPAD_GATHER_BYTES = 2.0 + 2.0
"""flash_attn.bert_padding IndexFirstAxis forward (unpad_input of q, k and v): torch.gather reads each 2 B element
and writes it to the unpadded buffer (the index is an expanded, stride-0 view: no index traffic)."""
PAD_SCATTER_BYTES = 2.0 + 2.0 + 2.0
"""flash_attn.bert_padding IndexPutFirstAxis forward (pad_input of the attention output): a zero-filled output
(write 2 B) and output[indices] = values (read 2 B, write 2 B) per element."""
EAGER_SWIGLU_BYTES = 10.0
FUSED_SWIGLU_BYTES = 8.0


def unfused_extra_bytes(shapes: ModelShapes, L: LayoutArrays, moe: bool, stack: ExecutionStack) -> np.ndarray:
    """HBM bytes one layer's forward moves on one rank beyond elementwise_bytes' fused kernels, as `stack` runs it:
    the eager RMSNorm / RoPE / SwiGLU sequences above where the stack lists no fused kernel for them, and, where its
    attention is F.scaled_dot_product_attention called as torchtitan and Hugging Face call it, the layout copies
    around it: repeat_kv materialises K and V at the query head count (expand + reshape: read 2 B x kv width, write
    2 B x q width each) and the output's transpose(1, 2).contiguous() (read + write 2 B x v width); torch.compile
    keeps both, SDPA being an extern kernel that needs materialised inputs (torchtitan models/llama/model.py
    Attention.forward). Where the stack unpads around its attention call (attention_unpad: llm-foundry's attn_impl flash,
    flash_attn_fn), the gathers of q, k, v (UNPAD_GATHER_BYTES each element) and the output's scatter
    (PAD_SCATTER_BYTES); backward carries them at the usual 2x of the forward elementwise traffic (by hand: the three
    scatters' zero-fill + scatter 6 B, the output gather 4 B, autograd's cat of the q/k/v gradient chunks 4 B per
    qkv element: 34 d B per token for d = q = k = v width, against 2 x 18 d)."""
    tokens = L.seq * L.mbs / L.cp
    fused = stack.fused_kernels
    extra = np.zeros_like(L.tp, dtype=float)
    if shapes.rms_norm and "rmsnorm" not in fused:
        extra = extra + norm_bytes(shapes, L) * (EAGER_RMSNORM_BYTES / FUSED_NORM_BYTES - 1.0)
    mha = not shapes.mla_latent
    if shapes.rope and mha and "rope" not in fused:
        extra = extra + (EAGER_ROPE_BYTES - FUSED_ROPE_BYTES) * tokens * (shapes.q_dim + shapes.kv_dim / 2) / L.tp
    if shapes.gated and "swiglu" not in fused:
        extra = extra + activation_fn_bytes(shapes, L, moe) * (EAGER_SWIGLU_BYTES / FUSED_SWIGLU_BYTES - 1.0)
    if stack.attention_unpad and mha:
        extra = extra + tokens * (UNPAD_GATHER_BYTES * (shapes.q_dim + shapes.kv_dim)
                                  + PAD_SCATTER_BYTES * shapes.v_dim) / L.tp
    if stack.torch_sdpa and mha:
        repeat = 2.0 * (shapes.kv_dim + 2.0 * shapes.q_dim) if shapes.kv_heads < shapes.n_heads else 0.0
        extra = extra + tokens * (repeat + 4.0 * shapes.v_dim) / L.tp
    return extra


def qkv_layout_copy_times(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates,
                          stack: ExecutionStack) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) seconds of the layout copies around nanotron's attention on one rank (stack
    qkv_layout_copies; 0 elsewhere or with MLA), each copy reading and writing 2 B per element
    (huggingface/nanotron src/nanotron/models/llama.py CausalSelfAttention.forward, training branch).

    Forward: the packed projection viewed [s, b, 3, heads, d] and .permute(2, 1, 0, 3, 4).contiguous() to batch-first
    (q + kv elements, kv = K and V together; the GQA branch's three transpose(0, 1).contiguous() move the same),
    torch.cat of K and V and its .permute(1, 2, 0, 3, 4).contiguous() for flash-attn's rotary (kv, twice), and the
    output's .transpose(0, 1)
    back to sequence-first, which the output projection's matmul copies when a micro-batch holds more than one sequence
    (v; one sequence's transpose is a view). Backward, by autograd's nodes: contiguous() passes its gradient through;
    with every head its own K and V (nanotron's MHA branch) unbinding q, k and v is undone by a stack (q + kv) and the
    permuted gradient reshaped for the projection (q + kv again); with grouped K/V heads (the GQA branch: torch.split,
    then each part's transpose(0, 1).contiguous()) one cat of the three gradients (q + kv); torch.split of the KV
    tensor by a cat (kv), torch.cat by views; the output's copy by one reshape (v, more than one sequence), and
    o_proj's backward makes its saved transposed input contiguous for the weight gradient (v again, more than one
    sequence: parallel/tensor_parallel/functional.py _RowLinearAsyncCommunication.backward). So 4 (q + kv) + 8 kv
    (+ 4 v) B per token forward, 8 (q + kv) + 4 kv (+ 8 v) backward with MHA, 4 (q + kv) + 4 kv (+ 8 v) with GQA
    (replayed through autograd on CPU by a reviewer): not the 2x of the fused elementwise kernels."""
    if not stack.qkv_layout_copies or shapes.mla_latent:
        zero = np.zeros_like(L.tp, dtype=float)
        return zero, zero
    tokens = L.seq * L.mbs / L.cp / L.tp
    packed = 4.0 * (shapes.q_dim + shapes.kv_dim)  # kv_dim: K and V together
    kv = 4.0 * shapes.kv_dim
    output = np.where(L.mbs > 1, 4.0 * shapes.v_dim, 0.0)
    forward = tokens * (packed + 2.0 * kv + output) / hw.hbm_bytes_per_s
    unbind = 2.0 if shapes.kv_heads == shapes.n_heads else 1.0  # MHA: stack + reshape; GQA: one cat
    backward = tokens * (unbind * packed + kv + 2.0 * output) / hw.hbm_bytes_per_s
    return forward, backward


def glu_split_backward_s(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, stack: ExecutionStack,
                         moe: bool) -> np.ndarray:
    """Backward seconds of a merged gate-and-up projection split into halves (stack glu_split_cat: nanotron's MLP,
    gate_up_proj then torch.split, huggingface/nanotron src/nanotron/models/llama.py): autograd's SplitBackward
    concatenates the two halves' gradients, reading and writing 2 B of both (8 B per FFN element per token) on one
    rank; dense gated layers only (0 elsewhere)."""
    if not stack.glu_split_cat or moe or not shapes.gated:
        return np.zeros_like(L.tp, dtype=float)
    return L.seq * L.mbs / L.cp * 8.0 * shapes.ffn / L.tp / hw.hbm_bytes_per_s


def layer_time(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, moe: bool,
               stack: ExecutionStack | None = None) -> LayerTime:
    """Forward, backward (input- and weight-gradient GEMMs) and recompute time of one layer, as `stack` runs it
    (None: megatron-core): its attention kernel, first fp8 recipe, fp8 weight cache and selective recompute."""
    stack = stack or get_stack()
    attention_kernel = stack.attention_kernel
    fp8_recipe = stack.fp8_recipes[0] if stack.fp8_recipes else DEFAULT_FP8_RECIPE
    # The recipe's fp8 GEMM rates: backward (MXFP8 block-scaled GEMMs run slower) and forward (rowwise's CUTLASS too).
    fhw = hw.for_fp8_recipe(fp8_recipe, forward=True)
    hw = hw.for_fp8_recipe(fp8_recipe)
    if fhw.gemm_max_flops_fp8 == hw.gemm_max_flops_fp8:
        fhw = hw  # one rate both ways (MXFP8, tensorwise): the forward GEMMs need no pricing of their own
    fp8_weight_copy, selective = stack.fp8_weight_copy, stack.selective_recompute
    linear, core_exec = layer_flops(shapes, L, moe)
    fp8 = L.precision == PREC_FP8
    linears = layer_linears(shapes, L, moe)
    overlap = stack_tp_overlap(stack, L, hw, fp8)
    wgrad_bytes = wgrad_output_bytes(L, stack)
    experts_f = experts_b = 0.0
    pad = 0.0
    bias_f = bias_b = 0.0
    if moe:  # the routed experts' part (the streamed linears) kept apart: the host issues it per expert (host.py)
        experts = [g for g in linears if g.streamed]
        rest = [g for g in linears if not g.streamed]
        ef, eb, ew = linear_times(experts, hw, fp8, overlap, fhw, wgrad_bytes)
        rf, rb, rw = linear_times(rest, hw, fp8, overlap, fhw, wgrad_bytes)
        ecf, ecb = fp8_cast_times(experts, L, hw, fp8_recipe, fp8_weight_copy)
        rcf, rcb = fp8_cast_times(rest, L, hw, fp8_recipe, fp8_weight_copy)
        t_linear, t_linear_bwd, t_weight_grad, cast_fwd, cast_bwd = rf + ef, rb + eb, rw + ew, rcf + ecf, rcb + ecb
        # fp8: the experts' padding / unpadding copies, the same bytes each way (moe_layer.fp8_padding_bytes).
        pad = expert_padding_s(shapes, L, hw, stack, fp8_recipe)
        cast_fwd, cast_bwd = cast_fwd + pad, cast_bwd + pad
        experts_f, experts_b = ef + np.where(fp8, ecf + pad, 0.0), eb + np.where(fp8, ecb + pad, 0.0)
        if stack.eager_expert_bias:  # Megatron-Core TEGroupedMLP._apply_bias after fc2 (moe_layer.expert_bias_bytes)
            bias_f, bias_b = (b / hw.hbm_bytes_per_s for b in expert_bias_bytes(shapes, L))
            experts_f, experts_b = experts_f + bias_f, experts_b + bias_b
    else:
        t_linear, t_linear_bwd, t_weight_grad = linear_times(linears, hw, fp8, overlap, fhw, wgrad_bytes)
        cast_fwd, cast_bwd = fp8_cast_times(linears, L, hw, fp8_recipe, fp8_weight_copy)
    t_linear = t_linear + np.where(fp8, cast_fwd, 0.0)
    t_linear_bwd = t_linear_bwd + np.where(fp8, cast_bwd, 0.0)
    # Attention core runs in bf16 even under fp8 recipes (Transformer Engine and torchao keep DPA in bf16).
    if shapes.has_attention:
        t_core, t_core_bwd = flash_core_times(shapes, L, hw, core_exec, attention_kernel, cp_runs_blocks(L, stack))
    else:  # a hybrid's MLP or Mamba block
        t_core = t_core_bwd = np.zeros_like(L.tp, dtype=float)
    # A Mamba block's mixer kernels between in_proj and out_proj (conv1d, the SSD chunked scan, its group RMSNorm),
    # bf16 / fp32 under every recipe, at their memory roofline (models/hardware/mamba_kernels.py).
    mixer_f = mixer_b = mixer_flops_f = mixer_flops_b = 0.0
    if shapes.block == "mamba":
        # Under context parallelism the mixer runs the whole sequence on its share of the heads (mixer_sizes).
        mixer = mixer_sizes(shapes.mamba_inner, shapes.mamba_heads, shapes.mamba_groups, shapes.mamba_state,
                            shapes.mamba_chunk, L.tp, L.cp)
        tokens = L.seq * L.mbs
        mixer_f, mixer_b = mixer_times(mixer, tokens, L.mbs, hw.hbm_bytes_per_s, hw.gemm_max_flops, hw.sm_count)
        mixer_flops_f, mixer_flops_b = ssd_flops(mixer, tokens)
    # Elementwise kernels stream at the achieved HBM rate (eager stacks: their unfused kernels too).
    t_elem = (elementwise_bytes(shapes, L, moe) + unfused_extra_bytes(shapes, L, moe, stack)) / hw.hbm_bytes_per_s
    clamp_fwd, clamp_bwd_ratio = clamp_bytes(shapes, L, moe, stack.compiled)
    t_clamp = clamp_fwd / hw.hbm_bytes_per_s
    copy_f, copy_b = qkv_layout_copy_times(shapes, L, hw, stack)
    forward = t_linear + t_core + t_elem + t_clamp + bias_f + copy_f + mixer_f
    # torch.autocast over fp32 parameters: the activations' casts run again in a recompute, the weights' do not.
    cast_f = cast_b = weight_f = weight_b = 0.0
    if stack.mixed_precision == MIXED_PRECISION_AUTOCAST:
        casting = half_autocast(L, True)
        cast_f, cast_b = (np.where(casting, t, 0.0) for t in activation_cast_times(shapes, L, hw, moe))
        weight_f, weight_b = (np.where(casting, t, 0.0)
                              for t in weight_cast_times(layer_matmul_params(shapes, L, moe), L, hw))
    forward = forward + cast_f
    route_bwd = 0.0
    if moe:  # router and token permute / sort / unpermute kernels around the expert all-to-alls (moe_layer.py)
        route_fwd, route_bwd = routing_times(shapes, L, hw)
        forward = forward + route_fwd
    # Backward: input- and weight-gradient GEMMs, the core's gradient GEMMs (flash: its backward kernel), elementwise ~2x.
    backward = (t_linear_bwd + t_core_bwd + 2 * t_elem + clamp_bwd_ratio * t_clamp + route_bwd + bias_b
                + cast_b + weight_b + copy_b + glu_split_backward_s(shapes, L, hw, stack, moe) + mixer_b)
    # Selective = Megatron's core_attn checkpoint: the attention core's forward runs again in backward (unfused:
    # with its softmax/dropout kernels, about half the layer's elementwise traffic; Korthikanti 2022 Sec. 4.2);
    # with flash attention too, although it then frees only the core's row log-sum-exp (memory.py).
    selective_extra = np.where(L.flash_attn > 0, t_core, t_core + 0.5 * t_elem) if shapes.has_attention else 0.0
    selective_flops = core_exec
    if np.any(L.recompute_modules):  # Megatron-Core --recompute-modules: what the listed modules' forward costs
        extra, flops = module_recompute(shapes, L, fhw, moe, fp8, overlap, linears, selective_extra, core_exec, t_clamp,
                                        (np.where(fp8, pad, 0.0) if moe else 0.0) + bias_f)
        named = L.recompute_modules > 0
        selective_extra = np.where(named, extra, selective_extra)
        selective_flops = np.where(named, flops, selective_flops)
    if selective == SELECTIVE_OP_SAC:
        # torchtitan op-level SAC reruns every other matmul (memory.py op_sac_bytes) and every elementwise op.
        redo = op_sac_recomputed_linears(shapes, L, moe)
        selective_extra = linear_times(redo, fhw, fp8)[0] + t_elem
        selective_flops = sum(2 * g.tokens * g.in_features * g.out_features * g.count for g in redo)
    full, sel = L.recompute == RecomputeCode.FULL, L.recompute == RecomputeCode.SELECTIVE
    # Full recompute of recompute_layers of a rank's layers: that share of a layer's forward again, on average.
    share = L.full_recompute_share(shapes.n_layers)
    recompute = np.select([full, sel], [share * forward, selective_extra], 0.0)
    forward = forward + weight_f
    flops_exec = linear * 3 + core_exec * np.where(L.flash_attn > 0, 3.5, 3.0) + mixer_flops_f + mixer_flops_b
    flops_recompute = np.select([full, sel], [share * (linear + core_exec + mixer_flops_f), selective_flops], 0.0)
    return LayerTime(forward_s=forward, backward_s=backward, recompute_s=recompute, core_forward_s=t_core,
                     core_backward_s=t_core_bwd, linear_s=t_linear + t_linear_bwd + share * t_linear,
                     weight_grad_s=t_weight_grad,
                     hardware_flops=flops_exec + flops_recompute, experts_forward_s=experts_f,
                     experts_backward_s=experts_b,
                     async_tp_blocks=async_tp_blocks(linears, hw, fp8, L.tp, fhw) if stack.tp_overlap == "async_tp"
                     else (),
                     local_shard_blocks=local_shard_blocks(linears, hw, fp8, L.tp, fhw)
                     if stack.tp_overlap == "local_shard" else (), comm_slowdown_in=comm_sm_slowdown(linears, fhw, fp8, hw.comm_ctas_in),
                     comm_slowdown_out=comm_sm_slowdown(linears, fhw, fp8, hw.comm_ctas_out))


def expert_padding_s(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, stack: ExecutionStack,
                     fp8_recipe: str = DEFAULT_FP8_RECIPE) -> np.ndarray:
    """Seconds of one MoE layer's fp8 expert padding / unpadding copies per micro-batch, each way (forward; backward
    the same), at the HBM rate, where the stack pads (ExecutionStack.fp8_expert_padding); callers apply it under
    fp8 only. The recipe sets the row alignment (moe_layer.fp8_align_rows)."""
    if not stack.fp8_expert_padding:
        return np.zeros_like(L.tp, dtype=float)
    return fp8_padding_bytes(shapes, L, fp8_align_rows(fp8_recipe)) / hw.hbm_bytes_per_s


def module_recompute(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, moe: bool, fp8: np.ndarray,
                     overlap: TpOverlap | None, linears: list[Linear], core_s: np.ndarray,
                     core_flops: np.ndarray, clamp_s: np.ndarray | float = 0.0,
                     padding_s: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(seconds, FLOPs) that backward reruns for Megatron-Core's selective recompute modules (TransformerConfig
    recompute_modules; bit i of L.recompute_modules is layout.RECOMPUTE_MODULES[i]), per layer and micro-batch:
    core_attn the attention core; moe_act the expert activation; layernorm the two norms; mla_up_proj MLA's q/kv
    up-projection GEMMs; mlp a dense layer's MLP; moe an MoE layer's whole MoE block (router, permutes, experts,
    shared experts); shared_experts those alone. layer_linears' order: attention [0:2] (none in a hybrid's MLP,
    Mamba or MoE block), then the dense MLP or the experts and the shared part. `clamp_s`: the activation's eager input clamp (clamp_bytes), rerun
    with moe_act / mlp / moe; `padding_s`: an fp8 MoE layer's expert padding copies (expert_padding_s) and its eager
    expert-bias ops (moe_layer.expert_bias_bytes: outside the moe_act checkpoint, inside the moe one), rerun with
    moe."""
    def bit(i: int) -> np.ndarray:
        return (L.recompute_modules.astype(np.int64) >> i & 1) > 0

    def fwd(subset: list[Linear]) -> np.ndarray:
        return linear_times(subset, hw, fp8, overlap)[0] if subset else np.zeros_like(L.tp)

    def flops(subset: list[Linear]) -> np.ndarray:
        return sum((2 * g.tokens * g.in_features * g.out_features * g.count for g in subset), np.zeros_like(L.tp))

    tokens = L.seq * L.mbs / L.cp
    act_s = activation_fn_bytes(shapes, L, moe) / hw.hbm_bytes_per_s
    act_s = act_s + clamp_s  # the checkpointed activation function includes its eager input clamp (clamp_bytes)
    up = [Linear(tokens, k, n / L.tp) for k, n in shapes.mla_up_proj]
    terms: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [
        (bit(0), core_s, core_flops),
        (bit(1) & moe, act_s, 0.0),
        # a Mamba block's norm is fused into its in_proj and outside every recompute module
        (bit(2) & (shapes.block != "mamba"), norm_bytes(shapes, L) / hw.hbm_bytes_per_s, 0.0),
        (bit(3), fwd(up), flops(up)),
    ]
    # After the attention pair (none in a hybrid's MLP, Mamba or MoE block): the MLP, or the experts and the shared part.
    a = 2 if shapes.has_attention else 0
    if moe:
        route_s = routing_times(shapes, L, hw)[0] + padding_s
        terms += [(bit(5), fwd(linears[a:]) + route_s + act_s, flops(linears[a:])),  # with any latent projections
                  # the router alone on a model without shared experts: nothing for shared_experts to rerun
                  (bit(6) & ~bit(5) & (shapes.shared_ffn > 0), fwd(linears[a + 2:a + 4]), flops(linears[a + 2:a + 4]))]
    elif shapes.block != "mamba":  # Megatron's "mlp" module is a dense MLP's, not a Mamba mixer's projections
        terms.append((bit(4), fwd(linears[a:a + 2]) + act_s, flops(linears[a:a + 2])))
    seconds = sum((np.where(on, t, 0.0) for on, t, _ in terms), np.zeros_like(L.tp))
    executed = sum((np.where(on, f, 0.0) for on, _, f in terms), np.zeros_like(L.tp))
    return seconds, executed


def cp_block_core_times(att: AttentionRates, kernel: str, flops: np.ndarray, seq: np.ndarray, cp: np.ndarray,
                        head_dim: float, bwd_over_fwd: float) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) seconds of a full causal layer's attention core under load-balanced ring context
    parallelism, call by call; `flops`: the rank's executed causal forward FLOPs (half its query rows x all keys).

    torch context_parallel (torch/distributed/tensor/experimental/_attention.py _templated_ring_attention and
    _templated_ring_attention_backward, either rotate method) and Transformer Engine's AttnFuncWithCPAndKVP2P run cp
    calls per rank, each 1/cp of `flops` (rank r holds chunks r and 2cp-1-r of c = seq / 2cp tokens): step 0 the
    causal diagonal, q = kv = 2c; steps 1..r the whole query against the first K/V chunk (q 2c, kv c) and steps
    r+1..cp-1 the second query chunk against the whole K/V (q c, kv 2c), both without a mask. The diagonal runs the
    causal curves at 2c; an off-diagonal call the non-causal curve, forward at its key length (each query-block CTA
    loops over the keys), backward at its query length (FA2's backward CTAs loop over the query blocks). The ranks
    meet at every layer's K/V exchange, so each direction takes its slowest rank: the last one forward (every step at
    kv c), rank 0 backward (every step at q c). A kernel without a published non-causal curve keeps the causal curve
    at 2c for every call."""
    c = seq / (2.0 * cp)
    block = flops / cp
    off = np.maximum(cp - 1.0, 0.0) * block
    diag_f = att.forward_flops_per_s(kernel, 2.0 * c, head_dim)
    diag_b = att.backward_flops_per_s(kernel, 2.0 * c, head_dim)
    off_f = att.rate(kernel, c, head_dim, "forward", causal=False) if att.has_noncausal(kernel, "forward") else diag_f
    off_b = att.rate(kernel, c, head_dim, "backward", causal=False) if att.has_noncausal(kernel, "backward") else diag_b
    fwd = block / diag_f + off / off_f
    bwd = bwd_over_fwd * (block / diag_b + off / off_b)
    return fwd, bwd


def cp_runs_blocks(L: LayoutArrays, stack: ExecutionStack) -> np.ndarray:
    """Layouts whose context-parallel attention runs as load-balanced ring calls (cp_block_core_times): torch
    context_parallel with either rotate method (the all-gather only moves K/V), Megatron-Core / TE with the p2p ring
    and with the hierarchical a2a+p2p, whose ring across the all-to-all groups runs cp / cp_a2a calls (not its
    all-gather or all-to-all kinds)."""
    if stack.cp_impl == "torch":
        return np.ones(len(L), bool)
    return (L.cp_kind == CpKindCode.RING) | (L.cp_kind == CpKindCode.A2A_P2P)


CORE_FROM_PROFILE = "the calibration's profile fit"
CORE_FROM_GEMMS = "its score/value GEMMs (no curve for this GPU and kernel)"


def flash_core_source(hw: HardwareRates, attention_kernel: str) -> str:
    """What prices a flash attention core (flash_core_times): the calibration's `profile` attention fit, else the
    measured curve family of the stack's kernel on this GPU (attention_kernels.yaml), else its score/value GEMMs."""
    if hw.attn_max_flops is not None:
        return CORE_FROM_PROFILE
    if hw.attention is not None and hw.attention.has(attention_kernel):
        return hw.attention.family(attention_kernel) or CORE_FROM_GEMMS
    return CORE_FROM_GEMMS


def flash_core_times(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, core_exec: np.ndarray,
                     attention_kernel: str, cp_blocks: np.ndarray | bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) of one average layer's attention core.

    Flash on, forward: a `profile` attention fit when calibrated; else the kernel's published curve
    (models/hardware/attention.py) at the per-call key length, seq / cp for full layers and the window for
    sliding-window layers (a curve measured at the layer's own window instead, at seq / cp), and the model's head dim;
    full layers under load-balanced ring context parallelism (`cp_blocks`, per layout) call by call instead
    (cp_block_core_times); else its score/value GEMMs with only the causal share computed.
    Backward: flash_backward_flops_over_forward x the forward FLOPs at the published backward rate (the fit's own
    ratio when calibrated).
    Flash off: the unfused GEMMs (every score block computed, the score matrix through HBM)."""
    t_gemm, t_gemm_bwd = core_gemm_times(shapes, L, hw)
    flash = L.flash_attn > 0
    fwd = causal_share(shapes, L.seq) * t_gemm
    bwd_ratio = flash_backward_flops_over_forward(shapes.q_dim / shapes.n_heads, shapes.v_dim / shapes.n_heads)
    source = flash_core_source(hw, attention_kernel)
    if source == CORE_FROM_PROFILE:
        fwd = gemm_s(core_exec, 1.0, hw.attn_max_flops, hw.attn_half_flops)
        bwd_ratio = hw.attn_bwd_over_fwd
    elif source != CORE_FROM_GEMMS:
        head_dim = (shapes.q_dim + shapes.v_dim) / (2 * shapes.n_heads)
        full_s = 2 * L.seq * L.seq * (shapes.q_dim + shapes.v_dim) * L.mbs / (L.cp * L.tp)  # every block, one layer
        n_sl = shapes.n_sliding_layers
        att = hw.attention
        full_layers = (shapes.n_layers - n_sl) / shapes.n_layers * 0.5 * full_s
        # ring calls: cp of them, or cp / cp_a2a under hierarchical a2a+p2p (its all-to-all first gathers each group's
        # sequence chunks onto fewer heads)
        fwd, bwd = cp_block_core_times(att, attention_kernel, full_layers, L.seq, L.cp_ring, head_dim, bwd_ratio)
        if not np.all(np.asarray(cp_blocks) & (L.cp > 1)):  # the rest: one causal call at seq / cp
            whole = L.seq / L.cp
            fwd = np.where(cp_blocks, fwd, full_layers / att.forward_flops_per_s(attention_kernel, whole, head_dim))
            bwd = np.where(cp_blocks, bwd, bwd_ratio * full_layers
                           / att.backward_flops_per_s(attention_kernel, whole, head_dim))
        parts = []
        if n_sl:
            w = np.minimum(float(shapes.sliding_window), L.seq)
            local = n_sl / shapes.n_layers * local_share(shapes, L.seq) * full_s
            if not shapes.chunked_attention and att.has(attention_kernel, shapes.sliding_window):
                # A curve measured at this sliding window: the band's FLOPs at the call's sequence length.
                parts.append((local, L.seq / L.cp, shapes.sliding_window))
            else:  # the full-causal curve at the window's key length
                parts.append((local, w, None))
        fwd = fwd + sum((f / att.forward_flops_per_s(attention_kernel, s, head_dim, win) for f, s, win in parts), 0.0)
        bwd = bwd + sum((bwd_ratio * f / att.backward_flops_per_s(attention_kernel, s, head_dim, win)
                         for f, s, win in parts), 0.0)
        return np.where(flash, fwd, t_gemm), np.where(flash, bwd, t_gemm_bwd)
    return np.where(flash, fwd, t_gemm), np.where(flash, bwd_ratio * fwd, t_gemm_bwd)


def core_gemm_times(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) of the attention core as batched GEMMs over mbs x heads / tp, all score blocks computed:
    S = Q K^T [s/cp x s, inner d_qk] and O = P V [s/cp x d_v, inner s]; backward dQ, dK, dP, dV (Megatron-LM's
    unfused core; flash attention is priced from its kernel measurements instead)."""
    batch = L.mbs * shapes.n_heads / L.tp
    q_len, kv_len = L.seq / L.cp, L.seq
    d_qk, d_v = shapes.q_dim / shapes.n_heads, shapes.v_dim / shapes.n_heads
    t = hw.gemm_time_s
    forward = t(q_len, kv_len, d_qk, False, batch) + t(q_len, d_v, kv_len, False, batch)
    backward = (t(q_len, d_qk, kv_len, False, batch) + t(kv_len, d_qk, q_len, False, batch)
                + t(q_len, kv_len, d_v, False, batch) + t(kv_len, d_v, q_len, False, batch))
    return forward, backward


FUSED_LOSS_BYTES_PER_LOGIT = 12.0
"""HBM bytes per logit of a fused cross-entropy, forward and again backward: fp32 logits, softmax read + write and
the gradient write (Megatron-LM vocab-parallel cross-entropy; stack loss_impl "fused")."""
EAGER_FP32_LOSS_FORWARD_BYTES = (2.0 + 4.0) + (3 * 4.0 + 4.0)
"""Stack loss_impl "eager_fp32", forward, per logit: F.cross_entropy(logits.float()) as eager PyTorch runs it
(torchtitan 9dec370 train.py): the cast reads bf16, writes fp32; log_softmax's cunn_SoftMaxForward
(aten/src/ATen/native/cuda/SoftMax.cu; a 128k-vocabulary row fits no shared-memory path) reads the row for its max,
again for the sum of exponentials and a third time to write the fp32 output. nll_loss gathers one value per row."""
EAGER_FP32_LOSS_BACKWARD_BYTES = 4.0 + (3 * 4.0 + 4.0) + (4.0 + 2.0)
"""Backward of the same, per logit: nll_loss_backward's zero-filled fp32 gradient (write), cunn_SoftMaxBackward
(reads the gradient for its sum, then gradient and saved output again, writes the input gradient) and the cast's
backward to bf16 (read fp32, write bf16)."""


COMPILED_LOSS_FORWARD_BYTES = 2.0
"""Stack loss_impl "compiled", forward, per logit: torch.compile of F.cross_entropy(logits.float()) (torchtitan
build_cross_entropy_loss since pytorch/torchtitan#1033) is one Inductor reduction per row that reads the bf16 logits
once, the upcast fused into the read, max and sum of exponentials in one pass (torch/_inductor/config.py
online_softmax, default on); the target's logit is one gather per row."""
COMPILED_LOSS_BACKWARD_BYTES = 2.0 + 2.0
"""Backward of the same, per logit: one kernel reads the saved bf16 logits and writes the bf16 input gradient
(softmax minus the one-hot target, times the incoming gradient; the cast's backward fused)."""


SHARDED_FP32_LOSS_FORWARD_BYTES = (2.0 + 4.0) + 4.0 + (4.0 + 4.0) + (4.0 + 4.0) + 4.0 + (4.0 + 4.0)
"""Stack loss_impl "sharded_fp32", forward, per logit: nanotron's sharded_cross_entropy(..., dtype=torch.float)
(huggingface/nanotron src/nanotron/parallel/tensor_parallel/functional.py _ShardedCrossEntropy.forward): the cast
to fp32 (read bf16, write fp32), torch.max over the row (read), logits - max into a new tensor (read, write),
torch.exp in place (read, write), the sum (read), and div_ by the sum in place to keep the softmax (read, write)."""
SHARDED_FP32_LOSS_BACKWARD_BYTES = (4.0 + 4.0) + (4.0 + 2.0)
"""Backward of the same, per logit: grad_input.mul_(grad_output) over the saved softmax in place (read, write; the
one-hot subtraction touches one element per row) and the cast's backward to bf16 (read fp32, write bf16)."""


def loss_bytes_per_logit(stack: ExecutionStack | None) -> tuple[float, float]:
    """(forward, backward) HBM bytes per logit of the stack's cross-entropy (ExecutionStack.loss_impl)."""
    if stack is not None and stack.loss_impl == "sharded_fp32":
        return SHARDED_FP32_LOSS_FORWARD_BYTES, SHARDED_FP32_LOSS_BACKWARD_BYTES
    if stack is not None and stack.loss_impl == "eager_fp32":
        return EAGER_FP32_LOSS_FORWARD_BYTES, EAGER_FP32_LOSS_BACKWARD_BYTES
    if stack is not None and stack.loss_impl == "compiled":
        return COMPILED_LOSS_FORWARD_BYTES, COMPILED_LOSS_BACKWARD_BYTES
    return FUSED_LOSS_BYTES_PER_LOGIT, FUSED_LOSS_BYTES_PER_LOGIT


def head_time(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates,
              stack: ExecutionStack | None = None) -> tuple[np.ndarray, np.ndarray]:
    """LM head GEMM (vocab-parallel over tp) and the cross-entropy over the logits: (forward, backward); the loss
    streams loss_bytes_per_logit(stack) at the achieved HBM rate (None: the fused loss)."""
    tokens = L.seq * L.mbs / L.cp
    t_gemm, t_gemm_bwd = head_gemm_times(shapes, L, hw)
    fwd_bytes, bwd_bytes = loss_bytes_per_logit(stack)
    logits = tokens * shapes.vocab / L.tp
    forward = t_gemm + fwd_bytes * logits / hw.hbm_bytes_per_s
    backward = t_gemm_bwd + bwd_bytes * logits / hw.hbm_bytes_per_s
    if stack is not None and stack.mixed_precision == MIXED_PRECISION_AUTOCAST:
        # torch.autocast: the head's input cast (its gradient upcast in backward) and its weight's casts
        # (models/training/autocast.py).
        casting = half_autocast(L, True)
        input_f, input_b = cast_times(tokens * shapes.hidden / L.sp_div, hw)
        weight_f, weight_b = weight_cast_times(shapes.vocab * shapes.hidden / L.tp, L, hw)
        forward = forward + np.where(casting, input_f + weight_f, 0.0)
        backward = backward + np.where(casting, input_b + weight_b, 0.0)
    return forward, backward


def head_gemm_times(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) seconds of the LM head's GEMMs on one rank (vocabulary-parallel over tp, bf16)."""
    tokens = L.seq * L.mbs / L.cp
    forward, backward, _ = linear_times([Linear(tokens, shapes.hidden, shapes.vocab / L.tp)], hw,
                                        np.zeros(len(L), bool))
    return forward, backward


MFU_BASIS = ("model FLOPs per step (2 x tokens x active matmul parameters incl. the LM head, plus the attention "
             "core with causal masking and sliding windows counted as executed, x3 for forward + backward; no "
             "recompute; a token-dropping MoE's routed experts for the token-expert pairs they keep) / (step time x "
             "GPUs x dense bf16 peak); fp8 runs are also measured against the bf16 peak")
"""The one MFU definition (issue #13): Megatron/PaLM model FLOPs with causal attention counted as the half a causal
kernel executes. HFU counts executed FLOPs (recompute, the flash backward's recomputed scores, unfused attention's
masked half) over the same peak, so HFU >= MFU."""


def model_flops_per_step(shapes: ModelShapes, L: LayoutArrays) -> np.ndarray:
    """Model FLOPs of one optimizer step (MFU_BASIS): 3 x forward, forward = 2 x tokens x active matmul parameters
    + the attention core 2 x tokens x seq x (q_dim + v_dim) per layer times its causal share (1/2; windows less),
    i.e. Korthikanti 2022's 72BLsh^2(1 + s/6h + V/12hL) with the s/6h attention term halved for causal masking.
    A token-dropping MoE (capacity factor below 1) runs its routed experts for the token-expert pairs they keep
    (kept_routed_share), so the model's FLOPs never exceed what the GPUs execute (HFU >= MFU)."""
    tokens = L.gbs * L.seq
    if shapes.blocks:  # a hybrid: each block kind's own (model_layer_flops_per_token), by its count
        layers = sum(share * shapes.n_layers * model_flops_per_token(b, L.seq, kept_routed_share(b, L))
                     for share, b in shapes.blocks)
        return 3 * tokens * (layers + 2.0 * shapes.vocab * shapes.hidden)
    matmul = (shapes.n_layers - shapes.n_moe_layers) * (shapes.attn_params + shapes.dense_mlp_params)
    routed = shapes.top_k * shapes.expert_params * kept_routed_share(shapes, L) if shapes.n_moe_layers else 0.0
    matmul = matmul + shapes.n_moe_layers * (shapes.attn_params + shapes.moe_dense_part_params + routed
                                             + shapes.latent_params)
    matmul = matmul + shapes.vocab * shapes.hidden
    core = 2 * L.seq * (shapes.q_dim + shapes.v_dim) * shapes.n_layers * causal_share(shapes, L.seq)
    return 3 * tokens * (2 * matmul + core)


def kept_routed_share(shapes: ModelShapes, L: LayoutArrays) -> np.ndarray:
    """Share of the routed token-expert pairs a MoE's experts process: 1 dropless or padded to capacity (the padding
    is executed work, not model work); the capacity ratio on the drop-and-pad path below capacity factor 1, whose
    dropped pairs skip their experts (moe_layer.capacity_ratio)."""
    if not shapes.n_experts:
        return np.ones(len(L))
    return np.minimum(capacity_ratio(shapes, L), 1.0)


def model_flops_per_token(shapes: ModelShapes, seq: np.ndarray, kept_routed: np.ndarray | float = 1.0) -> np.ndarray:
    """Forward model FLOPs per token of one dense layer or hybrid block: 2 x its matmul parameters, its attention
    core's causal share (model_flops_per_step), and a Mamba block's SSD matmuls as they run (mamba_kernels.ssd_flops,
    unsharded); a MoE block's routed experts for the `kept_routed` share of its token-expert pairs."""
    core = 2 * seq * (shapes.q_dim + shapes.v_dim) * causal_share(shapes, seq) if shapes.has_attention else 0.0
    ssd = 0.0
    if shapes.block == "mamba":
        one = np.ones_like(np.asarray(seq, dtype=float))
        ssd = ssd_flops(mixer_sizes(shapes.mamba_inner, shapes.mamba_heads, shapes.mamba_groups, shapes.mamba_state,
                                    shapes.mamba_chunk, one), one)[0]
    if shapes.block == "moe":  # router and shared experts, and the top_k routed experts a token runs
        return 2 * (shapes.moe_dense_part_params + shapes.top_k * shapes.expert_params * kept_routed
                    + shapes.latent_params)
    return 2 * (shapes.attn_params + shapes.dense_mlp_params) + core + ssd
