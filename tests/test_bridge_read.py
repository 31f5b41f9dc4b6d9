"""`check` reads Megatron-Bridge configs: the ConfigContainer Megatron-Bridge prints at start-up (a real one:
tests/fixtures/bridge/llama32_1b_run_config.yaml, with its source) and override files of the same shape, as the
layout Megatron-Core runs. Each field is read as the Megatron-LM argument it stands for (Megatron-Bridge
docs/megatron-lm-to-megatron-bridge.md), so a Bridge config and the equivalent Megatron-LM script read the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from clusterplan.cli.main import cli
from clusterplan.errors import BadInputError
from clusterplan.frameworks.read import config_kind, read_config
from clusterplan.models.architecture.catalog import load_model

FIXTURE = Path(__file__).parent / "fixtures" / "bridge" / "llama32_1b_run_config.yaml"


def _write(tmp_path: Path, text: str, name: str = "override.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_printed_container_of_a_real_run():
    # Llama 3.2 1B on 8 GPUs: tp 1, the distributed optimizer (ZeRO-1), 512 sequences of 1,024 tokens (the
    # dataset's length, not the model's 131,072 positions), one per micro-batch, bf16, no recompute
    # (recompute_granularity null; the default recompute_modules list is then unused), fp32 gradient reduce.
    read = read_config(FIXTURE, load_model("llama3.2-1b"), 8)
    L = read.layout
    assert (read.kind, read.stack, read.mismatches) == ("megatron-bridge", "megatron-core", ())
    assert (L.tp, L.pp, L.cp, L.dp, L.zero, L.mbs, L.gbs, L.seq) == (1, 1, 1, 8, 1, 1, 512, 1024)
    assert (L.precision, L.recompute, L.recompute_modules, L.fp32_grads, L.cuda_graphs) == (
        "bf16", "none", "", True, "none")
    # a whole container (its _target_), comm_overlap null at tp 1: nothing assumed; without the precision-aware
    # optimizer (use_precision_aware_optimizer false) Megatron-Core keeps a full fp32 master shard, priced so
    assert read.notes == () and L.precision_aware is False and "fp32-master" in L.short()


def test_the_container_against_another_model_is_a_mismatch():
    read = read_config(FIXTURE, load_model("llama3.1-8b"), 8)
    assert any("--num-layers 16 but llama3.1-8b has 32" in m for m in read.mismatches)


def test_an_override_file_as_the_qwen3_example_writes_it(tmp_path):
    # The shape of Megatron-Bridge examples/recipes/qwen3_moe/conf/qwen3_moe_30b_a3b_pretrain_override_example.yaml
    path = _write(tmp_path, """
model:
  tensor_model_parallel_size: 4
  pipeline_model_parallel_size: 2
  seq_length: 4096
  sequence_parallel: true
  expert_model_parallel_size: 4
  expert_tensor_parallel_size: 1
train:
  global_batch_size: 256
  micro_batch_size: 2
ddp:
  grad_reduce_in_fp32: true
""")
    assert config_kind(path) == "megatron-bridge"
    read = read_config(path, load_model("qwen3-30b-a3b"), 32)
    L = read.layout
    assert (L.tp, L.pp, L.dp, L.ep, L.etp, L.sp, L.mbs, L.gbs, L.seq) == (4, 2, 4, 4, 1, True, 2, 256, 4096)
    assert any(n.startswith("overrides, not a whole ConfigContainer") for n in read.notes)


def test_named_mixed_precision_recipes(tmp_path):
    # bf16_with_fp8_current_scaling_mixed (mixed_precision.py): fp8 hybrid, tensorwise, fp8 parameters, the first and
    # last layer in bf16; the hyphenated NeMo 2 spelling reads the same.
    for name in ("bf16_with_fp8_current_scaling_mixed", "bf16-with-fp8-current-scaling-mixed"):
        path = _write(tmp_path, f"model: {{tensor_model_parallel_size: 2, num_layers: 32}}\ntrain: {{}}\n"
                                f"mixed_precision: {name}\n")
        read = read_config(path, load_model("llama3.1-8b"), 8)
        L = read.layout
        assert (L.precision, L.fp8_params, L.bf16_first_layers, L.bf16_last_layers) == ("fp8", True, 1, 1)
        assert read.fp8_recipe == "tensorwise"
    path = _write(tmp_path, "model: {num_layers: 32}\ntrain: {}\nmixed_precision: bf16_with_mxfp8_mixed\n")
    assert read_config(path, load_model("llama3.1-8b"), 8).fp8_recipe == "mxfp8"


def test_moments_graphs_offload_and_attention_backend(tmp_path):
    # Bridge-only settings pretrain_gpt.py has no flag for: activation offloading (cpu_offloading_num_layers) and CUDA
    # graphs (cuda_graph_impl / cuda_graph_scope); bf16 Adam moments through the precision-aware optimizer; the
    # attention backend as OmegaConf prints the AttnBackend enum (3 = unfused).
    path = _write(tmp_path, """
