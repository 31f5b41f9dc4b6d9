"""`check` on the frameworks' own example configs (tests/fixtures/upstream, sources in its README): each is read as the
layout the framework runs, and passes or fails only for a true reason."""

from __future__ import annotations

import json
from pathlib import Path

from clusterplan.frameworks import read_config
from clusterplan.models.architecture.catalog import load_model

UP = Path(__file__).parent / "fixtures" / "upstream"


def _check(run_cli, name: str, model: str, cluster: str) -> tuple[int, dict]:
    code, out, _ = run_cli("check", str(UP / name), "--model", model, "--cluster", cluster, "--format", "json")
    return code, json.loads(out)


def test_torchtitan_llama3_70b_toml_passes_on_the_64_a100s_it_was_written_for(run_cli):
    code, doc = _check(run_cli, "torchtitan_llama3_70b.toml", "llama3.1-70b", "dgx-a100-80g:8")
    L = doc["layout"]
    # dp_shard -1 takes the 8 ranks left by tp 8; "default" resharding without pp is ZeRO-3; tp always shards norms
    assert (L["tp"], L["pp"], L["dp"], L["zero"], L["sp"], L["recompute"], L["mbs"], L["seq"]) == (
        8, 1, 8, 3, True, "full", 8, 8192)
    assert code == 0 and doc["ok"]


def test_torchtitan_deepseek_v3_toml_reads_pp1_as_one_chunk(run_cli):
    """The issue's case: pp 1 with an Interleaved1F1B schedule is no pipeline, not vpp 2."""
    code, doc = _check(run_cli, "torchtitan_deepseek_v3_671b.toml", "deepseek-v3", "dgx-h100:8")
    L = doc["layout"]
    assert (L["tp"], L["pp"], L["vpp"], L["schedule"], L["zero"], L["ep"], L["mbs"]) == (8, 1, 1, "1f1b", 3, 1, 4)
    # 671B parameters with adam states over 64 GPUs need > 671e9 * 16 B / 64 = 157 GiB each: a true failure
    assert code == 1 and [v["rule"].split(":")[0] for v in doc["violations"]] == ["memory"]


def test_megatron_example_script_with_shell_variables(run_cli):
    model = load_model("llama3.1-8b")
    read = read_config(UP / "megatron_train_llama3_8b_h100_fp8.sh", model, 8)
    L = read.layout
    # TP_SIZE=1, CP_SIZE=1, MICRO_BATCH_SIZE=1, GLOBAL_BATCH_SIZE=128, SEQ_LENGTH=8192 from the script's own lines;
    # "--fp8-format hybrid" is one quoted array element that bash splits into two arguments
    assert (L.tp, L.cp, L.pp, L.dp, L.mbs, L.gbs, L.seq) == (1, 1, 1, 8, 1, 128, 8192)
    assert (L.precision, L.zero, L.sp, L.flash_attn) == ("fp8", 1, False, True)
    assert read.mismatches == () and read.env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    code, doc = _check(run_cli, "megatron_train_llama3_8b_h100_fp8.sh", "llama3.1-8b", "dgx-h100:1")
    assert doc["layout"]["precision"] == "fp8"
    assert code == 0 or [v["rule"].split(":")[0] for v in doc["violations"]] == ["memory"]


def test_a_config_for_another_model_fails_with_that_reason(run_cli):
    code, doc = _check(run_cli, "megatron_train_llama3_8b_h100_fp8.sh", "llama3.1-70b", "dgx-h100:1")
    rules = [v["rule"] for v in doc["violations"]]
    assert code == 1 and "--num-layers 32 but llama3.1-70b has 80; check --model" in rules


def test_unassigned_shell_variable_is_one_line_exit_2(run_cli, tmp_path):
    script = tmp_path / "train.sh"
    script.write_text("torchrun pretrain_gpt.py --tensor-model-parallel-size $TP --micro-batch-size 1\n")
    code, out, err = run_cli("check", str(script), "--model", "llama3.1-8b", "--cluster", "dgx-h100:1")
    assert code == 2 and out == "" and err.count("\n") == 1 and "$TP is not assigned in the script" in err
