"""The round-trip law: for every plan and target, check(export(plan, target)) reads back the layout the framework runs.

    read_config(export(plan, target)).layout == runs_as(target, plan)        (exactly, field by field)
    estimate(runs_as(plan)) == estimate(plan)   whenever runs_as(plan) == canonical(plan)  (memory and time)

over the top plans of `clusterplan plan` for dense, MoE and fp8 models on several clusters (a fixed matrix, >= 50
plans x 4 targets), plus hand-written plans with virtual stages, uneven stages, partial recompute, HSDP, cp and ZBV.
A target that cannot run a plan refuses it at export with the reason (InfeasibleError), never writes a config that
`check` would read as another layout.
"""

from __future__ import annotations

from functools import cache

import pytest

from clusterplan.errors import InfeasibleError
from clusterplan.frameworks import EXPORTERS, export_plan, read_config, runs_as
from clusterplan.frameworks.common import canonical
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
from clusterplan.solver.search import search

SUFFIX = {"torchtitan": ".toml", "torchtitan-py": ".py", "megatron": ".sh", "megatron-bridge": ".sh",
          "deepspeed": ".json"}
STACK = {"torchtitan": "torchtitan", "torchtitan-py": "torchtitan", "megatron": "megatron-core",
         "megatron-bridge": "megatron-core", "deepspeed": "deepspeed"}

# (model, cluster, gbs, seq, fixed layout keys, top): the searches whose top plans form the matrix.
SEARCHES = [
    ("llama3.1-8b", "dgx-h100:1", 64, 8192, None, 6),
    ("llama3.1-8b", "dgx-h100:1", 64, 8192, {"precision": "bf16"}, 6),
    ("llama3.1-8b", "dgx-h100:2", 256, 4096, {"tp": 1, "precision": "bf16"}, 6),
    ("llama3.1-8b", "dgx-h100:2", 128, 4096, {"precision": "fp8"}, 5),
    ("llama3.1-70b", "dgx-h100:8", 512, 8192, None, 6),
    ("llama3.1-70b", "dgx-h100:4", 256, 4096, {"pp": 4}, 5),
    ("llama3.1-70b", "dgx-a100-80g:8", 256, 4096, None, 5),
    ("mixtral-8x7b", "dgx-h100:4", 256, 4096, None, 6),
    ("mixtral-8x7b", "dgx-h100:2", 128, 4096, {"tp": 1}, 5),
    ("qwen3-30b-a3b", "dgx-h100:2", 128, 4096, None, 5),
    ("deepseek-v3", "dgx-h100:32", 1024, 4096, None, 4),
    ("llama3.1-405b", "dgx-h100:16", 512, 8192, {"precision": "fp8"}, 4),
    # what DeepSpeed alone runs (no tp, no ring cp, no fp8 recipe): the plans `plan --stack deepspeed` would rank
    ("llama3.1-8b", "dgx-h100:2", 256, 4096, {"tp": 1, "pp": 1, "cp": 1, "precision": "bf16"}, 6),
    ("llama3.1-70b", "dgx-h100:8", 512, 4096, {"tp": 1, "pp": 1, "cp": 1, "precision": "bf16"}, 5),
    ("qwen3-30b-a3b", "dgx-h100:4", 256, 4096, {"tp": 1, "cp": 1, "pp": 1, "precision": "bf16"}, 5),
]

