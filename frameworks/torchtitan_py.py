"""torchtitan 0.3 Python recipes (`--to torchtitan-py`): releases after v0.2 dropped TOML for config functions
returning `Trainer.Config` (PR #2386), selected with `--module/--config`.

Field names are those of torchtitan 0.3.0's `torchtitan/config/configs.py` (`TrainingConfig`, `ParallelismConfig`,
`CompileConfig`) and its llama3 recipes (`models/llama3/config_registry.py`: `model_registry(flavor, converters=[
Float8LinearConverter.Config(...)])`, `SelectiveAC.Config()`/`FullAC.Config()`). The batch is in sequences:
local_batch_size per data-parallel rank, cut into local / pipeline_parallel_microbatch_size pipeline micro-batches.
CUDA graphs (on by default) do not run with pipeline or expert parallelism (`Trainer.Config._validate_cuda_graphs`),
so those exports turn them off. tests/test_framework_parsers.py builds every export with torchtitan's own classes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from clusterplan.errors import InfeasibleError
from clusterplan.frameworks.common import (
    Export,
    Note,
    Stages,
    check_exportable,
    header_lines,
    slug,
    stage_lines,
    with_stage_ends,
)
from clusterplan.frameworks.torchtitan import (
    HF_ASSETS,
    MODELS,
    SCHEDULES,
    batch_sizes,
    compile_components,
    data_parallel,
    eager_fp8_notes,
    even_layers_per_stage,
    model_parts,
    notes,
    refuse_unsupported,
    torchrun_prefix,
)
from clusterplan.frameworks.torchtitan import runs_as as titan_runs_as
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.layout import Layout

HEAD_MODULE = "lm_head"
"""The LM head's module name in torchtitan 0.3 decoders (`models/common/decoder.py`); v0.2 called it `output`."""


def runs_as(model: ModelSpec, layout: Layout) -> Layout:
    """As the v0.2 TOML, except that 0.3 can turn sequence parallelism off, and experts are not tensor-parallel."""
    if model.is_moe and layout.ep > 1 and layout.etp != 1:
        raise InfeasibleError(f"torchtitan 0.3 folds expert parallelism over dp_shard * cp * tp without expert tensor "
                              f"parallelism; the plan has etp({layout.etp}); set etp=1 or export --to megatron")
    titan = titan_runs_as(model, layout, sequence_parallel_switch=True, rotate_switch=False)
    # 0.3's float8 converter runs rowwise (it has no tensorwise recipe); MXFP8 stays MXFP8
    recipe = titan.fp8_recipe if titan.precision != "fp8" or titan.fp8_recipe == "mxfp8" else "rowwise"
    return replace(titan, recompute_layers=0, fp8_recipe=recipe)  # 0.3: FullAC on every block or none


