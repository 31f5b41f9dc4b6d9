"""Megatron-Bridge launch scripts (`--to megatron-bridge`): the plan as ConfigContainer overrides on the model's
pre-training recipe, run by Megatron-Bridge's scripts/training/run_recipe.py.

Megatron-Bridge builds the model from a recipe (`llama31_70b_pretrain_config`, ...) and takes every other setting as
trailing Hydra KEY=VALUE overrides of its ConfigContainer (scripts/training/README.md, "Overrides";
training/utils/omegaconf_utils.py parse_hydra_overrides). The script writes every field the layout sets, so what runs
does not depend on the recipe's own choices; the architecture stays the recipe's. Field names are those
frameworks/bridge.py reads back (the round-trip law, tests/test_roundtrip.py), and mean what the Megatron-LM flags of
frameworks/megatron.py mean (Megatron-Bridge docs/megatron-lm-to-megatron-bridge.md).
"""

from __future__ import annotations

from dataclasses import replace

from clusterplan.errors import InfeasibleError
from clusterplan.frameworks import megatron
from clusterplan.frameworks.bridge import MIXED_PRECISION_DEFAULTS, MIXED_PRECISION_PRESETS
from clusterplan.frameworks.common import (
    Export,
    Note,
    Stages,
    canonical,
    check_exportable,
    header_lines,
    launch_shape,
    rank_layers,
    slug,
    stage_lines,
    with_stage_ends,
)
from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.layout import (
    REMAINDER_FP8_RECIPES,
    Layout,
    chunk_layers,
    keeps_master_remainders,
    megatron_keeps_remainders,
    named_fp8_recipe,
    stage_layers,
)

RECIPES = {
    # clusterplan preset -> Megatron-Bridge recipe function (megatron/bridge/recipes/..., each `def NAME(` read in the
    # stored Megatron-Bridge sources; older releases keep them as compatibility aliases of the tuned recipes)
    "llama3.1-8b": "llama31_8b_pretrain_config", "llama3.1-70b": "llama31_70b_pretrain_config",
    "llama3.1-405b": "llama31_405b_pretrain_config", "llama3.2-1b": "llama32_1b_pretrain_config",
    "qwen3-30b-a3b": "qwen3_30b_a3b_pretrain_config", "qwen3-235b-a22b": "qwen3_235b_a22b_pretrain_config",
    "deepseek-v3": "deepseek_v3_pretrain_config", "gpt-oss-120b": "gpt_oss_120b_pretrain_config",
}
RUNNER = "scripts/training/run_recipe.py"
"""Megatron-Bridge's recipe runner (from the Megatron-Bridge checkout): --recipe, then ConfigContainer overrides (no
--mode or --dataset: their names changed between releases; a *_pretrain_config recipe is a pre-training one)."""
FSDP_STRATEGY = {0: "no_shard", 1: "no_shard", 2: "optim_grads", 3: "optim_grads_params"}
"""ZeRO stage -> DistributedDataParallelConfig.data_parallel_sharding_strategy (Megatron-FSDP for 2 and 3)."""


def mixed_precision_recipe(layout: Layout) -> str:
    """The Megatron-Bridge named mixed-precision recipe (training/mixed_precision.py) that runs the layout's
    precision; the layout runs as that recipe sets it (runs_as). A recipe whose `mixed_precision` is itself a name
    takes no `mixed_precision.<field>` override (Hydra: "Could not override"), so only the name is written."""
    L = layout
    recipe = named_fp8_recipe(L, get_stack(megatron.STACK))
    if L.precision == "bf16":
        return "bf16_mixed"
    if L.precision == "fp16":
        return "fp16_mixed"
    if L.precision == "fp32":
        raise InfeasibleError("Megatron-Bridge's mixed-precision recipes train bf16 or fp16; export --to megatron for "
                              "an fp32 plan")
    if L.zero == 0 and recipe != "blockwise":
        raise InfeasibleError(f"Megatron-Bridge's {recipe} recipe gathers fp8 parameters (fp8_param_gather), which "
                              "need the distributed optimizer; set zero >= 1, or export --to megatron")
    if recipe == "delayed":
        return "bf16_with_fp8_delayed_scaling_mixed"
    if recipe == "mxfp8":
        return "bf16_with_mxfp8_mixed"
    if recipe == "tensorwise":
        both_two = (L.bf16_first_layers, L.bf16_last_layers) == (2, 2)
        return "nemotron_h_bf16_with_fp8_current_scaling_mixed" if both_two else "bf16_with_fp8_current_scaling_mixed"
    if recipe == "blockwise":
        nano = (L.bf16_first_layers, L.bf16_last_layers) == (2, 2) and L.fp8_params
        return "nanov2_bf16_with_fp8_current_scaling_mixed" if nano else "bf16_with_fp8_subchannel_scaling_mixed"
    raise InfeasibleError(f"fp8 recipe {recipe}: no Megatron-Bridge mixed-precision recipe of it is read here; "
                          "export --to megatron (--fp4-format e2m1 for NVFP4)")


