"""Hugging Face `config.json` to ModelSpec, for the supported `model_type`s.

Field names follow each architecture's transformers configuration class; multimodal configs that nest
the language model under `text_config` are flattened first.
"""

from __future__ import annotations

from typing import Any

from clusterplan.errors import BadInputError, UnsupportedModelError
from clusterplan.models.spec import ModelSpec

SUPPORTED = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "deepseek_v3", "gpt2",
             "gpt_neox", "opt")


def _req(cfg: dict[str, Any], *keys: str, where: str) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    raise BadInputError(f"{where}: config.json lacks {' / '.join(keys)}; is this a decoder LM config?")


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
    g = lambda *k: _req(cfg, *k, where=where)  # noqa: E731
    common: dict[str, Any] = dict(name=name, family=mt, source=f"Hugging Face config.json ({where})")
    if mt == "gpt2":
        h = g("n_embd", "hidden_size")
        return ModelSpec(**common, n_layers=g("n_layer", "num_hidden_layers"), hidden=h,
                         n_heads=g("n_head", "num_attention_heads"), ffn_hidden=cfg.get("n_inner") or 4 * h,
                         gated_ffn=False, vocab=g("vocab_size"), tied_embeddings=True, norm="layernorm",
                         position="learned", max_positions=g("n_positions", "max_position_embeddings"),
                         attn_bias=True, linear_bias=True)
    if mt == "opt":
        h = g("hidden_size")
        # OPT's learned positions carry an offset of 2 rows (OPTLearnedPositionalEmbedding).
        proj = cfg.get("word_embed_proj_dim", h)
        if proj != h:
            raise UnsupportedModelError(f"{where}: OPT with word_embed_proj_dim({proj}) != hidden({h}) is not supported")
        return ModelSpec(**common, n_layers=g("num_hidden_layers"), hidden=h, n_heads=g("num_attention_heads"),
                         ffn_hidden=g("ffn_dim"), gated_ffn=False, vocab=g("vocab_size"),
                         tied_embeddings=bool(cfg.get("tie_word_embeddings", True)), norm="layernorm",
                         position="learned", max_positions=g("max_position_embeddings") + 2,
                         attn_bias=True, linear_bias=True)
    if mt == "gpt_neox":
        return ModelSpec(**common, n_layers=g("num_hidden_layers"), hidden=g("hidden_size"),
                         n_heads=g("num_attention_heads"), ffn_hidden=g("intermediate_size"), gated_ffn=False,
                         vocab=g("vocab_size"), tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                         norm="layernorm", position="rope", max_positions=g("max_position_embeddings"),
                         attn_bias=True, linear_bias=True)
    base: dict[str, Any] = dict(
        n_layers=g("num_hidden_layers"), hidden=g("hidden_size"), n_heads=g("num_attention_heads"),
        n_kv_heads=cfg.get("num_key_value_heads") or g("num_attention_heads"), head_dim=cfg.get("head_dim"),
        ffn_hidden=g("intermediate_size"), vocab=g("vocab_size"),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_positions=cfg.get("max_position_embeddings") or 4096,
    )
    if mt in ("qwen2", "qwen2_moe"):
        base["attn_bias"] = True
    if mt in ("qwen3", "qwen3_moe"):
        base["qk_norm"] = True
    if mt == "mixtral":
        base.update(n_experts=g("num_local_experts"), top_k=g("num_experts_per_tok"),
                    expert_ffn_hidden=g("intermediate_size"))
    elif mt in ("qwen2_moe", "qwen3_moe"):
        sparse_step = cfg.get("decoder_sparse_step", 1) or 1
        if cfg.get("mlp_only_layers"):
            raise UnsupportedModelError(f"{where}: mlp_only_layers is not supported yet; use clusterplan's YAML format")
        base.update(n_experts=g("num_experts"), top_k=g("num_experts_per_tok"),
                    expert_ffn_hidden=g("moe_intermediate_size"), moe_every=sparse_step)
        if mt == "qwen2_moe":
            base.update(shared_expert_ffn_hidden=cfg.get("shared_expert_intermediate_size") or 0,
                        shared_expert_gate=bool(cfg.get("shared_expert_intermediate_size")))
    elif mt == "deepseek_v3":
        base.update(n_experts=g("n_routed_experts"), top_k=g("num_experts_per_tok"),
                    n_shared_experts=cfg.get("n_shared_experts") or 0, expert_ffn_hidden=g("moe_intermediate_size"),
                    first_dense_layers=cfg.get("first_k_dense_replace") or 0, moe_every=cfg.get("moe_layer_freq") or 1,
                    q_lora_rank=cfg.get("q_lora_rank") or 0, kv_lora_rank=g("kv_lora_rank"),
                    qk_nope_head_dim=g("qk_nope_head_dim"), qk_rope_head_dim=g("qk_rope_head_dim"),
                    v_head_dim=g("v_head_dim"), head_dim=None)
    try:
        return ModelSpec(**common, **base)
    except TypeError as exc:
        raise BadInputError(f"{where}: {exc}") from exc