# Plans the search does not usually rank first, written by hand: each feature a config must carry.
HAND: list[tuple[str, str, dict]] = [
    # a hybrid Mamba stack: Megatron-LM pretrain_mamba.py only (the other targets refuse it)
    ("nemotron-h-56b", "dgx-h100:4", {"tp": 8, "mbs": 1, "gbs": 96, "seq": 8192, "sp": True, "precision": "fp8",
                                      "fp8_params": True, "recompute": "none"}),
    ("nemotron-h-8b", "dgx-h100:2", {"tp": 2, "pp": 2, "mbs": 2, "gbs": 64, "seq": 8192, "sp": True,
                                     "recompute": "selective", "recompute_modules": "core_attn+mlp"}),
    ("llama3.1-70b", "dgx-h100:8", {"tp": 8, "pp": 4, "vpp": 2, "mbs": 1, "gbs": 512, "seq": 8192, "sp": True,
                                    "schedule": "interleaved-1f1b"}),
    ("llama3.1-70b", "dgx-h100:8", {"tp": 8, "pp": 4, "mbs": 1, "gbs": 512, "seq": 8192, "sp": True,
                                    "first_stage_layers": 18, "last_stage_layers": 18}),
    ("llama3.1-70b", "dgx-h100:8", {"tp": 8, "pp": 4, "vpp": 2, "mbs": 1, "gbs": 512, "seq": 8192, "sp": True,
                                    "schedule": "interleaved-1f1b", "first_stage_layers": 16,
                                    "last_stage_layers": 16}),
    ("llama3.1-70b", "dgx-h100:8", {"tp": 8, "pp": 2, "mbs": 1, "gbs": 512, "seq": 8192, "sp": True, "zero": 3,
                                    "recompute": "full", "recompute_layers": 20}),
    ("llama3.1-8b", "dgx-h100:2", {"dp": 16, "dp_replicate": 2, "mbs": 2, "gbs": 256, "seq": 4096,
                                   "recompute": "full", "zero": 3}),
    ("llama3.1-8b", "dgx-h100:2", {"pp": 4, "mbs": 1, "gbs": 64, "schedule": "zb"}),
    ("llama3.1-8b", "dgx-h100:2", {"pp": 4, "vpp": 2, "mbs": 1, "gbs": 64, "schedule": "zbv"}),
    ("llama3.1-8b", "dgx-h100:2", {"pp": 2, "mbs": 1, "gbs": 64, "schedule": "gpipe", "zero": 1}),
    ("llama3.1-8b", "dgx-h100:2", {"cp": 2, "cp_kind": "a2a", "mbs": 1, "gbs": 64, "seq": 16384,
                                   "recompute": "none"}),
    ("llama3.1-8b", "dgx-h100:2", {"tp": 2, "cp": 2, "mbs": 1, "gbs": 64, "seq": 16384, "sp": True, "zero": 2}),
    ("llama3.1-8b", "dgx-h100:1", {"dp": 8, "mbs": 1, "gbs": 64, "zero": 0, "recompute": "full"}),
    ("llama3.1-8b", "dgx-h100:2", {"tp": 2, "pp": 2, "mbs": 1, "gbs": 64, "precision": "fp8", "zero": 3,
                                   "sp": True}),
    ("mixtral-8x7b", "dgx-h100:4", {"pp": 4, "dp": 8, "ep": 8, "mbs": 1, "gbs": 256, "recompute": "full",
                                    "zero": 1}),
    ("mixtral-8x7b", "dgx-h100:4", {"tp": 2, "pp": 2, "ep": 4, "etp": 2, "mbs": 1, "gbs": 256, "sp": True,
                                    "zero": 1}),
    ("deepseek-v3", "dgx-h100:32", {"pp": 8, "ep": 32, "mbs": 1, "gbs": 4096, "first_stage_layers": 5,
                                    "last_stage_layers": 8, "zero": 1}),
    # Megatron recompute modules and bf16 main gradients (--recompute-modules, --grad-reduce-in-bf16); activation
    # offloading, which only the model config can set (Megatron reads it back as none, with a note)
    ("deepseek-v3", "dgx-h100:32", {"pp": 8, "ep": 32, "mbs": 1, "gbs": 4096, "first_stage_layers": 5,
                                    "last_stage_layers": 8, "zero": 1, "recompute": "selective",
                                    "recompute_modules": "mla_up_proj+moe_act", "fp32_grads": False}),
    ("llama3.1-8b", "dgx-h100:1", {"dp": 8, "mbs": 1, "gbs": 64, "zero": 3, "recompute": "none", "offload_layers": 8,
                                   "fp32_grads": False}),
    # per-rank layer lists (Layout.pp_layers): middle ranks that differ, the LM head alone on the last rank, and
    # uneven middle ranks over virtual stages (Megatron --pipeline-model-parallel-layout, torchtitan module lists)
    ("llama3.1-8b", "dgx-h100:2", {"pp": 4, "mbs": 1, "gbs": 64, "zero": 1, "pp_layers": [6, 9, 10, 7]}),
    ("llama3.1-8b", "dgx-h100:2", {"pp": 4, "mbs": 1, "gbs": 64, "zero": 1, "pp_layers": [11, 11, 10, 0]}),
    ("llama3.1-70b", "dgx-h100:8", {"tp": 8, "pp": 4, "vpp": 2, "mbs": 1, "gbs": 512, "seq": 8192, "sp": True,
                                    "schedule": "interleaved-1f1b", "pp_layers": [19, 22, 20, 19]}),
    # the fp8 recipe as part of the plan (Layout.fp8_recipe): MXFP8 and NVFP4 on Blackwell (Megatron --fp8-recipe /
    # --fp4-format; torchtitan's MX converter; NVFP4 refused by torchtitan and DeepSpeed)
    ("llama3.1-8b", "dgx-b200:2", {"mbs": 1, "gbs": 64, "seq": 8192, "zero": 1, "fp8_recipe": "mxfp8"}),
    ("llama3.1-8b", "dgx-b200:2", {"tp": 2, "mbs": 1, "gbs": 64, "seq": 8192, "sp": True, "zero": 1,
                                   "fp8_recipe": "nvfp4"}),
    # Megatron's hierarchical context parallelism: all-to-all inside groups of 2, a ring of 2 across them
    ("llama3.1-8b", "dgx-h100:2", {"tp": 2, "cp": 4, "cp_kind": "a2a+p2p", "cp_a2a": 2, "mbs": 1, "gbs": 64,
                                   "seq": 32768, "sp": True, "zero": 1, "recompute": "none"}),
    # equal middle ranks vpp does not divide: first/last cannot say it (stage layers % vpp), so it stays a list
    ("llama3.1-8b", "dgx-h100:1", {"pp": 4, "vpp": 2, "mbs": 1, "gbs": 64, "zero": 1,
                                   "schedule": "interleaved-1f1b", "pp_layers": [7, 9, 9, 7]}),
]


