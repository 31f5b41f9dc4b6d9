"""Parameter counts of the presets added for today's published training and serving runs, against the publishers.

Each preset's dimensions come from the model's Hugging Face config.json (the `source` of its YAML entry). Here its
total (and, for MoE, active) parameter count is checked against the number the publisher prints, within 2 % (the
tolerance of the catalog task: the published figures are rounded to two or three digits, and multimodal releases
print a count that includes the vision tower, which the presets leave out). Where the publisher prints every digit
the count must be exact.

Not added, with the reason:
  - (see the lists in later sections as they are added)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clusterplan.models.architecture.catalog import hf_repo, load_model
from clusterplan.models.architecture.hf import spec_from_hf

B = 1e9
REL = 0.02
HF = Path(__file__).parent / "fixtures" / "hf"


def _within(value: float, published: float, rel: float = REL) -> bool:
    return abs(value / published - 1) <= rel


@pytest.mark.parametrize(("preset", "published_b"), [
    # Meta Llama 3.2 model card, "Params" column: 1B (1.23B), 3B (3.21B).
    ("llama3.2-1b", 1.23), ("llama3.2-3b", 3.21),
    # Meta Llama 4 announcement / model card: Scout 109B total, Maverick 400B total (both count the vision encoder,
    # which the presets leave out: Scout's text model is 107.8B, 1.1 % under).
    ("llama4-scout-17b-16e", 109), ("llama4-maverick-17b-128e", 400),
    # Qwen3 model cards, "Number of Parameters".
    ("qwen3-0.6b", 0.6), ("qwen3-1.7b", 1.7), ("qwen3-4b", 4.0), ("qwen3-8b", 8.2), ("qwen3-14b", 14.8),
    # Qwen2.5 model cards, "Number of Parameters".
    ("qwen2.5-1.5b", 1.54), ("qwen2.5-3b", 3.09), ("qwen2.5-14b", 14.7), ("qwen2.5-32b", 32.5),
])
def test_total_params_match_published(preset, published_b):
    total = load_model(preset).total_params()
    assert _within(total, published_b * B), f"{preset}: {total / B:.3f}B vs published {published_b}B"


@pytest.mark.parametrize(("preset", "published_b"), [
    # Qwen model cards print "Number of Parameters (Non-Embedding)" beside the total.
    ("qwen3-0.6b", 0.44), ("qwen3-1.7b", 1.4), ("qwen3-4b", 3.6), ("qwen3-8b", 6.95), ("qwen3-14b", 13.2),
    ("qwen2.5-1.5b", 1.31), ("qwen2.5-3b", 2.77), ("qwen2.5-14b", 13.1), ("qwen2.5-32b", 31.0),
])
def test_non_embedding_params_match_qwen_cards(preset, published_b):
    value = load_model(preset).non_embedding_params()
    assert _within(value, published_b * B), f"{preset}: {value / B:.3f}B vs published {published_b}B"


@pytest.mark.parametrize(("preset", "published_b"), [
    # Meta: both Llama 4 models activate 17B parameters per token (one routed expert + the shared expert).
    ("llama4-scout-17b-16e", 17), ("llama4-maverick-17b-128e", 17),
])
def test_active_params_match_published(preset, published_b):
    active = load_model(preset).active_params()
    assert _within(active, published_b * B), f"{preset}: {active / B:.3f}B vs published {published_b}B"


def test_qwen3_0_6b_is_exact():
    # keras-hub's Qwen3 preset metadata prints every digit of Qwen3-0.6B: "params": 596049920 (tied embeddings,
    # per-head q/k RMSNorm of head_dim 128, 16 heads of 128 on a 1024-wide model).
    assert load_model("qwen3-0.6b").total_params() == 596_049_920


def test_llama4_scout_preset_equals_its_config_json():
    loaded, preset = load_model(str(HF / "llama4-scout-17b-16e")), load_model("llama4-scout-17b-16e")
    a, b = loaded.to_dict(), preset.to_dict()
    assert {k: (a[k], b[k]) for k in a if k not in ("name", "source") and a[k] != b[k]} == {}


def test_llama4_maverick_layer_pattern_by_hand():
    # interleave_moe_layer_step 2: layers 1, 3, ..., 47 are MoE (128 experts + shared), the even ones dense (16384);
    # Megatron-Bridge writes the same as moe_layer_freq [0, 1] * 24. Every 4th layer (3, 7, ...) is NoPE and global,
    # the others attend within 8192-token chunks.
    m = load_model("llama4-maverick-17b-128e")
    assert m.n_moe_layers == 24 and not m.is_moe_layer(0) and m.is_moe_layer(1) and m.is_moe_layer(47)
    assert [m.is_sliding_layer(i) for i in range(8)] == [True, True, True, False] * 2
    assert m.local_attention == "chunked" and m.sliding_window == 8192
    h, d = 5120, 128
    attention = h * (40 * d + 2 * 8 * d) + 40 * d * h
    dense, expert = 3 * h * 16384, 3 * h * 8192
    moe = h * 128 + 128 * expert + expert  # router, routed experts, one shared expert of the same size
    assert m.layer_params(0) == attention + dense + 2 * h
    assert m.layer_params(1) == attention + moe + 2 * h
    assert m.layer_params(1, active=True) == attention + h * 128 + 2 * expert + 2 * h


def test_maverick_config_as_quoted_loads_to_the_preset():
    # The text_config TensorRT-LLM quotes (48 layers restored), loaded through the config.json reader.
    cfg = {"model_type": "llama4", "tie_word_embeddings": False, "text_config": {
        "model_type": "llama4_text", "attention_chunk_size": 8192, "head_dim": 128, "hidden_size": 5120,
        "interleave_moe_layer_step": 2, "intermediate_size": 8192, "intermediate_size_mlp": 16384,
        "max_position_embeddings": 1048576, "num_attention_heads": 40, "num_experts_per_tok": 1, "num_hidden_layers": 48,
        "num_key_value_heads": 8, "num_local_experts": 128, "rope_scaling": None, "rope_theta": 500000.0,
        "use_qk_norm": False, "vocab_size": 202048}}
    loaded, preset = spec_from_hf(cfg, name="m"), load_model("llama4-maverick-17b-128e")
    assert loaded.to_dict() | {"name": "", "source": ""} == preset.to_dict() | {"name": "", "source": ""}


@pytest.mark.parametrize(("alias", "preset"), [
    ("meta-llama/Llama-3.3-70B-Instruct", "llama3.1-70b"), ("llama-3.3-70b", "llama3.1-70b"),
    ("meta-llama/Llama-3.2-1B-Instruct", "llama3.2-1b"), ("Llama-3.2-3B", "llama3.2-3b"),
    ("meta-llama/Llama-4-Scout-17B-16E-Instruct", "llama4-scout-17b-16e"), ("llama-4-maverick", "llama4-maverick-17b-128e"),
    ("Qwen/Qwen3-8B", "qwen3-8b"), ("qwen3-0.6B", "qwen3-0.6b"), ("Qwen/Qwen2.5-14B-Instruct", "qwen2.5-14b"),
])
def test_aliases_and_repo_ids_resolve(alias, preset):
    assert load_model(alias).name == preset


def test_new_presets_name_their_repo_and_source():
    for name in ("llama3.2-1b", "llama3.2-3b", "llama4-scout-17b-16e", "llama4-maverick-17b-128e", "qwen3-0.6b",
                 "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "qwen3-14b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-14b",
                 "qwen2.5-32b"):
        spec = load_model(name)
        assert "config.json" in spec.source, name
        assert hf_repo(name) and json.dumps(hf_repo(name)), name
