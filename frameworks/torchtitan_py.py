"""torchtitan main's Python recipe (`--to torchtitan-py`): main dropped TOML for config functions (PR #2386).

Field names of `ParallelismConfig` and `TrainingConfig` as research/style-and-ecosystem.md B.2 lists them;
batches are in tokens there: num_tokens_per_microbatch_per_dp_rank = mbs * seq, and the trainer accumulates
num_tokens_per_train_step / (microbatch tokens * num_pp_microbatches * dp) gradients.
The import paths follow recipes written against main; check them against your checkout.
"""

from __future__ import annotations

from clusterplan.errors import InfeasibleError
from clusterplan.frameworks.common import (
    Export,
    check_exportable,
    header_lines,
    microbatches_per_step,
    slug,
)
from clusterplan.frameworks.torchtitan import MODELS, SCHEDULES, data_parallel, notes, torchrun_prefix
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.layout import Layout

AC_CONFIG = {"none": None, "selective": "SelectiveAC.Config()", "full": "FullAC.Config()"}


def parallelism_fields(layout: Layout) -> list[tuple[str, str]]:
    L = layout
    dp = data_parallel(L)
    items = [("data_parallel_replicate_degree", dp.replicate), ("data_parallel_shard_degree", dp.shard),
             ("fsdp_reshard_after_forward", repr(dp.reshard_after_forward)), ("tensor_parallel_degree", L.tp),
             ("enable_sequence_parallel", L.sp and L.tp > 1), ("pipeline_parallel_degree", L.pp)]
    if L.pp > 1:
        items += [("pipeline_parallel_schedule", repr(SCHEDULES[L.schedule])),
                  ("num_pp_microbatches", microbatches_per_step(L))]
    items += [("context_parallel_degree", L.cp), ("expert_parallel_degree", L.ep)]
    return [(k, str(v)) for k, v in items]


def training_fields(layout: Layout) -> list[tuple[str, str]]:
    L = layout
    return [("num_tokens_per_microbatch_per_dp_rank", f"{L.mbs} * {L.seq}"),
            ("num_tokens_per_train_step", f"{L.gbs} * {L.seq}"), ("max_context_length", str(L.seq))]


def _call(name: str, fields: list[tuple[str, str]], indent: str) -> list[str]:
    return [f"{indent}{name}(", *(f"{indent}    {k}={v}," for k, v in fields), f"{indent}),"]


def recipe(model: ModelSpec, cluster: Cluster, layout: Layout, function: str, launch: str) -> str:
    name, flavor = MODELS.get(model.name, (model.family, model.name))
    ac = AC_CONFIG[layout.recompute]
    lines = [*(f"# {h}" for h in header_lines(model, cluster, layout, "torchtitan main recipe")),
             f"# launch (every node, {function}.py on PYTHONPATH): {launch}",
             *(f"# note: {n}" for n in notes(model, layout)),
             f'"""clusterplan recipe for {model.name}: {layout.short()}."""', "",
             "from torchtitan.config import ParallelismConfig, TrainingConfig",
             "from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC  # noqa: F401",
             f"from torchtitan.models.{name} import model_registry",
             "from torchtitan.trainer import Trainer", "", "",
             f"def {function}() -> Trainer.Config:", "    return Trainer.Config(",
             f"        model_spec=model_registry({flavor!r}),"]
    lines += _call("training=TrainingConfig", training_fields(layout), "        ")
    lines += _call("parallelism=ParallelismConfig", parallelism_fields(layout), "        ")
    if ac is not None:
        lines.append(f"        activation_checkpoint={ac},")
    lines.append("    )")
    return "\n".join(lines) + "\n"


def export_torchtitan_py(model: ModelSpec, cluster: Cluster, layout: Layout) -> Export:
    """A recipe module; torchtitan main selects it with --module/--config."""
    check_exportable(model, cluster, layout)
    if layout.precision == "fp16":
        raise InfeasibleError("torchtitan trains in bf16 (or fp32/fp8), not fp16; set precision=bf16 in the plan")
    module = f"clusterplan_{slug(model.name)}"
    filename = f"{module}.py"
    launch = f"{torchrun_prefix(cluster)} -m torchtitan.train --module {module} --config {module}"
    return Export(text=recipe(model, cluster, layout, module, launch), filename=filename, launch=launch, notes=tuple(notes(model, layout)))