def _fields(items: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    return [(k, repr(v)) for k, v in items]


def training_fields(layout: Layout) -> list[tuple[str, str]]:
    L = layout
    local, global_ = batch_sizes(L)
    items: list[tuple[str, Any]] = [("local_batch_size", local), ("global_batch_size", global_), ("seq_len", L.seq)]
    if L.precision == "fp32":
        items.append(("mixed_precision_param", "float32"))
    if L.pp > 1 or L.ep > 1:
        items.append(("disable_cuda_graphs", True))
    return _fields(items)


def parallelism_fields(model: ModelSpec, layout: Layout, stages: Stages = ()) -> list[tuple[str, str]]:
    L = layout
    dp = data_parallel(L)
    items: list[tuple[str, Any]] = [
        ("data_parallel_replicate_degree", dp.replicate), ("data_parallel_shard_degree", dp.shard),
        ("fsdp_reshard_after_forward", dp.reshard_after_forward), ("tensor_parallel_degree", L.tp),
        ("enable_sequence_parallel", L.sp and L.tp > 1), ("pipeline_parallel_degree", L.pp)]
    if L.pp > 1:
        items += [("pipeline_parallel_schedule", SCHEDULES[L.schedule]),
                  ("pipeline_parallel_microbatch_size", L.mbs)]
        per_stage = even_layers_per_stage(model, L, stages)
        if per_stage is not None:
            items += [("pipeline_parallel_layers_per_stage", per_stage),
                      ("pipeline_parallel_first_stage_less_layers", 0), ("pipeline_parallel_last_stage_less_layers", 0)]
        items.append(("module_fqns_per_model_part", model_parts(model, L, head=HEAD_MODULE, stages=stages)))
    items += [("context_parallel_degree", L.cp), ("expert_parallel_degree", L.ep)]
    return _fields(items)


def ac_config(model: ModelSpec, layout: Layout) -> str | None:
    L = layout
    if L.recompute == "selective":
        return "SelectiveAC.Config()"
    if L.recompute == "full":
        return "FullAC.Config()"
    return None


def _call(name: str, fields: list[tuple[str, str]], indent: str) -> list[str]:
    return [f"{indent}{name}(", *(f"{indent}    {k}={v}," for k, v in fields), f"{indent}),"]


def recipe(model: ModelSpec, cluster: Cluster, layout: Layout, function: str, launch: str,
           stages: Stages = (), stack: str | None = None) -> str:
    """The recipe module's text; `stack`, the plan's, says what it compiles (torchtitan.compile_components)."""
    L = layout
    name, flavor = MODELS.get(model.name, (model.family, model.name))
    fp8 = L.precision == "fp8"
    components = compile_components(L, stack)
    compiled = "True" if components else "False"
    ac = ac_config(model, L)
    configs = "CompileConfig, ParallelismConfig, TrainingConfig" if components else "ParallelismConfig, TrainingConfig"
    imports = [f"from torchtitan.config import {configs}",
               "from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC  # noqa: F401",
               f"from torchtitan.models.{name} import model_registry",
               "from torchtitan.trainer import Trainer"]
    mx = fp8 and L.fp8_recipe == "mxfp8"
    if fp8:
        converter = "MXFP8LinearConverter" if mx else "Float8LinearConverter"
        imports.insert(0, f"from torchtitan.components.quantization import {converter}")
    lines = [*(f"# {h}" for h in header_lines(model, cluster, L, "torchtitan 0.3 recipe")),
             f"# launch (every node, {function}.py on PYTHONPATH): {launch}",
             *(f"# {h}" for h in stage_lines(cluster, L, stages, "NODE_RANK in the torchrun line")),
             *(f"# note: {n.text}" for n in py_notes(model, L)),
             f'"""clusterplan recipe for {model.name}: {L.short()}."""', "", *imports, "", "",
             f"def {function}() -> Trainer.Config:", "    return Trainer.Config("]
    if mx:  # MXFP8 on every linear (0.3's MXFP8LinearConverter: fqns, empty = all), compiled
        lines += ["        model_spec=model_registry(", f"            {flavor!r},",
                  f"            converters=[MXFP8LinearConverter.Config(model_compile_enabled={compiled})],", "        ),"]
    elif fp8:  # rowwise float8 (0.3 has no tensorwise: recipe_name rowwise or rowwise_with_gw_hp) on every linear
        # but the LM head, compiled (torchtitan's 405B recipe)
        lines += ["        model_spec=model_registry(", f"            {flavor!r},",
                  "            converters=[Float8LinearConverter.Config(recipe_name='rowwise', filter_fqns=['lm_head'], "
                  f"model_compile_enabled={compiled})],", "        ),"]
    else:
        lines.append(f"        model_spec=model_registry({flavor!r}),")
    lines.append(f"        hf_assets_path={'./assets/hf/' + HF_ASSETS.get(model.name, model.name)!r},")
    lines += _call("training=TrainingConfig", training_fields(L), "        ")
    lines += _call("parallelism=ParallelismConfig", parallelism_fields(model, L, stages), "        ")
    if ac is not None:
        lines.append(f"        activation_checkpoint={ac},")
    if components:
        lines.append(f"        compile=CompileConfig(enable=True, components={list(components)!r}),")
    lines.append("    )")
    return "\n".join(lines) + "\n"


def py_notes(model: ModelSpec, layout: Layout) -> list[Note]:
    L = layout
    # The TOML exporter's notes this recipe leaves out, picked by field: sequence parallel and every-n-th-layer
    # recompute (it says its own on recompute below).
    out = [n for n in notes(model, L) if n.field not in ("sp", "recompute_layers")]
    if L.recompute == "full" and L.recompute_layers:
        out.append(Note(f"torchtitan 0.3 recomputes every block (FullAC) or none; the plan's {L.recompute_layers} "
                        "layers per rank become all layers: less memory, more compute than planned"))
    if L.precision == "fp8" and L.fp8_recipe in ("", "tensorwise"):
        out.append(Note("torchtitan 0.3's Float8LinearConverter runs rowwise float8 (no tensorwise recipe): the plan "
                        "priced tensorwise; `check` of this file prices rowwise", "fp8_recipe"))
    if L.precision == "fp8" and L.fp8_recipe == "mxfp8":
        out.append(Note("torchtitan 0.3's MXFP8LinearConverter converts the LM head too (its fqns select, none "
                        "excludes), where the plan priced it in bf16 as Megatron and torchtitan v0.2 keep it", "fp8_recipe"))
    if L.cp > 1 and L.cp_kind == "ring":
        out.append(Note("torchtitan 0.3 has no context_parallel_rotate_method: torch context_parallel all-gathers "
                        "K/V (its default) where the plan passed them around a ring", "cp_kind"))
    return out


def export_torchtitan_py(model: ModelSpec, cluster: Cluster, layout: Layout, stages: Stages = (),
                         stack: str | None = None) -> Export:
    """A recipe module; torchtitan selects it with --module/--config. A mixed-GPU plan (`stages`) lists each
    stage's modules and says which node ranks start on which GPU type; `stack`, the plan's, what it compiles."""
    check_exportable(model, cluster, layout, stages)
    layout = with_stage_ends(layout, stages)
    refuse_unsupported(model, layout)
    runs_as(model, layout)
    module = f"clusterplan_{slug(model.name)}"
    filename = f"{module}.py"
    launch = (f"{torchrun_prefix(cluster, static=bool(stages))} -m torchtitan.train --module {module} "
              f"--config {module}")
    found = py_notes(model, layout) + eager_fp8_notes(layout, compile_components(layout, stack))
    return Export(text=recipe(model, cluster, layout, module, launch, stages, stack), filename=filename,
                  launch=launch, noted=tuple(found))
