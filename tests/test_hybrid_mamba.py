"""Hybrid Mamba-2 / attention models (Nemotron-H, Nemotron Nano 2, Nemotron 3 Nano): the block pattern, exact
parameter counts, the nemotron_h config.json intake, the presets, and the one-line refusal of every cost model.

Megatron-Core builds one residual block per character of hybrid_override_pattern (research/hybrid-mamba.md sec. 1):
`M` a Mamba-2 mixer whose RMSNorm is fused into in_proj, `*` attention only, `-` the MLP only, `E` the MoE only,
each with its own pre-norm; then a final norm and the untied output layer. With d_in = H x P, one Mamba block holds
    h + h (2 d_in + 2 G N + H) + (d_in + 2 G N)(K + 1) + 3 H + d_in + d_in h
(pre-norm, in_proj to z/x/B/C/dt, depthwise conv1d with bias, dt_bias / A_log / D, the gated norm, out_proj).
The fixtures under tests/fixtures/hf/ for nemotron_h are reconstructed from Megatron-Bridge's providers (the hub
files were not retrievable; each `_source` says so); transformers' own NemotronHForCausalLM, built on the meta
device, gives the same counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clusterplan.errors import BadInputError, UnsupportedModelError
from clusterplan.models.architecture.catalog import load_model, presets
from clusterplan.models.architecture.hf import spec_from_hf
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.architecture.spec import ModelSpec
from tests.conftest import hf_config, transformers_count

HF = Path(__file__).parent / "fixtures" / "hf"
B = 1e9
HYBRID_PRESETS = ("nemotron-h-8b", "nemotron-h-47b", "nemotron-h-56b", "nemotron-nano-9b-v2", "nemotron-nano-12b-v2",
                  "nemotron-3-nano-30b-a3b", "nemotron-3-super-120b-a12b")
NEW_FIELDS = ("hybrid_pattern", "mamba_heads", "mamba_head_dim", "mamba_groups", "mamba_state_dim",
              "mamba_conv_kernel", "mamba_chunk", "moe_latent", "mtp_shared")


def _tiny(**changes) -> ModelSpec:
    """h 64, 4 heads of 16 over 2 KV heads, a squared-ReLU MLP of 128, Mamba-2 8 heads x 16 (d_in 128) in 2 groups
    with state 8, vocab 1000: the pattern M-M*- (two Mamba, one attention, two MLP blocks)."""
    fields = dict(name="tiny", family="nemotron_h", n_layers=5, hidden=64, n_heads=4, n_kv_heads=2, head_dim=16,
                  ffn_hidden=128, gated_ffn=False, activation="relu2", position="none", vocab=1000,
                  hybrid_pattern="M-M*-", mamba_heads=8, mamba_head_dim=16, mamba_groups=2, mamba_state_dim=8)
    return ModelSpec(**{**fields, **changes})






# ---- counts by hand ------------------------------------------------------------------------------------------------

def test_small_pattern_per_block_counts_by_hand():
    m = _tiny()
    # M: norm 64 + in_proj 64 x (2 x 128 + 2 x 2 x 8 + 8 = 296) = 18,944 + conv1d (128 + 32) x (4 + 1) = 800
    #    + dt_bias, A_log, D 3 x 8 = 24 + gated norm 128 + out_proj 128 x 64 = 8,192 -> 28,152
    assert m.mamba_inner == 128 and m.mamba_params() == 28_152
    # *: norm 64 + q 64 x 64 + k, v 64 x (2 x 2 x 16) + o 64 x 64 = 64 + 3 x 4,096 -> 12,352 (no MLP in the block)
    # -: norm 64 + up and down 2 x 64 x 128 = 16,384 -> 16,448 (squared ReLU, not gated; no attention in the block)
    assert [m.layer_params(i) for i in range(5)] == [28_152, 16_448, 28_152, 12_352, 16_448]
    # + input table 1000 x 64 + final norm 64 + untied output 1000 x 64 = 128,064 -> 229,616
    assert m.total_params() == m.active_params() == 229_616
    assert m.block_counts == {"M": 2, "-": 2, "*": 1} and m.is_hybrid and not m.is_moe


def test_small_pattern_equals_transformers():
    raw = dict(model_type="nemotron_h", hybrid_override_pattern="M-M*-", hidden_size=64, intermediate_size=128,
               num_attention_heads=4, num_key_value_heads=2, head_dim=16, mamba_num_heads=8, mamba_head_dim=16,
               n_groups=2, ssm_state_size=8, vocab_size=1000)
    assert spec_from_hf(raw, name="tiny").to_dict() == {**_tiny().to_dict(), "source": "Hugging Face config.json "
                                                        "(config.json)"}
    assert transformers_count(raw) == 229_616


def test_nemotron_h_56b_is_the_cross_check():
    m = load_model("nemotron-h-56b")
    # h 8192, Mamba-2 256 heads x 64 (d_in 16384), G 8, N 256, K 4:
    # M: 8192 + 8192 x (32768 + 4096 + 256) + 20480 x 5 + 768 + 16384 + 16384 x 8192 = 438,432,512
    # *: 8192 + 8192 x (8192 + 2 x 1024) + 8192 x 8192 = 151,003,136;  -: 8192 + 2 x 8192 x 32768 = 536,879,104
    assert m.block_counts == {"M": 54, "*": 10, "-": 54}
    assert [m.hybrid_block_params(c) for c in "M*-"] == [438_432_512, 151_003_136, 536_879_104]
    # 54 M + 10 * + 54 - = 54,176,858,624; + 2 x 131072 x 8192 + final norm 8192 = 56,324,350,464: the research
    # note's count and a third-party registry's paramCount (research/hybrid-mamba.md sec. 2).
    assert m.total_params() == 56_324_350_464
    assert m.hybrid_pattern == "M-M-M-M*-" + "M-M-M-M-M*-" * 9 + "M-M-M-M-M-"


@pytest.mark.parametrize(("preset", "blocks", "published_b"), [
    ("nemotron-h-8b", {"M": 24, "*": 4, "-": 24}, 8),       # "8B": counted 8.10B
    ("nemotron-h-47b", {"M": 45, "*": 5, "-": 48}, 47),     # "47B": counted 46.79B
    ("nemotron-nano-9b-v2", {"M": 27, "*": 4, "-": 25}, 9),  # "9B": counted 8.89B
    ("nemotron-nano-12b-v2", {"M": 28, "*": 6, "-": 28}, 12),  # "12B": counted 12.31B
])
def test_dense_hybrids_within_their_name_rounding(preset, blocks, published_b):
    # The research note's block counts (its table) and NVIDIA's names, whole billions (+/- 0.5B).
    m = load_model(preset)
    assert m.block_counts == blocks and m.n_layers == sum(blocks.values())
    assert abs(m.total_params() / B - published_b) <= 0.5
    assert m.active_params() == m.total_params()


def test_nemotron_3_nano_counts_are_the_report():
    # Nemotron 3 Nano report (arXiv 2512.20848): "31.6B total parameters ... 3.2B are activated per forward pass
    # (3.6B including embeddings)": 3.2B leaves out the 131072 x 2688 input table (DeepSeek's convention: a lookup,
    # not a matmul), 3.6B keeps it; the output layer counts in both.
    m = load_model("nemotron-3-nano-30b-a3b")
    assert m.block_counts == {"M": 23, "*": 6, "E": 23} and m.n_moe_layers == 23
    assert round(m.total_params() / B, 1) == 31.6 and m.total_params() == 31_577_937_344
    assert round(m.active_params() / B, 1) == 3.6
    assert round(m.active_params_excluding_input_embedding() / B, 1) == 3.2
    # One E block: norm 2688 + router 2688 x 128 + 128 experts x 2 x 2688 x 1856 + shared 2 x 2688 x 3712
    # = 2,688 + 344,064 + 1,277,165,568 + 19,955,712 = 1,297,468,032; with the top-6 experts only:
    # 2,688 + 344,064 + 6 x 9,977,856 + 19,955,712 = 80,169,600.
    assert m.hybrid_block_params("E") == 1_297_468_032 and m.hybrid_block_params("E", active=True) == 80_169_600


# ---- config.json intake --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["nemotron-nano-9b-v2", "nemotron-3-nano-30b-a3b"])
def test_fixture_equals_preset_and_transformers(name):
    loaded, preset = load_model(str(HF / name)), load_model(name)
    a, b = loaded.to_dict(), preset.to_dict()
    assert {k: (a.get(k), b.get(k)) for k in set(a) | set(b)
            if k not in ("name", "source") and a.get(k) != b.get(k)} == {}
    assert loaded.total_params() == transformers_count(hf_config(name))


def test_a_latent_moe_config_reads_and_counts_as_transformers():
    # Nemotron 3 Super's moe_latent_size: the experts behind h <-> latent projections (transformers NemotronHMoE
    # fc1_latent_proj / fc2_latent_proj). The Nano fixture with a latent width of 1,024: our count equals
    # transformers' own, and the experts shrink from 2688 x 1856 to 1024 x 1856 each.
    raw = {**hf_config("nemotron-3-nano-30b-a3b"), "moe_latent_size": 1024}
    path = HF / "nemotron-3-nano-30b-a3b"
    tmp = Path(pytest.importorskip("tempfile").mkdtemp()) / "config.json"
    tmp.write_text(json.dumps(raw))
    latent = load_model(str(tmp))
    assert latent.moe_latent == 1024 and latent.expert_params() == 2 * 1024 * 1856
    assert latent.total_params() == transformers_count(raw)
    assert load_model(str(path)).total_params() - latent.total_params() == 23 * (
        128 * 2 * (2688 - 1024) * 1856 - 2 * 2688 * 1024)


def test_layers_block_type_list_and_legacy_names_read_as_the_pattern():
    # transformers 5 writes layers_block_type (its alias layer_types); older lists say mamba / attention.
    raw = hf_config("nemotron-nano-9b-v2")
    names = {"M": "linear_attention", "*": "full_attention", "-": "mlp"}
    listed = {**raw, "layers_block_type": [names[c] for c in raw["hybrid_override_pattern"]]}
    legacy = {**raw, "layer_types": [{"M": "mamba", "*": "attention", "-": "mlp"}[c]
                                     for c in raw["hybrid_override_pattern"]]}
    del listed["hybrid_override_pattern"], legacy["hybrid_override_pattern"]
    want = spec_from_hf(raw, name="x").to_dict()
    assert spec_from_hf(listed, name="x").to_dict() == want == spec_from_hf(legacy, name="x").to_dict()
    # the older mamba_n_groups spelling of n_groups (NemotronHConfig.__post_init__)
    renamed = {k: v for k, v in raw.items() if k != "n_groups"} | {"mamba_n_groups": 4}
    assert spec_from_hf(renamed, name="x").mamba_groups == 4


@pytest.mark.parametrize(("change", "error", "match"), [
    ({"hybrid_override_pattern": None}, BadInputError, "lacks hybrid_override_pattern / layers_block_type"),
    ({"hybrid_override_pattern": "M-X"}, BadInputError, "string of M, \\*, -, E"),
    ({"layers_block_type": ["mamba", "conv"]}, BadInputError, "layers_block_type must list one of"),
    ({"use_bias": True}, UnsupportedModelError, "use_bias True"),
    ({"num_nextn_predict_layers": 2}, UnsupportedModelError, "num_nextn_predict_layers"),
    ({"mamba_num_heads": 100}, BadInputError, "mamba_heads\\(100\\) % mamba_groups\\(8\\)"),
])
def test_bad_nemotron_h_configs_get_one_line(change, error, match):
    raw = {k: v for k, v in {**hf_config("nemotron-nano-9b-v2"), **change}.items() if v is not None}
    with pytest.raises(error, match=match) as info:
        spec_from_hf(raw, name="x")
    assert "\n" not in str(info.value)


# ---- validation and serialisation ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "match"), [
    ({"n_layers": 6}, "hybrid_pattern has 5 blocks but n_layers is 6"),
    ({"hybrid_pattern": "M-M+-"}, "hybrid_pattern has '\\+'; use only M"),
    ({"hybrid_pattern": "M-ME-"}, "E blocks need n_experts > 0"),
    ({"n_experts": 4, "top_k": 2, "expert_ffn_hidden": 32}, "pattern has 0 E, n_experts is 4"),
    ({"mamba_groups": 3}, "mamba_heads\\(8\\) % mamba_groups\\(3\\) != 0"),
    ({"mamba_state_dim": 0}, "M blocks need mamba_state_dim > 0"),
    ({"hybrid_pattern": "", "n_layers": 2}, "mamba_\\* sizes need a hybrid_pattern"),
    ({"hybrid_pattern": "M-ME-", "n_experts": 4, "top_k": 2, "expert_ffn_hidden": 32, "first_dense_layers": 1},
     "drop first_dense_layers"),
    ({"mamba_chunk": 0}, "mamba_chunk must be a positive integer"),
])
def test_inconsistent_hybrids_are_refused(change, match):
    with pytest.raises(BadInputError, match=match) as info:
        _tiny(**change)
    assert "\n" not in str(info.value)


def test_existing_presets_serialise_as_before_and_hybrids_round_trip():
    for spec in presets().values():
        data = spec.to_dict()
        if spec.name in HYBRID_PRESETS:
            assert ModelSpec.from_dict(data) == spec and data["hybrid_pattern"], spec.name
        else:  # the new fields are left out at their defaults: the same dict as before they existed
            assert not spec.is_hybrid and not set(NEW_FIELDS) & set(data), spec.name
    assert {n for n, s in presets().items() if s.is_hybrid} == set(HYBRID_PRESETS)


# ---- the cost models refuse, `models` shows ------------------------------------------------------------------------

SERVING_REFUSAL = ("model no-attention: a hybrid stack without attention blocks (pattern M/-: 2/2 blocks) has no "
                   "KV cache to size serving by; `clusterplan models show` gives its sizes")
EXPORT_REFUSAL = ("--to torchtitan: torchtitan has no Mamba blocks for hybrid nemotron-h-56b; export --to megatron "
                  "(pretrain_mamba.py)")


def test_training_and_serving_price_hybrids_with_attention():
    from clusterplan.hardware_db import get_gpu
    from clusterplan.models.serving.model import ServingInstance, serving_memory

    m = load_model("nemotron-h-56b")
    assert [(round(share * 118), b.block) for share, b in ModelShapes.of(m).blocks] == [
        (54, "mamba"), (10, "attention"), (54, "mlp")]
    nano = ModelShapes.of(load_model("nemotron-3-nano-30b-a3b"))
    assert [(round(share * 52), b.block, b.n_moe_layers) for share, b in nano.blocks] == [
        (23, "mamba", 0), (6, "attention", 0), (23, "moe", 52)] and nano.n_moe_layers == 23
    assert serving_memory(ServingInstance(model=m, gpu=get_gpu("H100"), tp=8)).kv_capacity_tokens > 0
    no_attention = _tiny(name="no-attention", n_layers=4, hybrid_pattern="M-M-")
    with pytest.raises(BadInputError) as info:
        ServingInstance(model=no_attention, gpu=get_gpu("H100"), tp=1)
    assert str(info.value) == SERVING_REFUSAL


def test_models_list_and_show_give_the_blocks(run_cli):
    code, out, _ = run_cli("models", "list")
    assert code == 0
    line = next(row for row in out.splitlines() if row.startswith("nemotron-h-56b "))
    assert "56.32" in line and "118 M54 *10 -54" in line
    code, out, _ = run_cli("models", "list", "--format", "json")
    nano = {m["name"]: m for m in json.loads(out)["models"]}["nemotron-3-nano-30b-a3b"]
    assert nano["hybrid_blocks"] == {"M": 23, "*": 6, "E": 23} and nano["top_k"] == 6
    code, out, _ = run_cli("models", "show", "nemotron-h-56b")
    assert code == 0 and "56,324,350,464" in out
    assert "54 Mamba-2 mixer (M), 10 attention (*), 54 MLP (-)" in out
    assert "M 438,432,512, * 151,003,136, - 536,879,104" in out
    code, out, _ = run_cli("models", "show", "nemotron-h-56b", "--format", "json")
    data = json.loads(out)
    assert data["hybrid_blocks"] == {"M": 54, "*": 10, "-": 54} and data["total_params"] == 56_324_350_464


def test_show_yaml_of_a_hybrid_loads_back(run_cli, tmp_path):
    code, out, _ = run_cli("models", "show", "nemotron-3-nano-30b-a3b", "--format", "yaml")
    assert code == 0
    path = tmp_path / "nano3.yaml"
    path.write_text(out, encoding="utf-8")
    again = load_model(str(path))
    assert again.to_dict() == {**load_model("nemotron-3-nano-30b-a3b").to_dict(), "name": again.name}


def test_no_position_embedding_exports_as_none():
    # position "none" (Nemotron-H's MambaModel default) must not fall back to Megatron-LM's learned_absolute default:
    # a transformer described without positions exports --position-embedding-type none and no RoPE flags.
    from clusterplan.frameworks.megatron import model_args
    from clusterplan.models.training.layout import Layout

    args = model_args(load_model("llama3.1-8b").scaled(position="none", rope_scaling="none", rope_scaling_factor=1.0),
                      Layout(tp=8, gbs=64, seq=8192))
    at = args.index("--position-embedding-type")
    assert args[at + 1] == "none" and "--rotary-base" not in args


def test_export_refuses_a_hybrid_where_the_framework_has_no_mamba_blocks(run_cli, tmp_path):
    # A plan file naming a hybrid: Megatron-LM exports it (pretrain_mamba.py); torchtitan and DeepSpeed refuse in
    # one line, before any framework note.
    text = (Path(__file__).parent / "fixtures" / "check" / "good_plan.yaml").read_text()
    plan = tmp_path / "nemotron-h-56b.yaml"
    plan.write_text("\n".join("model: nemotron-h-56b" if line.startswith("model:") else line
                              for line in text.splitlines()) + "\n")
    for target in ("torchtitan", "deepspeed"):
        code, out, err = run_cli("export", str(plan), "--to", target)
        assert (code, out, err.strip().splitlines()) == (
            2, "", [f"error: {EXPORT_REFUSAL.replace('torchtitan', target)}"]), target


def test_nemotron_3_super_counts_and_its_shared_mtp_module():
    """Nemotron 3 Super: 120,668,687,360 parameters (transformers' NemotronHForCausalLM on this config, built on the
    meta device, gives the same; research/hybrid-mamba.md 120.67B), 12.77B active. Its 2 MTP depths of "*E" run one
    shared module (mtp_use_repeated_layer): an attention block, a latent MoE block, the 2h x h projection and three
    norms, counted once: 2,942,324,736."""
    m = load_model("nemotron-3-super-120b-a12b")
    assert (m.total_params(), m.active_params()) == (120_668_687_360, 12_770_216_960)
    block = m.hybrid_block_params("*") + m.hybrid_block_params("E")
    assert m.mtp_params() == block + 2 * 4096 * 4096 + 3 * 4096 == 2_942_324_736
    assert m.scaled(mtp_shared=False).mtp_params() == 2 * m.mtp_params()
