"""torchtitan launch configs: the TOML of its v0.2 releases (`--to torchtitan`).

Keys are the `JobConfig` dataclass fields of torchtitan v0.2.x (`torchtitan/config/job_config.py`;
research/style-and-ecosystem.md B.2). Degrees map one to one onto its mesh (pp, dp_replicate, dp_shard, cp, tp), which is
clusterplan's own axis order. Pipeline stages are given as explicit module lists so that the split is exactly the
plan's; `pipeline_parallel_layers_per_stage` (with first/last_stage_less_layers 0, so the embedding and head do not
count as layers) says the same for an even split.

`runs_as(model, layout)` is the layout torchtitan runs for the plan (what `check` reads back from the file):
sequence parallel whenever tp > 1, ring attention for cp, FSDP with reshard_after_forward "never" (ZeRO-2) for
ZeRO-1/2, every n-th layer for a partial full recompute, fp32 master weights (FSDP mixed precision).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from clusterplan.errors import InfeasibleError
from clusterplan.frameworks.common import (
    Export,
    Note,
    Stages,
    canonical,
    check_exportable,
    dispatcher_notes,
    header_lines,
    launch_shape,
    slug,
    stage_lines,
    with_stage_ends,
)
from clusterplan.frameworks.read import TORCHTITAN_MODELS
from clusterplan.frameworks.tomlfmt import Value, toml_text
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.layout import Layout, chunk_layers

# torch.distributed.pipelining.schedules.get_schedule_class names (B.2); zb runs torchtitan's V-shaped zero bubble.
SCHEDULES = {"gpipe": "GPipe", "1f1b": "1F1B", "interleaved-1f1b": "Interleaved1F1B", "zb": "ZBVZeroBubble",
             "zbv": "ZBVZeroBubble"}
# clusterplan preset -> (torchtitan model name, flavor) for the models torchtitan ships.
MODELS = TORCHTITAN_MODELS
HF_ASSETS = {"llama3.1-8b": "Llama-3.1-8B", "llama3.1-70b": "Llama-3.1-70B", "llama3.1-405b": "Llama-3.1-405B"}


@dataclass(frozen=True, kw_only=True, slots=True)
class DataParallel:
    replicate: int
    shard: int
    reshard_after_forward: str


def data_parallel(layout: Layout) -> DataParallel:
    """torchtitan shards with FSDP2 over dp_shard and replicates over dp_replicate (HSDP when both > 1).

    ZeRO-1/2 become FSDP that keeps parameters gathered from forward to backward ("never"), which holds no more
    memory than ZeRO-1/2; ZeRO-3 reshards after every forward ("always"). ZeRO-0 is DDP, which torchtitan
    applies only when nothing else is parallel.
    """
    L = layout
    if L.zero == 0:
        if max(L.tp, L.pp, L.cp, L.ep) > 1:
            raise InfeasibleError(f"torchtitan applies DDP (zero=0) only without tp/pp/cp/ep, but the plan has "
                                  f"{L.short()}; set zero=1 or more (FSDP), or export --to megatron")
        return DataParallel(replicate=L.dp, shard=1, reshard_after_forward="default")
    if L.dp_shard == 1 and L.dp_replicate > 1 and max(L.tp, L.pp, L.cp, L.ep) > 1:
        raise InfeasibleError(f"torchtitan would run dp_replicate({L.dp_replicate}) with dp_shard 1 as DDP, which "
                              "it allows only without tp/pp/cp/ep; set dp_replicate=1 so dp shards")
    return DataParallel(replicate=L.dp_replicate, shard=L.dp_shard,
                        reshard_after_forward="always" if L.zero == 3 else "never")


TITAN_FP8_RECIPES = ("", "tensorwise", "rowwise", "mxfp8")
"""Layout.fp8_recipe values torchtitan runs ("" = the torchtitan stack's first, tensorwise): torchao's float8
recipe_name (tensorwise, rowwise) and its MX converter (quantize.linear.mx, mxfp8_cublas)."""


def refuse_unsupported(model: ModelSpec, layout: Layout, *, etp_choices: str = "tp") -> None:
    """The plans torchtitan cannot run, each with the way out."""
    L = layout
    if L.precision == "fp16":
        raise InfeasibleError("torchtitan trains in bf16 (or fp32/fp8), not fp16; set precision=bf16 in the plan")
    if L.optimizer == "sgd":
        raise InfeasibleError("torchtitan's optimizers are Adam and AdamW, not SGD; set optimizer=adam-master")
    allowed = (1, L.tp) if etp_choices == "tp" else (1,)
    if model.is_moe and L.ep > 1 and L.etp not in allowed:
        raise InfeasibleError(f"torchtitan supports expert_tensor_parallel_degree {' or '.join(map(str, allowed))}, "
                              f"not etp({L.etp}); set etp={allowed[-1]} or export --to megatron")
    if L.precision == "fp8" and L.fp8_recipe not in TITAN_FP8_RECIPES:
        raise InfeasibleError(f"torchtitan's float8 runs {', '.join(TITAN_FP8_RECIPES[1:])}, not fp8_recipe="
                              f"{L.fp8_recipe}; pick one of those or export --to megatron")
    if L.schedule == "dualpipe" and L.pp > 1:
        raise InfeasibleError("torchtitan has no DualPipe (its ScheduleDualPipeV runs the V-shaped half on pp/2 "
                              "ranks); set schedule=zbv with vpp=2, or 1f1b")
    if L.schedule in ("zb", "zbv") and L.pp > 1 and (model.n_layers % (2 * L.pp) or L.first_stage_layers
                                                     or L.last_stage_layers or L.pp_layers):
        raise InfeasibleError(f"the torchtitan export runs ZBVZeroBubble as two even chunks per rank: "
                              f"n_layers({model.n_layers}) must divide by 2 * pp({L.pp}), with no uneven first/last "
                              "stage or per-rank list (pp_layers); drop those, or export --to megatron")
    data_parallel(L)


def every_nth_layer(model: ModelSpec, layout: Layout) -> int:
    """Full recompute of `recompute_layers` per rank as torchtitan's "every n-th layer" selective AC."""
    per_rank = model.n_layers // layout.pp
    return max(1, per_rank // layout.recompute_layers)


def cp_rotate_kind(cp_kind: str, rotate_switch: bool = True) -> str:
    """The Layout.cp_kind torch context_parallel runs: its ring with `context_parallel_rotate_method = "alltoall"`
    (torchtitan v0.2's switch; each step passes K/V on), else its default all-gather of K/V (torch
    _cp_options.rotate_method ALL_GATHER; torchtitan 0.3 has no switch, `rotate_switch` False). Ulysses (a2a) is not
    torch's: it runs as the default."""
    return "ring" if rotate_switch and cp_kind == "ring" else "allgather"


def runs_as(model: ModelSpec, layout: Layout, *, sequence_parallel_switch: bool = False,
            rotate_switch: bool = True) -> Layout:
    """The layout torchtitan runs for this plan (raises InfeasibleError for a plan it cannot run)."""
    L = canonical(model, layout)
    refuse_unsupported(model, L)
    fsdp = L.zero >= 1 and (L.dp_shard > 1 or L.cp > 1)
    zero = (3 if L.zero == 3 else 2) if fsdp else 0
    recompute, recompute_layers = L.recompute, L.recompute_layers
    if recompute == "full" and recompute_layers:
        per_rank = model.n_layers // L.pp
        recompute_layers = per_rank // every_nth_layer(model, L)
        recompute_layers = 0 if recompute_layers >= per_rank else recompute_layers
    cp_kind = cp_rotate_kind(L.cp_kind, rotate_switch) if L.cp > 1 else "ring"
    return canonical(model, replace(L, zero=zero, sp=L.sp if sequence_parallel_switch else L.tp > 1, cp_kind=cp_kind,
                                    cp_a2a=1,
                                    flash_attn=True, optimizer="adam-master", recompute_layers=recompute_layers,
                                    schedule="zbv" if L.schedule == "zb" else L.schedule,
                                    vpp=2 if L.schedule in ("zb", "zbv") and L.pp > 1 else L.vpp,
                                    # its selective recompute is op-level SAC; FSDP2 reduces in fp32; no offloading;
                                    # its fp8 weights are gathered by torchao's float8 all-gather, not fp8-only
                                    recompute_modules="", fp32_grads=True, offload_layers=0, fp8_params=False,
                                    bf16_moments=False, precision_aware=True))


def batch_sizes(layout: Layout) -> tuple[int, int]:
    """(local_batch_size, global_batch_size) in sequences.

    torchtitan accumulates global / (local * dp) gradients; with pp the local batch is cut into
    local / pipeline_parallel_microbatch_size micro-batches, so pp puts all micro-batches in the local batch.
    """
    L = layout
    local = L.gbs // L.dp if L.pp > 1 else L.mbs
    return local, L.gbs


def chunk_counts(model: ModelSpec, layout: Layout) -> list[int]:
    """Transformer layers of each pipeline chunk in model order (ZBV: two even chunks per rank)."""
    if layout.schedule in ("zb", "zbv"):
        return [model.n_layers // (2 * layout.pp)] * (2 * layout.pp)
    return chunk_layers(model, layout)


def model_parts(model: ModelSpec, layout: Layout, head: str = "output", stages: Stages = ()) -> list[list[str]]:
    """Module names of each pipeline chunk in model order (llama3/deepseek_v3/qwen3 module names); a mixed-GPU
    plan's chunks are its stages."""
    if stages:
        counts = [st.layers for st in stages]
    elif layout.schedule in ("zb", "zbv"):
        counts = chunk_counts(model, layout)
    else:
        counts = chunk_layers(model, layout)
    parts, start = [], 0
    for count in counts:
        parts.append([f"layers.{i}" for i in range(start, start + count)])
        start += count
    parts[0].insert(0, "tok_embeddings")
    parts[-1] += ["norm", head]
    return parts


def even_layers_per_stage(model: ModelSpec, layout: Layout, stages: Stages = ()) -> int | None:
    """pipeline_parallel_layers_per_stage when every chunk holds the same number of layers, else None."""
    counts = [st.layers for st in stages] if stages else chunk_counts(model, layout)
    return counts[0] if len(set(counts)) == 1 else None


def parallelism(model: ModelSpec, layout: Layout, stages: Stages = ()) -> dict[str, Value]:
    L = layout
    dp = data_parallel(L)
    table: dict[str, Value] = {
        "data_parallel_replicate_degree": dp.replicate,
        "data_parallel_shard_degree": dp.shard,
        "fsdp_reshard_after_forward": dp.reshard_after_forward,
        "tensor_parallel_degree": L.tp,
        "pipeline_parallel_degree": L.pp,
    }
    if L.pp > 1:
        table["pipeline_parallel_schedule"] = SCHEDULES[L.schedule]
        table["pipeline_parallel_microbatch_size"] = L.mbs
        per_stage = even_layers_per_stage(model, L, stages)
        if per_stage is not None:
            table["pipeline_parallel_layers_per_stage"] = per_stage
            table["pipeline_parallel_first_stage_less_layers"] = 0
            table["pipeline_parallel_last_stage_less_layers"] = 0
        table["module_fqns_per_model_part"] = model_parts(model, L, stages=stages)
    table["context_parallel_degree"] = L.cp
    if L.cp > 1:
        table["context_parallel_rotate_method"] = "alltoall" if cp_rotate_kind(L.cp_kind) == "ring" else "allgather"
    table["expert_parallel_degree"] = L.ep
    table["expert_tensor_parallel_degree"] = L.etp
    return table


def activation_checkpoint(model: ModelSpec, layout: Layout) -> dict[str, Value]:
    """none/selective/full; full on some layers becomes layer-level selective AC, every n-th layer."""
    L = layout
    if L.recompute == "selective":
        return {"mode": "selective", "selective_ac_option": "op"}
    if L.recompute == "full" and L.recompute_layers:
        return {"mode": "selective", "selective_ac_option": str(every_nth_layer(model, L))}
    return {"mode": L.recompute}


def notes(model: ModelSpec, layout: Layout) -> list[Note]:
    L = layout
    out = []
    if model.name not in MODELS:
        out.append(Note(f"torchtitan ships no {model.name}: register a model flavor with these dimensions "
                        f"(hidden {model.hidden}, {model.n_layers} layers, {model.n_heads} heads) under this name"))
    if L.tp > 1 and not L.sp:
        out.append(Note("torchtitan always shards norms and dropout over tp (sequence parallel); the plan had sp "
                        "off, so activations use less memory than planned", "sp"))
    if L.cp > 1 and L.cp_kind in ("a2a", "a2a+p2p"):
        exchange = {"a2a": "all-to-all (Ulysses)", "a2a+p2p": "hierarchical all-to-all + ring (a2a+p2p)"}[L.cp_kind]
        out.append(Note(f"torchtitan's context parallel is torch's ring attention; the plan's {exchange} exchange "
                        "runs as its default all-gather of K/V here", "cp_kind"))
    if L.ep > 1 and L.etp not in (1, L.tp):
        out.append(Note(f"torchtitan supports expert_tensor_parallel_degree 1 or tp({L.tp}), not {L.etp}"))
    if L.recompute == "full" and L.recompute_layers and (model.n_layers // L.pp) % L.recompute_layers:
        out.append(Note(f"recompute_layers({L.recompute_layers}) does not divide the layers per stage; every n-th "
                        "layer is the nearest torchtitan option", "recompute_layers"))
    if L.zero in (1, 2) and L.dp_shard > 1:
        out.append(Note(f"ZeRO-{L.zero} runs as FSDP with fsdp_reshard_after_forward \"never\" (weights stay gathered "
                        "from forward to backward, gradients reduce-scattered: ZeRO-2)", "zero"))
    if L.optimizer == "adam":
        out.append(Note("torchtitan keeps fp32 parameters under FSDP mixed precision (adam-master memory)"))
    out += dispatcher_notes(L, "torchtitan")
    if L.moe_capacity_factor is not None:
        # torchtitan models/moe: TokenChoiceTopKRouter and TokenReorderer send every routed token to its experts.
        out.append(Note(f"moe_capacity_factor={L.moe_capacity_factor:g}: torchtitan's MoE is dropless (no capacity "
                        "factor); every routed token reaches its experts, with uneven splits and a host sync per "
                        "layer, which the plan did not price", "moe_capacity_factor"))
    return out


COMPILE_COMPONENTS: dict[str, tuple[str, ...]] = {"torchtitan": (), "torchtitan-compile": ("model",),
                                                  "torchtitan-compile-loss": ("model", "loss")}
"""What each torchtitan stack compiles (stacks.yaml: eager; the blocks; the blocks and the loss,
pytorch/torchtitan#1033): the export's [compile] section, which `check` reads the stack back from."""


def compile_components(layout: Layout, stack: str | None) -> tuple[str, ...]:
    """torch.compile's components in the export: the plan's torchtitan stack's (COMPILE_COMPONENTS; eager: none);
    for a plan of no torchtitan stack, model and loss under fp8 (torchtitan docs/float8.md: compile "required for
    competitive performance") and none otherwise."""
    if stack in COMPILE_COMPONENTS:
        return COMPILE_COMPONENTS[stack]
    return ("model", "loss") if layout.precision == "fp8" else ()


def eager_fp8_notes(layout: Layout, components: tuple[str, ...]) -> list[Note]:
    """An fp8 plan of the eager stack, written eager as it was priced."""
    if layout.precision != "fp8" or components:
        return []
    return [Note("float8 written without torch.compile, as the plan's stack torchtitan (eager) priced it; "
                 "torchtitan's float8 docs call compile required for competitive performance (plan with --stack "
                 "torchtitan-compile-loss to price it compiled)")]


def sections(model: ModelSpec, layout: Layout, stages: Stages = (), stack: str | None = None
             ) -> dict[str, dict[str, Value]]:
    L = layout
    refuse_unsupported(model, L)
    name, flavor = MODELS.get(model.name, (model.family, model.name))
    local, global_ = batch_sizes(L)
    model_table: dict[str, Value] = {"name": name, "flavor": flavor,
                                     "hf_assets_path": f"./assets/hf/{HF_ASSETS.get(model.name, model.name)}"}
    mx = L.precision == "fp8" and L.fp8_recipe == "mxfp8"
    if L.precision == "fp8":
        model_table["converters"] = ["quantize.linear.mx" if mx else "quantize.linear.float8"]
    out: dict[str, dict[str, Value]] = {
        "job": {"dump_folder": "./outputs", "description": f"{model.name} {L.short()} (clusterplan)"},
        "model": model_table,
        "training": {"local_batch_size": local, "global_batch_size": global_, "seq_len": L.seq,
                     "mixed_precision_param": "float32" if L.precision == "fp32" else "bfloat16",
                     "dataset": "c4"},
        "parallelism": parallelism(model, L, stages),
        "activation_checkpoint": activation_checkpoint(model, L),
    }
    components = compile_components(L, stack)
    if components:
        out["compile"] = {"enable": True, "components": list(components)}
    if mx:  # torchtitan v0.2 MXLinear: cuBLAS MXFP8 GEMMs, the CUDA dim-1 cast its docs recommend, LM head in bf16
        out["quantize.linear.mx"] = {"recipe_name": "mxfp8_cublas", "mxfp8_dim1_cast_kernel_choice": "cuda",
                                     "filter_fqns": ["output"]}
    elif L.precision == "fp8":
        # torchao's float8 all-gather runs under tensorwise scaling only (memory.FSDP_FP8_ALLGATHER_RECIPES)
        gather = L.dp_shard > 1 and L.fp8_recipe in ("", "tensorwise")
        out["quantize.linear.float8"] = {"enable_fsdp_float8_all_gather": gather,
                                         "precompute_float8_dynamic_scale_for_fsdp": gather,
                                         "filter_fqns": ["output"]}
        if L.fp8_recipe == "rowwise":
            out["quantize.linear.float8"]["recipe_name"] = "rowwise"
    return out


def torchrun_prefix(cluster: Cluster, static: bool = False) -> str:
    """torchrun's options; `static` fixes each node's rank (--node-rank), which a mixed-GPU plan needs: c10d
    rendezvous numbers nodes in the order they join, so a stage could land on the other GPU type."""
    shape = launch_shape(cluster)
    if static:
        return (f"torchrun --nnodes {shape.nnodes} --nproc-per-node {shape.gpus_per_node} --node-rank $NODE_RANK "
                "--master-addr $HEAD_NODE_ADDR --master-port 29500")
    if shape.nnodes == 1:
        return f"torchrun --standalone --nnodes 1 --nproc-per-node {shape.gpus_per_node}"
    return (f"torchrun --nnodes {shape.nnodes} --nproc-per-node {shape.gpus_per_node} --rdzv-backend c10d "
            "--rdzv-endpoint $HEAD_NODE_ADDR:29500 --rdzv-id clusterplan")


def export_torchtitan(model: ModelSpec, cluster: Cluster, layout: Layout, stages: Stages = (),
                      stack: str | None = None) -> Export:
    """The v0.2 TOML with the torchrun line that starts it (run the same line on every node). A mixed-GPU plan
    (`stages`) lists each stage's modules and says which node ranks start on which GPU type; `stack`, the plan's,
    says what it compiles (compile_components)."""
    check_exportable(model, cluster, layout, stages)
    layout = with_stage_ends(layout, stages)
    filename = f"{slug(model.name)}.toml"
    launch = f"{torchrun_prefix(cluster, static=bool(stages))} -m torchtitan.train --job.config_file {filename}"
    body = sections(model, layout, stages, stack)
    found = notes(model, layout) + eager_fp8_notes(layout, compile_components(layout, stack))
    comments = [*header_lines(model, cluster, layout, "torchtitan v0.2"), f"launch (every node): {launch}",
                *stage_lines(cluster, layout, stages, "NODE_RANK in the torchrun line"),
                *(f"note: {n.text}" for n in found)]
    return Export(text=toml_text(body, comments), filename=filename, launch=launch, noted=tuple(found))
