"""GPT-OSS-120B preset and the ModelSpec fields it needs (sliding window, attention sinks, router bias).

Counts derived by hand from the modules of transformers' GptOss implementation (config.json of openai/gpt-oss-120b):
  attention per layer: q/k/v/o weights 2880*(4096+512+512) + 4096*2880 = 26,542,080; q/k/v biases 5,120;
    o bias 2,880; sinks 64                                                     -> 26,550,144
  router 2880*128 + 128 bias                                                   ->    368,768
  one expert: gate_up 2880*5760 + 5760, down 2880*2880 + 2880                   -> 24,891,840
  norms 2*2880                                                                 ->      5,760
  layer (128 experts) 3,213,080,192; x36 = 115,670,886,912
  embedding 201088*2880 = 579,133,440, untied LM head the same, final norm 2,880
  total 116,829,156,672 (model card: 117B); active without the input table: 36*(26,550,144 + 368,768 + 4*24,891,840
  + 5,760) + 579,133,440 + 2,880 = 5,132,849,472 (model card: 5.1B).
"""

import pytest

from clusterplan.errors import BadInputError
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.spec import ModelSpec


def test_gpt_oss_120b_counts_match_hand_derivation():
    m = load_model("gpt-oss-120b")
    assert m.attention_params() == 26_550_144
    assert m.router_params() == 368_768
    assert m.mlp_params(m.expert_ffn_hidden) == 24_891_840
    assert m.layer_params(0) == 3_213_080_192
    assert m.total_params() == 116_829_156_672
    assert m.active_params_excluding_input_embedding() == 5_132_849_472


def test_sliding_window_pattern_alternates_and_defaults_to_full():
    m = load_model("gpt-oss-120b")
    assert [m.is_sliding_layer(i) for i in range(4)] == [True, False, True, False]
    assert sum(m.is_sliding_layer(i) for i in range(m.n_layers)) == 18
    llama = load_model("llama3.1-8b")
    assert llama.sliding_window is None and not llama.is_sliding_layer(0)
    every = ModelSpec(name="m", n_layers=4, hidden=64, n_heads=4, ffn_hidden=128, vocab=100, sliding_window=16)
    assert all(every.is_sliding_layer(i) for i in range(4))


def test_full_attention_every_needs_a_window():
    with pytest.raises(BadInputError, match="full_attention_every needs sliding_window"):
        ModelSpec(name="m", n_layers=4, hidden=64, n_heads=4, ffn_hidden=128, vocab=100, full_attention_every=2)
    with pytest.raises(BadInputError, match="sliding_window must be a positive integer"):
        ModelSpec(name="m", n_layers=4, hidden=64, n_heads=4, ffn_hidden=128, vocab=100, sliding_window=0)


def test_router_bias_and_sinks_only_where_set():
    base = dict(name="m", n_layers=2, hidden=64, n_heads=4, ffn_hidden=128, vocab=100, n_experts=4, top_k=1,
                expert_ffn_hidden=32)
    plain = ModelSpec(**base)
    assert plain.router_params() == 64 * 4
    assert ModelSpec(**base, linear_bias=True).router_params() == 64 * 4 + 4
    assert ModelSpec(**base, attn_sinks=True).attention_params() == plain.attention_params() + 4


def test_config_json_reads_to_the_preset():
    """openai/gpt-oss-120b config.json fields (the ones the reader uses) give the preset's counts."""
    from clusterplan.models.architecture.hf import spec_from_hf

    cfg = {"model_type": "gpt_oss", "architectures": ["GptOssForCausalLM"], "num_hidden_layers": 36,
           "hidden_size": 2880, "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
           "intermediate_size": 2880, "vocab_size": 201088, "max_position_embeddings": 131072,
           "num_local_experts": 128, "num_experts_per_tok": 4, "sliding_window": 128, "attention_bias": True,
           "tie_word_embeddings": False, "layer_types": ["sliding_attention", "full_attention"] * 18}
    spec = spec_from_hf(cfg, name="gpt-oss-120b")
    preset = load_model("gpt-oss-120b")
    assert spec.total_params() == preset.total_params() == 116_829_156_672
    assert spec.full_attention_every == 2 and spec.sliding_window == 128 and spec.attn_sinks
