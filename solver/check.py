"""The CI gate behind `clusterplan check`: read a training config, list every rule it breaks with its fix.

A config is a clusterplan plan file, a torchtitan TOML or a Megatron-LM arguments file (frameworks/read.py).
Divisibility rules come from layout_problems; memory (with headroom) and a minimum MFU from estimate().
A mixed-GPU plan (a plan file's `stages:`, or an export's `# stage S:` lines) is priced stage by stage on each
stage's GPU type as `plan` priced it (solver/hetero.py evaluate_stages), memory checked per stage.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from clusterplan.errors import BadInputError
from clusterplan.fileio import load_mapping, show
from clusterplan.frameworks.read import (
    config_kind,
    megatron_model_fields,
    read_config,
    torchtitan_model_preset,
)
from clusterplan.hardware_db import get_node
from clusterplan.hardware_db.stacks import ExecutionStack, get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.mcore import looks_like_mcore, spec_from_mcore
from clusterplan.models.architecture.shapes import require_priced
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import Cluster, load_cluster, preset_ref
from clusterplan.models.training.estimate import estimate, memory_knobs
from clusterplan.models.training.layout import Layout, layout_problems, uneven_split
from clusterplan.models.training.memory import GIB
from clusterplan.models.training.pipeline_split import with_stack_split
from clusterplan.models.training.planfile import PipelineStage, read_plan
from clusterplan.models.training.rules import Rule, RuleCode
from clusterplan.solver.hetero import evaluate_stages, mixed_problems


@dataclass(frozen=True, slots=True)
class CheckResult:
    config: Path
    kind: str
    """plan, torchtitan or megatron."""
    model: ModelSpec
    cluster: Cluster
    layout: Layout
    violations: tuple[Rule, ...]
    estimate: dict[str, Any] | None
    """estimate()'s JSON when the layout passes the divisibility rules (None otherwise)."""
    notes: tuple[str, ...] = ()
    """What the config reader mapped approximately (printed as warnings)."""
    mixed: dict[str, Any] | None = None
    """A mixed-GPU plan's per-stage memory and step time (StageSplit.to_json), as `plan` prints them; its
    `estimate` is None (the homogeneous estimate would price every stage on one GPU type)."""

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        out = {"config": str(self.config), "kind": self.kind, "model": self.model.name,
               "world": self.cluster.world_size, "layout": self.layout.to_dict(), "ok": self.ok,
               "violations": [{"rule": v.message, "fix": v.fix} for v in self.violations],
               "estimate": self.estimate}
        if self.mixed is not None:
            out["mixed_gpu_types"] = self.mixed
        return out


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    kind: str
    model: ModelSpec
    cluster: Cluster
    layout: Layout
    stack: str | None
    """The execution stack the config runs on (None for a plan file: the default)."""
    notes: tuple[str, ...] = ()
    mismatches: tuple[str, ...] = ()
    """Where the config's model differs from --model (frameworks/read.py)."""
    stages: tuple[PipelineStage, ...] = ()
    """A mixed-GPU plan's stages (plan file `stages:`, or an export's stage lines with its per-rank layers)."""
    fp8_recipe: str | None = None
    """The fp8 recipe the config names (frameworks ReadConfig.fp8_recipe); None: the stack's first."""
    launch: tuple[int, int] | None = None
    """(nodes, GPUs per node) the script's torchrun line starts (frameworks ReadConfig.launch)."""


def load_config(config: Path, model_ref: str | None, cluster_ref: str | None) -> LoadedConfig:
    """A config with its model and cluster; a plan file names its own model and cluster unless overridden."""
    kind = config_kind(config)
    if kind == "plan":
        plan = read_plan(config)
        model = load_model(model_ref) if model_ref else plan.model
        cluster = load_cluster(cluster_ref) if cluster_ref else plan.cluster
        return LoadedConfig(kind=kind, model=model, cluster=cluster, layout=plan.layout, stack=plan.stack,
                            stages=plan.stages)
    if kind == "megatron-bridge" and not model_ref and cluster_ref and looks_like_mcore(
            load_mapping(config).get("model") or {}):
        # a printed ConfigContainer carries its model (Megatron-Core TransformerConfig fields: models/architecture/
        # mcore.py); an override file does not
        model_ref = str(config)
    if kind == "torchtitan" and not model_ref and cluster_ref:  # [model] name and flavor: a model torchtitan ships
        model_ref = torchtitan_model_preset(config)
    if kind == "megatron" and not model_ref and cluster_ref:
        # the model the script's own flags build (Megatron-Core TransformerConfig fields), when it names its vocab
        model = spec_from_mcore(megatron_model_fields(config), name=config.stem, where=show(config))
        return _loaded(kind, model, load_cluster(cluster_ref), config)
    if not model_ref or not cluster_ref:
        missing = " and ".join(f for f, given in (("--model", model_ref), ("--cluster", cluster_ref)) if not given)
        if kind == "torchtitan" and not model_ref:  # its [model] name / flavor names the model (above)
            raise BadInputError(f"{config}: a torchtitan config needs --cluster (its [model] section names the model, "
                                "or give --model); give --cluster (e.g. --cluster dgx-h100:32)")
        raise BadInputError(f"{config}: a {kind} config needs --model and --cluster; give {missing} (e.g. --model "
                            "llama3.1-70b --cluster dgx-h100:32)")
    return _loaded(kind, load_model(model_ref), load_cluster(cluster_ref), config)


