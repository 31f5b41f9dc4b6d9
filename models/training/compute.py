"""Compute time of one transformer layer per micro-batch on one rank: GEMMs on an efficiency curve,
attention, and memory-bound elementwise kernels. Vectorised over LayoutArrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import PREC_FP8, LayoutArrays, RecomputeCode


@dataclass(frozen=True, slots=True)
class LayerTime:
    forward_s: np.ndarray
    backward_s: np.ndarray
    recompute_s: np.ndarray
    """Extra forward work redone in backward (full: whole layer; selective: the attention core)."""
    core_forward_s: np.ndarray
    """Attention core (scores and weighted values) forward, the part ring context parallel overlaps with."""
    linear_s: np.ndarray
    """Weight GEMMs forward + backward (+ recompute): what tensor-parallel comm overlap hides under."""
    weight_grad_s: np.ndarray
    """The weight-gradient (dW) GEMMs of backward: zero-bubble schedules move them into the bubble."""
    hardware_flops: np.ndarray
    """FLOPs executed per micro-batch, forward + backward + recompute (for HFU)."""


def gemm_s(flops: np.ndarray, count: float | np.ndarray, rate: np.ndarray | float, half_flops: float) -> np.ndarray:
    # Saturating efficiency in GEMM size, rate * F / (F + F_half) (Calculon-style size curve): time (F + F_half) / rate.
    return count * (flops + half_flops) / rate


def layer_flops(shapes: ModelShapes, L: LayoutArrays, moe: bool) -> tuple[np.ndarray, np.ndarray]:
    """(linear GEMM FLOPs, executed attention-core FLOPs) of one layer's forward
    on one rank. Linear: 2 x tokens x matmul parameters (Kaplan 2020 / Narayanan 2021 Eq. 3). Core: 2 b s^2 per
    score and value width; flash attention skips the masked causal half (Dao 2022), the model count does not."""
    tokens = L.seq * L.mbs / L.cp
    t = L.tp
    attn = 2 * tokens * shapes.attn_params / t
    if moe:
        # Balanced routing: a tp group's tokens are split over its ranks for the experts (Megatron-Core EP/ETP).
        routed = 2 * tokens * shapes.top_k * shapes.expert_params / L.tp
        mlp = routed + 2 * tokens * shapes.moe_dense_part_params / t
    else:
        mlp = 2 * tokens * shapes.dense_mlp_params / t
    core_model = 2 * tokens * L.seq * (shapes.q_dim + shapes.v_dim) / t
    core_exec = np.where(L.flash_attn > 0, 0.5, 1.0) * core_model
    return attn + mlp, core_exec


def elementwise_bytes(shapes: ModelShapes, L: LayoutArrays, moe: bool) -> np.ndarray:
    """HBM bytes the memory-bound kernels of one layer's forward move on one rank.

    Norms read+write h (2 x 4 B/token-hidden), two bias-dropout-add (7 each with masks, else 6), activation read+write
    of the FFN width (gated: 3 reads + 1 write), rotary on q/k, and without flash the fused softmax
    (+ dropout) over the score matrix (read+write 2 B, mask 1 B): the fused kernels of Megatron-LM.
    """
    tokens = L.seq * L.mbs / L.cp
    drop = 1.0 if shapes.dropout else 0.0
    outside = tokens * shapes.hidden * (8 + 2 * (6 + drop)) / L.sp_div
    ffn = shapes.top_k * shapes.expert_ffn if moe else shapes.ffn
    act = tokens * ffn * (8 if shapes.gated else 4) / L.tp
    rope = 4.0 * tokens * (shapes.q_dim + shapes.kv_dim) / L.tp
    scores = np.where(L.flash_attn > 0, 0.0, (4 + 5 * drop) * shapes.n_heads * tokens * L.seq / L.tp)
    return outside + act + rope + scores


def layer_time(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, moe: bool) -> LayerTime:
    """Forward, backward (2x the GEMMs: input and weight gradients) and recompute time of one layer."""
    linear, core_exec = layer_flops(shapes, L, moe)
    rate = np.where(L.precision == PREC_FP8, hw.gemm_max_flops_fp8, hw.gemm_max_flops)
    n_linear = 4.0 + (1.0 if shapes.gated else 0.0)  # qkv, out, fc1 (+gate), fc2
    per_gemm = linear / n_linear
    t_linear = gemm_s(per_gemm, n_linear, rate, hw.gemm_half_flops)
    # Attention core runs in bf16 even under fp8 recipes; with flash and a calibration, at the measured SDPA rate.
    t_core = gemm_s(core_exec / 2, 2.0, hw.gemm_max_flops, hw.gemm_half_flops)
    if hw.attn_max_flops is not None:
        t_core = np.where(L.flash_attn > 0, gemm_s(core_exec, 1.0, hw.attn_max_flops, hw.attn_half_flops), t_core)
    t_elem = elementwise_bytes(shapes, L, moe) / hw.hbm_bytes_per_s  # elementwise kernels stream at the achieved HBM rate
    forward = t_linear + t_core + t_elem
    # Backward: input- and weight-gradient GEMMs (2x), flash backward ~2.5x its forward, elementwise ~2x.
    backward = 2 * t_linear + np.where(L.flash_attn > 0, hw.attn_bwd_over_fwd, 2.0) * t_core + 2 * t_elem
    selective_extra = np.where(L.flash_attn > 0, 0.0, t_core + 0.5 * t_elem)
    full, selective = L.recompute == RecomputeCode.FULL, L.recompute == RecomputeCode.SELECTIVE
    recompute = np.select([full, selective], [forward, selective_extra], 0.0)
    flops_exec = linear * 3 + core_exec * np.where(L.flash_attn > 0, 3.5, 3.0)
    flops_recompute = np.select([full, selective],
                                [linear + core_exec, np.where(L.flash_attn > 0, 0.0, core_exec)], 0.0)
    return LayerTime(forward_s=forward, backward_s=backward, recompute_s=recompute, core_forward_s=t_core,
                     linear_s=t_linear * (3.0 + np.where(full, 1.0, 0.0)), weight_grad_s=t_linear,
                     hardware_flops=flops_exec + flops_recompute)


def head_time(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates) -> tuple[np.ndarray, np.ndarray]:
    """LM head GEMM (vocab-parallel over tp) and the cross-entropy over the logits: (forward, backward)."""
    tokens = L.seq * L.mbs / L.cp
    flops = 2 * tokens * shapes.vocab * shapes.hidden / L.tp
    t_gemm = gemm_s(flops, 1.0, hw.gemm_max_flops, hw.gemm_half_flops)
    t_loss = 12.0 * tokens * shapes.vocab / L.tp / hw.hbm_bytes_per_s  # fp32 logits: softmax read/write, grad write
    return t_gemm + t_loss, 2 * t_gemm + t_loss


def model_flops_per_step(shapes: ModelShapes, L: LayoutArrays) -> np.ndarray:
    """Model FLOPs of one optimizer step, no recompute counted (Megatron/PaLM MFU definition): 3 x forward, with
    forward = 2 x tokens x active matmul parameters + full (non-causal-halved) attention scores, as in
    Korthikanti 2022's 72BLsh^2(1 + s/6h + V/12hL) for GPT."""
    tokens = L.gbs * L.seq
    matmul = (shapes.n_layers - shapes.n_moe_layers) * (shapes.attn_params + shapes.dense_mlp_params)
    matmul = matmul + shapes.n_moe_layers * (shapes.attn_params + shapes.moe_dense_part_params
                                             + shapes.top_k * shapes.expert_params)
    matmul = matmul + shapes.vocab * shapes.hidden
    core = 2 * L.seq * (shapes.q_dim + shapes.v_dim) * shapes.n_layers
    return 3 * tokens * (2 * matmul + core)
