"""The Mamba-2 mixer's kernels (Nemotron-H, as Megatron-Core trains it and engines serve it): the kernels between
in_proj and out_proj, their HBM bytes, FLOPs and saved tensors per token, and the rate they run at. Training
(models/training) and serving (models/serving) both price them from here.

Megatron-Core's MambaMixer (ssm/mamba_mixer.py `_ssm_training`, the default mem-eff path) runs mamba_ssm's
`mamba_split_conv1d_scan_combined` on the in_proj output zxBCdt (causal conv1d, then the SSD chunked scan with the D
skip and the z gate fused in), then its group RMSNorm on the gated output, then out_proj. in_proj and out_proj are
Transformer Engine linears (priced as the block's GEMMs, fp8 where the recipe runs it); everything in between is
Triton / CUDA kernels in bf16 and fp32 whose arithmetic intensity (21-29 FLOP/B) is far below any GPU's ridge, so
they are priced as the HBM bytes they move at the rate such kernels were measured to reach (SSD_KERNEL_COPY_SHARE of
the achieved HBM rate), or their tensor-core FLOPs at the bf16 rate where that is longer (it never is on the GPUs in
hardware_db). Every count below is derived kernel by kernel from the
code in research/mamba-ssd-traffic.md (state-spaces/mamba ssd_combined.py @ d757aef1 and its kernels,
Dao-AILab/causal-conv1d); nothing is fitted.

Per tensor-parallel rank (MambaMixer shards heads and groups over tp): d = d_in / tp, H = heads / tp, G = groups / tp,
N the state size, Q the chunk, S = H P N / Q the chunk-state elements per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SSD_KERNEL_COPY_SHARE = 0.46
"""The rate the mamba_ssm SSD kernels move their bytes at, over the GPU's achieved copy rate (hbm_bytes_per_s):
measured, not fitted. vLLM PR #27299 timed the five-kernel `_mamba_chunk_scan_combined_fwd` on one H100 (b 1,
s 8192, 128 heads x 64, 1 group, state 128, chunk 256, fp16): 1.262e7 tokens/s x 104,704 B per token (this module's
forward bytes less conv, norm and z) = 1.32 TB/s, 0.395 of the 3.35 TB/s peak and 0.46 of H100's achieved copy rate
(x 0.85). Forward only: the backward (the same Triton family) and other GPUs and shapes are assumed alike
(research/mamba-training-throughput.md, its K1; K2, a bf16 fla benchmark, gives 0.27 of an H100's peak)."""
BF16_BYTES = 2.0
FP32_BYTES = 4.0
REFERENCE_CHUNK = 128
"""MambaMixer's default chunk_size, at which research/mamba-ssd-traffic.md totals the backward."""
BACKWARD_HEAD_BYTES = 146
"""Backward bytes per token and head of the per-head vectors (dt, dA cumsum, ddt, ddA and their casts and sums;
research/mamba-ssd-traffic.md sec. 4)."""
BACKWARD_DDA_PARTIAL_BYTES = 44
"""... and of _chunk_scan_bwd_ddAcs_stable's fp32 column-block partials and their sum at Q = 128 (sec. 4)."""


@dataclass(frozen=True, slots=True)
class MixerSizes:
    """One rank's share of a Mamba-2 mixer (research/mamba-ssd-traffic.md notation), per layout."""

    inner: np.ndarray
    """d: the inner width d_in = heads x head_dim, over tp."""
    heads: np.ndarray
    """H: heads over tp."""
    groups: np.ndarray
    """G: B/C groups over tp (MambaMixer asserts each rank gets at least one)."""
    state: int
    """N: the SSM state size."""
    chunk: int
    """Q: the SSD chunk length (MambaMixer chunk_size, 128)."""

    @property
    def chunk_states(self) -> np.ndarray:
        """S = H P N / Q = d N / Q: chunk-state elements per token ([b, chunks, H, P, N] over b s tokens)."""
        return self.inner * self.state / self.chunk

    @property
    def in_proj_width(self) -> np.ndarray:
        """W = 2 d + 2 G N + H: the in_proj output zxBCdt per token (z, x, B, C, dt)."""
        return 2 * self.inner + 2 * self.groups * self.state + self.heads


def mixer_sizes(inner: int, heads: int, groups: int, state: int, chunk: int, tp: np.ndarray,
                cp: np.ndarray | float = 1.0) -> MixerSizes:
    """One rank's mixer under tensor and context parallelism. Megatron-Core's Mamba context parallelism
    (ssm/mamba_context_parallel.py MambaContextParallel) runs the conv1d and the SSD scan over the whole sequence on
    heads / (tp cp) heads: the caller prices it at the full sequence's tokens. Where a tp rank holds fewer groups than
    cp ranks, each group's B / C is repeated so every cp rank gets one (group_repeat_count): max(G / tp, cp) / cp."""
    return MixerSizes(inner=inner / (tp * cp), heads=heads / (tp * cp),
                      groups=np.maximum(groups / tp, cp) / cp, state=state, chunk=chunk)


CP_IN_PROJ_COPY_PASSES = 3
"""Copies of the in_proj output zxBCdt per direction under Mamba context parallelism (MambaContextParallel
.pre_conv_ssm): each tensor's torch.split / torch.cat into the all-to-all's layout (_all_to_all_cp2hp), the
torch.cat of z, x, B, C, dt after it, and _undo_attention_load_balancing's reorder of the 2 cp chunks; each a read
and a write of the exchanged width."""
CP_OUT_COPY_PASSES = 2
"""Copies of the mixer output y per direction: _redo_attention_load_balancing's reorder and _all_to_all_hp2cp's
split / cat back to the sequence layout."""


def cp_all_to_all_widths(inner: int, heads: int, groups: int, state: int, tp: np.ndarray,
                         cp: np.ndarray) -> tuple[np.ndarray, ...]:
    """Elements per local token of the six all-to-alls one Mamba block runs each way under context parallelism
    (MambaContextParallel: z, x, B, C, dt from sequence to head sharding before the conv1d, y back after the scan);
    B and C after group_repeat_count, max(G / tp, cp) groups' states."""
    repeated = np.maximum(groups / tp, cp) * state
    return inner / tp, inner / tp, repeated, repeated, heads / tp, inner / tp


def cp_copy_elements(inner: int, heads: int, groups: int, state: int, tp: np.ndarray, cp: np.ndarray) -> np.ndarray:
    """Elements per local token read and written by the copies around those all-to-alls, one direction
    (CP_IN_PROJ_COPY_PASSES over zxBCdt as exchanged, CP_OUT_COPY_PASSES over y)."""
    z, x, b, c, dt, y = cp_all_to_all_widths(inner, heads, groups, state, tp, cp)
    return 2.0 * (CP_IN_PROJ_COPY_PASSES * (z + x + b + c + dt) + CP_OUT_COPY_PASSES * y)


def ssd_splits(m: MixerSizes, tokens: np.ndarray, sm_count: int) -> np.ndarray:
    """ns: the partial-sum splits of the dB / dC / dCB backward kernels (mamba_ssm _chunk_state_bwd_db,
    _chunk_scan_bwd_dC, _chunk_scan_bwd_dcb: nheads_per_program = clamp(ceil(b chunks H / #SM), 1, H / G), nsplits =
    ceil((H / G) / nheads_per_program)); 1 where the SM count is not known."""
    per_group = np.maximum(m.heads / m.groups, 1.0)
    if not sm_count:
        return np.ones_like(per_group)
    per_program = np.clip(np.ceil(tokens / m.chunk * m.heads / sm_count), 1.0, per_group)
    return np.ceil(per_group / per_program)


def forward_bytes(m: MixerSizes, tokens: np.ndarray, mbs: np.ndarray) -> np.ndarray:
    """HBM bytes of one Mamba layer's mixer forward on one rank, per micro-batch of `tokens` (= mbs x seq) tokens:
    18 d + 16 G N + 26 H + 12 S + 8 G Q + 4 G per token over the seven kernels (conv1d 4d + 8GN, chunk_cumsum 10H,
    chunk_state 2d + 2GN + 8H + 4S (fp32 states), state_passing 6S, bmm C B^T 4GN + 4GQ (fp32), chunk_scan with D
    and z 8d + 2GN + 4GQ + 2S + 8H, group RMSNorm 4d + 4G; research/mamba-ssd-traffic.md sec. 3), plus Megatron's
    two layout copies rearrange(...).contiguous() of zxBCdt and y when mbs > 1 (4 W + 4 d)."""
    d, g, h, n, q = m.inner, m.groups, m.heads, m.state, m.chunk
    per_token = 18 * d + 16 * g * n + 26 * h + 12 * m.chunk_states + 8 * g * q + 4 * g
    copies = np.where(mbs > 1, 4 * m.in_proj_width + 4 * d, 0.0)
    return tokens * (per_token + copies)


def backward_bytes(m: MixerSizes, tokens: np.ndarray, mbs: np.ndarray, sm_count: int) -> np.ndarray:
    """HBM bytes of its backward: the norm's backward, then MambaSplitConv1dScanCombinedFn.backward, which recomputes
    conv1d, C B^T, the chunk states and their passing (in fp32) before the dz, dstates, state-passing, dx, dB, dC,
    dCB, ddA, cumsum and conv backward kernels: 50 d + (58 + 16 ns) G N + 34 S + (24 + 8 ns) G Q + 190 H + 4 G per
    token at Q = 128 (research/mamba-ssd-traffic.md sec. 4: 146 H of per-head vectors and 44 H of the ddA kernel's
    column-block partial sums, taken here to scale with Q), plus the layout copies' gradients when mbs > 1 (as
    forward)."""
    d, g, h, n, q = m.inner, m.groups, m.heads, m.state, m.chunk
    ns = ssd_splits(m, tokens, sm_count)
    per_head = BACKWARD_HEAD_BYTES + BACKWARD_DDA_PARTIAL_BYTES * q / REFERENCE_CHUNK
    per_token = (50 * d + (58 + 16 * ns) * g * n + 34 * m.chunk_states + (24 + 8 * ns) * g * q + per_head * h
                 + 4 * g)
    copies = np.where(mbs > 1, 4 * m.in_proj_width + 4 * d, 0.0)
    return tokens * (per_token + copies)


def ssd_flops(m: MixerSizes, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) tensor-core FLOPs of the SSD's chunked matmuls on one rank per micro-batch, as executed:
    forward chunk_state 2dN, the states' contribution to the output 2dN, C B^T 2GNQ, the intra-chunk (C B^T) x 2dQ;
    backward 10dN + 6dQ + 6GNQ (recomputed states and C B^T, dstates, dx, dB, dC, dCB, ddA;
    research/mamba-ssd-traffic.md sec. 6). Upper bounds: the causal kernels skip about half of the dQ blocks."""
    d, g, n, q = m.inner, m.groups, m.state, m.chunk
    return (tokens * (4 * d * n + 2 * d * q + 2 * g * n * q),
            tokens * (10 * d * n + 6 * d * q + 6 * g * n * q))


def saved_bytes(m: MixerSizes, tokens: np.ndarray, out_proj_input_bytes: np.ndarray | float) -> np.ndarray:
    """Bytes one Mamba layer keeps for backward on one rank per micro-batch, beyond its block input and in_proj's
    saved input: the combined function's ctx.save_for_backward (zxBCdt 2 W, out_x 2 d), the group RMSNorm's input y
    (2 d) and rstd (fp32 per group), and out_proj's input (d elements at `out_proj_input_bytes`: 2 in bf16, the
    recipe's saved-input bytes under fp8) (research/mamba-ssd-traffic.md sec. 9)."""
    d = m.inner
    return tokens * (BF16_BYTES * m.in_proj_width + BF16_BYTES * d + BF16_BYTES * d + FP32_BYTES * m.groups
                     + out_proj_input_bytes * d)


def mixer_times(m: MixerSizes, tokens: np.ndarray, mbs: np.ndarray, hbm_bytes_per_s: float, bf16_flops_per_s: float,
                sm_count: int) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) seconds of the mixer kernels on one rank per micro-batch: the roofline's longer side,
    bytes at the SSD kernels' measured share of the achieved HBM rate (SSD_KERNEL_COPY_SHARE) or FLOPs at the bf16
    GEMM rate."""
    f_flops, b_flops = ssd_flops(m, tokens)
    rate = SSD_KERNEL_COPY_SHARE * hbm_bytes_per_s
    forward = np.maximum(forward_bytes(m, tokens, mbs) / rate, f_flops / bf16_flops_per_s)
    backward = np.maximum(backward_bytes(m, tokens, mbs, sm_count) / rate, b_flops / bf16_flops_per_s)
    return forward, backward
