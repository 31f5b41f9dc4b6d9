"""`clusterplan models list|show` as a user meets them: presets, our YAML, config.json, in table, json and yaml."""

from __future__ import annotations

import json
from pathlib import Path

HF = Path(__file__).parent / "fixtures" / "hf"
ISSUE_PRESETS = ("llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "llama3-70b", "llama3.1-8b", "llama3.1-70b",
                 "llama3.1-405b", "mistral-7b", "mixtral-8x7b", "mixtral-8x22b", "qwen2.5-7b", "qwen2.5-72b",
                 "qwen3-32b", "qwen3-30b-a3b", "qwen3-235b-a22b", "deepseek-v3", "gpt3-175b", "opt-13b", "opt-66b",
                 "opt-175b", "bloom-176b", "megatron-gpt-1.7b", "megatron-gpt-1t", "gpt-22b")


def test_every_preset_of_the_issue_resolves(run_cli):
    for name in ISSUE_PRESETS:
        code, out, err = run_cli("models", "show", name, "--format", "json")
        assert code == 0, (name, err)
        assert json.loads(out)["total_params"] > 1e9


def test_list_json_has_counts(run_cli):
    code, out, _ = run_cli("models", "list", "--format", "json")
    assert code == 0
    by_name = {m["name"]: m for m in json.loads(out)["models"]}
    # Mixtral of experts (Jiang et al. 2024): 46.7B total, 12.9B active.
    assert round(by_name["mixtral-8x7b"]["total_params"] / 1e9, 1) == 46.7
    assert round(by_name["mixtral-8x7b"]["active_params"] / 1e9, 1) == 12.9
    assert by_name["qwen3-235b-a22b"]["n_experts"] == 128 and by_name["qwen3-235b-a22b"]["top_k"] == 8


def test_list_table(run_cli):
    code, out, _ = run_cli("models", "list")
    assert code == 0
    line = next(row for row in out.splitlines() if row.startswith("deepseek-v3 "))
    assert "671.03" in line and "256 top-8" in line


def test_show_yaml_round_trips(run_cli, tmp_path):
    # `--format yaml` prints a model file; loading it back gives the same model.
    code, out, _ = run_cli("models", "show", "deepseek-v3", "--format", "yaml")
    assert code == 0
    path = tmp_path / "my-model.yaml"
    path.write_text(out, encoding="utf-8")
    _, again, _ = run_cli("models", "show", str(path), "--format", "json")
    _, preset, _ = run_cli("models", "show", "deepseek-v3", "--format", "json")
    assert json.loads(again) == json.loads(preset)


def test_show_config_json_directory(run_cli):
    code, out, _ = run_cli("models", "show", str(HF / "qwen3-30b-a3b"), "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["name"] == "qwen3-30b-a3b" and data["family"] == "qwen3_moe" and data["n_moe_layers"] == 48
    # Qwen3-30B-A3B model card: 30.5B total, 29.9B non-embedding.
    assert round(data["total_params"] / 1e9, 1) == 30.5 and round(data["non_embedding_params"] / 1e9, 1) == 29.9


def test_show_table_names_the_counts(run_cli):
    code, out, _ = run_cli("models", "show", "deepseek-v3")
    assert code == 0
    assert "671,026,404,352" in out and "active_params_excluding_input_embedding" in out