def _loaded(kind: str, model: ModelSpec, cluster: Cluster, config: Path) -> LoadedConfig:
    """A launch config read against its model and cluster (frameworks.read)."""
    read = read_config(config, model, cluster.world_size)
    layout, stages = read.layout, ()
    if read.stage_gpus:  # the stages carry the split; first/last stage sizes in the layout would say it twice
        stages = tuple(PipelineStage(gpu=g, node=n, layers=k)
                       for (g, n), k in zip(read.stage_gpus, read.rank_layers, strict=True))
        layout = replace(layout, first_stage_layers=0, last_stage_layers=0, pp_layers=())
    return LoadedConfig(kind=read.kind, model=model, cluster=cluster, layout=layout, stack=read.stack,
                        notes=tuple(read.notes), mismatches=tuple(read.mismatches), stages=stages,
                        fp8_recipe=read.fp8_recipe, launch=read.launch)


def launch_rule(launch: tuple[int, int] | None, cluster: Cluster) -> Rule | None:
    """A script whose torchrun line starts another number of GPUs than --cluster has: checked on the cluster's
    GPUs (Megatron derives dp from them), it would not run as checked, so this rule comes first; its fix names the
    --cluster of the script's own shape where the cluster's node type holds it."""
    if launch is None:
        return None
    nodes, per_node = launch
    group, mixed = cluster.groups[0], len(cluster.groups) > 1
    if nodes * per_node == cluster.world_size and (mixed or per_node == group.gpus_per_node):
        return None
    if nodes * per_node == cluster.world_size:  # as many GPUs in other nodes: tp / ep groups span other links
        message = (f"the script launches {nodes} nodes of {per_node} GPUs (torchrun --nnodes / --nproc-per-node); "
                   f"--cluster has {cluster.n_nodes} of {group.gpus_per_node}")
    else:
        message = (f"the script launches {nodes * per_node:,} GPUs (torchrun --nnodes {nodes} x --nproc-per-node "
                   f"{per_node}); --cluster has {cluster.world_size:,}")
    if mixed or per_node > get_node(group.preset).gpus_per_node:
        return Rule.broken(RuleCode.LAUNCH_WORLD, message)
    ref = preset_ref(replace(group, gpus_per_node=per_node), nodes)
    return Rule(code=RuleCode.LAUNCH_WORLD, message=message,
                fix=f"give --cluster {ref} (the script's GPUs), or set the script's --nnodes / --nproc-per-node to "
                    f"the cluster's {cluster.n_nodes} x {group.gpus_per_node}")


def violations(model: ModelSpec, cluster: Cluster, layout: Layout, min_mfu: float | None,
               headroom_gib: float, stack: ExecutionStack | None = None,
               fp8_recipe: str | None = None) -> tuple[list[Rule], dict[str, Any] | None]:
    """Every broken rule, and estimate()'s JSON when the layout is valid enough to estimate (under the config's fp8
    recipe when it names one: MXFP8 needs microscaling tensor cores)."""
    found = layout_problems(model, layout, cluster.world_size)
    if found:
        return found, None
    est = estimate(model, cluster, layout, stack=stack, fp8_recipe=fp8_recipe)
    data = est.to_json()
    # estimate's other rules (fp8 on GPUs without fp8 tensor cores, a recipe the stack lacks); its memory rule is
    # the headroom-aware one below
    found += [r for r in est.reasons if r.code != RuleCode.OUT_OF_MEMORY]
    peak_b, capacity_b = float(est.evaluation.memory.peak[0]), est.evaluation.hw.memory_bytes
    if peak_b + headroom_gib * GIB > capacity_b:
        mem = data["memory"]
        found.append(Rule.out_of_memory(f"memory: peak {mem['peak_gib']:.1f} GiB ({mem['peak_stage']} stage) + "
                                        f"headroom {headroom_gib:g} GiB > {mem['capacity_gib']:.1f} GiB per GPU",
                                        **memory_knobs(layout, est.evaluation.stack)))
    if min_mfu is not None and data["mfu"] < min_mfu:
        found.append(Rule.broken(RuleCode.MIN_MFU, f"predicted MFU {data['mfu']:.3f} < --min-mfu {min_mfu:g}"))
    return found, data


