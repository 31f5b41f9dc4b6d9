"""A model from Megatron-Core's own description: TransformerConfig (and MLATransformerConfig) fields with the GPT
provider's vocab_size / seq_length / position settings, as Megatron-Bridge prints its ConfigContainer
(models/architecture/mcore.py). Worked examples: the real printed container of a Llama 3.2 1B run reads as the
preset, parameter for parameter; and megatron-core's own TransformerConfig, built here for presets of each kind
(dense GQA, MoE, MLA + MTP + group-limited routing, GPT-OSS's windows, sinks and clamp), reads back to each preset's
exact count. (OLMoE is left out: its q/k norms span all heads, which Megatron-Core's per-head qk_layernorm cannot
say: 3,840 parameters per layer apart.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from clusterplan.errors import BadInputError, UnsupportedModelError
from clusterplan.fileio import load_mapping
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.mcore import spec_from_mcore
from clusterplan.models.architecture.spec import ModelSpec

FIXTURE = Path(__file__).parent / "fixtures" / "bridge" / "llama32_1b_run_config.yaml"


def test_the_printed_container_is_the_preset():
    spec = load_model(str(FIXTURE))  # --model takes the container itself
    preset = load_model("llama3.2-1b")
    assert spec.total_params() == preset.total_params() == 1_235_814_400
    assert (spec.n_layers, spec.hidden, spec.kv_heads, spec.ffn_hidden, spec.tied_embeddings) == (16, 2048, 8, 8192,
                                                                                                   True)
    assert (spec.rope_theta, spec.rope_scaling, spec.rope_scaling_factor) == (500000.0, "llama3", 32.0)
    assert spec.active_params() == preset.active_params()


def _transformer_config(m: ModelSpec) -> dict:
    """megatron-core's own config for a preset, as Megatron-Bridge's provider holds it (TransformerConfig /
    MLATransformerConfig fields, plus the provider's)."""
    core = pytest.importorskip("megatron.core.transformer")
    import torch.nn.functional as F  # noqa: N812 (megatron-core's activations are torch functions)

    kw: dict = dict(num_layers=m.n_layers, hidden_size=m.hidden, num_attention_heads=m.n_heads,
                    num_query_groups=m.kv_heads, ffn_hidden_size=m.ffn_hidden, gated_linear_unit=m.gated_ffn,
                    add_bias_linear=m.linear_bias, add_qkv_bias=m.attn_bias and not m.linear_bias,
                    normalization="RMSNorm" if m.norm == "rmsnorm" else "LayerNorm", qk_layernorm=m.qk_norm,
                    activation_func=F.silu if m.activation_fn == "silu" else F.gelu)
    if m.head_dim is not None:
        kw["kv_channels"] = m.head_dim
    if m.is_moe:
        freq = [1 if m.is_moe_layer(i) else 0 for i in range(m.n_layers)]
        kw.update(num_moe_experts=m.n_experts, moe_router_topk=m.top_k, moe_ffn_hidden_size=m.expert_ffn_hidden,
                  moe_layer_freq=freq if m.first_dense_layers else m.moe_every,
                  moe_router_score_function=m.router_score, moe_router_enable_expert_bias=m.router_expert_bias,
                  moe_router_pre_softmax=not m.router_renormalize, moe_grouped_gemm=True)
        if m.shared_ffn:
            kw["moe_shared_expert_intermediate_size"] = m.shared_ffn
        if m.expert_groups > 1:
            kw.update(moe_router_num_groups=m.expert_groups, moe_router_group_topk=m.expert_groups_per_token)
        if m.router_topk_scaling != 1.0:
            kw["moe_router_topk_scaling_factor"] = m.router_topk_scaling
    if m.mtp_layers:
        kw["mtp_num_layers"] = m.mtp_layers
    if m.sliding_window is not None:
        kw.update(window_size=(m.sliding_window - 1, 0), window_attn_skip_freq=m.full_attention_every or None)
    if m.attn_sinks:
        kw["softmax_type"] = "learnable"
    if m.is_mla:
        kw.update(multi_latent_attention=True, q_lora_rank=m.q_lora_rank or None, kv_lora_rank=m.kv_lora_rank,
                  qk_head_dim=m.qk_nope_head_dim, qk_pos_emb_head_dim=m.qk_rope_head_dim, v_head_dim=m.v_head_dim)
        config = core.MLATransformerConfig(**kw)
    else:
        config = core.TransformerConfig(**kw)
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return fields | {"vocab_size": m.vocab, "seq_length": m.max_positions, "position_embedding_type": "rope",
                     "rotary_base": m.rope_theta, "share_embeddings_and_output_weights": m.tied_embeddings}


@pytest.mark.parametrize("name", ["llama3.1-70b", "qwen3-32b", "mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3",
                                  "gpt-oss-120b", "qwen3-235b-a22b"])
def test_megatron_cores_own_config_reads_back_to_the_preset(name):
    preset = load_model(name)
    spec = spec_from_mcore(_transformer_config(preset), name=name, where="TransformerConfig")
    assert spec.total_params() == preset.total_params(), name
    assert spec.active_params() == preset.active_params(), name
    assert (spec.sliding_window, spec.full_attention_every, spec.attn_sinks) == (
        preset.sliding_window, preset.full_attention_every, preset.attn_sinks)


def test_what_is_refused_says_why():
    base = load_mapping(FIXTURE)["model"]
    with pytest.raises(BadInputError, match="model.vocab_size is missing"):
        spec_from_mcore({k: v for k, v in base.items() if k != "vocab_size"}, name="x", where="c.yaml")
    with pytest.raises(UnsupportedModelError, match="normalization 'LayerNorm1P'"):
        spec_from_mcore({**base, "normalization": "LayerNorm1P"}, name="x", where="c.yaml")