_target_: megatron.bridge.training.config.ConfigContainer
model:
  num_layers: 80
  tensor_model_parallel_size: 1
  cpu_offloading: true
  cpu_offloading_num_layers: 20
  cuda_graph_impl: transformer_engine
  cuda_graph_scope: [attn]
  attention_backend: {_args_: [3], _call_: true, _target_: megatron.core.transformer.enums.AttnBackend}
train: {micro_batch_size: 1, global_batch_size: 64}
optimizer:
  use_distributed_optimizer: true
  use_precision_aware_optimizer: true
  exp_avg_dtype: {_call_: false, _target_: torch.bfloat16}
  exp_avg_sq_dtype: {_call_: false, _target_: torch.bfloat16}
mixed_precision: {bf16: true, grad_reduce_in_fp32: false}
""")
    L = read_config(path, load_model("llama3.1-70b"), 64).layout
    assert (L.offload_layers, L.cuda_graphs, L.flash_attn, L.bf16_moments, L.fp32_grads, L.zero) == (
        20, "attn", False, True, False, 1)
    full = _write(tmp_path, "model: {num_layers: 80, cuda_graph_impl: local, cuda_graph_scope: full_iteration}\n"
                            "train: {}\n", "full.yaml")
    assert read_config(full, load_model("llama3.1-70b"), 64).layout.cuda_graphs == "full"


def test_megatron_fsdp_from_the_dist_switch(tmp_path):
    # examples/recipes/llama/conf/llama3_8b_pretrain_override_example_megatron_fsdp.yaml: dist.use_megatron_fsdp with
    # ddp.data_parallel_sharding_strategy optim_grads_params = ZeRO-3.
    path = _write(tmp_path, "model: {seq_length: 4096}\ntrain: {global_batch_size: 8, micro_batch_size: 1}\n"
                            "dist: {use_megatron_fsdp: true}\n"
                            "ddp: {data_parallel_sharding_strategy: optim_grads_params}\n")
    assert read_config(path, load_model("llama3.1-8b"), 8).layout.zero == 3


def test_a_plan_file_is_still_a_plan(tmp_path):
    path = tmp_path / "plan.yaml"
    out = CliRunner().invoke(cli, ["plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--gbs", "64",
                                   "--seq", "4096", "--top", "1", "--out", str(path)])
    assert out.exit_code == 0, out.output
    assert config_kind(path) == "plan"


@pytest.mark.parametrize(("text", "message"), [
    ("model: {num_layers: 32}\ntrain: {}\nmixed_precision: bf17_mixed\n",
     "mixed_precision 'bf17_mixed' is not one of Megatron-Bridge's recipes"),
    ("model: {tensor_model_parallel_size: two}\ntrain: {}\n", "model.tensor_model_parallel_size must be an integer"),
    ("model: {num_layers: 32}\ntrain: [1, 2]\n", "train must be a section of settings"),
])
def test_bad_configs_are_one_line(tmp_path, text, message):
    with pytest.raises(BadInputError, match=message):
        read_config(_write(tmp_path, text), load_model("llama3.1-8b"), 8)


def test_check_on_the_container():
    out = CliRunner().invoke(cli, ["check", str(FIXTURE), "--model", "llama3.2-1b", "--cluster", "dgx-h100:1",
                                   "--format", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["kind"] == "megatron-bridge" and data["ok"]


def test_a_launch_line_of_recipe_overrides(tmp_path):
    # Megatron-Bridge's run_recipe.py takes ConfigContainer fields as trailing KEY=VALUE overrides (and a named
    # mixed-precision recipe as mixed_precision=NAME); a script with those and no Megatron-LM flag is read as them.
    script = _write(tmp_path, """#!/bin/bash
torchrun --nproc-per-node 8 scripts/training/run_recipe.py --recipe llama3_8b_pretrain_config \\
    model.tensor_model_parallel_size=2 model.sequence_parallel=true \\
    train.global_batch_size=128 train.micro_batch_size=1 dataset.sequence_length=8192 \\
    mixed_precision=bf16_with_fp8_current_scaling_mixed model.recompute_granularity=selective
