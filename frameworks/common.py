"""What every exporter shares: the exported artefact, the launch shape, the checks, and the stage split.

An exporter is a pure function (ModelSpec, Cluster, Layout) -> Export; it never touches files or the console.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from clusterplan.errors import BadInputError, InfeasibleError
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.estimate import fp8_hardware_problems
from clusterplan.models.training.layout import (
    Layout,
    layout_problems,
    megatron_keeps_remainders,
    rank_layer_counts,
    stage_layers,
)
from clusterplan.models.training.planfile import PipelineStage, first_layers, stage_groups, stage_problems

Stages = tuple[PipelineStage, ...]


@dataclass(frozen=True, slots=True)
class Note:
    """One difference between the plan and what the framework runs: `text` says what runs instead; `field` is the
    Layout field it is about (an execution stack's rule on the same field, stack_problems, says it again), else
    empty."""

    text: str
    field: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Export:
    """One exported launch config: the file's text, its suggested name, and the command that starts it."""

    text: str
    filename: str
    launch: str
    """The shell command that starts the job with this file (already inside `text` where the format allows)."""
    noted: tuple[Note, ...] = ()
    """Where the framework cannot run the plan exactly as planned, what it runs instead (also inside `text`)."""

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(n.text for n in self.noted)

    @property
    def noted_fields(self) -> frozenset[str]:
        """The Layout fields whose difference a note already says; a stack rule on one of them (stack_problems:
        Rule.field) says the same again."""
        return frozenset(n.field for n in self.noted if n.field)


@dataclass(frozen=True, kw_only=True, slots=True)
class LaunchShape:
    nnodes: int
    gpus_per_node: int


def slug(name: str) -> str:
    """A file- and identifier-safe form of a model name: `llama3.1-70b` -> `llama3_1_70b`."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "model"


def launch_shape(cluster: Cluster) -> LaunchShape:
    """Nodes and GPUs per node for torchrun/deepspeed, which start the same process count on every node."""
    per_node = {g.gpus_per_node for g in cluster.groups}
    if len(per_node) != 1:
        raise BadInputError(f"cluster {cluster.name}: nodes have {sorted(per_node)} GPUs; torchrun and deepspeed start "
                            "the same number of processes on every node, so export one group at a time")
    return LaunchShape(nnodes=cluster.n_nodes, gpus_per_node=per_node.pop())


def check_exportable(model: ModelSpec, cluster: Cluster, layout: Layout, stages: Stages = ()) -> None:
    """Refuse a plan that the frameworks would reject at start-up: the first broken rule, with its factors (fp8 on
    GPUs without fp8 tensor cores included). A mixed-GPU plan's stages must fit the cluster's GPU types
    (planfile.stage_groups)."""
    if stages:
        stage_groups(model, cluster, layout, stages, "plan stages")
    problems = stage_problems(model, layout, cluster.world_size) if stages else \
        layout_problems(model, layout, cluster.world_size)
    problems += fp8_hardware_problems(cluster, layout)  # no framework runs fp8 without fp8 tensor cores
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InfeasibleError(f"plan layout {layout.short()} is not runnable: {problems[0]}{more}; "
                              "fix the layout (`clusterplan estimate` lists every rule it breaks)")


def microbatches_per_step(layout: Layout) -> int:
    """Micro-batches each data-parallel rank runs per optimizer step: gbs / (dp * mbs)."""
    return layout.gbs // (layout.dp * layout.mbs)


def header_lines(model: ModelSpec, cluster: Cluster, layout: Layout, target: str) -> list[str]:
    """The provenance lines every exported file starts with (without comment markers)."""
    return [f"{target} config written by `clusterplan export` for {model.name} on {cluster.describe()}",
            f"layout: {layout.short()}, gbs {layout.gbs} x seq {layout.seq}, {layout.schedule}, {layout.precision}"]


def canonical(model: ModelSpec, layout: Layout) -> Layout:
    """One spelling per layout: stage sizes written out only when uneven, settings that have no effect reset.

    Two layouts with the same canonical form get the same estimate; the round trip compares canonical forms.
    """
    L = layout
    first, middle, last = stage_layers(model, L)
    n, pp = model.n_layers, L.pp
    even = pp == 1 or (n % pp == 0 and first == last == n // pp and (pp == 2 or middle == n // pp))
    # A per-rank list stays one only where first/last and an even middle cannot say it (frameworks read either).
    # (an end of 0 layers is a list too: first/last_stage_layers 0 means an even share)
    # and one whose equal middle ranks vpp does not divide (STAGE_LAYERS_VPP would refuse the first/last form)
    listed = pp > 1 and bool(L.pp_layers) and (len(set(L.pp_layers[1:-1])) > 1 or 0 in (first, last)
                                                or any(n % L.vpp for n in L.pp_layers[1:-1]))
    return replace(L, first_stage_layers=0 if even or listed else first,
                   last_stage_layers=0 if even or listed else last, pp_layers=L.pp_layers if listed else (),
                   cp_kind="ring" if L.cp == 1 else L.cp_kind, cp_a2a=1 if L.cp == 1 else L.cp_a2a,
                   sp=L.sp and L.tp > 1,
                   dp_replicate=1 if L.zero == 0 or L.dp == 1 else L.dp_replicate,
                   recompute_layers=L.recompute_layers if L.recompute == "full" else 0,
                   schedule="1f1b" if L.pp == 1 else L.schedule, vpp=1 if L.pp == 1 else L.vpp,
                   etp=L.etp if model.is_moe else 1, ep=L.ep if model.is_moe else 1,
                   precision_aware=L.precision_aware or not megatron_keeps_remainders(L))


def with_stage_ends(layout: Layout, stages: Stages) -> Layout:
    """A mixed-GPU plan's layout with its first and last stage sizes written in (what the exporters' shared code
    reads); the stages in between come from `stages` itself."""
    if not stages:
        return layout
    return replace(layout, first_stage_layers=stages[0].layers, last_stage_layers=stages[-1].layers)


def rank_layers(model: ModelSpec, layout: Layout, stages: Stages = ()) -> list[int]:
    """Transformer layers of each pipeline rank: the mixed plan's stages, else the layout's first/middle/last."""
    if stages:
        return [st.layers for st in stages]
    return rank_layer_counts(model, layout)


def stage_lines(cluster: Cluster, layout: Layout, stages: Stages, launcher: str) -> list[str]:
    """Comment lines (without markers) that say which nodes start which pipeline stage of a mixed-GPU plan.

    torchtitan and Megatron-LM put pp outermost in the rank mesh (torchtitan ParallelDims pp, dp_replicate,
    dp_shard, cp, tp; Megatron order tp-cp-ep-dp-pp), so stage s is global ranks s*K .. (s+1)*K - 1 with
    K = tp * cp * dp, and global rank = node rank * GPUs per node + local rank. The frameworks do not know the GPU
    types: only starting each node with the node rank listed here puts each stage on its GPU type.
    `check` reads the `stage S:` lines back (frameworks/read.py STAGE_LINE).
    """
    if not stages:
        return []
    per_stage = layout.tp * layout.cp * layout.dp
    per_node = launch_shape(cluster).gpus_per_node
    lines = [f"mixed GPU types: stage s runs on global ranks s*{per_stage}..(s+1)*{per_stage}-1 (pp is the outermost "
             "mesh axis); the framework does not see GPU types, so start every node with the node rank listed for "
             f"its GPU type ({launcher}); a node started with another rank runs a stage sized for another GPU"]
    for s, (st, first) in enumerate(zip(stages, first_layers(stages), strict=True)):
        lo, hi = s * per_stage, (s + 1) * per_stage - 1
        nodes = f"node rank {lo // per_node}" if lo // per_node == hi // per_node else \
            f"node ranks {lo // per_node}-{hi // per_node}"
        lines.append(f"stage {s}: layers {first}-{first + st.layers - 1} ({st.layers}) on {st.gpu} ({st.node}), "
                     f"{nodes}, global ranks {lo}-{hi}")
    return lines


def dispatcher_notes(layout: Layout, framework: str) -> list[Note]:
    """What a framework without Megatron-Core's flex dispatcher or 1F1B all-to-all overlap runs instead
    (stacks.yaml moe_dispatchers / moe_a2a_overlap: alltoall only, no overlap)."""
    out = []
    if layout.ep > 1 and layout.moe_dispatcher != "alltoall":
        out.append(Note(f"moe_dispatcher={layout.moe_dispatcher}: {framework} runs its standard all-to-all here, "
                        "every routed token copy sent, so the all-to-alls take longer than planned", "moe_dispatcher"))
    if layout.ep > 1 and layout.moe_a2a_overlap:
        out.append(Note(f"moe_a2a_overlap: {framework} has no 1F1B all-to-all overlap; the all-to-alls stay exposed",
                        "moe_a2a_overlap"))
    return out