def runs_as(model: ModelSpec, layout: Layout) -> Layout:
    """What Megatron-Core runs for the plan through Megatron-Bridge: as pretrain_gpt.py (megatron.runs_as), except
    that the ConfigContainer also carries activation offloading (pp 1) and CUDA graphs, the attention backend stays
    the recipe's (a fused kernel), and the precision is the named mixed-precision recipe's (fp8 parameters, bf16 end
    layers, fp32 gradient reduce as it sets them). That recipe's fp8_recipe reaches the optimizer config
    (MixedPrecisionConfig.setup), "tensorwise" even for bf16, so Megatron-Core keeps a full fp32 master there
    (layout.keeps_master_remainders): precision_aware off, unless bf16 moments need the precision-aware optimizer."""
    ran = megatron.runs_as(model, layout)
    L = canonical(model, layout)
    preset = MIXED_PRECISION_PRESETS[mixed_precision_recipe(ran)]
    fp8 = ran.precision == "fp8"
    ran = replace(ran, offload_layers=L.offload_layers if L.pp == 1 else 0, cuda_graphs=L.cuda_graphs,
                  flash_attn=True, fp32_grads=preset.get("grad_reduce_in_fp32", True),
                  fp8_params=fp8 and bool(preset.get("fp8_param_gather")),
                  bf16_first_layers=preset.get("num_layers_at_start_in_bf16", 0) if fp8 else 0,
                  bf16_last_layers=preset.get("num_layers_at_end_in_bf16", 0) if fp8 else 0)
    optimizer_recipe = preset.get("fp8_recipe", MIXED_PRECISION_DEFAULTS["fp8_recipe"])  # the optimizer's, fp8 or not
    remainders = keeps_master_remainders(ran, optimizer_recipe) and optimizer_recipe in REMAINDER_FP8_RECIPES
    return canonical(model, replace(ran, precision_aware=ran.bf16_moments or remainders))


