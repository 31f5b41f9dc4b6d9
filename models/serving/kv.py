"""The KV cache of a served model: bytes per token (GQA and MLA aware) and prefill-to-decode transfer time."""

from __future__ import annotations

import numpy as np

from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.comm import ArrayLike, p2p_s


def kv_bytes_per_token(spec: ModelSpec, kv_bytes: float = 2.0) -> float:
    """KV-cache bytes one token occupies in the whole model (all layers, all ranks together)."""
    if spec.is_mla:
        # MLA caches the compressed latent plus the shared RoPE key per layer (DeepSeek-V2 paper sec. 2.1.3).
        return spec.n_layers * (spec.kv_lora_rank + spec.qk_rope_head_dim) * kv_bytes
    # Keys and values of every KV head of every attention layer: 2 * L * n_kv * d_h * b (research/serving-models.md
    # sec. 4.2); a hybrid's attention blocks only (its Mamba blocks keep a fixed state instead: mamba_state_bytes).
    return 2.0 * spec.n_attention_layers * spec.kv_heads * spec.dim_head * kv_bytes


def kv_window(spec: ModelSpec) -> dict[str, int | float]:
    """The KV window of a model as the scheduler's Engine takes it: the tokens a windowed layer keeps at most
    (sliding_window; a chunked layer keeps its current chunk, at most the same) and the share of layers that are
    windowed; empty for a model whose every layer attends fully."""
    n_windowed = sum(spec.is_sliding_layer(i) for i in range(spec.n_layers))
    if not n_windowed or spec.sliding_window is None:
        return {}
    return {"kv_window_tokens": spec.sliding_window, "kv_windowed_share": n_windowed / spec.n_layers}


def kv_tokens_held(context_tokens: ArrayLike, kv_window_tokens: int = 0, kv_windowed_share: float = 0.0) -> ArrayLike:
    """KV one sequence of `context_tokens` holds, in tokens of a full-attention layer stack (kv_bytes_per_token
    units): windowed layers keep only the last `kv_window_tokens` (vLLM's hybrid KV-cache manager frees the blocks that
    leave a sliding window or an earlier attention chunk): (1 - f) ctx + f min(ctx, w) for a share f of windowed
    layers (kv_window gives both for a model)."""
    ctx = np.asarray(context_tokens, dtype=float)
    if not kv_window_tokens:
        return ctx
    return (1.0 - kv_windowed_share) * ctx + kv_windowed_share * np.minimum(ctx, float(kv_window_tokens))


def kv_bytes_per_token_per_gpu(spec: ModelSpec, tp: int, pp: int, kv_bytes: float = 2.0) -> float:
    """KV bytes one token occupies on one GPU of a tp x pp instance.

    GQA heads are split over tp ranks and replicated once tp exceeds the KV-head count (vLLM); the MLA
    latent is replicated on every tp rank (vLLM and SGLang without DP attention). Layers split over pp.
    """
    layers_per_stage = busiest_stage_layers(spec, pp, "*") if spec.is_hybrid else -(-spec.n_layers // pp)
    if spec.is_mla:
        return layers_per_stage * (spec.kv_lora_rank + spec.qk_rope_head_dim) * kv_bytes
    heads_per_gpu = max(spec.kv_heads / tp, 1.0)
    return 2.0 * layers_per_stage * heads_per_gpu * spec.dim_head * kv_bytes


def mamba_state_bytes_per_seq_per_gpu(spec: ModelSpec, tp: int, pp: int, state_bytes: float = 2.0,
                                      ssm_state_bytes: float | None = None) -> float:
    """Bytes of recurrent state one running sequence keeps on one GPU of a tp x pp instance: its Mamba layers' SSM
    and conv states (ModelSpec.mamba_ssm_state_elements / mamba_conv_state_elements), heads and groups split over tp
    (vLLM MambaMixer2), layers over pp; the conv state at `state_bytes` (the model dtype), the SSM state at
    `ssm_state_bytes` (vLLM mamba_ssm_cache_dtype: "auto" = the model's, None here; float32 as NVIDIA's Nemotron
    recipes set it). Fixed per sequence, whatever its length."""
    ssm = state_bytes if ssm_state_bytes is None else ssm_state_bytes
    per_layer = spec.mamba_conv_state_elements() * state_bytes + spec.mamba_ssm_state_elements() * ssm
    return busiest_stage_layers(spec, pp, "M") * per_layer / tp


def busiest_stage_layers(spec: ModelSpec, pp: int, symbol: str) -> int:
    """The most `symbol` blocks of a hybrid pattern one of pp pipeline stages holds, the pattern cut into pp
    consecutive slices of near-equal length (cut at round(i n / pp)) as engines split layers (vLLM
    get_pp_indices): what that stage's memory is sized by."""
    n = len(spec.hybrid_pattern)
    bounds = [round(i * n / pp) for i in range(pp + 1)]
    return max(spec.hybrid_pattern[a:b].count(symbol) for a, b in zip(bounds, bounds[1:], strict=False))


def kv_transfer_s(spec: ModelSpec, tokens: ArrayLike, link_bytes_per_s: float, latency_s: float,
                  parallel_links: int = 1, kv_bytes: float = 2.0) -> ArrayLike:
    """Time to move a prompt's KV cache from a prefill to a decode instance.

    Each prefill GPU sends its own shard over its own link, so `parallel_links` (the smaller tp of the two
    pools) links share the bytes: t = alpha + tokens * kv_tok / (links * B) (research/serving-models.md sec. 4.9).
    """
    size_bytes = np.asarray(tokens, dtype=float) * kv_bytes_per_token(spec, kv_bytes)
    return p2p_s(size_bytes, link_bytes_per_s * max(parallel_links, 1), latency_s)


def state_tokens_per_seq(spec: ModelSpec, tp: int, attention_tp: int, pp: int, kv_bytes: float = 2.0,
                         state_bytes: float = 2.0, ssm_state_bytes: float | None = None) -> int:
    """A hybrid's per-sequence Mamba state (mamba_state_bytes_per_seq_per_gpu) in KV-token units of the same GPU,
    rounded up: what a running sequence reserves on top of its KV (vLLM's hybrid allocator keeps one state slot per
    sequence in the same pool). 0 without Mamba blocks."""
    state = mamba_state_bytes_per_seq_per_gpu(spec, tp, pp, state_bytes, ssm_state_bytes)
    if not state:
        return 0
    return -(-int(state) // int(kv_bytes_per_token_per_gpu(spec, attention_tp, pp, kv_bytes)))
