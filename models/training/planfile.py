"""Plan files: the three inputs (model, cluster, layout) in one YAML, as `plan --out` writes them and
`check`, `validate` and `export` read them.

    format: clusterplan-plan
    version: 1
    model: llama3.1-70b          # a preset, a path, or an inline ModelSpec mapping
    cluster: dgx-h100:8          # PRESET:NODES[xGPUS], a path, or an inline cluster mapping
    layout: {tp: 8, pp: 4, dp: 2, mbs: 1, gbs: 512, seq: 8192, recompute: selective, sp: true}
    stack: megatron-core         # the execution stack it was planned for (hardware_db/stacks.yaml); estimate
                                 # --plan and check price it there unless --stack says otherwise; optional
    prediction: {...}            # estimate's JSON when written by `plan`; informational
    stages:                      # only in mixed-GPU plans: one entry per pipeline stage, in pipeline order
      - {gpu: A100-SXM4-80GB, node: dgx-a100-80g, layers: 16}
      - {gpu: H100-SXM5-80GB, node: dgx-h100, layers: 64}

A mixed-GPU plan (`plan` on a cluster of several GPU types) runs pipeline stage s on the tp x cp x dp GPUs of ranks
s*K .. (s+1)*K - 1 (K = tp * cp * dp; pp is the outermost mesh axis in torchtitan and Megatron-LM), every one of them
a `gpu` of a `node` group, holding `layers` consecutive transformer layers. Homogeneous plans have no `stages:`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from clusterplan.errors import BadInputError
from clusterplan.fileio import is_file, load_mapping, write_atomic
from clusterplan.hardware_db.stacks import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import Cluster, cluster_from_dict, load_cluster
from clusterplan.models.training.layout import Layout, layout_problems
from clusterplan.models.training.rules import Rule, RuleCode

FORMAT = "clusterplan-plan"
VERSION = 1


STAGE_KEYS = ("gpu", "node", "layers")


@dataclass(frozen=True, kw_only=True, slots=True)
class PipelineStage:
    """One pipeline stage of a mixed-GPU plan: the GPU type (and node preset) its ranks run on, and its layers."""

    gpu: str
    """GPU name as hardware_db spells it (e.g. H100-SXM5-80GB)."""
    node: str
    """Node preset of the cluster group that hosts the stage (e.g. dgx-h100)."""
    layers: int
    """Consecutive transformer layers the stage holds (stage 0 starts at layer 0)."""

    def to_dict(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "node": self.node, "layers": self.layers}


def first_layers(stages: tuple[PipelineStage, ...]) -> tuple[int, ...]:
    """Index of each stage's first transformer layer."""
    out, start = [], 0
    for st in stages:
        out.append(start)
        start += st.layers
    return tuple(out)


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanFile:
    model: ModelSpec
    cluster: Cluster
    layout: Layout
    model_ref: Any
    cluster_ref: Any
    prediction: dict[str, Any] | None = None
    stages: tuple[PipelineStage, ...] = ()
    """Mixed-GPU plans only: the pipeline stages in order (empty for a homogeneous plan)."""
    stack: str | None = None
    """The execution stack the plan was made for (`plan --stack`); None in plan files that do not say."""


def _group_key(group: Any) -> Any:
    """A node group without its node count or its price: two groups with the same key run a stage at the same speed."""
    return replace(group, count=0, price=None)


