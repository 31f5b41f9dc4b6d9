"""Serving answers launch what they priced, or say what they cannot: worked examples from an audit of serve-plan and
serve-estimate (2026-12-05)."""

from __future__ import annotations

import json

import pytest

from clusterplan.models.serving.launch import LaunchConfig, launch_notes, vllm_line

EST = ("serve-estimate", "--concurrency", "4", "--input-len", "512", "--output-len", "64", "--format", "json")


def test_vllm_data_parallel_attention_splits_the_instance_gpus():
    # 8 GPUs as 8 attention ranks: vLLM runs dp ranks of --tensor-parallel-size GPUs each (world = tp x pp x dp).
    line = vllm_line(LaunchConfig(repo="deepseek-ai/DeepSeek-V3", tp=8, ep=8, attention_dp=8))
    assert "--tensor-parallel-size 1 " in line and "--data-parallel-size 8" in line


@pytest.mark.parametrize(("config", "says"), [
    (LaunchConfig(repo="r", kv_dtype="int8"), "KV cache int8"),
    (LaunchConfig(repo="r", weight_dtype="fp4"), "quantized ahead of time"),
    (LaunchConfig(repo="r", weight_dtype="fp16"), "--dtype float16"),
    (LaunchConfig(repo="r", tp=4, ep=2), "spans all 4 GPUs"),
    (LaunchConfig(repo="r", chunk_tokens=100, max_seqs=256), "vLLM refuses it"),
])
def test_what_no_launch_line_carries_is_a_note(config, says):
    assert any(says in n for n in launch_notes(config))


def test_fp8_and_default_precisions_need_no_note():
    assert launch_notes(LaunchConfig(repo="r", kv_dtype="fp8", weight_dtype="fp8")) == []


def test_serve_estimate_json_carries_the_notes(run_cli):
    code, out, _ = run_cli(*EST, "--model", "llama3.1-8b", "--gpu", "H100", "--kv-dtype", "int8")
    assert code == 0 and any("int8" in n for n in json.loads(out)["launch_notes"])


@pytest.mark.parametrize(("args", "says"), [
    (("--model", "glm-4.5-air", "--gpu", "H100", "--tp", "3", "--ep", "3"), "pick an ep dividing them"),
    (("--model", "llama3.1-8b", "--gpu", "H100", "--pp", "1024"), "32 layers"),
])
def test_instances_that_cannot_be_built_are_bad_input(run_cli, args, says):
    code, _, err = run_cli(*EST, *args)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1


def test_a_vanishing_rate_still_gets_one_instance(run_cli):
    code, out, err = run_cli("serve-plan", "--model", "llama3.1-8b", "--ttft-ms", "500", "--tpot-ms", "50", "--rate",
                             "1e-6", "--input-len", "100", "--output-len", "10", "--format", "json")
    assert code == 0, err
    pools = json.loads(out)["pools"]
    assert len(pools) == 1 and pools[0]["instances"] == 1 and pools[0]["gpus"] == 1


def test_capacity_table_mode_refuses_options_it_does_not_read(run_cli, tmp_path):
    table = tmp_path / "cap.json"
    code, _, err = run_cli("serve-plan", "--model", "llama3.1-8b", "--ttft-ms", "500", "--tpot-ms", "50", "--rate", "1",
                           "--input-len", "100", "--output-len", "10", "--save-capacity", str(table))
    assert code == 0, err
    code, _, err = run_cli("serve-plan", "--capacity-table", str(table), "--rate", "5", "--model", "x", "--tp", "2")
    assert code == 2 and "--model, --tp" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("serve-plan", "--capacity-table", str(table), "--rate", "5")
    assert code == 0, err


def test_save_capacity_needs_colocated_instances(run_cli, tmp_path):
    code, _, err = run_cli("serve-plan", "--model", "llama3.1-8b", "--ttft-ms", "500", "--tpot-ms", "50", "--rate", "1",
                           "--input-len", "100", "--output-len", "10", "--disaggregate", "on", "--save-capacity",
                           str(tmp_path / "cap.json"))
    assert code == 2 and "--disaggregate auto or off" in err


@pytest.mark.parametrize(("extra", "says"), [
    (("--batch", "4", "--requests", "10", "--input-len", "100", "--output-len", "10"), "static batch"),
])
def test_serve_estimate_refuses_loads_that_contradict_themselves(run_cli, extra, says):
    code, _, err = run_cli("serve-estimate", "--model", "llama3.1-8b", "--gpu", "H100", *extra)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1


def test_a_trace_gives_the_lengths(run_cli, tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,input_tokens,output_tokens\n0.0,100,10\n0.5,200,20\n1.0,150,15\n", encoding="utf-8")
    code, _, err = run_cli("serve-estimate", "--model", "llama3.1-8b", "--gpu", "H100", "--trace", str(trace),
                           "--input-len", "5000", "--output-len", "5000")
    assert code == 2 and "--trace gives each request's lengths" in err
