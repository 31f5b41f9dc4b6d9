"""Keys a user gives are priced, refused in one line, or named where a framework runs something else: worked
examples from an audit of every layout key through estimate, plan, export and check (2026-12-05)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clusterplan.errors import BadInputError
from clusterplan.frameworks import export_plan, read_config, runs_as
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout, layout_problems
from clusterplan.models.training.rules import RuleCode

PLAN_8B = ("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:2", "--gbs", "64", "--seq", "4096")


# ---- estimate / plan -------------------------------------------------------------------------------------------
def test_a_count_of_recomputed_layers_pins_full_recompute(run_cli):
    code, out, _ = run_cli(*PLAN_8B, "--fix", "recompute_layers=4", "--format", "json")
    assert code == 0
    plans = json.loads(out)["plans"]
    assert plans and all((p["layout"]["recompute"], p["layout"]["recompute_layers"]) == ("full", 4) for p in plans)
    code, _, err = run_cli(*PLAN_8B, "--fix", "recompute=none,recompute_layers=4")
    assert code == 2 and "needs recompute=full" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("layout", "code"), [
    ({"tp": 2, "pp": 2, "etp": 2}, RuleCode.EP_DENSE),            # expert TP on a model without experts
    ({"tp": 2, "vpp": 2, "schedule": "interleaved-1f1b"}, RuleCode.SCHEDULE_NEEDS_PP),
    ({"tp": 2, "schedule": "gpipe"}, RuleCode.SCHEDULE_NEEDS_PP),  # one stage: no pipeline schedule
])
def test_keys_with_nothing_to_act_on_are_refused_by_rule(layout, code):
    L = Layout(gbs=64, **layout)
    model = load_model("llama3.1-8b")
    assert code in [p.code for p in layout_problems(model, L, 16)]
    assert not estimate(model, load_cluster("dgx-h100:2"), L).feasible


def test_recomputing_shared_experts_of_a_model_without_them_costs_nothing():
    model, cluster = load_model("qwen3-30b-a3b"), load_cluster("dgx-h100:2")
    none = estimate(model, cluster, Layout(ep=8, gbs=64, recompute="none")).to_json()
    shared = estimate(model, cluster, Layout(ep=8, gbs=64, recompute="selective",
                                             recompute_modules="shared_experts")).to_json()
    assert shared["step_time_s"] == none["step_time_s"]


def test_v100_trains_in_fp16(run_cli, tmp_path):
    path = tmp_path / "v100.yaml"
    path.write_text("name: v100\ngroups:\n  - {node: dgx-a100-40g, count: 2, gpu: V100-SXM2-32GB, "
                    "scale_up_link: nvlink2}\n", encoding="utf-8")
    model, cluster = load_model("llama3.1-8b"), load_cluster(str(path))
    bf16 = estimate(model, cluster, Layout(tp=8, pp=2, gbs=64))
    assert [r.code for r in bf16.reasons] == [RuleCode.PRECISION] and "fp16" in bf16.reasons[0].fix + str(bf16.reasons[0])
    assert estimate(model, cluster, Layout(tp=8, pp=2, gbs=64, precision="fp16")).feasible
    code, out, _ = run_cli("plan", "--model", "llama3.1-8b", "--cluster", str(path), "--gbs", "64", "--seq", "4096",
                           "--format", "json")
    assert code == 0 and {p["layout"]["precision"] for p in json.loads(out)["plans"]} == {"fp16"}


def test_activation_offloading_only_where_the_stack_has_it(run_cli):
    code, _, err = run_cli("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--gbs", "64", "--seq", "8192",
                           "--stack", "deepspeed", "--fix", "offload_layers=8")
    assert code == 2 and "offloads no activations" in err


# ---- export -> check ---------------------------------------------------------------------------------------------
def _read_back(tmp_path: Path, target: str, model_name: str, layout: Layout, gpus: int = 16, suffix: str = ".sh"):
    model, cluster = load_model(model_name), load_cluster(f"dgx-h100:{gpus // 8}")
    path = tmp_path / f"job{suffix}"
    path.write_text(export_plan(target, model, cluster, layout).text, encoding="utf-8")
    return read_config(path, model, gpus), runs_as(target, model, layout)


def test_megatron_expert_tp_without_expert_parallelism_reads_back(tmp_path):
    layout = Layout(tp=4, dp=4, ep=1, etp=4, gbs=128, seq=4096)
    read, runs = _read_back(tmp_path, "megatron", "qwen3-30b-a3b", layout)
    assert read.layout.etp == 4 and read.layout == runs


def test_megatron_plain_adam_with_bf16_gradients_writes_the_flag(tmp_path):
    layout = Layout(dp=16, gbs=64, optimizer="adam", fp32_grads=False)
    read, runs = _read_back(tmp_path, "megatron", "llama3.1-8b", layout)
    assert read.layout.fp32_grads is False and read.layout == runs


@pytest.mark.parametrize(("cp_kind", "rotate", "back"), [("ring", "alltoall", "ring"),
                                                          ("allgather", "allgather", "allgather"),
                                                          ("a2a", "allgather", "allgather")])
def test_torchtitan_context_parallel_rotate_method_round_trips(tmp_path, cp_kind, rotate, back):
    layout = Layout(cp=2, dp=8, zero=3, gbs=16, seq=16384, cp_kind=cp_kind)
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100:2")
    text = export_plan("torchtitan", model, cluster, layout).text
    assert f'context_parallel_rotate_method = "{rotate}"' in text
    path = tmp_path / "job.toml"
    path.write_text(text, encoding="utf-8")
    assert read_config(path, model, 16).layout.cp_kind == back == runs_as("torchtitan", model, layout).cp_kind


def test_torchtitan_py_runs_rowwise_float8_and_check_prices_it(tmp_path):
    layout = Layout(dp=16, zero=3, gbs=64, seq=4096, precision="fp8")
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100:2")
    export = export_plan("torchtitan-py", model, cluster, layout)
    assert "recipe_name='rowwise'" in export.text
    assert any("rowwise" in n.text for n in export.noted)
    path = tmp_path / "recipe.py"
    path.write_text(export.text, encoding="utf-8")
    assert read_config(path, model, 16).fp8_recipe == "rowwise"


def test_deepspeed_runs_every_checkpointed_layer_and_no_expert_tp(tmp_path):
    layout = Layout(dp=16, gbs=64, recompute="full", recompute_layers=8)
    read, runs = _read_back(tmp_path, "deepspeed", "llama3.1-8b", layout, suffix=".json")
    assert runs.recompute_layers == 0 and read.layout == runs


def test_export_names_every_key_the_framework_runs_otherwise(run_cli, tmp_path):
    plan = tmp_path / "plan.yaml"
    code, _, _ = run_cli(*PLAN_8B, "--stack", "deepspeed", "--fix", "optimizer=adam,fp32_grads=0,precision=bf16",
                         "--out", str(plan))
    assert code == 0
    code, _, err = run_cli("export", str(plan), "--to", "deepspeed", "--out", str(tmp_path / "ds.json"))
    assert code == 0
    assert "runs fp32_grads=1 where the plan has fp32_grads=0" in err
    assert "runs optimizer=adam-master where the plan has optimizer=adam" in err


@pytest.mark.parametrize(("name", "text", "says"), [
    ("a.json", '{"train_batch_size": 128, "train_micro_batch_size_per_gpu": 1, "bf16": true}', "bf16 must be"),
    ("b.json", '{"train_batch_size": 128, "pipeline": 5}', "pipeline must be"),
    ("c.toml", "parallelism = 5\n", "parallelism must be"),
    ("d.toml", '[model]\nconverters = "float8"\n', "converters must be a list"),
    ("e.sh", "torchrun pretrain_gpt.py --tensor-model-parallel-size 2 --context-parallel-size 2 --cp-comm-type ring "
             "--micro-batch-size 1 --global-batch-size 64\n", "--cp-comm-type 'ring'"),
])
def test_malformed_configs_are_one_line_exit_2(run_cli, tmp_path, name, text, says):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    code, _, err = run_cli("check", str(path), "--model", "llama3.1-8b", "--cluster", "dgx-h100:2")
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1


def test_megatron_hierarchical_cp_is_read_with_its_group_sizes(tmp_path):
    # Since stop 38 priced as itself (tests/test_hierarchical_cp.py); it was priced as a2a, with a note, before.
    path = tmp_path / "train.sh"
    script = ("torchrun pretrain_gpt.py --tensor-model-parallel-size 2 --context-parallel-size 4 "
              "--cp-comm-type a2a+p2p --hierarchical-context-parallel-sizes 2 2 --micro-batch-size 1 "
              "--global-batch-size 64 --seq-length 8192\n")
    path.write_text(script, encoding="utf-8")
    read = read_config(path, load_model("llama3.1-8b"), 16)
    assert read.layout.cp_kind == "a2a+p2p" and read.layout.cp_a2a == 2
    path.write_text(script.replace("--hierarchical-context-parallel-sizes 2 2 ", ""), encoding="utf-8")
    with pytest.raises(BadInputError, match="needs --hierarchical-context-parallel-sizes"):
        read_config(path, load_model("llama3.1-8b"), 16)


# ---- serving ------------------------------------------------------------------------------------------------------
def test_serve_estimate_says_what_ep_prices(run_cli):
    args = ("serve-estimate", "--model", "qwen3-30b-a3b", "--gpu", "H100", "--tp", "4", "--concurrency", "16",
            "--input-len", "1000", "--output-len", "200", "--format", "json")
    code, one, _ = run_cli(*args, "--ep", "1")
    code4, four, err = run_cli(*args, "--ep", "4")
    assert code == code4 == 0 and "--ep 4" in err and "not priced" in err
    a, b = json.loads(one), json.loads(four)
    assert a["ep"] == 1 and b["ep"] == 4
