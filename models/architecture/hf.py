"""Hugging Face `config.json` to ModelSpec, for the supported `model_type`s.

Field names and defaults follow each architecture's transformers configuration class and the modules its
modelling code builds (so the parameter counts match a loaded checkpoint); multimodal configs that nest the
language model under `text_config` are flattened first.
"""

from __future__ import annotations

from typing import Any

from clusterplan.errors import BadInputError, UnsupportedModelError
from clusterplan.models.architecture.spec import MAX_DIM, MAX_LAYERS, ModelSpec

SUPPORTED = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "deepseek_v3", "gpt2",
             "gpt_neox", "opt", "gpt_oss")
_MISSING = object()


class _Config:
    """Typed, one-line-error access to the fields of one config.json."""

    def __init__(self, raw: dict[str, Any], where: str) -> None:
        self.raw = raw
        self.where = where

    def integer(self, *keys: str, default: Any = _MISSING, minimum: int = 1, maximum: int = MAX_DIM) -> int:
        """The first of `keys` that is set, as an integer in [minimum, maximum]; `default` when none is set.

        The maximum is checked here, before any loop over layers or experts (ModelSpec checks it again)."""
        for key in keys:
            value = self.raw.get(key)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
                raise BadInputError(f"{self.where}: {key} must be an integer >= {minimum} and <= {maximum:,}, got {value!r}; "
                                    "fix config.json")
            return value
        if default is _MISSING:
            raise BadInputError(f"{self.where}: config.json lacks {' / '.join(keys)}; is this a decoder LM config?")
        return default

    def flag(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise BadInputError(f"{self.where}: {key} must be true or false, got {value!r}; fix config.json")
        return value


def spec_from_hf(cfg: dict[str, Any], *, name: str, where: str = "config.json") -> ModelSpec:
    """Normalise one config.json into a ModelSpec; unknown model types are refused with the list."""
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg, **cfg["text_config"]}
    mt = cfg.get("model_type")
    if mt not in SUPPORTED:
        raise UnsupportedModelError(
            f"{where}: model_type {mt!r} is not supported; supported: {', '.join(SUPPORTED)} "
            "(or describe the model in clusterplan's YAML format, see `clusterplan models show llama3.1-8b --format yaml`)"
        )
    c = _Config(cfg, where)
    builder = {"gpt2": _gpt2, "opt": _opt, "gpt_neox": _gpt_neox, "gpt_oss": _gpt_oss}.get(mt, _llama_like)
    fields = builder(c)
    if mt in ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3"):
        fields.update(_moe_fields(c, mt, fields["n_layers"]))
    if mt == "deepseek_v3":
        fields.update(_mla_fields(c))
    try:
        return ModelSpec(name=name, family=mt, source=f"Hugging Face config.json ({where})", **fields)
    except TypeError as exc:
        raise BadInputError(f"{where}: {exc}") from exc


def _gpt2(c: _Config) -> dict[str, Any]:
    # GPT2Model: c_attn/c_proj/c_fc all with biases, learned positions (n_positions), head tied to wte.
    h = c.integer("n_embd", "hidden_size")
    return dict(n_layers=c.integer("n_layer", "num_hidden_layers", maximum=MAX_LAYERS), hidden=h, n_heads=c.integer("n_head", "num_attention_heads"),
                ffn_hidden=c.integer("n_inner", default=4 * h), gated_ffn=False, vocab=c.integer("vocab_size"),
                tied_embeddings=True, norm="layernorm", position="learned",
                max_positions=c.integer("n_positions", "max_position_embeddings"), attn_bias=True, linear_bias=True)


def _opt(c: _Config) -> dict[str, Any]:
    h = c.integer("hidden_size")
    proj = c.integer("word_embed_proj_dim", default=h)
    if proj != h:
        raise UnsupportedModelError(
            f"{c.where}: OPT with word_embed_proj_dim({proj}) != hidden_size({h}) is not supported (its project_in/"
            "project_out layers are not modelled); use an OPT size whose word_embed_proj_dim equals hidden_size")
    bias = c.flag("enable_bias", True)
    # OPTLearnedPositionalEmbedding keeps max_position_embeddings + 2 rows (an offset of 2).
    return dict(n_layers=c.integer("num_hidden_layers", maximum=MAX_LAYERS), hidden=h, n_heads=c.integer("num_attention_heads"),
                ffn_hidden=c.integer("ffn_dim"), gated_ffn=False, vocab=c.integer("vocab_size"),
                tied_embeddings=c.flag("tie_word_embeddings", True), norm="layernorm", position="learned",
                max_positions=c.integer("max_position_embeddings") + 2, attn_bias=bias, linear_bias=bias)