@cache
def plans() -> list[tuple[str, str, Layout]]:
    out: list[tuple[str, str, Layout]] = []
    for model_name, cluster_ref, gbs, seq, fixed, top in SEARCHES:
        if not top:
            continue
        model, cluster = load_model(model_name), load_cluster(cluster_ref)
        for est in search(model, cluster, gbs, seq, fixed=fixed, top=top).plans:
            out.append((model_name, cluster_ref, est.layout))
    for model_name, cluster_ref, data in HAND:
        out.append((model_name, cluster_ref, Layout.from_dict(data, world=load_cluster(cluster_ref).world_size)))
    return out


def _numbers(model_name: str, cluster_ref: str, layout: Layout) -> tuple[float, float]:
    est = estimate(load_model(model_name), load_cluster(cluster_ref), layout).to_json()
    return est["memory"]["peak_gib"], est["step_time_s"]


def test_matrix_has_at_least_fifty_plans_with_moe_and_fp8():
    matrix = plans()
    assert len(matrix) >= 50
    assert any(load_model(m).is_moe for m, _, _ in matrix)
    assert any(L.precision == "fp8" for _, _, L in matrix)
    assert any(L.vpp > 1 for _, _, L in matrix) and any(L.zero == 3 for _, _, L in matrix)


@pytest.mark.parametrize("target", list(EXPORTERS))
def test_check_reads_back_what_the_framework_runs(tmp_path, target):
    exported = exact = 0
    for i, (model_name, cluster_ref, layout) in enumerate(plans()):
        model, cluster = load_model(model_name), load_cluster(cluster_ref)
        where = f"{model_name} on {cluster_ref}, {layout.short()} -> {target}"
        try:
            result = export_plan(target, model, cluster, layout)
        except InfeasibleError as exc:  # refused at export: runs_as refuses it too, with a reason
            with pytest.raises(InfeasibleError):
                runs_as(target, model, layout)
            assert str(exc), where
            continue
        path = tmp_path / f"plan{i}{SUFFIX[target]}"
        path.write_text(result.text, encoding="utf-8")
        read = read_config(path, model, cluster.world_size)
        expected = runs_as(target, model, layout)
        assert read.layout == expected, where
        assert read.mismatches == (), where
        fp8_compiled = target.startswith("torchtitan") and layout.precision == "fp8"
        # The exported fp8 configs compile model and loss (compile.components): torchtitan-compile-loss.
        assert read.stack == ("torchtitan-compile-loss" if fp8_compiled else STACK[target]), where
        exported += 1
        if expected == canonical(model, layout):
            exact += 1
            assert _numbers(model_name, cluster_ref, read.layout) == _numbers(model_name, cluster_ref, layout), where
    assert exported >= 20 and exact >= 10, (exported, exact)  # DeepSpeed alone runs 22 of the 83


