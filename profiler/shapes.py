"""GEMM shapes to measure: the ones a model runs at a layout, or a standard sweep (pure Python, no torch).

A shape (m, n, k) is C[m, n] = A[m, k] @ B[k, n]; F = 2*m*n*k FLOPs. The per-layer GEMMs are Megatron's
tensor-parallel split (Narayanan et al. 2021, section 2.3): QKV and FFN-up column-split over tp, attention-out and
FFN-down row-split over tp; backward runs the same GEMM as dgrad (m, k, n) and wgrad (k, n, m).
"""

from __future__ import annotations

from dataclasses import dataclass

from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.training.layout import Layout

Shape = tuple[int, int, int]


@dataclass(frozen=True, kw_only=True, slots=True)
class NamedGemm:
    name: str
    m: int
    n: int
    k: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k


def standard_shapes(*, cuda: bool, quick: bool) -> list[Shape]:
    """Squares over three decades of FLOPs plus decode-like skinny GEMMs (m = tokens in flight)."""
    if cuda:
        sides = (512, 2048, 8192) if quick else (256, 512, 1024, 2048, 4096, 6144, 8192, 12288, 16384)
        skinny = ((16, 8192, 8192),) if quick else ((16, 8192, 8192), (64, 8192, 8192), (256, 8192, 28672))
    else:
        sides = (32, 64, 128, 256, 384) if quick else (32, 64, 128, 256, 384, 512, 768, 1024)
        skinny = ((8, 512, 512),) if quick else ((8, 1024, 1024), (32, 1024, 4096))
    return [(s, s, s) for s in sides] + list(skinny)


def layer_gemms(model: ModelSpec, layout: Layout) -> list[NamedGemm]:
    """Forward GEMMs of one transformer layer and the LM head on one GPU at this layout's tp / ep."""
    tokens = layout.mbs * layout.seq // layout.cp
    h, tp = model.hidden, layout.tp
    gemms: list[NamedGemm] = []
    if model.is_mla:
        down = (model.q_lora_rank or 0) + model.kv_lora_rank + model.qk_rope_head_dim
        gemms.append(NamedGemm(name="mla_down", m=tokens, n=down, k=h))
        gemms.append(NamedGemm(name="mla_kv_up", m=tokens, n=model.n_heads * (model.qk_nope_head_dim + model.v_head_dim) // tp,
                               k=model.kv_lora_rank))
    else:
        qkv = model.q_dim + 2 * model.kv_heads * model.dim_head
        gemms.append(NamedGemm(name="qkv", m=tokens, n=max(qkv // tp, 1), k=h))
    gemms.append(NamedGemm(name="attn_out", m=tokens, n=h, k=max(model.v_dim // tp, 1)))
    if model.is_moe:
        # Each expert receives tokens * ep * top_k / n_experts tokens on average (uniform routing).
        per_expert = max(tokens * layout.ep * model.top_k // model.n_experts, 1)
        ffn = max(model.expert_ffn_hidden // layout.etp, 1)
        gemms.append(NamedGemm(name="expert_up", m=per_expert, n=ffn * (2 if model.gated_ffn else 1), k=h))
        gemms.append(NamedGemm(name="expert_down", m=per_expert, n=h, k=ffn))
    else:
        ffn = max(model.ffn_hidden // tp, 1)
        gemms.append(NamedGemm(name="ffn_up", m=tokens, n=ffn * (2 if model.gated_ffn else 1), k=h))
        gemms.append(NamedGemm(name="ffn_down", m=tokens, n=h, k=ffn))
    gemms.append(NamedGemm(name="lm_head", m=tokens, n=max(model.vocab // tp, 1), k=h))
    return gemms


def model_shapes(model: ModelSpec, layout: Layout, *, quick: bool, max_flops: float | None) -> list[Shape]:
    """The model's GEMMs at 1, 1/8 and 1/64 of the tokens (to span the efficiency curve), with backward
    dgrad and wgrad shapes unless quick; m is scaled down when a GEMM exceeds max_flops (CPU)."""
    shapes: list[Shape] = []
    for g in layer_gemms(model, layout):
        for div in ((1, 64) if quick else (1, 8, 64)):
            m = max(g.m // div, 1)
            if max_flops is not None:
                m = max(1, min(m, int(max_flops // (2 * g.n * g.k))))
            passes = [(m, g.n, g.k)] if quick else [(m, g.n, g.k), (m, g.k, g.n), (g.k, g.n, m)]
            shapes.extend(passes)
    return sorted(set(shapes), key=lambda s: (s[0] * s[1] * s[2], s))
