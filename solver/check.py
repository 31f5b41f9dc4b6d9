"""The CI gate behind `clusterplan check`: read a training config, list every rule it breaks with its fix.

A config is a clusterplan plan file, a torchtitan TOML or a Megatron-LM arguments file (frameworks/read.py).
Divisibility rules come from layout_problems; memory (with headroom) and a minimum MFU from estimate().
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clusterplan.errors import BadInputError
from clusterplan.frameworks.read import config_kind, read_config
from clusterplan.hardware_db.stacks import ExecutionStack, get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import Cluster, load_cluster
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout, layout_problems
from clusterplan.models.training.memory import GIB
from clusterplan.models.training.planfile import read_plan
from clusterplan.models.training.rules import Rule, RuleCode


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

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        return {"config": str(self.config), "kind": self.kind, "model": self.model.name,
                "world": self.cluster.world_size, "layout": self.layout.to_dict(), "ok": self.ok,
                "violations": [{"rule": v.message, "fix": v.fix} for v in self.violations],
                "estimate": self.estimate}


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


def load_config(config: Path, model_ref: str | None, cluster_ref: str | None) -> LoadedConfig:
    """A config with its model and cluster; a plan file names its own model and cluster unless overridden."""
    kind = config_kind(config)
    if kind == "plan":
        plan = read_plan(config)
        model = load_model(model_ref) if model_ref else plan.model
        cluster = load_cluster(cluster_ref) if cluster_ref else plan.cluster
        return LoadedConfig(kind=kind, model=model, cluster=cluster, layout=plan.layout, stack=None)
    if not model_ref or not cluster_ref:
        raise BadInputError(f"{config}: a {kind} config needs --model and --cluster (e.g. --model llama3.1-70b "
                            "--cluster dgx-h100:32)")
    model, cluster = load_model(model_ref), load_cluster(cluster_ref)
    read = read_config(config, model, cluster.world_size)
    return LoadedConfig(kind=kind, model=model, cluster=cluster, layout=read.layout, stack=read.stack,
                        notes=tuple(read.notes), mismatches=tuple(read.mismatches))


def violations(model: ModelSpec, cluster: Cluster, layout: Layout, min_mfu: float | None,
               headroom_gib: float, stack: ExecutionStack | None = None) -> tuple[list[Rule], dict[str, Any] | None]:
    """Every broken rule, and estimate()'s JSON when the layout is valid enough to estimate."""
    found = layout_problems(model, layout, cluster.world_size)
    if found:
        return found, None
    est = estimate(model, cluster, layout, stack=stack)
    data = est.to_json()
    peak_b, capacity_b = float(est.evaluation.memory.peak[0]), est.evaluation.hw.memory_bytes
    if peak_b + headroom_gib * GIB > capacity_b:
        mem = data["memory"]
        found.append(Rule.broken(RuleCode.OUT_OF_MEMORY,
                                 f"memory: peak {mem['peak_gib']:.1f} GiB ({mem['peak_stage']} stage) + headroom "
                                 f"{headroom_gib:g} GiB > {mem['capacity_gib']:.1f} GiB per GPU"))
    if min_mfu is not None and data["mfu"] < min_mfu:
        found.append(Rule.broken(RuleCode.MIN_MFU, f"predicted MFU {data['mfu']:.3f} < --min-mfu {min_mfu:g}"))
    return found, data


def check_config(config: Path, model_ref: str | None = None, cluster_ref: str | None = None,
                 min_mfu: float | None = None, headroom_gib: float = 0.0,
                 stack_name: str | None = None) -> CheckResult:
    """Read `config` and check it against the divisibility, memory and MFU rules, priced on the execution stack
    `stack_name` (default: the one the config runs on)."""
    if min_mfu is not None and not 0 <= min_mfu <= 1:  # NaN fails too
        raise BadInputError(f"--min-mfu {min_mfu:g}: give a fraction between 0 and 1 (e.g. 0.35 for 35%)")
    if not 0 <= headroom_gib < float("inf"):
        raise BadInputError(f"--headroom-gib {headroom_gib:g}: give a finite number of GiB >= 0")
    loaded = load_config(config, model_ref, cluster_ref)
    found, est = violations(loaded.model, loaded.cluster, loaded.layout, min_mfu, headroom_gib,
                            get_stack(stack_name or loaded.stack))
    mismatched = [Rule.broken(RuleCode.MODEL_MISMATCH, m) for m in loaded.mismatches]
    return CheckResult(config=config, kind=loaded.kind, model=loaded.model, cluster=loaded.cluster,
                       layout=loaded.layout, violations=(*mismatched, *found), estimate=est, notes=loaded.notes)
