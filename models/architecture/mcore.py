"""A model as Megatron-Core describes it: TransformerConfig fields plus the GPT model provider's own (vocab_size,
seq_length, position_embedding_type, rotary_base, share_embeddings_and_output_weights), as Megatron-Bridge prints its
ConfigContainer's `model` section (OmegaConf: objects as `_target_` mappings) or a model YAML of those names.

    spec_from_mcore(fields, name=..., where=...) -> ModelSpec

Field names are megatron/core/transformer/transformer_config.py's (TransformerConfig, MLATransformerConfig) and
Megatron-Bridge's GPTModelProvider / MambaModelProvider's; tests/test_mcore_intake.py builds megatron-core's own
TransformerConfig for presets and checks the counts, and reads a real printed container.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clusterplan.errors import BadInputError, UnsupportedModelError
from clusterplan.models.architecture.spec import MAX_DIM, ModelSpec

ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "quick_gelu": "quick_gelu", "squared_relu": "relu2",
               "relu": "relu"}
"""The last name of TransformerConfig.activation_func's `_target_` (torch.nn.functional.silu, megatron.core.
activations.squared_relu / quick_gelu, ...) -> ModelSpec.activation."""
POSITIONS = {"rope": "rope", "yarn": "rope", "learned_absolute": "learned", "none": "none", "mrope": "rope"}
"""GPTModel position_embedding_type -> ModelSpec.position (YaRN and mRoPE rotate as RoPE)."""

MLA_DEFAULTS = {"q_lora_rank": 512, "kv_lora_rank": 512, "qk_head_dim": 128, "qk_pos_emb_head_dim": 64,
                "v_head_dim": 128}
"""megatron/core/transformer/transformer_config.py MLATransformerConfig's defaults (q_lora_rank None: no q
compression)."""

_MISSING = object()


def looks_like_mcore(fields: Mapping[str, Any]) -> bool:
    """A `model` section of TransformerConfig fields (Megatron-Bridge's printed provider, or a YAML of those names)."""
    return all(k in fields for k in ("num_layers", "hidden_size", "num_attention_heads"))


class _Fields:
    def __init__(self, raw: Mapping[str, Any], where: str) -> None:
        self.raw, self.where = raw, where

    def integer(self, key: str, default: Any = _MISSING, minimum: int = 1) -> Any:
        value = self.raw.get(key)
        if value is None:
            if default is _MISSING:
                raise BadInputError(f"{self.where}: model.{key} is missing; a Megatron-Core model config needs it")
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_DIM:
            raise BadInputError(f"{self.where}: model.{key} must be an integer >= {minimum}, got {str(value)[:40]}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.raw.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
            raise BadInputError(f"{self.where}: model.{key} must be a positive number, got {str(value)[:40]}")
        return float(value)

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.raw.get(key, default)
        return bool(value) if value is not None else default


def _activation(f: _Fields, gated: bool) -> str:
    """ModelSpec.activation from activation_func (a `_target_` mapping, or Megatron-Bridge's serialised name)."""
    raw = f.raw.get("activation_func")
    target = raw.get("_target_", "") if isinstance(raw, Mapping) else getattr(raw, "__name__", str(raw or ""))
    name = target.rsplit(".", 1)[-1]
    act = ACTIVATIONS.get(name, "silu" if gated else "gelu")
    return "" if act == ("silu" if gated else "gelu") else act


def _moe_layers(f: _Fields, n_layers: int) -> dict[str, int]:
    """moe_layer_freq: an integer N (layer i is MoE when i % N == 0) or a 0/1 list per layer; a list whose MoE layers
    are every N-th after a leading dense run (DeepSeek-V3: [0]*3 + [1]*58)."""
    freq = f.raw.get("moe_layer_freq", 1)
    if isinstance(freq, int) and not isinstance(freq, bool):
        if not 1 <= freq <= n_layers:
            raise BadInputError(f"{f.where}: model.moe_layer_freq must be 1..{n_layers}, got {freq}")
        return {"moe_every": freq}
    if not isinstance(freq, list) or len(freq) != n_layers or not all(x in (0, 1) for x in freq):
        raise BadInputError(f"{f.where}: model.moe_layer_freq must be an integer or one 0/1 per layer, got "
                            f"{str(freq)[:60]}")
    moe = [i for i, x in enumerate(freq) if x]
    if not moe:
        return {"first_dense_layers": n_layers}
    first = moe[0]
    every = moe[1] - first if len(moe) > 1 else 1
    if moe != list(range(first, n_layers, every)):
        raise UnsupportedModelError(f"{f.where}: MoE layers {moe[:12]}... are not every n-th layer after a dense run")
    return {"first_dense_layers": first, "moe_every": every}


def _window(f: _Fields, n_layers: int) -> dict[str, Any]:
    """window_size (left, right) -> a window of left + 1 keys; window_attn_skip_freq N -> every N-th layer full."""
    raw = f.raw.get("window_size")
    if raw is None:
        return {}
    left = raw[0] if isinstance(raw, list | tuple) and raw else str(raw).strip("()[] ").split(",")[0]
    try:
        window = int(left) + 1
    except (TypeError, ValueError):
        raise BadInputError(f"{f.where}: model.window_size must be (left, right), got {str(raw)[:40]}") from None
    skip = f.raw.get("window_attn_skip_freq")
    if skip is not None and (isinstance(skip, bool) or not isinstance(skip, int)):
        raise UnsupportedModelError(f"{f.where}: model.window_attn_skip_freq as a per-layer list is not read; give "
                                    "the model as a preset, config.json or model YAML")
    return {"sliding_window": window, "full_attention_every": int(skip or 0)}


def spec_from_mcore(raw: Mapping[str, Any], *, name: str, where: str) -> ModelSpec:
    """The ModelSpec of a Megatron-Core GPT (or hybrid Mamba) model config."""
    f = _Fields(raw, where)
    n_layers = f.integer("num_layers")
    hidden, heads = f.integer("hidden_size"), f.integer("num_attention_heads")
    gated = f.flag("gated_linear_unit")
    bias = f.flag("add_bias_linear", True)
    norm = str(raw.get("normalization", "LayerNorm"))
    if norm not in ("LayerNorm", "RMSNorm"):
        raise UnsupportedModelError(f"{where}: model.normalization {norm!r}; clusterplan models LayerNorm and RMSNorm")
    position = POSITIONS.get(str(raw.get("position_embedding_type", "learned_absolute")))
    if position is None:
        raise UnsupportedModelError(f"{where}: model.position_embedding_type {raw.get('position_embedding_type')!r} "
                                    f"is not one of {', '.join(POSITIONS)}")
    kv_channels = f.integer("kv_channels", default=None)
    fields: dict[str, Any] = dict(
        n_layers=n_layers, hidden=hidden, n_heads=heads, n_kv_heads=f.integer("num_query_groups", default=heads),
        head_dim=kv_channels if kv_channels and kv_channels * heads != hidden else None,
        ffn_hidden=f.integer("ffn_hidden_size", default=4 * hidden), gated_ffn=gated,
        vocab=f.integer("vocab_size"), tied_embeddings=f.flag("share_embeddings_and_output_weights", True),
        norm="rmsnorm" if norm == "RMSNorm" else "layernorm",
        norm_zero_centered=f.flag("layernorm_zero_centered_gamma"), position=position,
        max_positions=f.integer("seq_length", default=4096),
        attn_bias=bias or f.flag("add_qkv_bias"), linear_bias=bias, qk_norm=f.flag("qk_layernorm"),
        activation=_activation(f, gated), attn_sinks=str(raw.get("softmax_type", "vanilla")) == "learnable",
        **_window(f, n_layers))
    clamp = raw.get("activation_func_clamp_value")
    if clamp:
        fields["activation_clamp"] = f.number("activation_func_clamp_value", 0.0)
    if position == "rope":
        fields["rope_theta"] = f.number("rotary_base", 10000.0)
        fields["rotary_fraction"] = f.number("rotary_percent", 1.0)
        if raw.get("old_context_len") is not None and raw.get("scale_factor") is not None:  # Llama 3.1's scaling
            fields.update(rope_scaling="llama3", rope_scaling_factor=f.number("scale_factor", 8.0))
    experts = f.integer("num_moe_experts", default=0, minimum=0)
    if experts:
        fields.update(n_experts=experts, top_k=f.integer("moe_router_topk", default=2),
                      expert_ffn_hidden=f.integer("moe_ffn_hidden_size", default=fields["ffn_hidden"]),
                      shared_expert_ffn_hidden=f.integer("moe_shared_expert_intermediate_size", default=0, minimum=0),
                      router_score=str(raw.get("moe_router_score_function", "softmax")),
                      router_expert_bias=f.flag("moe_router_enable_expert_bias"),
                      router_topk_scaling=f.number("moe_router_topk_scaling_factor", 1.0),
                      router_renormalize=not f.flag("moe_router_pre_softmax"),
                      expert_groups=f.integer("moe_router_num_groups", default=1),
                      expert_groups_per_token=f.integer("moe_router_group_topk", default=0, minimum=0),
                      moe_latent=f.integer("moe_latent_size", default=0, minimum=0), **_moe_layers(f, n_layers))
    if f.flag("multi_latent_attention"):  # MLATransformerConfig, its defaults where a field is left out
        q_lora = raw.get("q_lora_rank", MLA_DEFAULTS["q_lora_rank"])
        fields.update(q_lora_rank=0 if q_lora is None else f.integer("q_lora_rank", default=q_lora, minimum=0),
                      kv_lora_rank=f.integer("kv_lora_rank", default=MLA_DEFAULTS["kv_lora_rank"]),
                      qk_nope_head_dim=f.integer("qk_head_dim", default=MLA_DEFAULTS["qk_head_dim"]),
                      qk_rope_head_dim=f.integer("qk_pos_emb_head_dim", default=MLA_DEFAULTS["qk_pos_emb_head_dim"]),
                      v_head_dim=f.integer("v_head_dim", default=MLA_DEFAULTS["v_head_dim"]), head_dim=None)
    mtp = f.integer("mtp_num_layers", default=0, minimum=0)
    if mtp:
        fields["mtp_layers"] = mtp
    if f.flag("is_hybrid_model") or raw.get("hybrid_override_pattern"):
        pattern = str(raw.get("hybrid_override_pattern") or "")
        if not pattern or set(pattern) - set("M*-E"):
            raise BadInputError(f"{where}: model.hybrid_override_pattern must be a string of M, *, -, E per layer, "
                                f"got {pattern[:40]!r}")
        fields.update(n_layers=len(pattern), hybrid_pattern=pattern,
                      mamba_heads=f.integer("mamba_num_heads", default=0, minimum=0),
                      mamba_head_dim=f.integer("mamba_head_dim", default=64),
                      mamba_groups=f.integer("mamba_num_groups", default=8),
                      mamba_state_dim=f.integer("mamba_state_dim", default=128))
    target = str(raw.get("_target_", "")).rsplit(".", 1)[-1]
    source = f"Megatron-Core model config ({where}{', ' + target if target else ''})"
    try:
        return ModelSpec(name=name, family="megatron-core", source=source, **fields)
    except TypeError as exc:
        raise BadInputError(f"{where}: {exc}") from exc
