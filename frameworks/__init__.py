"""Plans as launch configs: torchtitan (v0.2 TOML and main's Python recipe), Megatron-LM, Megatron-Bridge and
DeepSpeed.

    export_plan("megatron", model, cluster, layout) -> Export(text, filename, launch, noted)
"""

from __future__ import annotations

from collections.abc import Callable

from clusterplan.errors import BadInputError, InfeasibleError
from clusterplan.frameworks import deepspeed, megatron, megatron_bridge, torchtitan, torchtitan_py
from clusterplan.frameworks.common import Export, Stages
from clusterplan.frameworks.deepspeed import export_deepspeed
from clusterplan.frameworks.megatron import export_megatron
from clusterplan.frameworks.megatron_bridge import export_megatron_bridge
from clusterplan.frameworks.read import ReadConfig, read_config
from clusterplan.frameworks.torchtitan import export_torchtitan
from clusterplan.frameworks.torchtitan_py import export_torchtitan_py
from clusterplan.models.architecture.shapes import require_priced
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.layout import Layout

EXPORTERS: dict[str, Callable[..., Export]] = {
    "torchtitan": export_torchtitan,
    "torchtitan-py": export_torchtitan_py,
    "megatron": export_megatron,
    "megatron-bridge": export_megatron_bridge,
    "deepspeed": export_deepspeed,
}

RUNS_AS: dict[str, Callable[[ModelSpec, Layout], Layout]] = {
    "torchtitan": torchtitan.runs_as,
    "torchtitan-py": torchtitan_py.runs_as,
    "megatron": megatron.runs_as,
    "megatron-bridge": megatron_bridge.runs_as,
    "deepspeed": deepspeed.runs_as,
}
"""The layout each framework runs for a plan: what `check` reads back from the export (the round-trip law)."""


def runs_as(target: str, model: ModelSpec, layout: Layout) -> Layout:
    if target not in RUNS_AS:
        raise BadInputError(f"--to {target!r}: choose one of {', '.join(RUNS_AS)}")
    require_mamba_blocks(target, model)
    require_sequential_blocks(target, model)
    return RUNS_AS[target](model, layout)


PARALLEL_BLOCK_TARGETS = ("deepspeed",)
"""Export targets that run a parallel attention / MLP layer: DeepSpeed trains the Hugging Face model itself (its
config carries no architecture). Megatron-Core's TransformerLayer and torchtitan's Llama / DeepSeek blocks run
attention, then the MLP on its output."""


def require_sequential_blocks(target: str, model: ModelSpec) -> None:
    """A parallel-block model (Falcon, GPT-NeoX / Pythia, Cohere) exports to DeepSpeed only
    (PARALLEL_BLOCK_TARGETS)."""
    if model.parallel_block and target not in PARALLEL_BLOCK_TARGETS:
        raise InfeasibleError(f"--to {target}: {target} builds attention and MLP one after the other; {model.name} "
                              "runs them in parallel (x + attn(ln(x)) + mlp(ln(x))); export --to deepspeed, which "
                              "trains the Hugging Face model as it is")


def require_mamba_blocks(target: str, model: ModelSpec) -> None:
    """A hybrid Mamba-2 / attention stack runs on Megatron-Core only: Megatron-LM's pretrain_mamba.py or a
    Megatron-Bridge recipe (stacks.yaml mamba_blocks: torchtitan and DeepSpeed build no Mamba blocks)."""
    if model.is_hybrid and target not in ("megatron", "megatron-bridge"):
        raise InfeasibleError(f"--to {target}: {target} has no Mamba blocks for hybrid {model.name}; export --to "
                              "megatron (pretrain_mamba.py)")


COMPILE_TARGETS = ("torchtitan", "torchtitan-py")
"""Targets whose config says what torch.compile covers, from the plan's stack (torchtitan.compile_components)."""


def export_plan(target: str, model: ModelSpec, cluster: Cluster, layout: Layout, stages: Stages = (),
                stack: str | None = None) -> Export:
    """`target`'s launch config of the plan; `stages` (a mixed-GPU plan's) adds the per-stage layers and GPU types;
    `stack`, the stack the plan was priced on, sets what a torchtitan config compiles."""
    if target not in EXPORTERS:
        raise BadInputError(f"--to {target!r}: choose one of {', '.join(EXPORTERS)}")
    require_priced(model)  # a launch config carries the plan's prices
    require_mamba_blocks(target, model)
    require_sequential_blocks(target, model)
    if target in COMPILE_TARGETS:
        return EXPORTERS[target](model, cluster, layout, stages, stack=stack)
    return EXPORTERS[target](model, cluster, layout, stages)


__all__ = ["EXPORTERS", "RUNS_AS", "Export", "ReadConfig", "export_plan", "read_config", "runs_as"]
