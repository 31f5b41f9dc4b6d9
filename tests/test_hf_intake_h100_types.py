"""Config intake for model types of H100-era training runs added in stop 40: SmolLM3, OLMo 3, Ministral, EXAONE 4,
Seed-OSS, ERNIE 4.5 (dense), GLM-4 (dense) and Phi-3.5-MoE.

Each config (tests/fixtures/hf/, with its `_source`) is transformers' own configuration class at its defaults (its
docstring names the released model it resembles: HuggingFaceTB/SmolLM3-3B, allenai/Olmo-3-7B-Instruct,
mistralai/Ministral-8B-Instruct-2410, LGAI-EXAONE/EXAONE-4.0-32B, ByteDance-Seed/Seed-OSS-36B-Instruct,
baidu/ERNIE-4.5-0.3B-PT, zai-org/GLM-OCR, microsoft/Phi-3.5-MoE-instruct), serialised as config.json is. Every
parameter count equals transformers' model built from it on the meta device (Phi-3.5-MoE's o_proj and LM-head biases
since stop 41: ModelSpec attn_out_bias, lm_head_bias). Hand derivations pin what each type adds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.hf import spec_from_hf

HF = Path(__file__).parent / "fixtures" / "hf"
FIXTURES = {"smollm3": "smollm3-3b", "olmo3": "olmo-3-7b", "ministral": "ministral-8b", "exaone4": "exaone-4.0",
            "seed_oss": "seed-oss", "ernie4_5": "ernie-4.5-0.3b", "glm4": "glm-4", "phimoe": "phi-3.5-moe"}


def _config(model_type: str) -> dict:
    raw = json.loads((HF / FIXTURES[model_type] / "config.json").read_text())
    raw.pop("_source")
    assert raw["model_type"] == model_type
    return raw


def _count(raw: dict) -> int:
    """transformers' count of a config given as a dict (tests.conftest.transformers_count)."""
    from tests.conftest import transformers_count

    return transformers_count(raw)


