"""Hugging Face config.json loading: one real published config per supported model_type.

The fixtures under tests/fixtures/hf/ are copies of the hub's config.json files (each names its source in a
`_source` key, which the loader ignores). Loading them must give the same ModelSpec as the hand-written preset,
and the parameter counts the publishers print.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clusterplan.errors import UnsupportedModelError
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.hf import SUPPORTED, spec_from_hf

HF = Path(__file__).parent / "fixtures" / "hf"


def _same_shape(a, b) -> dict:
    """Fields that differ between two specs, ignoring the name and the source note."""
    da, db = a.to_dict(), b.to_dict()
    return {k: (da[k], db[k]) for k in da if k not in ("name", "source") and da[k] != db[k]}


@pytest.mark.parametrize(("fixture", "preset"), [
    ("llama3.1-8b", "llama3.1-8b"), ("mistral-7b", "mistral-7b"), ("mixtral-8x7b", "mixtral-8x7b"),
    ("qwen2.5-7b", "qwen2.5-7b"), ("qwen3-32b", "qwen3-32b"), ("qwen3-30b-a3b", "qwen3-30b-a3b"),
    ("deepseek-v3", "deepseek-v3"), ("opt-13b", "opt-13b"), ("gpt-oss-120b", "gpt-oss-120b"),
])
def test_config_json_equals_preset(fixture, preset):
    loaded, spec = load_model(str(HF / fixture)), load_model(preset)
    assert _same_shape(loaded, spec) == {}
    assert loaded.total_params() == spec.total_params()
    assert loaded.active_params() == spec.active_params()
    assert loaded.name == fixture  # named after the directory that holds config.json


@pytest.mark.parametrize(("fixture", "total", "non_embedding"), [
    ("gpt2", 124_439_808, None),                     # GPT-2 small: 124,439,808 (hub count, "124M")
    ("opt-125m", 125_239_296, None),                 # facebook/opt-125m hub count
    ("pythia-1.4b", 1_414_647_808, 1_208_602_624),   # Biderman et al. 2023 (Pythia) Table, exact
])
def test_exact_counts_of_small_published_models(fixture, total, non_embedding):
    spec = load_model(str(HF / fixture / "config.json"))
    assert spec.total_params() == total
    if non_embedding is not None:
        assert spec.non_embedding_params() == non_embedding


def test_qwen2_moe_shared_expert():
    # Qwen1.5-MoE-A2.7B model card: "14.3B parameters in total and 2.7B activated". The shared expert (5632 wide,
    # with its sigmoid gate) runs for every token beside the 4 routed experts of 1408.
    spec = load_model(str(HF / "qwen1.5-moe-a2.7b"))
    assert spec.shared_ffn == 5632 and spec.shared_expert_gate and spec.n_moe_layers == 24
    assert abs(spec.total_params() / 1e9 - 14.3) <= 0.05
    assert abs(spec.active_params() / 1e9 - 2.7) <= 0.05


def test_every_supported_model_type_has_a_fixture():
    types = {json.loads(p.read_text())["model_type"] for p in HF.glob("*/config.json")}
    assert set(SUPPORTED) <= types


def _cfg(name: str) -> dict:
    return json.loads((HF / name / "config.json").read_text())


def test_qwen_moe_sparse_step_matches_transformers():
    # Qwen2MoeDecoderLayer: layer i is MoE when (i + 1) % decoder_sparse_step == 0, so step 2 makes the odd layers
    # (1, 3, ..., 23) MoE and the even ones dense: 12 of each.
    spec = spec_from_hf({**_cfg("qwen1.5-moe-a2.7b"), "decoder_sparse_step": 2}, name="x")
    moe = [i for i in range(spec.n_layers) if spec.is_moe_layer(i)]
    assert moe == list(range(1, 24, 2))
    dense = spec_from_hf({**_cfg("qwen1.5-moe-a2.7b"), "mlp_only_layers": [0, 1]}, name="x")
    assert [i for i in range(dense.n_layers) if not dense.is_moe_layer(i)] == [0, 1]


def test_qwen_moe_irregular_layers_are_refused():
    with pytest.raises(UnsupportedModelError, match="not every n-th layer"):
        spec_from_hf({**_cfg("qwen3-30b-a3b"), "mlp_only_layers": [5]}, name="x")


def test_deepseek_moe_layer_freq_matches_transformers():
    # DeepseekV3DecoderLayer: MoE when i >= first_k_dense_replace and i % moe_layer_freq == 0: with 3 and 2 that is
    # layers 4, 6, ..., 60 (29 layers), not 3, 5, ...
    spec = spec_from_hf({**_cfg("deepseek-v3"), "moe_layer_freq": 2}, name="x")
    assert [i for i in range(61) if spec.is_moe_layer(i)] == list(range(4, 61, 2))


def test_text_config_is_flattened():
    # Multimodal wrappers nest the language model: {"text_config": {...}, "vision_config": {...}}.
    nested = {"architectures": ["X"], "model_type": "llava", "text_config": _cfg("mistral-7b"), "vision_config": {}}
    assert spec_from_hf(nested, name="m").total_params() == load_model("mistral-7b").total_params()


def test_llama_with_all_biases():
    # attention_bias + mlp_bias on Llama: q, k, v, o and gate/up/down all carry biases.
    base = load_model(str(HF / "llama3.1-8b"))
    both = spec_from_hf({**_cfg("llama3.1-8b"), "attention_bias": True, "mlp_bias": True}, name="b")
    per_layer = (4096 + 2 * 1024) + 4096 + (2 * 14336 + 4096)
    assert both.total_params() - base.total_params() == 32 * per_layer
