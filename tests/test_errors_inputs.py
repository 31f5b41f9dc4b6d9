"""Every kind of bad input ends in one line on stderr that names the problem, and exit code 2; never a traceback.

Input kinds: model preset name, our model YAML, Hugging Face config.json, cluster shorthand, cluster YAML, GPU
name. Model inputs go through `clusterplan models show`, GPU names through `clusterplan hw show`; no command takes
a cluster yet, so cluster inputs are checked on `load_cluster`, which every such command will call (the CLI turns
its BadInputError into the same one-line exit 2, as the model cases show).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from clusterplan.errors import BadInputError
from clusterplan.models.hardware.cluster import load_cluster

FIXTURES = Path(__file__).parent / "fixtures"
GOOD_MODEL = {"name": "tiny", "n_layers": 2, "hidden": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 256, "vocab": 1000}
GOOD_HF = json.loads((FIXTURES / "hf" / "llama3.1-8b" / "config.json").read_text())


def assert_one_line_exit_2(run_cli, *args: str, expect: str) -> str:
    code, out, err = run_cli(*args)
    assert code == 2, (code, out, err)
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    assert expect.lower() in err.lower(), err
    return err


# ---- model preset names ---------------------------------------------------------------------------------------

def test_unknown_preset_suggests_close_names(run_cli):
    err = assert_one_line_exit_2(run_cli, "models", "show", "llama3.1-8", expect="unknown model")
    assert "llama3.1-8b" in err and "models list" in err


# ---- our model YAML -----------------------------------------------------------------------------------------

def _yaml(tmp_path: Path, data: object, name: str = "model.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data, encoding="utf-8")
    return str(path)


def test_good_model_yaml_loads(run_cli, tmp_path):
    # The baseline the bad cases below break one field at a time.
    code, out, _ = run_cli("models", "show", _yaml(tmp_path, GOOD_MODEL), "--format", "json")
    assert code == 0 and json.loads(out)["n_kv_heads"] == 2


@pytest.mark.parametrize(("change", "expect"), [
    ({"hidden": None}, "missing model field(s) hidden"),
    ({"n_layers": 0}, "n_layers must be a positive integer"),
    ({"hidden": -64}, "hidden must be a positive integer"),
    ({"vocab": "1000"}, "vocab must be a positive integer"),
    ({"n_kv_heads": 3}, "not a multiple of n_kv_heads(3)"),
    ({"n_kv_heads": 0}, "n_kv_heads must be a positive integer"),
    ({"hidden": 66}, "give head_dim explicitly"),
    ({"n_layer": 2}, "unknown model field(s) n_layer"),
    ({"norm": "batchnorm"}, "norm must be one of"),
    ({"tied_embeddings": "yes"}, "tied_embeddings must be true or false"),
    ({"n_experts": 8, "top_k": 9, "expert_ffn_hidden": 128}, "top_k(9) must be in 1..n_experts(8)"),
    ({"n_experts": 8, "top_k": 2}, "MoE needs expert_ffn_hidden > 0"),
    ({"n_experts": -1}, "n_experts must be an integer >= 0"),
])
def test_bad_model_yaml(run_cli, tmp_path, change, expect):
    data = {k: v for k, v in {**GOOD_MODEL, **change}.items() if v is not None}
    assert_one_line_exit_2(run_cli, "models", "show", _yaml(tmp_path, data), expect=expect)


def test_malformed_model_yaml(run_cli):
    assert_one_line_exit_2(run_cli, "models", "show", str(FIXTURES / "bad" / "malformed.yaml"), expect="malformed YAML")


@pytest.mark.parametrize(("text", "expect"), [
    ("", "expected a mapping at the top level"),
    ("- 1\n- 2\n", "expected a mapping at the top level, got list"),
    ("model: tiny\n", "`model:` must be a mapping"),
])
def test_model_yaml_of_the_wrong_shape(run_cli, tmp_path, text, expect):
    assert_one_line_exit_2(run_cli, "models", "show", _yaml(tmp_path, text), expect=expect)


def test_missing_model_file(run_cli, tmp_path):
    assert_one_line_exit_2(run_cli, "models", "show", str(tmp_path / "nope.yaml"), expect="no such file")


# ---- Hugging Face config.json ---------------------------------------------------------------------------------

def _config(tmp_path: Path, change: dict) -> str:
    path = tmp_path / "m" / "config.json"
    path.parent.mkdir()
    data = {k: v for k, v in {**GOOD_HF, **change}.items() if v is not None}
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path.parent)


@pytest.mark.parametrize(("change", "expect"), [
    ({"model_type": "bert"}, "model_type 'bert' is not supported"),
    ({"num_hidden_layers": None}, "lacks num_hidden_layers"),
    ({"num_attention_heads": 0}, "num_attention_heads must be an integer >= 1"),
    ({"hidden_size": "4096"}, "hidden_size must be an integer >= 1"),
    ({"num_key_value_heads": 5}, "not a multiple of n_kv_heads(5)"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings must be true or false"),
    ({"model_type": "mixtral"}, "lacks num_local_experts"),
])
def test_bad_config_json(run_cli, tmp_path, change, expect):
    assert_one_line_exit_2(run_cli, "models", "show", _config(tmp_path, change), expect=expect)


def test_malformed_config_json(run_cli):
    assert_one_line_exit_2(run_cli, "models", "show", str(FIXTURES / "bad" / "malformed_config.json"),
                           expect="malformed JSON")


def test_unsupported_opt_variant(run_cli):
    # OPT-350m projects 512-wide embeddings up to 1024 (project_in/out): a real config clusterplan cannot count.
    assert_one_line_exit_2(run_cli, "models", "show", str(FIXTURES / "hf" / "opt-350m"), expect="word_embed_proj_dim")


# ---- GPU names --------------------------------------------------------------------------------------------------

def test_unknown_gpu_name(run_cli):
    err = assert_one_line_exit_2(run_cli, "hw", "show", "H2OO", expect="unknown GPU")
    assert "H200-SXM-141GB" in err


# ---- cluster shorthand and cluster YAML ---------------------------------------------------------------------

@pytest.mark.parametrize(("ref", "expect"), [
    ("dgx-h1000:4", "unknown node preset 'dgx-h1000'"),
    ("dgx-h100:0", "node count must be a positive integer"),
    ("dgx-h100", "give PRESET:NODES"),
    ("dgx-h100:-2", "give PRESET:NODES"),
])
def test_bad_cluster_shorthand(ref, expect):
    with pytest.raises(BadInputError) as info:
        load_cluster(ref)
    assert expect in str(info.value) and "\n" not in str(info.value)


GOOD_CLUSTER = {"name": "c", "groups": [{"node": "dgx-h100", "count": 2}]}


@pytest.mark.parametrize(("data", "expect"), [
    ({"name": "c"}, "needs `groups:`"),
    ({"groups": [{"node": "dgx-h100"}]}, "groups[0] needs `node` and `count`"),
    ({"groups": ["dgx-h100"]}, "groups[0] needs `node` and `count`"),
    ({"groups": [{"node": "dgx-h100", "count": 2, "gpus": 8}]}, "unknown key(s) gpus"),
    ({"groups": [{"node": "dgx-h100", "count": 2, "gpu": "H1000"}]}, "unknown GPU 'H1000'"),
    ({"groups": [{"node": "dgx-h100", "count": "two"}]}, "node count must be a positive integer"),
    ({"groups": [{"node": "dgx-h100", "count": 2, "gpus_per_node": 0}]}, "gpus_per_node must be a positive integer"),
    ({"groups": [{"node": "dgx-h100", "count": 2, "gpus_per_node": "eight"}]}, "gpus_per_node"),
    ({"groups": [{"node": "dgx-h100", "count": 2, "scale_out_busbw_gb_per_s": -5}]}, "scale_out_busbw_gb_per_s must be > 0"),
    ({**GOOD_CLUSTER, "node_bandwidth_gb_per_s": [[0, 1, 1], [1, 0, 1], [1, 1, 0]]}, "must be a 2x2 matrix"),
    ({**GOOD_CLUSTER, "node_bandwidth_gb_per_s": [[0, -1], [1, 0]]}, "must be a 2x2 matrix of GB/s"),
    ({**GOOD_CLUSTER, "node_bandwidth_gb_per_s": [[0, "fast"], [1, 0]]}, "must be a 2x2 matrix"),
])
def test_bad_cluster_yaml(tmp_path, data, expect):
    path = _yaml(tmp_path, data, "cluster.yaml")
    with pytest.raises(BadInputError) as info:
        load_cluster(path)
    message = str(info.value)
    assert expect in message and "\n" not in message, message
    assert "cluster.yaml" in message or "unknown" in message  # names the file or the unknown name


def test_good_cluster_yaml_loads(tmp_path):
    assert load_cluster(_yaml(tmp_path, GOOD_CLUSTER, "cluster.yaml")).world_size == 16


def test_malformed_cluster_yaml():
    with pytest.raises(BadInputError, match="malformed YAML"):
        load_cluster(str(FIXTURES / "bad" / "malformed_cluster.yaml"))
