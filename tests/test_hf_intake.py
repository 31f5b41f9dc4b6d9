"""Model intake for the model types users bring (issue 14 item 5): Llama 4 (language model of the multimodal
release), Gemma 2, Gemma 3, Phi-3 / Phi-4, OLMo 2, DeepSeek-V2, DeepSeek-V3's MTP module, and windowed attention
(Mistral / Phi-3 sliding window, Gemma's sliding:global pattern, Qwen2's use_sliding_window, Llama 4's chunks);
since stop 37 also OLMoE, Granite 3 (dense and MoE), StarCoder2, Nemotron, Gemma (1) and GLM-4.5.

The fixtures under tests/fixtures/hf/ are the published config.json files (each names its source in `_source`).
Every parameter count equals transformers' own: the model built from the same config on the meta device (no
memory), all parameters summed; for the multimodal Llama 4 / Gemma 3 the text-only CausalLM class of the
text_config. Hand derivations pin the terms the new model types add (four norms, full-width q/k norms, shared
expert, MTP module) and the window arithmetic of the attention FLOPs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clusterplan.errors import BadInputError, UnsupportedModelError
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.hf import spec_from_hf
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import causal_share, model_flops_per_step
from clusterplan.models.training.layout import Layout

HF = Path(__file__).parent / "fixtures" / "hf"
NEW_TYPES = ("llama4-scout-17b-16e", "gemma-2-2b-it", "gemma-3-12b-it", "phi-3-mini-4k-instruct", "phi-4",
             "olmo-2-1124-7b", "deepseek-v2-lite", "mistral-7b")
TRAINED_ON_H100_TYPES = ("olmoe-1b-7b-0924", "granite-3.0-3b-a800m-base", "granite-3.1-8b-instruct", "starcoder2-15b",
                         "minitron-8b-base", "gemma-7b", "intellect-3-base")
"""OLMoE, Granite 3 dense and MoE, StarCoder2, Nemotron (Minitron), Gemma (1) and GLM-4.5 (Air's architecture):
model types of published H100-era training runs (stop 37)."""
EARLIER_TYPES = ("gpt-oss-120b", "deepseek-v3", "llama3.1-8b", "qwen2.5-7b", "qwen3-32b", "qwen3-30b-a3b",
                 "qwen1.5-moe-a2.7b", "mixtral-8x7b")


def _raw(name: str) -> dict:
    raw = json.loads((HF / name / "config.json").read_text())
    raw.pop("_source", None)
    return raw


def _transformers_count(raw: dict) -> int:
    """Parameters of transformers' own model for this config, built on the meta device."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    text = {"llama4": ("Llama4TextConfig", "Llama4ForCausalLM"), "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM")}
    if raw["model_type"] in text:  # the language model of a multimodal release: its text-only CausalLM
        config_cls, build = (getattr(transformers, n) for n in text[raw["model_type"]])
        config = config_cls(**raw["text_config"])
    else:
        config, build = transformers.AutoConfig.for_model(**raw), transformers.AutoModelForCausalLM.from_config
    with torch.device("meta"):
        model = build(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", NEW_TYPES + TRAINED_ON_H100_TYPES + EARLIER_TYPES)
def test_parameter_count_equals_transformers_on_meta_device(name):
    spec = load_model(str(HF / name))
    assert spec.total_params() == _transformers_count(_raw(name))


def test_gemma2_four_norms_and_tied_embedding_by_hand():
    # google/gemma-2-2b-it: h 2304, 8 heads x 256, 4 KV heads, ffn 9216, 26 layers, vocab 256000, tied by default.
    # attention 2304 x (2048 + 1024 + 1024) + 2048 x 2304 = 14,155,776; gated MLP 3 x 2304 x 9216 = 63,700,992;
    # four RMSNorms 4 x 2304 = 9,216 -> 77,865,984 per layer; x 26 = 2,024,515,584; + table 589,824,000 + final
    # norm 2,304 = 2,614,341,888 (the hub's "2.61B").
    m = load_model(str(HF / "gemma-2-2b-it"))
    assert (m.norms_per_layer, m.tied_embeddings, m.dim_head) == (4, True, 256)
    assert m.layer_params(0) == 77_865_984
    assert m.total_params() == 2_614_341_888
    # Layers alternate sliding (4096) and full attention: 0, 2, 4, ... slide (Gemma2Config.layer_types).
    assert [m.is_sliding_layer(i) for i in range(4)] == [True, False, True, False]


def test_gemma3_pattern_qk_norms_and_text_only_note():
    m = load_model(str(HF / "gemma-3-12b-it"))
    # 5 local : 1 global (sliding_window_pattern 6): layers 5, 11, ..., 47 are global, the other 40 slide over 1024.
    assert [i for i in range(48) if not m.is_sliding_layer(i)] == list(range(5, 48, 6))
    assert (m.sliding_window, m.family, m.qk_norm, m.qk_norm_full_width) == (1024, "gemma3", True, False)
    # Per-head q/k norms add 2 x head_dim = 512 per layer: 3840 x (4096 + 2048 + 2048) + 4096 x 3840 + 512.
    assert m.attention_params() == 3840 * 8192 + 4096 * 3840 + 512
    assert "vision_config (tower and projector) not counted" in m.source


def test_gemma3_config_that_leaves_out_the_defaults():
    # The hub's gemma-3 text_config lists only the sizes; Gemma3TextConfig supplies head_dim 256, vocab 262208,
    # 131072 positions and tied embeddings. A text-only gemma3_text config reads the same.
    full = _raw("gemma-3-12b-it")
    keep = ("hidden_size", "intermediate_size", "model_type", "num_attention_heads", "num_hidden_layers",
            "num_key_value_heads", "sliding_window", "rope_scaling")
    minimal = {**full, "text_config": {k: v for k, v in full["text_config"].items() if k in keep}}
    assert spec_from_hf(minimal, name="g").total_params() == load_model(str(HF / "gemma-3-12b-it")).total_params()
    assert spec_from_hf(full["text_config"], name="g").total_params() == _transformers_count(full)


def test_olmo2_full_width_qk_norms_by_hand():
    # allenai/OLMo-2-1124-7B: q_norm = RMSNorm(32 x 128), k_norm = RMSNorm(32 x 128): 8,192 per layer, not 2 x 128.
    m = load_model(str(HF / "olmo-2-1124-7b"))
    assert m.attention_params() == 4 * 4096 * 4096 + 8192
    assert m.total_params() == 7_298_617_344


def test_phi3_fused_projections_count_as_separate():
    # Phi-3-mini: qkv_proj 3072 -> 3 x 3072 and gate_up_proj 3072 -> 2 x 8192 hold the same weights as separate
    # q/k/v and gate/up: 3,821,079,552 (the model card's 3.8B). Every layer slides over 2047 keys.
    m = load_model(str(HF / "phi-3-mini-4k-instruct"))
    assert m.total_params() == 3_821_079_552
    assert m.sliding_window == 2047 and all(m.is_sliding_layer(i) for i in range(m.n_layers))
    assert load_model(str(HF / "phi-4")).sliding_window is None  # phi-4: sliding_window null


def test_llama4_scout_shared_expert_by_hand():
    # Scout text model: 48 layers, all MoE (interleave_moe_layer_step 1); attention 5120 x (5120 + 1024 + 1024)
    # + 5120 x 5120 = 62,914,560; router 5120 x 16 = 81,920; 16 experts x 3 x 5120 x 8192 = 2,013,265,920; shared
    # expert 125,829,120; two norms 10,240 -> 2,202,101,760 per layer. x 48 + untied table and head 2 x 202048 x
    # 5120 + final norm = 107,769,861,120. Active: one routed + the shared expert: 314,664,960 per layer ->
    # 17,172,894,720 ("17B active").
    m = load_model(str(HF / "llama4-scout-17b-16e"))
    assert m.layer_params(0) == 2_202_101_760
    assert m.total_params() == 107_769_861_120
    assert m.active_params() == 17_172_894_720
    # RoPE layers attend in chunks of 8192; every 4th layer (NoPE) attends globally.
    assert (m.local_attention, m.sliding_window) == ("chunked", 8192)
    assert [i for i in range(48) if not m.is_sliding_layer(i)] == list(range(3, 48, 4))


def test_llama4_interleaved_moe_and_listed_no_rope_layers():
    # Maverick-style interleave_moe_layer_step 2: MoE layers 1, 3, 5, ... (Llama4TextConfig.moe_layers); the dense
    # ones use intermediate_size_mlp.
    raw = _raw("llama4-scout-17b-16e")
    text = {**raw["text_config"], "num_hidden_layers": 4, "interleave_moe_layer_step": 2,
            "no_rope_layers": [1, 1, 1, 0]}
    m = spec_from_hf({**raw, "text_config": text}, name="m")
    assert [m.is_moe_layer(i) for i in range(4)] == [False, True, False, True]
    assert m.ffn_hidden == 16384 and m.expert_ffn_hidden == 8192
    assert m.total_params() == _transformers_count({**raw, "text_config": text})
    # Without a chunk size every layer attends globally.
    plain = spec_from_hf({**raw, "text_config": {**text, "attention_chunk_size": None}}, name="m")
    assert plain.sliding_window is None


def test_deepseek_v2_lite_mla_without_q_lora():
    # q_lora_rank null -> a plain q_proj 2048 x 16 x 192; first_k_dense_replace 1 -> 26 MoE layers with 2 shared
    # experts of 1408. DeepSeek-V2 paper App. B: 15.7B total, 2.4B activated (without the input table).
    m = load_model(str(HF / "deepseek-v2-lite"))
    assert (m.q_lora_rank, m.n_moe_layers, m.shared_ffn) == (0, 26, 2816)
    assert m.attention_params() == (2048 * 16 * 192 + 2048 * (512 + 64) + 512 + 512 * 16 * (128 + 128)
                                    + 16 * 128 * 2048)
    assert round(m.total_params() / 1e9, 1) == 15.7
    assert round(m.active_params_excluding_input_embedding() / 1e9, 1) == 2.5  # 2.45B, the paper rounds to 2.4


def test_deepseek_v3_mtp_module_counted_apart():
    # One MTP module (num_nextn_predict_layers 1): a MoE block like layers 3..60, M = 2h x h, three RMSNorms; the
    # embedding and head are shared, so total_params (transformers builds no MTP) stays 671,026,404,352.
    m = load_model(str(HF / "deepseek-v3"))
    assert m.mtp_layers == 1 and m.total_params() == 671_026_404_352
    moe_layer = m.layer_params(m.n_layers - 1)
    assert m.mtp_params() == moe_layer + 2 * 7168 * 7168 + 3 * 7168 == 11_610_067_968
    # The hub checkpoint stores the module with its own copies of the table and head: 671B + 14B = 685B ("the total
    # size of DeepSeek-V3 models on Hugging Face is 685B, 671B main model + 14B MTP module").
    stored = m.mtp_params() + 2 * m.vocab * m.hidden
    assert round(stored / 1e9) == 13 and round((m.total_params() + stored) / 1e9) == 684


def test_olmoe_experts_and_full_width_qk_norms_by_hand():
    # allenai/OLMoE-1B-7B-0924: attention 4 x 2048^2 = 16,777,216, full-width q/k norms 2 x 2048, router 64 x 2048,
    # 64 experts x 3 x 2048 x 1024 = 402,653,184, two norms 4,096 -> 419,569,664 per layer; x 16 + untied table and
    # head 2 x 50304 x 2048 + final norm = 6,919,161,856. Active (8 of 64 experts): 67,248,128 per layer ->
    # 1,282,017,280. AI2: 6.9B total, 1.3B active.
    m = load_model(str(HF / "olmoe-1b-7b-0924"))
    assert (m.qk_norm_full_width, m.n_experts, m.top_k, m.router_renormalize) == (True, 64, 8, False)
    assert m.layer_params(0) == 419_569_664
    assert m.total_params() == 6_919_161_856 and m.active_params() == 1_282_017_280


def test_granite_moe_tied_forty_experts_by_hand():
    # ibm-granite/granite-3.0-3b-a800m-base: attention 2 x 1536^2 + 2 x 1536 x 512 = 6,291,456, router 40 x 1536,
    # 40 experts x 3 x 1536 x 512 = 94,371,840, norms 3,072 -> 100,727,808 per layer; x 32 + one tied table
    # 49152 x 1536 + final norm = 3,298,788,864 ("3.3B"). Granite's embedding / attention / residual multipliers and
    # logits scaling carry no parameters. Active without the table: 807,372,288 ("800M active").
    m = load_model(str(HF / "granite-3.0-3b-a800m-base"))
    assert m.tied_embeddings and m.layer_params(0) == 100_727_808
    assert m.total_params() == 3_298_788_864
    assert m.active_params() - m.vocab * m.hidden == 807_372_288
    dense = load_model(str(HF / "granite-3.1-8b-instruct"))
    assert (dense.family, dense.total_params()) == ("granite", 8_170_848_256)  # README: 8.1B


def test_starcoder2_biases_layernorm_and_window_by_hand():
    # bigcode/starcoder2-15b: q/k/v/o 2 x 6144^2 + 2 x 6144 x 512 with biases 6144 + 512 + 512 + 6144; GELU MLP
    # 2 x 6144 x 24576 with biases 24576 + 6144; two LayerNorms with bias 4 x 6144 -> 383,847,424 per layer; x 40 +
    # untied table and head 2 x 49152 x 6144 + final LayerNorm 2 x 6144 = 15,957,889,024. Every layer slides over
    # 4096 keys (Starcoder2Attention passes config.sliding_window on every layer).
    m = load_model(str(HF / "starcoder2-15b"))
    assert (m.norm, m.gated_ffn, m.attn_bias, m.linear_bias) == ("layernorm", False, True, True)
    assert m.layer_params(0) == 383_847_424 and m.total_params() == 15_957_889_024
    assert m.sliding_window == 4096 and all(m.is_sliding_layer(i) for i in range(m.n_layers))


def test_nemotron_head_dim_apart_from_hidden_and_squared_relu_mlp():
    # nvidia/Minitron-8B-Base: 48 heads of 128 (q width 6144) on hidden 4096, 8 KV heads: attention
    # 4096 x (6144 + 1024 + 1024) + 6144 x 4096 = 58,720,256; squared-ReLU MLP (not gated) 2 x 4096 x 16384;
    # LayerNorm1P with bias 4 x 4096 -> 192,954,368 per layer; x 32 + untied 2 x 256000 x 4096 + final norm
    # = 8,271,699,968.
    m = load_model(str(HF / "minitron-8b-base"))
    assert (m.dim_head, m.q_dim, m.gated_ffn, m.norm) == (128, 6144, False, "layernorm")
    assert m.layer_params(0) == 192_954_368 and m.total_params() == 8_271_699_968


def test_gemma_7b_non_embedding_count_is_the_report():
    # google/gemma-7b: 16 heads of 256 on hidden 3072, GeGLU 3 x 3072 x 24576, two RMSNorms, tied table. The Gemma
    # report's non-embedding count for 7B is 7,751,248,896 (its embedding count uses a 256,128-row table; config.json
    # has 256,000 rows).
    m = load_model(str(HF / "gemma-7b"))
    assert (m.norms_per_layer, m.tied_embeddings, m.sliding_window, m.qk_norm) == (2, True, None, False)
    assert m.non_embedding_params() == 7_751_248_896


def test_glm45_air_biases_shared_expert_and_corrected_sigmoid_router():
    # GLM-4.5-Air's architecture (INTELLECT-3-Base config): q/k/v biased, o_proj never (Glm4MoeAttention), 96 heads
    # of 128 on hidden 4096, one dense layer then 45 MoE layers of 128 routed experts (top 8) of 1408 and one shared
    # expert of 1408; sigmoid scores with e_score_correction_bias (a buffer, not a parameter) for selection.
    m = load_model(str(HF / "intellect-3-base"))
    assert m.attention_params() == 4096 * (12288 + 1024 + 1024) + 12288 * 4096 + (12288 + 1024 + 1024)
    assert (m.first_dense_layers, m.n_moe_layers, m.shared_ffn) == (1, 45, 1408)
    assert (m.router_score, m.router_expert_bias, m.router_renormalize, m.mtp_layers) == ("sigmoid", True, True, 1)
    # 106B total, 12B active without the two 151552 x 4096 tables (transformers' glm4_moe docs); the MTP layer is
    # counted apart, as DeepSeek-V3's (transformers drops its weights on load).
    assert round(m.total_params() / 1e9) == 107  # 106.85B
    assert round((m.active_params() - 2 * m.vocab * m.hidden) / 1e9) == 12


def test_qwen2_use_sliding_window_from_max_window_layers():
    # Qwen2Config: with use_sliding_window the layers from max_window_layers on slide; without it none do.
    base = _raw("qwen2.5-7b")
    assert spec_from_hf(base, name="q").sliding_window is None
    on = spec_from_hf({**base, "use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 20}, name="q")
    assert [i for i in range(28) if on.is_sliding_layer(i)] == list(range(20, 28))
    assert on.full_attention_first_layers == 20


def test_irregular_window_pattern_is_refused():
    # Qwen2-MoE windows the even layers below max_window_layers: not a pattern ModelSpec describes.
    raw = {**_raw("qwen1.5-moe-a2.7b"), "use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 10}
    with pytest.raises(UnsupportedModelError, match="windowed layers"):
        spec_from_hf(raw, name="q")


def test_earlier_models_serialise_as_before():
    # The fields added here are left out of the JSON while they hold their defaults (byte-identical output for
    # every earlier model); the new models carry them and load back from their own dump.
    added = {"norms_per_layer", "qk_norm_full_width", "local_attention", "full_attention_first_layers"}
    assert not added & set(load_model("llama3.1-8b").to_dict())
    assert not added & set(load_model("gpt-oss-120b").to_dict())
    for name in ("gemma-3-12b-it", "llama4-scout-17b-16e", "olmo-2-1124-7b"):
        spec = load_model(str(HF / name))
        assert ModelSpec.from_dict(spec.to_dict()) == spec


# ---- windowed attention: FLOPs -------------------------------------------------------------------------------

def _core_flops(spec: ModelSpec, seq: int, gbs: int = 8) -> float:
    L = LayoutArrays.from_layouts([Layout(mbs=1, gbs=gbs, seq=seq, flash_attn=True)])
    return float(model_flops_per_step(ModelShapes.of(spec), L)[0])


def test_mistral_sliding_window_attention_flops_by_hand():
    # Mistral 7B v0.1 at seq 8192, window 4096: a windowed layer computes 4096/8192 - 4096^2 / (2 x 8192^2) = 0.375
    # of the score blocks instead of the causal 0.5. Model FLOPs per step lose 3 x 2 x tokens x seq x (q_dim + v_dim)
    # x layers x 0.125 = 3 x 2 x (8 x 8192) x 8192 x 8192 x 32 x 0.125 = 3.377699720527872e15.
    windowed = load_model("mistral-7b")
    assert windowed.sliding_window == 4096
    full = windowed.scaled(sliding_window=None)
    assert float(causal_share(ModelShapes.of(windowed), np.array([8192.0]))[0]) == 0.375
    assert _core_flops(full, 8192) - _core_flops(windowed, 8192) == pytest.approx(
        3 * 2 * (8 * 8192) * 8192 * 8192 * 32 * 0.125, rel=1e-12)
    # At seq <= window the window changes nothing.
    assert _core_flops(full, 4096) == _core_flops(windowed, 4096)


def test_gemma3_and_llama4_windows_by_hand():
    # Gemma 3 12B at 8192: 40 layers slide over 1024 (1024/8192 - 1024^2 / (2 x 8192^2) = 0.1171875), 8 are causal.
    gemma = ModelShapes.of(load_model(str(HF / "gemma-3-12b-it")))
    assert float(causal_share(gemma, np.array([8192.0]))[0]) == pytest.approx((8 * 0.5 + 40 * 0.1171875) / 48)
    # Llama 4 Scout at 20000 with chunks of 8192: two whole chunks and a 3616-token rest, (2 x 8192^2 + 3616^2) /
    # (2 x 20000^2) in 36 chunked layers, 12 global.
    scout = ModelShapes.of(load_model(str(HF / "llama4-scout-17b-16e")))
    chunked = (2 * 8192**2 + 3616**2) / (2 * 20000**2)
    assert float(causal_share(scout, np.array([20000.0]))[0]) == pytest.approx((12 * 0.5 + 36 * chunked) / 48)


# ---- the CLI reads them -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NEW_TYPES + TRAINED_ON_H100_TYPES)
def test_models_show_and_estimate_read_the_config(run_cli, name):
    code, out, err = run_cli("models", "show", str(HF / name / "config.json"), "--format", "json")
    assert code == 0, err
    assert json.loads(out)["total_params"] == load_model(str(HF / name)).total_params()
    code, out, err = run_cli("estimate", "--model", str(HF / name / "config.json"), "--cluster", "dgx-h100:2",
                             "--layout", "tp=8,pp=2,gbs=16,seq=4096", "--format", "json")
    assert code in (0, 1), err  # 1: infeasible layout, with its reasons; 2 would be a refused model
    assert "step" in out


# ---- windowed attention: the KV cache a served sequence holds -------------------------------------------------

def test_windowed_layers_hold_only_their_window_of_kv():
    from clusterplan.hardware_db import get_gpu
    from clusterplan.models.serving.kv import kv_tokens_held, kv_window
    from clusterplan.models.serving.model import ServingInstance, max_batch, serving_memory
    from clusterplan.models.serving.sim import Engine

    # Mistral 7B v0.1: every layer slides over 4096, so a 16384-token sequence keeps 4096 tokens of KV.
    mistral = load_model("mistral-7b")
    assert kv_window(mistral) == {"kv_window_tokens": 4096, "kv_windowed_share": 1.0}
    assert float(kv_tokens_held(16384, **kv_window(mistral))) == 4096
    # Gemma 3 12B at 32768: 8 of 48 layers keep everything, 40 keep 1024: 8/48 x 32768 + 40/48 x 1024 = 6314.67
    # full-stack tokens; with vLLM's 16-token pages that reserves ceil(6314.67) = 6315 -> 395 pages = 6320 tokens.
    gemma = load_model(str(HF / "gemma-3-12b-it"))
    held = float(kv_tokens_held(32768, **kv_window(gemma)))
    assert held == pytest.approx(8 / 48 * 32768 + 40 / 48 * 1024)
    engine = Engine(kv_capacity_tokens=10**6, kv_block_tokens=16, **kv_window(gemma))
    assert engine.kv_tokens(32768) == 6320
    # A model without windows keeps every token, exactly as before (whole pages only).
    assert kv_window(load_model("llama3.1-8b")) == {}
    assert Engine(kv_capacity_tokens=10**6, kv_block_tokens=16).kv_tokens(1000) == 1008
    # So a served Mistral fits 4x the 16k sequences the same cache would hold without its window.
    inst = ServingInstance(model=mistral, gpu=get_gpu("H100-SXM5-80GB"), tp=1)
    capacity = serving_memory(inst).kv_capacity_tokens
    assert max_batch(inst, 16384) == capacity // 4096
    assert max_batch(ServingInstance(model=mistral.scaled(sliding_window=None), gpu=get_gpu("H100-SXM5-80GB"), tp=1),
                     16384) == capacity // 16384


def test_decode_step_reads_only_the_window():
    from clusterplan.hardware_db import get_gpu
    from clusterplan.models.serving.model import ServingInstance, step_model

    # Mistral 7B v0.1 (every layer windowed at 4096): decoding 4 sequences of 16384 context reads and attends to
    # 4 x 4096 keys per layer, the same step as 4 sequences of 4096 without the window; below the window nothing
    # changes. Gemma 3 at 32768: 8/48 of the layers read 32768, 40/48 read 1024 -> a 6314.67-token step.
    h100 = get_gpu("H100-SXM5-80GB")
    mistral = load_model("mistral-7b")
    windowed = step_model(ServingInstance(model=mistral, gpu=h100, tp=1))
    full = step_model(ServingInstance(model=mistral.scaled(sliding_window=None), gpu=h100, tp=1))
    assert float(windowed.decode_s(4, 16384)) == pytest.approx(float(full.decode_s(4, 4096)), rel=1e-12)
    assert float(windowed.decode_s(4, 2048)) == float(full.decode_s(4, 2048))
    assert float(windowed.decode_s(4, 16384)) < float(full.decode_s(4, 16384))
    gemma = load_model(str(HF / "gemma-3-12b-it"))
    g_win = step_model(ServingInstance(model=gemma, gpu=h100, tp=1))
    g_full = step_model(ServingInstance(model=gemma.scaled(sliding_window=None, full_attention_every=0), gpu=h100,
                                        tp=1))
    assert float(g_win.decode_s(1, 32768)) == pytest.approx(float(g_full.decode_s(1, 8 / 48 * 32768 + 40 / 48 * 1024)),
                                                            rel=1e-12)


def test_mtp_module_weights_sit_on_the_last_stage():
    from clusterplan.models.training.memory import stage_params

    # DeepSeek-V3 at tp 2, ep 64: the last rank holds, beside its layers and the head, one more MoE block (attention
    # and router + shared expert split over tp, 256 experts over ep), M = 2 x 7168 x 7168 over tp and 3 + 2 norms.
    m = load_model("deepseek-v3")
    shapes = ModelShapes.of(m)
    L = LayoutArrays.from_layouts([Layout.parse("tp=2,pp=16,ep=64,gbs=4096,seq=4096")])
    with_mtp = stage_params(shapes, L, np.array([4.0]), False, True)
    without = stage_params(ModelShapes.of(m.scaled(mtp_layers=0)), L, np.array([4.0]), False, True)
    dense = (m.attention_params() + m.router_params() + m.mlp_params(m.shared_ffn) + 2 * 7168 * 7168) / 2 + 5 * 7168
    assert float(with_mtp.dense[0] - without.dense[0]) == pytest.approx(dense, rel=1e-12)
    assert float(with_mtp.expert[0] - without.expert[0]) == pytest.approx(256 * m.mlp_params(2048) / 64, rel=1e-12)
    # The whole module, the tp-split part counted over both ranks and the norms once, is mtp_params().
    assert (dense - 5 * 7168) * 2 + 5 * 7168 + 256 * m.mlp_params(2048) == m.mtp_params()
    # Ranks without the head hold none of it.
    assert float(stage_params(shapes, L, np.array([4.0]), False, False).dense[0]) == pytest.approx(
        float(stage_params(ModelShapes.of(m.scaled(mtp_layers=0)), L, np.array([4.0]), False, False).dense[0]))


def test_partial_rotary_from_config_or_family_default():
    # Minitron (Nemotron) and GLM-4.5 state partial_rotary_factor 0.5, Pythia rotary_pct 0.25; a Llama rotates the
    # whole head and keeps the field out of its JSON. NemotronConfig defaults the factor to 0.5 when it is left out.
    assert load_model(str(HF / "minitron-8b-base")).rotary_fraction == 0.5
    assert load_model(str(HF / "intellect-3-base")).rotary_fraction == 0.5
    assert load_model(str(HF / "pythia-1.4b")).rotary_fraction == 0.25
    llama = load_model(str(HF / "llama3.1-8b"))
    assert llama.rotary_fraction == 1.0 and "rotary_fraction" not in llama.to_dict()
    raw = {k: v for k, v in _raw("minitron-8b-base").items() if k != "partial_rotary_factor"}
    assert spec_from_hf(raw, name="m").rotary_fraction == 0.5


def test_activation_names_outside_the_model_kinds_are_noted_not_refused():
    # An activation ModelSpec has no name for changes no count or time: the model keeps its kind's default and says
    # so; a name that is not a string is bad input (one line); a stated default reads as the default.
    raw = _raw("llama3.1-8b")
    odd = spec_from_hf({**raw, "hidden_act": "mish"}, name="m")
    assert odd.activation_fn == "silu" and "activation 'mish' not modelled" in odd.source
    assert odd.total_params() == load_model(str(HF / "llama3.1-8b")).total_params()
    with pytest.raises(BadInputError, match="hidden_act must be an activation name"):
        spec_from_hf({**raw, "hidden_act": ["silu"]}, name="m")
    assert ModelSpec.from_dict({**load_model("llama3.1-8b").to_dict(), "activation": "silu"}).activation == ""


def test_glm45_defaults_and_transformers5_rope_parameters():
    # Glm4MoeConfig defaults first_k_dense_replace, n_shared_experts and num_nextn_predict_layers to 1: a config that
    # leaves them out counts as transformers does. transformers 5 keeps rope_theta and partial_rotary_factor in
    # rope_parameters.
    raw = {k: v for k, v in _raw("intellect-3-base").items()
           if k not in ("first_k_dense_replace", "n_shared_experts", "num_nextn_predict_layers")}
    assert spec_from_hf(raw, name="g").total_params() == load_model(str(HF / "intellect-3-base")).total_params()
    v5 = {k: v for k, v in _raw("minitron-8b-base").items() if k not in ("rope_theta", "partial_rotary_factor")}
    m = spec_from_hf({**v5, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                "partial_rotary_factor": 0.25}}, name="m")
    assert (m.rope_theta, m.rotary_fraction, m.rope_scaling) == (10000.0, 0.25, "none")