def _gpt_neox(c: _Config) -> dict[str, Any]:
    # GPTNeoXLayer: fused qkv and dense with biases (attention_bias, default true), 4h MLP with biases, untied embed_out.
    bias = c.flag("attention_bias", True)
    return dict(n_layers=c.integer("num_hidden_layers", maximum=MAX_LAYERS), hidden=c.integer("hidden_size"), n_heads=c.integer("num_attention_heads"),
                ffn_hidden=c.integer("intermediate_size"), gated_ffn=False, vocab=c.integer("vocab_size"),
                tied_embeddings=c.flag("tie_word_embeddings", False), norm="layernorm", position="rope",
                max_positions=c.integer("max_position_embeddings", default=2048), attn_bias=bias, linear_bias=bias)


def _gpt_oss(c: _Config) -> dict[str, Any]:
    """GptOssDecoderLayer: biased q/k/v/o (attention_bias), a sink logit per head, an MoE MLP on every layer with a
    biased router and biased expert matrices, layers alternating sliding_attention / full_attention (layer_types)."""
    n_heads = c.integer("num_attention_heads")
    n_layers = c.integer("num_hidden_layers", maximum=MAX_LAYERS)  # bounded before the per-layer list below
    window = c.integer("sliding_window", default=None)
    types = c.raw.get("layer_types") or ["sliding_attention", "full_attention"] * (n_layers // 2)
    if not isinstance(types, list) or len(types) > MAX_LAYERS or not all(isinstance(t, str) for t in types):
        raise BadInputError(f"{c.where}: layer_types must be a list of layer kinds (sliding_attention / "
                            "full_attention), one per layer")
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    if window is None or not full:
        every = 0
    else:
        every = full[0] + 1
        if full != list(range(every - 1, n_layers, every)) or len(types) != n_layers:
            raise UnsupportedModelError(f"{c.where}: layer_types is not a repeating (sliding..., full) pattern; "
                                        "describe the model in the YAML format")
    experts = c.integer("num_local_experts")
    return dict(n_layers=n_layers, hidden=c.integer("hidden_size"), n_heads=n_heads,
                n_kv_heads=c.integer("num_key_value_heads", default=n_heads), head_dim=c.integer("head_dim", default=None),
                ffn_hidden=c.integer("intermediate_size"), vocab=c.integer("vocab_size"),
                tied_embeddings=c.flag("tie_word_embeddings", False),
                max_positions=c.integer("max_position_embeddings", default=4096),
                attn_bias=c.flag("attention_bias", True), linear_bias=True, attn_sinks=True, sliding_window=window,
                full_attention_every=every, n_experts=experts,
                top_k=c.integer("num_experts_per_tok", "experts_per_token"),
                expert_ffn_hidden=c.integer("intermediate_size"))


def _llama_like(c: _Config) -> dict[str, Any]:
    """Llama-style decoders: RMSNorm, SwiGLU, RoPE, optional GQA; biases and qk-norm per family."""
    mt = c.raw["model_type"]
    n_heads = c.integer("num_attention_heads")
    fields: dict[str, Any] = dict(
        n_layers=c.integer("num_hidden_layers", maximum=MAX_LAYERS), hidden=c.integer("hidden_size"), n_heads=n_heads,
        n_kv_heads=c.integer("num_key_value_heads", default=n_heads), head_dim=c.integer("head_dim", default=None),
        ffn_hidden=c.integer("intermediate_size"), vocab=c.integer("vocab_size"),
        tied_embeddings=c.flag("tie_word_embeddings", False),
        max_positions=c.integer("max_position_embeddings", default=4096),
    )
    # Qwen2 / Qwen2-MoE always put biases on q, k and v (and nowhere else).
    attention_bias = mt in ("qwen2", "qwen2_moe") or c.flag("attention_bias", False)
    mlp_bias = c.flag("mlp_bias", False)
    # Llama/Qwen3 `attention_bias` also biases o_proj, which ModelSpec ties to the MLP biases (linear_bias): with
    # attention_bias alone the count misses n_layers * hidden values (< 0.01 % of any real model).
    fields["attn_bias"] = attention_bias
    fields["linear_bias"] = mlp_bias and attention_bias
    if mlp_bias and not attention_bias:
        raise UnsupportedModelError(f"{c.where}: mlp_bias without attention_bias is not supported; use the YAML format")
    fields["qk_norm"] = mt in ("qwen3", "qwen3_moe")
    return fields


def _moe_layout(moe_layers: list[int], n_layers: int, where: str) -> dict[str, int]:
    """(first_dense_layers, moe_every) that reproduce the config's set of MoE layers exactly."""
    if not moe_layers:
        raise BadInputError(f"{where}: the config names experts but no layer is MoE; check decoder_sparse_step / "
                            "mlp_only_layers / first_k_dense_replace")
    first = moe_layers[0]
    every = moe_layers[1] - first if len(moe_layers) > 1 else max(1, n_layers - first)
    if moe_layers != list(range(first, n_layers, every)):
        raise UnsupportedModelError(f"{where}: MoE layers {moe_layers} are not every n-th layer from the first MoE "
                                    "layer on; clusterplan cannot describe this layer pattern yet")
    return dict(first_dense_layers=first, moe_every=every)


def _moe_fields(c: _Config, mt: str, n_layers: int) -> dict[str, Any]:
    if mt == "mixtral":
        return dict(n_experts=c.integer("num_local_experts"), top_k=c.integer("num_experts_per_tok"),
                    expert_ffn_hidden=c.integer("intermediate_size"))
    if mt in ("qwen2_moe", "qwen3_moe"):
        # Qwen2MoeDecoderLayer: MoE when layer not in mlp_only_layers and (layer + 1) % decoder_sparse_step == 0.
        step = c.integer("decoder_sparse_step", default=1)
        dense = c.raw.get("mlp_only_layers") or []
        if not isinstance(dense, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in dense):
            raise BadInputError(f"{c.where}: mlp_only_layers must be a list of layer indices, got {str(dense)[:80]}")
        dense_set = set(dense)
        moe = [i for i in range(n_layers) if i not in dense_set and (i + 1) % step == 0]
        fields = dict(n_experts=c.integer("num_experts"), top_k=c.integer("num_experts_per_tok"),
                      expert_ffn_hidden=c.integer("moe_intermediate_size"), **_moe_layout(moe, n_layers, c.where))
        shared = c.integer("shared_expert_intermediate_size", default=0, minimum=0) if mt == "qwen2_moe" else 0
        return {**fields, "shared_expert_ffn_hidden": shared, "shared_expert_gate": shared > 0}
    # DeepseekV3DecoderLayer: MoE when layer >= first_k_dense_replace and layer % moe_layer_freq == 0.
    first_k = c.integer("first_k_dense_replace", default=0, minimum=0)
    freq = c.integer("moe_layer_freq", default=1)
    moe = [i for i in range(n_layers) if i >= first_k and i % freq == 0]
    return dict(n_experts=c.integer("n_routed_experts"), top_k=c.integer("num_experts_per_tok"),
                n_shared_experts=c.integer("n_shared_experts", default=0, minimum=0),
                expert_ffn_hidden=c.integer("moe_intermediate_size"),
                # Group-limited routing (DeepseekV3TopkRouter: n_group groups, topk_group of them per token).
                expert_groups=c.integer("n_group", default=1, minimum=1),
                expert_groups_per_token=c.integer("topk_group", default=0, minimum=0),
                mtp_layers=c.integer("num_nextn_predict_layers", default=0, minimum=0),
                **_moe_layout(moe, n_layers, c.where))


def _mla_fields(c: _Config) -> dict[str, Any]:
    # Multi-head latent attention: q through a rank-q_lora_rank bottleneck (or direct when null), kv through kv_lora_rank.
    return dict(q_lora_rank=c.integer("q_lora_rank", default=0, minimum=0), kv_lora_rank=c.integer("kv_lora_rank"),
                qk_nope_head_dim=c.integer("qk_nope_head_dim"), qk_rope_head_dim=c.integer("qk_rope_head_dim"),
                v_head_dim=c.integer("v_head_dim"), head_dim=None)