""", "run.sh")
    read = read_config(script, load_model("llama3.1-8b"), 16)
    L = read.layout
    assert read.kind == "megatron-bridge"
    assert (L.tp, L.sp, L.dp, L.gbs, L.mbs, L.seq, L.recompute, L.precision, L.bf16_first_layers) == (
        2, True, 8, 128, 1, 8192, "selective", "fp8", 1)
    # what the overrides leave out: Megatron-Core's defaults, but the distributed optimizer as the recipes set it;
    # and no warning about the architecture the recipe carries
    assert L.zero == 1 and "the distributed optimizer" in read.notes[0]
    assert not any("MLP" in n for n in read.notes)
    # without a precision the recipes' bf16_mixed
    plain = _write(tmp_path, "python run_recipe.py --recipe x model.tensor_model_parallel_size=2\n", "plain.sh")
    assert read_config(plain, load_model("llama3.1-8b"), 16).layout.precision == "bf16"


def test_a_printed_container_carries_its_model():
    # check without --model: the container's Megatron-Core TransformerConfig fields are the model
    # (models/architecture/mcore.py); the same layout and the preset's parameter count
    out = CliRunner().invoke(cli, ["check", str(FIXTURE), "--cluster", "dgx-h100:1", "--format", "json"])
    assert out.exit_code == 0, out.output
    with_preset = CliRunner().invoke(cli, ["check", str(FIXTURE), "--model", "llama3.2-1b", "--cluster", "dgx-h100:1",
                                           "--format", "json"])
    a, b = json.loads(out.stdout), json.loads(with_preset.stdout)
    assert a["estimate"]["memory"]["peak_gib"] == b["estimate"]["memory"]["peak_gib"]
    assert a["estimate"]["step_time_s"] == pytest.approx(b["estimate"]["step_time_s"], rel=1e-12)


def test_an_override_file_still_needs_the_model(tmp_path, run_cli):
    path = _write(tmp_path, "model: {tensor_model_parallel_size: 2}\ntrain: {}\n")
    code, out, err = run_cli("check", str(path), "--cluster", "dgx-h100:1")
    assert code == 2 and "needs --model and --cluster" in err and out == ""


def test_the_optimizers_fp8_recipe_decides_the_remainders(tmp_path):
    # MixedPrecisionConfig.setup hands mixed_precision.fp8_recipe to the optimizer config for any compute precision:
    # NVFP4 training with Bridge's default "tensorwise" keeps a full fp32 master, "delayed" keeps the remainders
    for recipe, aware in (("tensorwise", False), ("delayed", True)):
        path = _write(tmp_path, "model: {num_layers: 32}\ntrain: {}\n"
                                "optimizer: {use_distributed_optimizer: true, use_precision_aware_optimizer: true}\n"
                                f"mixed_precision: {{bf16: true, fp4: e2m1, fp8_recipe: {recipe}}}\n", f"{recipe}.yaml")
        read = read_config(path, load_model("llama3.1-8b"), 8)
        assert (read.fp8_recipe, read.layout.precision_aware) == ("nvfp4", aware), recipe


def test_a_pipeline_layout_with_its_virtual_stages(tmp_path):
    # Megatron-Core takes both when they agree (a printed container carries both); Megatron-LM's flags allow one
    text = ("model: {num_layers: 32, pipeline_model_parallel_size: 2, virtual_pipeline_model_parallel_size: VPP, "
            "pipeline_model_parallel_layout: 'Et*8|t*8|t*8|t*8L'}\ntrain: {global_batch_size: 64}\n")
    ok = read_config(_write(tmp_path, text.replace("VPP", "2"), "ok.yaml"), load_model("llama3.1-8b"), 8)
    assert (ok.layout.pp, ok.layout.vpp) == (2, 2)
    with pytest.raises(BadInputError, match="4 chunks over pp 2"):
        read_config(_write(tmp_path, text.replace("VPP", "4"), "bad.yaml"), load_model("llama3.1-8b"), 8)
    script = _write(tmp_path, "torchrun pretrain_gpt.py --pipeline-model-parallel-size 2 "
                              "--num-virtual-stages-per-pipeline-rank 2 --pipeline-model-parallel-layout "
                              "'Et*8|t*8|t*8|t*8L' --micro-batch-size 1\n", "run.sh")
    with pytest.raises(BadInputError, match="cannot be combined"):
        read_config(script, load_model("llama3.1-8b"), 8)


def test_per_layer_graphs_with_full_recompute_are_refused_as_megatron_core_refuses_them(tmp_path):
    # TransformerConfig.__post_init__: "full recompute is only supported with full iteration CUDA graph".
    from clusterplan.errors import BadInputError

    for scope in ("full", "[]"):
        path = _write(tmp_path, f"model: {{num_layers: 80, cuda_graph_impl: local, cuda_graph_scope: {scope}, "
                                "recompute_granularity: full, recompute_method: uniform, recompute_num_layers: 1}\n"
                                "train: {}\n", f"g_{scope.strip('[]') or 'empty'}.yaml")
        with pytest.raises(BadInputError, match="full recompute is only supported with full iteration CUDA graph"):
            read_config(path, load_model("llama3.1-70b"), 64)
    whole = _write(tmp_path, "model: {num_layers: 80, cuda_graph_impl: local, cuda_graph_scope: full_iteration, "
                             "recompute_granularity: full, recompute_method: uniform, recompute_num_layers: 1}\n"
                             "train: {}\n", "g_iter.yaml")
    assert read_config(whole, load_model("llama3.1-70b"), 64).layout.cuda_graphs == "full"


def test_a_null_fp8_recipe_keeps_the_remainders(tmp_path):
    # Megatron-Core's OptimizerConfig keeps the precision-aware optimizer's 2-byte remainders with fp8_recipe None
    # (its default) or delayed; a printed null is None, not the string "None".
    path = _write(tmp_path, "model: {num_layers: 32}\ntrain: {}\n"
                            "optimizer: {use_distributed_optimizer: true, use_precision_aware_optimizer: true}\n"
                            "mixed_precision: {bf16: true, fp8_recipe: null}\n", "null.yaml")
    read = read_config(path, load_model("llama3.1-8b"), 8)
    assert read.layout.precision_aware is True
    assert not any("full fp32 master" in n for n in read.notes)