def test_canonical_form_keeps_the_estimate():
    """The round trip compares canonical forms; they must predict the same memory and time as the plan itself."""
    for model_name, cluster_ref, layout in plans():
        same = canonical(load_model(model_name), layout)
        assert _numbers(model_name, cluster_ref, same) == _numbers(model_name, cluster_ref, layout), layout.short()


def test_every_target_runs_the_first_plan_of_a_data_parallel_search(tmp_path):
    """The workflow of the issue: the top plan of a small cluster exports to every target and reads back exactly."""
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100:2")
    layout = Layout.from_dict({"tp": 1, "pp": 1, "mbs": 2, "gbs": 256, "seq": 4096, "zero": 3, "recompute": "full"},
                              world=16)
    for target in EXPORTERS:
        path = tmp_path / f"x{SUFFIX[target]}"
        path.write_text(export_plan(target, model, cluster, layout).text, encoding="utf-8")
        assert read_config(path, model, 16).layout == canonical(model, layout), target


def test_zero_and_resharding_read_from_the_torchtitan_keys(tmp_path):
    """The issue's case: a ZeRO-3 plan read back as zero 3, not from the shard degree alone."""
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100:1")
    path = tmp_path / "c.toml"
    for zero, reshard, expect in ((3, "always", 3), (2, "never", 2), (1, "never", 2)):
        layout = Layout(dp=8, gbs=64, seq=8192, zero=zero)
        text = export_plan("torchtitan", model, cluster, layout).text
        assert f'fsdp_reshard_after_forward = "{reshard}"' in text
        path.write_text(text)
        assert read_config(path, model, 8).layout.zero == expect


def test_megatron_fsdp_is_read_as_zero_3(tmp_path):
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100:1")
    layout = Layout(dp=8, gbs=64, seq=8192, zero=3)
    path = tmp_path / "train.sh"
    path.write_text(export_plan("megatron", model, cluster, layout).text)
    assert read_config(path, model, 8).layout == canonical(model, layout)


def test_refusals_name_the_reason():
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100:2")
    cases = [("deepspeed", Layout(tp=2, dp=8, gbs=64, zero=3), "runs with ZeRO stage 0-2"),
             ("deepspeed", Layout(pp=2, vpp=2, dp=8, gbs=64, schedule="interleaved-1f1b"), "no interleaving"),
             ("torchtitan", Layout(dp=16, gbs=64, optimizer="sgd"), "not SGD"),
             ("torchtitan-py", Layout(dp=16, gbs=64, precision="fp16"), "not fp16")]
    for target, layout, says in cases:
        with pytest.raises(InfeasibleError, match=says):
            export_plan(target, model, cluster, layout)