def stage_groups(model: ModelSpec, cluster: Cluster, layout: Layout, stages: tuple[PipelineStage, ...],
                 where: str = "stages") -> tuple[int, ...]:
    """The cluster group (index) hosting each stage; BadInputError (one line) when the stages do not fit the cluster.

    Each stage takes K = tp * cp * dp GPUs of a group with its GPU and node preset, in stage order; every GPU of the
    cluster must be used (the layout's world is the cluster's), and no stage spans two groups.
    """
    if layout.pp < 2 or len(stages) != layout.pp:
        raise BadInputError(f"{where}: {len(stages)} stages for pp({layout.pp}); a mixed-GPU plan lists one stage "
                            "per pipeline rank (pp >= 2)")
    if layout.vpp != 1:
        raise BadInputError(f"{where}: per-stage GPU types need vpp 1 (one chunk per pipeline rank), got vpp "
                            f"{layout.vpp}")
    if sum(st.layers for st in stages) != model.n_layers:
        raise BadInputError(f"{where}: stages hold {sum(st.layers for st in stages)} layers, {model.name} has "
                            f"{model.n_layers}; give every layer to one stage")
    if layout.world != cluster.world_size:
        raise BadInputError(f"{where}: layout {layout.short()} spans {layout.world} GPUs, the cluster has "
                            f"{cluster.world_size}")
    per_stage = layout.tp * layout.cp * layout.dp
    free = [g.count * g.gpus_per_node for g in cluster.groups]
    out = []
    for i, st in enumerate(stages):
        matching = [k for k, g in enumerate(cluster.groups) if g.gpu.name == st.gpu and g.preset == st.node]
        if not matching:
            have = ", ".join(sorted({f"{g.gpu.name} ({g.preset})" for g in cluster.groups}))
            raise BadInputError(f"{where}: stage {i} runs on {st.gpu} ({st.node}), which {cluster.name} does not "
                                f"have; it has {have}")
        if any(_group_key(cluster.groups[k]) != _group_key(cluster.groups[matching[0]]) for k in matching):
            raise BadInputError(f"{where}: stage {i}: several {st.node} groups of {st.gpu} differ (power cap or "
                                "links); give each a distinct node preset in the cluster file")
        host = next((k for k in matching if free[k] >= per_stage), None)
        if host is None:
            raise BadInputError(f"{where}: stage {i} needs {per_stage} more {st.gpu} GPUs (tp*cp*dp), the cluster "
                                f"has no more left; list as many {st.gpu} stages as its GPUs hold")
        free[host] -= per_stage
        out.append(host)
    unused = [(cluster.groups[k], n) for k, n in enumerate(free) if n]
    if unused:
        g, n = unused[0]
        raise BadInputError(f"{where}: {n} {g.gpu.name} GPUs ({g.preset}) host no stage; list "
                            f"{n // per_stage or 1} more {g.gpu.name} stage(s) or shrink the cluster")
    return tuple(out)


def stage_problems(model: ModelSpec, layout: Layout, world: int) -> list[Rule]:
    """The rules a mixed-GPU layout breaks: its split is given stage by stage, so the even-split rule does not apply
    (nor do first/last stage sizes written into the layout)."""
    flat = replace(layout, first_stage_layers=0, last_stage_layers=0, pp_layers=())
    return [p for p in layout_problems(model, flat, world) if p.code != RuleCode.LAYERS_PP]


def _stages(raw: Any, where: str) -> tuple[PipelineStage, ...]:
    if not isinstance(raw, list) or not raw:
        raise BadInputError(f"{where}: stages must be a list of {{gpu, node, layers}} mappings, one per pipeline rank")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != set(STAGE_KEYS):
            raise BadInputError(f"{where}: stage {i} must be a mapping with exactly gpu, node and layers, got "
                                f"{item!r}")
        layers = item["layers"]
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise BadInputError(f"{where}: stage {i}: layers must be a positive integer, got {layers!r}")
        if not all(isinstance(item[k], str) and item[k] for k in ("gpu", "node")):
            raise BadInputError(f"{where}: stage {i}: gpu and node must be names (e.g. H100-SXM5-80GB, dgx-h100)")
        out.append(PipelineStage(gpu=item["gpu"], node=item["node"], layers=layers))
    return tuple(out)


def _beside(ref: Any, plan_dir: Path) -> Any:
    """A relative file path in a plan file (a model or cluster YAML) names a file beside the plan, as write_plan
    writes it; a plan written before that named it from where `plan` ran, which is tried when nothing is beside it."""
    if isinstance(ref, str) and ref and not Path(ref).is_absolute() and is_file(plan_dir / ref):
        return str(plan_dir / ref)
    return ref


FILE_SUFFIXES = (".yaml", ".yml", ".json")
"""A model or cluster reference with one of these endings names a file, not a preset."""


def _require_file(ref: Any, plan_dir: Path, where: str, what: str) -> None:
    """A model or cluster file the plan names must be beside the plan (or, for older plans, where the command runs):
    say so about the plan, not about an option the user never gave (a plan file moved without its files)."""
    if not isinstance(ref, str) or not ref.lower().endswith(FILE_SUFFIXES):
        return  # a preset name or an inline mapping
    if Path(ref).is_absolute():
        if not is_file(Path(ref)):
            raise BadInputError(f"{where}: its {what} file {ref} is not there; put it back or edit `{what}:` in the "
                                "plan")
    elif not is_file(plan_dir / ref) and not is_file(Path(ref)):
        raise BadInputError(f"{where}: its {what} file {ref} (relative to the plan's folder) is not there; move the "
                            f"plan together with its {what} file, or edit `{what}:` in the plan")