def _transformers_count(model_type: str) -> int:
    """Parameters of transformers' own model for the fixture's config, built on the meta device."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model(**_config(model_type))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("model_type", ["smollm3", "olmo3", "ministral", "exaone4", "seed_oss", "ernie4_5", "glm4"])
def test_count_equals_transformers_on_meta_device(model_type):
    spec = load_model(str(HF / FIXTURES[model_type]))  # the path a user gives --model
    assert spec.total_params() == _transformers_count(model_type)


def test_phimoe_counts_its_o_proj_and_lm_head_biases():
    spec = spec_from_hf(_config("phimoe"), name="phi-3.5-moe")
    # o_proj follows attention_bias, the LM head lm_head_bias: 32 layers x 4096 + 32,064 = 163,136 parameters that
    # were left out (and named in the source) before
    assert (spec.attn_out_bias, spec.lm_head_bias) == (True, True)
    assert _transformers_count("phimoe") == spec.total_params()
    assert "not counted" not in spec.source


def test_phimoe_by_hand():
    # Phi-3.5-MoE: 32 layers, hidden 4096, 32 heads / 8 KV of 128, 16 experts of 6400 (gated), top 2, vocab 32064.
    spec = spec_from_hf(_config("phimoe"), name="phi-3.5-moe")
    h, kv, f, e, v, n = 4096, 1024, 6400, 16, 32064, 32
    attention = 2 * h * h + 2 * h * kv + (h + 2 * kv) + h  # q, o, k, v, the q/k/v biases and o_proj's
    layer = attention + e * 3 * h * f + e * h + 2 * 2 * h  # experts, router, two LayerNorms with bias
    assert spec.total_params() == n * layer + 2 * v * h + 2 * h + v  # + the LM head's bias
    assert (spec.norm, spec.n_experts, spec.top_k) == ("layernorm", 16, 2)
    # 6.6B active (Microsoft's model card): 2 of 16 experts per token
    assert spec.active_params() == pytest.approx(6.6e9, rel=0.01)


def test_glm4_four_norms_and_half_rotary():
    spec = spec_from_hf(_config("glm4"), name="glm-4")
    assert spec.norms_per_layer == 4 and spec.rotary_fraction == 0.5 and spec.attn_bias and not spec.linear_bias
    # Partial rotary is Glm4Config's default: a config.json written without it rotates half the head too.
    raw = _config("glm4")
    del raw["rope_parameters"]["partial_rotary_factor"]
    assert spec_from_hf(raw, name="glm-4").rotary_fraction == 0.5


def test_windows_from_layer_types():
    olmo3 = spec_from_hf(_config("olmo3"), name="olmo-3")  # sliding, sliding, sliding, full, ...
    assert (olmo3.sliding_window, olmo3.full_attention_every, olmo3.qk_norm_full_width) == (4096, 4, True)
    exaone = spec_from_hf(_config("exaone4"), name="exaone-4")
    assert (exaone.sliding_window, exaone.full_attention_every, exaone.qk_norm, exaone.qk_norm_full_width) == (
        4096, 4, True, False)
    ministral = spec_from_hf(_config("ministral"), name="ministral")  # every layer sliding
    assert (ministral.sliding_window, ministral.full_attention_every) == (4096, 0)
    smol = spec_from_hf(_config("smollm3"), name="smollm3")  # use_sliding_window False: no window
    assert smol.sliding_window is None and "NoPE layers" in smol.source


def test_biases_of_seed_oss_and_ernie():
    seed = spec_from_hf(_config("seed_oss"), name="seed-oss")
    assert seed.attn_bias and not seed.linear_bias  # q, k, v biased; o_proj (attention_out_bias) and MLP not
    ernie = spec_from_hf(_config("ernie4_5") | {"use_bias": True}, name="ernie")
    assert ernie.attn_bias and ernie.linear_bias
    # attention_out_bias alone (o_proj biased, the MLP not): ModelSpec attn_out_bias since stop 41, counted exactly
    raw = _config("seed_oss") | {"attention_out_bias": True, "num_hidden_layers": 2}
    out = spec_from_hf(raw, name="seed-oss")
    assert (out.attn_out_bias, out.linear_bias) == (True, False)
    assert out.total_params() == _count(raw)


@pytest.mark.parametrize("biases", [{"attention_bias": True}, {"mlp_bias": True}, {"attention_bias": True,
                                                                                   "mlp_bias": True}])
def test_llama_attention_and_mlp_biases_count_exactly(biases):
    # LlamaAttention biases q, k, v and o_proj with attention_bias, LlamaMLP its three matrices with mlp_bias: each
    # alone used to miss o_proj's bias or be refused.
    raw = json.loads((HF / "llama3.1-8b" / "config.json").read_text())
    raw.pop("_source", None)
    raw |= {"num_hidden_layers": 2, **biases}
    assert spec_from_hf(raw, name="llama-biased").total_params() == _count(raw)


def test_megatron_export_says_what_its_bias_flags_cannot():
    # Megatron-LM biases every linear or none (--add-bias-linear), q/k/v apart (--add-qkv-bias), and its output layer
    # never: a model whose out-projection bias differs from its MLP's, or whose LM head is biased, is noted.
    from clusterplan.frameworks import export_plan
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.training.layout import Layout

    raw = json.loads((HF / "llama3.1-8b" / "config.json").read_text())
    raw.pop("_source", None)
    spec = spec_from_hf(raw | {"attention_bias": True}, name="llama-biased")
    text = export_plan("megatron", spec, load_cluster("dgx-h100:1"), Layout(dp=8, zero=1, gbs=64, seq=4096)).text
    assert "llama-biased biases its attention output projection but not its MLP" in text
    assert "--add-qkv-bias" in text and "--disable-bias-linear" in text
    phi = spec_from_hf(_config("phimoe"), name="phi-3.5-moe")
    text = export_plan("megatron", phi, load_cluster("dgx-h100:8"), Layout(dp=8, ep=8, tp=8, zero=1, gbs=64,
                                                                              seq=4096)).text
    assert "biases its LM head (32064 parameters)" in text
