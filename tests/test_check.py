"""`clusterplan check` on good and bad configs of each kind (plan, torchtitan TOML, Megatron-LM args)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIX = Path(__file__).parent / "fixtures" / "check"
MC = ("--model", "llama3.1-70b", "--cluster", "dgx-h100:32")


@pytest.mark.parametrize("name, extra", [("good_plan.yaml", ()), ("good_torchtitan.toml", MC),
                                         ("good_megatron.txt", MC)])
def test_good_configs_pass_with_one_line(run_cli, name, extra):
    code, out, _ = run_cli("check", str(FIX / name), *extra)
    assert code == 0
    assert out.startswith("ok: ") and out.count("\n") == 1
    assert "tp8 pp4" in out and "on 256 GPUs" in out


def _violations(run_cli, name, *extra):
    code, out, _ = run_cli("check", str(FIX / name), *extra, "--format", "json")
    assert code == 1
    return [v["rule"] for v in json.loads(out)["violations"]]


def test_bad_plan_lists_every_rule(run_cli):
    assert _violations(run_cli, "bad_plan.yaml") == [
        "pp(4) * dp(8) * cp(1) * tp(3) = 96 != world(256)",
        "n_heads(64) % tp(3) != 0",
        "kv heads(8) and tp(3): neither divides the other, so kv heads cannot be split or replicated evenly",
        "ffn_hidden(28672) % tp(3) != 0",
        "gbs(500) % (dp(8) * mbs(1)) != 0",
        "sequence parallel needs seq(8192) % (tp(3) * cp(1)) == 0",  # sp is on with tp > 1 unless pinned off
    ]


def test_bad_torchtitan_toml(run_cli):
    # dp = replicate 2 x shard 4 = 8; 3 * 8 * 8 = 192 GPUs of 256. torchtitan deals 80 layers plus the embedding and
    # head (one layer each) over 3 stages as 27, 27, 26 (`_generate_llm_fqn_per_model_part`), which is runnable.
    code, out, _ = run_cli("check", str(FIX / "bad_torchtitan.toml"), *MC, "--format", "json")
    assert code == 1
    doc = json.loads(out)
    assert [v["rule"] for v in doc["violations"]] == ["pp(3) * dp(8) * cp(1) * tp(8) = 192 != world(256)"]
    assert (doc["layout"]["first_stage_layers"], doc["layout"]["last_stage_layers"]) == (27, 26)


def test_bad_megatron_args(run_cli):
    # Megatron derives dp = 256 // (16 * 3) = 5, which leaves 16 GPUs idle.
    assert _violations(run_cli, "bad_megatron.txt", *MC) == [
        "pp(3) * dp(5) * cp(1) * tp(16) = 240 != world(256)",
        "n_layers(80) % (pp(3) * vpp(1)) != 0; set first_stage_layers/last_stage_layers for an uneven split",
    ]


def test_memory_and_mfu_rules(run_cli):
    # 70B with no model parallelism and plain DDP holds 18 bytes x 70.6e9 params per GPU: far over 80 GB.
    rules = _violations(run_cli, "oom_megatron.txt", *MC)
    assert len(rules) == 1 and rules[0].startswith("memory: peak ") and "> 79.6 GiB per GPU" in rules[0]
    code, out, _ = run_cli("check", str(FIX / "good_plan.yaml"), "--min-mfu", "0.99")
    assert code == 1 and "predicted MFU" in out and "fix: run `clusterplan plan`" in out
    code, out, _ = run_cli("check", str(FIX / "good_plan.yaml"), "--headroom-gib", "50")
    assert code == 1 and "+ headroom 50 GiB" in out


def test_fixes_are_printed(run_cli):
    code, out, _ = run_cli("check", str(FIX / "bad_plan.yaml"))
    assert code == 1 and out.startswith("FAIL: ")
    assert "fix: make tp * pp * cp * dp equal the number of GPUs" in out


@pytest.mark.parametrize("args, words", [
    (("broken.toml", *MC), "malformed TOML"),
    (("missing.yaml",), "no such file"),
    (("good_torchtitan.toml",), "needs --cluster (its [model] section names the model"),
])
def test_unreadable_input_exits_2(run_cli, args, words):
    code, _, err = run_cli("check", str(FIX / args[0]), *args[1:])
    assert code == 2 and words in err


def test_megatron_equals_syntax_and_virtual_stages(run_cli):
    # `--flag=value`, --num-virtual-stages-per-pipeline-rank and --recompute-activations (= selective);
    # without --use-distributed-optimizer every rank holds all 18 bytes/param of its 1/32 of 70B: over 80 GB.
    code, out, _ = run_cli("check", str(FIX / "megatron_equals_syntax.txt"), *MC, "--format", "json")
    result = json.loads(out)
    layout = result["layout"]
    assert (layout["tp"], layout["pp"], layout["vpp"], layout["dp"]) == (8, 4, 2, 8)
    assert layout["schedule"] == "interleaved-1f1b" and layout["recompute"] == "selective" and layout["zero"] == 0
    assert code == 1 and [v["rule"].split(":")[0] for v in result["violations"]] == ["memory"]


def test_check_and_validate_commands_do_not_import_torch():
    import subprocess
    import sys

    code = "import sys, clusterplan.cli.check, clusterplan.cli.validate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_out_of_memory_fix_names_only_the_knobs_left():
    # A layout already at ZeRO-3, full recompute and micro-batch 1 is not told to use them; an fp8 layout with bf16
    # weight copies on a stack that can drop them is told so.
    from clusterplan.models.training.rules import Rule

    spent = Rule.out_of_memory("m", zero=3, recompute="full", mbs=1)
    assert spent.fix == "raise tp/pp/cp"
    fresh = Rule.out_of_memory("m", zero=1, recompute="none", mbs=2, fp8_params_off=True)
    assert fresh.fix == ("raise tp/pp/cp, use zero=3, more recompute, lower the micro-batch size or keep the "
                         "parameters in fp8 only (fp8_params=1)")


LAUNCH = """#!/bin/bash
torchrun {shape} pretrain_gpt.py \\
  --tensor-model-parallel-size 8 --pipeline-model-parallel-size 4 --num-layers-per-virtual-pipeline-stage 5 \\
  --sequence-parallel --use-distributed-optimizer --micro-batch-size 1 --global-batch-size 512 --seq-length 8192 \\
  --recompute-granularity selective --bf16