def _relative_to(ref: Any, plan_dir: Path) -> Any:
    """A model or cluster given as a file path, written relative to the plan file's folder (read back by _beside
    wherever the command runs)."""
    if isinstance(ref, str) and ref and is_file(Path(ref)):
        return os.path.relpath(os.path.abspath(ref), os.path.abspath(plan_dir))
    return ref


def _model(ref: Any, where: str) -> ModelSpec:
    if isinstance(ref, str):
        return load_model(ref)
    if isinstance(ref, dict):
        data = dict(ref)
        data.pop("aliases", None)
        return ModelSpec.from_dict(data, where=f"{where}: model")
    raise BadInputError(f"{where}: model must be a preset name, a path or a mapping")


def _cluster(ref: Any, where: str) -> Cluster:
    if isinstance(ref, str):
        return load_cluster(ref)
    if isinstance(ref, dict):
        return cluster_from_dict(ref, where=f"{where}: cluster")
    raise BadInputError(f"{where}: cluster must be PRESET:NODES, a path or a mapping")


def read_plan(path: str | Path) -> PlanFile:
    where = str(path)
    if Path(path).suffix.lower() in (".toml", ".txt", ".sh", ".py"):
        raise BadInputError(f"{where}: expected a clusterplan plan file (YAML from `clusterplan plan --out plan.yaml`), "
                            "not a launch config; `clusterplan check` reads torchtitan and Megatron-LM configs")
    data = load_mapping(path)
    if data.get("format") != FORMAT:
        found = f"format {data['format']!r}" if "format" in data else "no `format:` key"
        raise BadInputError(f"{where}: not a clusterplan plan file ({found}, expected {FORMAT!r}); "
                            "write one with `clusterplan plan --out plan.yaml`")
    if data.get("version") != VERSION:
        raise BadInputError(f"{where}: plan version {data.get('version')!r} unsupported (expected {VERSION})")
    for key in ("model", "cluster", "layout"):
        if key not in data:
            raise BadInputError(f"{where}: missing `{key}:`")
    plan_dir = Path(path).parent
    for key in ("model", "cluster"):
        _require_file(data[key], plan_dir, where, key)
    model = _model(_beside(data["model"], plan_dir), where)
    cluster = _cluster(_beside(data["cluster"], plan_dir), where)
    if not isinstance(data["layout"], dict):
        raise BadInputError(f"{where}: layout must be a mapping of layout keys")
    layout = Layout.from_dict(data["layout"], world=cluster.world_size, where=f"{where}: layout")
    stages: tuple[PipelineStage, ...] = ()
    if "stages" in data:
        if layout.pp_layers:
            raise BadInputError(f"{where}: both `stages:` and layout pp_layers give the layers per stage; keep the "
                                "stages (a mixed-GPU plan) or pp_layers, not both")
        stages = _stages(data["stages"], f"{where}: stages")
        stage_groups(model, cluster, layout, stages, f"{where}: stages")
    stack = data.get("stack")
    if stack is not None:
        if not isinstance(stack, str):
            raise BadInputError(f"{where}: stack must be a stack name (clusterplan estimate --help lists them)")
        get_stack(stack)  # an unknown name is bad input here, with the list of names
    return PlanFile(model=model, cluster=cluster, layout=layout, model_ref=data["model"],
                    cluster_ref=data["cluster"], prediction=data.get("prediction"), stages=stages, stack=stack)


def write_plan(path: str | Path, *, model_ref: Any, cluster_ref: Any, layout: Layout,
               prediction: dict[str, Any] | None = None, stages: tuple[PipelineStage, ...] = (),
               stack: str | None = None) -> None:
    """Write a plan file atomically; `stages` (mixed-GPU plans) adds the per-stage GPU types and layers, `stack`
    the execution stack the plan was made for."""
    import yaml

    plan_dir = Path(path).parent
    doc = {"format": FORMAT, "version": VERSION, "model": _relative_to(model_ref, plan_dir),
           "cluster": _relative_to(cluster_ref, plan_dir), "layout": layout.to_dict()}
    if stack is not None:
        doc["stack"] = stack
    if prediction is not None:
        doc["prediction"] = prediction
    if stages:
        doc["stages"] = [st.to_dict() for st in stages]
    write_atomic(path, yaml.safe_dump(doc, sort_keys=False))