def _value(value: object) -> str:
    """A Hydra override value: true / false / null, numbers, quoted text where Hydra's grammar needs it, [a,b]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    text = str(value)
    return f"'{text}'" if any(c in text for c in "|*[]{},=") else text


def parallel_overrides(model: ModelSpec, layout: Layout, stages: Stages = ()) -> dict[str, object]:
    """The model-parallel fields (ModelParallelConfig / TransformerConfig), split as megatron.parallel_args splits."""
    L = layout
    uneven = bool(L.first_stage_layers or L.last_stage_layers or L.pp_layers)
    ranks = rank_layers(model, L, stages)
    per_chunk = uneven and (bool(L.pp_layers) or not megatron.ends_divide_by_vpp(L))
    pp_layout = None
    first = last = None
    if stages and not megatron.first_last_expresses(ranks):
        pp_layout = megatron.pipeline_layout(model, ranks)
    elif per_chunk:
        pp_layout = megatron.pipeline_layout(model, chunk_layers(model, L))
    elif uneven:
        first, _, last = stage_layers(model, L)
    out: dict[str, object] = {
        "model.tensor_model_parallel_size": L.tp, "model.pipeline_model_parallel_size": L.pp,
        # the layout string sets the virtual stages itself (Megatron-Core asserts the two agree when both are given)
        "model.virtual_pipeline_model_parallel_size": L.vpp if L.vpp > 1 and pp_layout is None else None,
        "model.pipeline_model_parallel_layout": pp_layout,
        "model.num_layers_in_first_pipeline_stage": first, "model.num_layers_in_last_pipeline_stage": last,
        "model.context_parallel_size": L.cp,
        "model.cp_comm_type": megatron.CP_COMM_TYPE[L.cp_kind] if L.cp > 1 else None,
        "model.hierarchical_context_parallel_sizes": [L.cp_a2a, L.cp // L.cp_a2a] if L.cp > 1 and
        L.cp_kind == "a2a+p2p" else None,
        "model.sequence_parallel": L.sp and L.tp > 1,
    }
    if model.is_moe:
        out |= {"model.expert_model_parallel_size": L.ep, "model.expert_tensor_parallel_size": L.etp,
                "model.moe_token_dispatcher_type": "alltoall" if L.moe_dispatcher == "alltoall" else "flex",
                "model.moe_expert_capacity_factor": L.moe_capacity_factor,
                "model.moe_pad_expert_input_to_capacity": L.moe_capacity_factor is not None,
                # the merged passes as priced: the experts' weight gradients after their backward all-to-all
                "model.overlap_moe_expert_parallel_comm": L.moe_a2a_overlap,
                "model.delay_wgrad_compute": L.moe_a2a_overlap}
        if L.moe_dispatcher != "alltoall":  # the flex dispatcher's backend (newer Megatron-Core only)
            out["model.moe_flex_dispatcher_backend"] = L.moe_dispatcher
    return out


def training_overrides(layout: Layout) -> dict[str, object]:
    """Batch, recompute, offloading, CUDA graphs, data-parallel sharding, optimizer and precision fields."""
    L = layout
    recompute: dict[str, object] = {"model.recompute_granularity": None, "model.recompute_method": None,
                                    "model.recompute_num_layers": None}
    if L.recompute == "selective":
        recompute = {"model.recompute_granularity": "selective", "model.recompute_method": None,
                     "model.recompute_num_layers": None,
                     # "" = the stack's own selective recompute: Megatron-Core's core attention
                     "model.recompute_modules": L.recompute_modules.split("+") if L.recompute_modules
                     else ["core_attn"]}
    elif L.recompute == "full":
        recompute = {"model.recompute_granularity": "full",
                     "model.recompute_method": "block" if L.recompute_layers else "uniform",
                     "model.recompute_num_layers": megatron.recompute_block(L) if L.recompute_layers else 1}
    # Megatron-Core >= 0.14's cuda_graph_impl / cuda_graph_scope, written only for a plan with graphs (Hydra refuses
    # a key a config does not have, and older containers lack these; the library recipes run eager)
    graphs = {"none": {},
              "attn": {"model.cuda_graph_impl": "transformer_engine", "model.cuda_graph_scope": ["attn"]},
              "full": {"model.cuda_graph_impl": "local", "model.cuda_graph_scope": ["full_iteration"]}}[L.cuda_graphs]
    sharded = L.zero >= 2
    out: dict[str, object] = {
        "train.micro_batch_size": L.mbs, "train.global_batch_size": L.gbs,
        "dataset.sequence_length": L.seq, "model.seq_length": L.seq, **recompute,
        "model.cpu_offloading": bool(L.offload_layers), "model.cpu_offloading_num_layers": L.offload_layers,
        **graphs,
        "ddp.use_distributed_optimizer": L.zero >= 1, "optimizer.use_distributed_optimizer": L.zero >= 1,
        "ddp.use_megatron_fsdp": sharded, "dist.use_megatron_fsdp": sharded,
        "ddp.data_parallel_sharding_strategy": FSDP_STRATEGY[L.zero],
        "ddp.num_distributed_optimizer_instances": L.dp_replicate if L.zero >= 1 else 1,
        "ddp.overlap_grad_reduce": L.zero >= 1, "ddp.overlap_param_gather": L.zero >= 1,
        "optimizer.optimizer": "sgd" if L.optimizer == "sgd" else "adam",
        # bf16 moments (the named recipes' fp8_recipe keeps the remainders off: runs_as)
        "optimizer.use_precision_aware_optimizer": L.bf16_moments,
    }
    if L.bf16_moments:  # Transformer Engine FusedAdam with bf16 m and v (omegaconf_utils reads dtypes as text)
        out |= {"optimizer.exp_avg_dtype": "torch.bfloat16", "optimizer.exp_avg_sq_dtype": "torch.bfloat16"}
    return out | precision_overrides(L)


def precision_overrides(layout: Layout) -> dict[str, object]:
    """The named mixed-precision recipe (mixed_precision_recipe); MixedPrecisionConfig.setup copies its fields into
    the model, optimizer and DDP configs."""
    return {"mixed_precision": mixed_precision_recipe(layout)}


def notes(model: ModelSpec, layout: Layout) -> list[Note]:
    """What runs otherwise than planned: the recipe carries the model, the attention backend and TP overlap."""
    out = []
    if not layout.flash_attn:
        out.append(Note("flash_attn=0: the recipe picks the attention backend (a fused kernel); set "
                        "model.attention_backend=unfused to run the plan's unfused attention", "flash_attn"))
    if layout.pp > 1 and layout.schedule in ("gpipe", "zb"):
        out.append(Note(f"Megatron-Core has no {layout.schedule} schedule; it runs 1F1B", "schedule"))
    if layout.recompute == "full" and layout.recompute_layers % layout.vpp:
        out.append(Note(f"recompute_layers({layout.recompute_layers}) per rank is not a multiple of vpp({layout.vpp}); "
                        f"Megatron recomputes {max(1, layout.recompute_layers // layout.vpp)} per model chunk"))
    if layout.offload_layers and layout.pp > 1:
        out.append(Note("Megatron-Core offloads activations only without pipeline parallelism; the script does not",
                        "offload_layers"))
    ran = runs_as(model, layout)
    for field, what in (("fp8_params", "fp8 parameters"), ("bf16_first_layers", "bf16 first layers"),
                        ("bf16_last_layers", "bf16 last layers"), ("fp32_grads", "fp32 gradient reduce")):
        if getattr(ran, field) != getattr(canonical(model, layout), field):
            out.append(Note(f"{what}: {getattr(ran, field)} as Megatron-Bridge's {mixed_precision_recipe(ran)} sets "
                            f"it (the plan has {getattr(layout, field)})", field))
    plan = canonical(model, layout)
    if plan.precision_aware and megatron_keeps_remainders(plan) and not ran.precision_aware:
        out.append(Note(f"Megatron-Bridge's {mixed_precision_recipe(ran)} hands fp8_recipe tensorwise to the "
                        "optimizer config, so Megatron-Core keeps a full fp32 master shard: 2 B per parameter / dp "
                        "more than the plan priced (export --to megatron keeps the 2-byte remainders)",
                        "precision_aware"))
    if layout.bf16_moments and ran.precision == "bf16":
        out.append(Note("bf16 moments under bf16_mixed: its fp8_recipe (tensorwise) reaches the optimizer config, so "
                        "Megatron-Core keeps a full fp32 master beside them; priced with 2-byte remainders"))
    if model.name not in RECIPES:
        out.append(Note(f"no Megatron-Bridge recipe is known here for {model.name}: set RECIPE to its pre-training "
                        "recipe (run_recipe.py --help lists them); the overrides set the layout, the recipe the model"))
    return out


def export_megatron_bridge(model: ModelSpec, cluster: Cluster, layout: Layout, stages: Stages = ()) -> Export:
    """A bash script that runs Megatron-Bridge's recipe runner with the plan as overrides on mock data; run it on
    every node. A mixed-GPU plan (`stages`) carries its per-rank layers and says which node ranks start where."""
    check_exportable(model, cluster, layout, stages)
    layout = with_stage_ends(layout, stages)
    shape = launch_shape(cluster)
    filename = f"megatron_bridge_{slug(model.name)}.sh"
    launch = f"NODE_RANK=<0..{shape.nnodes - 1}> MASTER_ADDR=<head node> bash {filename}"
    found = notes(model, layout)
    ran = runs_as(model, layout)  # what runs is what is written (e.g. a zero-bubble plan as 1F1B)
    overrides = {**parallel_overrides(model, ran, stages), **training_overrides(ran), "train.train_iters": 100}
    if model.is_hybrid:  # the recipe's own pattern, written so that `check` compares it with the model's
        overrides["model.hybrid_override_pattern"] = model.hybrid_pattern
    recipe = RECIPES.get(model.name)
    default = f"${{RECIPE:-{recipe}}}" if recipe else \
        f"${{RECIPE:?set RECIPE to the Megatron-Bridge pre-training recipe of {model.name}}}"
    lines = ["#!/bin/bash", *(f"# {h}" for h in header_lines(model, cluster, layout, "Megatron-Bridge")),
             f"# launch (every node, from the Megatron-Bridge checkout): {launch}",
             *(f"# {h}" for h in stage_lines(cluster, layout, stages, "NODE_RANK")),
             "# the recipe's own data (mock tokens where it names none); run_recipe.py --help lists the dataset options.",
             *(f"# note: {n.text}" for n in found), "set -euo pipefail", ""]
    lines += [f"export {k}={v}" for k, v in megatron.environment(layout).items()]
    lines += [f'RECIPE="{default}"', "OVERRIDES=("]
    lines += [f'    "{key}={_value(value)}"' for key, value in overrides.items()]  # quoted: no glob, no splitting
    lines += [")", f"torchrun --nproc-per-node {shape.gpus_per_node} --nnodes {shape.nnodes} "
                   '--node-rank "${NODE_RANK:-0}" --master-addr "${MASTER_ADDR:-localhost}" '
                   '--master-port "${MASTER_PORT:-29500}" \\',
              f'    {RUNNER} --recipe "$RECIPE" "${{OVERRIDES[@]}}"']
    return Export(text="\n".join(lines) + "\n", filename=filename, launch=launch, noted=tuple(found))
