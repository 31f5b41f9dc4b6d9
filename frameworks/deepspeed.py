"""DeepSpeed configs (`--to deepspeed`): the ds_config JSON with DeepSpeed's own constraints.

Keys from `deepspeed/runtime/constants.py` and `runtime/zero/config.py` (research/style-and-ecosystem.md B.2).
DeepSpeed checks train_batch_size == train_micro_batch_size_per_gpu * gradient_accumulation_steps * dp
(`runtime/config.py::_batch_assertion`), with dp = world / (pp * sequence_parallel_size). The pipeline stages go in
DeepSpeed's own `pipeline` section (`runtime/config.py::get_pipeline_config`); what the JSON has no key for (sequence
length, expert parallel size, recompute granularity, attention kernel) goes in a `clusterplan` section that
DeepSpeed ignores and train.py reads, so that `check` reads back the plan that was exported.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from clusterplan.errors import InfeasibleError
from clusterplan.fileio import dumps_json
from clusterplan.frameworks.common import (
    Export,
    Note,
    Stages,
    canonical,
    check_exportable,
    dispatcher_notes,
    launch_shape,
    microbatches_per_step,
    slug,
)
from clusterplan.frameworks.read import PLAN_KEY
from clusterplan.hardware_db.stacks import get_stack
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.layout import Layout


def refuse_unsupported(model: ModelSpec, layout: Layout) -> None:
    """The layouts DeepSpeed alone cannot run, each with the way out."""
    L = canonical(model, layout)
    # Tensor parallelism is DeepSpeed's AutoTP training (tensor_parallel.autotp_size), with the limits the deepspeed
    # stack gives with their sources (stacks.yaml tp_max_zero, tp_alone).
    autotp = get_stack("deepspeed")
    if L.tp > 1 and autotp.tp_max_zero is not None and L.zero > autotp.tp_max_zero:
        raise InfeasibleError(f"DeepSpeed AutoTP (tp={L.tp}) runs with ZeRO stage 0-{autotp.tp_max_zero}, the plan "
                              f"has zero={L.zero}; set zero={autotp.tp_max_zero} or tp=1")
    if L.tp > 1 and autotp.tp_alone and max(L.pp, L.cp, L.ep) > 1:
        raise InfeasibleError(f"DeepSpeed AutoTP (tp={L.tp}) runs beside data parallelism only, the plan has "
                              f"pp={L.pp}, cp={L.cp}, ep={L.ep}; set tp=1 or export --to megatron")
    if L.pp > 1 and L.zero >= 2:
        raise InfeasibleError(f"DeepSpeed pipeline parallelism (PipelineModule, pp={L.pp}) runs with ZeRO stage 0 or 1 "
                              f"only, the plan has zero={L.zero}; set zero=1 or pp=1")
    if L.cp > 1 and L.cp_kind != "a2a":
        raise InfeasibleError(f"DeepSpeed's sequence parallelism is Ulysses all-to-all, not cp_kind={L.cp_kind} "
                              f"(cp={L.cp}); set cp_kind=a2a or export --to torchtitan")
    if L.dp_replicate > 1:
        raise InfeasibleError(f"DeepSpeed shards ZeRO over the whole dp group: dp_replicate({L.dp_replicate}) > 1 "
                              "(hybrid sharding) ran as MiCS, which DeepSpeed 0.19 removed (mics_shard_size is "
                              "rejected); set dp_replicate=1 or export --to torchtitan")
    if L.pp > 1 and L.vpp > 1:
        raise InfeasibleError(f"DeepSpeed's pipeline engine runs one stage per rank (no interleaving), the plan has "
                              f"vpp={L.vpp}; set vpp=1 or export --to megatron")
    if L.pp > 1 and (L.first_stage_layers or L.last_stage_layers or L.pp_layers):
        raise InfeasibleError("DeepSpeed's PipelineModule partitions layers by its partition_method (uniform or by "
                              "parameters), not by given first/last stage sizes; use an even split or export --to megatron")
    if L.precision == "fp8":
        raise InfeasibleError("DeepSpeed's config has no FP8 training; set precision=bf16 (or use Transformer Engine "
                              "inside the model and export bf16)")


def runs_as(model: ModelSpec, layout: Layout) -> Layout:
    """The layout DeepSpeed runs: 1F1B pipeline (TrainSchedule) for any single-stage schedule, fp32 master weights."""
    refuse_unsupported(model, layout)
    L = canonical(model, layout)
    return canonical(model, replace(L, schedule="1f1b", optimizer="adam-master" if L.optimizer == "adam" else
                                    L.optimizer, sp=False,  # AutoTP all-reduces whole activations
                                    # activation checkpointing wraps every layer train.py checkpoints (no count in the
                                    # ds_config); DeepSpeed-MoE shards experts over ep only (no expert TP)
                                    recompute_layers=0, etp=1,
                                    # no Megatron recompute modules; the bf16 optimizer accumulates fp32 gradients;
                                    # no activation offloading in the exported config
                                    recompute_modules="", fp32_grads=True, offload_layers=0, fp8_params=False,
                                    bf16_moments=False, precision_aware=True))


def zero_section(layout: Layout) -> dict[str, Any]:
    L = layout
    zero: dict[str, Any] = {"stage": L.zero}
    if L.zero >= 1:
        zero.update(overlap_comm=True, contiguous_gradients=True, reduce_scatter=True)
    return zero


def ds_config(model: ModelSpec, layout: Layout) -> dict[str, Any]:
    L = layout
    config: dict[str, Any] = {
        "train_batch_size": L.gbs,
        "train_micro_batch_size_per_gpu": L.mbs,
        "gradient_accumulation_steps": microbatches_per_step(L),
        "gradient_clipping": 1.0,
        "zero_optimization": zero_section(L),
        "bf16": {"enabled": L.precision == "bf16"},
        "fp16": {"enabled": L.precision == "fp16"},
        "steps_per_print": 10,
        "wall_clock_breakdown": False,
    }
    if L.tp > 1:
        config["tensor_parallel"] = {"autotp_size": L.tp}
    if L.cp > 1:
        config["sequence_parallel_size"] = L.cp
    if L.pp > 1:
        config["pipeline"] = {"stages": L.pp, "partition": "uniform",
                              "activation_checkpoint_interval": 1 if L.recompute == "full" else 0}
    if L.recompute == "full":
        config["activation_checkpointing"] = {"partition_activations": False, "contiguous_memory_optimization": False,
                                              "cpu_checkpointing": False, "synchronize_checkpoint_boundary": False}
    config[PLAN_KEY] = {"seq_len": L.seq, "recompute": L.recompute, "expert_parallel_size": L.ep,
                        "flash_attn": L.flash_attn, "optimizer": L.optimizer}
    return config


def notes(model: ModelSpec, layout: Layout) -> list[Note]:
    L = layout
    out = []
    if L.recompute == "full":
        out.append(Note("activation_checkpointing takes effect where train.py wraps layers in "
                        "deepspeed.checkpointing.checkpoint (or PipelineModule activation_checkpoint_interval=1)"))
    if L.recompute == "selective":
        out.append(Note("DeepSpeed has no selective recompute switch; use flash attention in the model (it "
                        "recomputes the attention scores, which is what selective recompute saves)"))
    if L.pp > 1:
        out.append(Note(f"train.py must build a deepspeed.pipe.PipelineModule with num_stages={L.pp} (passed as "
                        "--pipeline-parallel-size)"))
    if L.ep > 1:
        # deepspeed/moe/layer.py MoE(capacity_factor=1.0, drop_tokens=True) drops by default: the plan's choice
        # is written out (its capacity is per expert over the k-way gate, padded: sharded_moe.py).
        drop = (f"capacity_factor={L.moe_capacity_factor:g}, drop_tokens=True" if L.moe_capacity_factor is not None
                else "drop_tokens=False")
        out.append(Note(f"train.py must build deepspeed.moe.layer.MoE(num_experts={model.n_experts}, "
                        f"ep_size={L.ep}, k={model.top_k}, {drop}) layers (passed as --ep-size)"))
    if L.cp > 1:
        out.append(Note("train.py must wrap attention in deepspeed.sequence.layer.DistributedAttention (Ulysses)"))
    if L.tp > 1:
        out.append(Note(f"tensor_parallel.autotp_size={L.tp} is DeepSpeed's AutoTP training (deepspeed >= 0.16.4, a "
                        "Hugging Face model AutoTP shards; the data loader gives every rank of a TP group the same "
                        "batch)"))
    out += dispatcher_notes(L, "DeepSpeed")
    return out


def export_deepspeed(model: ModelSpec, cluster: Cluster, layout: Layout, stages: Stages = ()) -> Export:
    """ds_config JSON; the `deepspeed` launch line goes to stderr (JSON has no comments)."""
    check_exportable(model, cluster, layout, stages)
    if stages:
        raise InfeasibleError("DeepSpeed's PipelineModule splits layers by its partition_method (uniform, by "
                              "parameters or by layer type), not by a given layer count per stage, so the mixed-GPU "
                              "plan's per-stage split cannot be written; export --to megatron or --to torchtitan")
    refuse_unsupported(model, layout)
    shape = launch_shape(cluster)
    filename = f"ds_config_{slug(model.name)}.json"
    script_args = [f"--pipeline-parallel-size {layout.pp}"] if layout.pp > 1 else []
    script_args += [f"--ep-size {layout.ep}"] if layout.ep > 1 else []
    launch = " ".join([f"deepspeed --num_nodes {shape.nnodes} --num_gpus {shape.gpus_per_node} --hostfile hostfile",
                       "train.py --deepspeed", f"--deepspeed_config {filename}", *script_args])
    return Export(text=dumps_json(ds_config(model, layout)), filename=filename, launch=launch,
                  noted=tuple(notes(model, layout)))