"""


@pytest.mark.parametrize(("shape", "launches", "cluster"), [
    ("--nproc-per-node 8 --nnodes 64", "512 GPUs (torchrun --nnodes 64 x --nproc-per-node 8)", "dgx-h100:64"),
    ("--nnodes=16 --nproc_per_node=4", "64 GPUs (torchrun --nnodes 16 x --nproc-per-node 4)", "dgx-h100:16x4"),
])
def test_a_script_launching_other_gpus_than_the_cluster_says_so_first(run_cli, tmp_path, shape, launches, cluster):
    # The script's own torchrun line starts another world than --cluster's 256 GPUs (on which Megatron would derive
    # dp): that comes first, with the --cluster of the script's own shape, before the rules of the layout on 256 GPUs.
    script = tmp_path / "launch.sh"
    script.write_text(LAUNCH.format(shape=shape), encoding="utf-8")
    code, out, _ = run_cli("check", str(script), *MC, "--format", "json")
    first = json.loads(out)["violations"][0]
    assert code == 1 and first["rule"] == f"the script launches {launches}; --cluster has 256"
    assert first["fix"].startswith(f"give --cluster {cluster} (the script's GPUs), or set the script's --nnodes")
    script.write_text(LAUNCH.format(shape="--nproc-per-node 8 --nnodes 32"), encoding="utf-8")  # 256: it passes
    code, out, _ = run_cli("check", str(script), *MC)
    assert code == 0 and out.startswith("ok: ")


@pytest.mark.parametrize("shape", [
    "--nnodes ${SLURM_NNODES:-1} --nproc-per-node 8",  # the scheduler sets it: the default is not the size
    "--nnodes $NNODES --nproc-per-node 8",
    "--nproc-per-node 8",  # no --nnodes: the launcher's environment decides
    "--nnodes 0 --nproc-per-node 8",
])
def test_a_launch_size_the_script_does_not_fix_is_not_judged(run_cli, tmp_path, shape):
    script = tmp_path / "launch.sh"
    script.write_text(LAUNCH.format(shape=shape), encoding="utf-8")
    code, out, _ = run_cli("check", str(script), *MC)
    assert code == 0 and out.startswith("ok: ")


def test_as_many_gpus_in_other_nodes_is_said(run_cli, tmp_path):
    """64 nodes of 4 GPUs are 256 GPUs like --cluster's 32 of 8, but the script's tp8 then spans two nodes where
    check would price it on NVLink: said first, as LAUNCH_WORLD."""
    script = tmp_path / "launch.sh"
    script.write_text(LAUNCH.format(shape="--nnodes 64 --nproc-per-node 4"), encoding="utf-8")
    code, out, _ = run_cli("check", str(script), *MC, "--format", "json")
    first = json.loads(out)["violations"][0]
    assert code == 1 and first["rule"] == ("the script launches 64 nodes of 4 GPUs (torchrun --nnodes / "
                                           "--nproc-per-node); --cluster has 32 of 8")