def mixed_violations(model: ModelSpec, cluster: Cluster, layout: Layout, stages: tuple[PipelineStage, ...],
                     min_mfu: float | None, headroom_gib: float,
                     stack: ExecutionStack | None = None) -> tuple[list[Rule], dict[str, Any] | None]:
    """Every broken rule of a mixed-GPU plan, and its per-stage memory and step time when it can be priced."""
    if min_mfu is not None:
        raise BadInputError("--min-mfu: a mixed-GPU plan has no single GPU peak to take MFU against; drop --min-mfu "
                            "(check prints its step time)")
    found = mixed_problems(model, cluster, layout)
    if found:
        return found, None
    split = evaluate_stages(model, cluster, layout, stages, stack=stack, headroom_gib=headroom_gib)
    for s, (gpu, n, peak, cap) in enumerate(zip(split.gpu, split.layers, split.peak_gib, split.capacity_gib,
                                                strict=True)):
        if peak + headroom_gib > cap:
            found.append(Rule.broken(RuleCode.OUT_OF_MEMORY,
                                     f"memory: stage {s} ({n} layers on {gpu}): peak {peak:.1f} GiB + headroom "
                                     f"{headroom_gib:g} GiB > {cap:.1f} GiB per GPU"))
    return found, split.to_json()


MAX_HEADROOM_GIB = 1024.0
"""Most GiB --headroom-gib may keep free per GPU (check and plan): above every GPU's memory (hardware_db gpus.yaml tops
out near 300 GiB), so a larger value is a typo, not a check."""


def check_config(config: Path, model_ref: str | None = None, cluster_ref: str | None = None,
                 min_mfu: float | None = None, headroom_gib: float = 0.0,
                 stack_name: str | None = None) -> CheckResult:
    """Read `config` and check it against the divisibility, memory and MFU rules, priced on the execution stack
    `stack_name` (default: the one the config runs on)."""
    if min_mfu is not None and not 0 <= min_mfu <= 1:  # NaN fails too
        raise BadInputError(f"--min-mfu {min_mfu:g}: give a fraction between 0 and 1 (e.g. 0.35 for 35%)")
    if not 0 <= headroom_gib <= MAX_HEADROOM_GIB:  # NaN fails too
        raise BadInputError(f"--headroom-gib {headroom_gib:g}: give a finite number of GiB >= 0, at most "
                            f"{MAX_HEADROOM_GIB:g}")
    loaded = load_config(config, model_ref, cluster_ref)
    require_priced(loaded.model)  # before the layout rules: a hybrid Mamba model gets the one line, not half a check
    stack = get_stack(stack_name or loaded.stack)
    mixed = None
    if loaded.stages:
        found, mixed = mixed_violations(loaded.model, loaded.cluster, loaded.layout, loaded.stages, min_mfu,
                                        headroom_gib, stack)
        est = None
    layout = loaded.layout
    if not loaded.stages:  # the stack's own pipeline split where the config gives none (nanotron: by block cost)
        layout = with_stack_split(loaded.model, layout, stack.pp_split)
        found, est = violations(loaded.model, loaded.cluster, layout, min_mfu, headroom_gib, stack,
                                loaded.fp8_recipe)
    mismatched = [Rule.broken(RuleCode.MODEL_MISMATCH, m) for m in loaded.mismatches]
    found = [in_config_terms(r, loaded.kind, loaded.model, layout) for r in found]
    launched = [r for r in (launch_rule(loaded.launch, loaded.cluster),) if r is not None]
    return CheckResult(config=config, kind=loaded.kind, model=loaded.model, cluster=loaded.cluster,
                       layout=layout, violations=(*launched, *mismatched, *found), estimate=est, notes=loaded.notes,
                       mixed=mixed)


UNEVEN_SPLIT_SETTINGS = {
    "megatron": "--decoder-first-pipeline-num-layers {first} --decoder-last-pipeline-num-layers {last}",
    "megatron-bridge": "model.num_layers_in_first_pipeline_stage={first} model.num_layers_in_last_pipeline_stage={last}",
}
"""How a Megatron-LM script and a Megatron-Bridge container say an uneven stage split (Megatron-LM arguments.py;
Megatron-Core TransformerConfig num_layers_in_first/last_pipeline_stage)."""


def in_config_terms(rule: Rule, kind: str, model: ModelSpec, layout: Layout) -> Rule:
    """A rule whose fix names clusterplan layout keys, with the checked config's own settings for them beside."""
    split = uneven_split(model.n_layers, layout.pp, layout.vpp, whole_chunks=True)  # the flags want whole chunks
    if rule.code != RuleCode.LAYERS_PP or kind not in UNEVEN_SPLIT_SETTINGS or split is None:
        return rule
    setting = UNEVEN_SPLIT_SETTINGS[kind].format(first=split[0], last=split[1])
    return replace(rule, fix=f"{rule.fix} (in this config: {setting})")
