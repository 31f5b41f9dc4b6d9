"""`clusterplan check CONFIG`: a CI gate in front of a training config.

CONFIG is a clusterplan plan file, a torchtitan TOML or recipe, a Megatron-LM script or a DeepSpeed JSON. Exit 0 with one summary line
when every rule holds; 1 with each violated rule and its fix; 2 when the input cannot be read.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from clusterplan.cli.console import console
from clusterplan.cli.options import format_option, stack_option
from clusterplan.errors import BadInputError
from clusterplan.fileio import require_finite
from clusterplan.frameworks.read import config_kind, read_config
from clusterplan.hardware_db.stacks import ExecutionStack, get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout, layout_problems
from clusterplan.models.training.planfile import read_plan

FIXES = (  # (words in the rule, suggested fix)
    ("!= world", "make tp * pp * cp * dp equal the number of GPUs"),
    ("% tp", "pick a tp that divides it (a divisor of the head and FFN sizes, usually 1, 2, 4 or 8)"),
    ("kv heads", "pick tp dividing the kv heads, or a multiple of them"),
    ("n_layers", "pick pp * vpp dividing n_layers, or set uneven first/last stage layers"),
    ("micro-batches", "raise the global batch so micro-batches per pipeline are a multiple of pp"),
    ("gbs", "make the global batch a multiple of dp * micro-batch size"),
    ("sequence parallel", "make seq divisible by tp * cp"),
    ("context parallel", "make seq divisible by 2 * cp"),
    ("n_experts", "pick ep dividing the number of experts"),
    ("ep(", "pick ep * etp dividing dp_shard * cp * tp"),
    ("vpp", "use the interleaved 1F1B schedule, or vpp = 1"),
)


def suggest_fix(rule: str) -> str:
    for words, fix in FIXES:
        if words in rule:
            return fix
    return "change the layout so the rule holds"


def _load(config: Path, model_ref: str | None, cluster_ref: str | None
          ) -> tuple[ModelSpec, int, Any, Layout, str, tuple[str, ...], str | None]:
    kind = config_kind(config)
    if kind == "plan":
        plan = read_plan(config)
        model = load_model(model_ref) if model_ref else plan.model
        cluster = load_cluster(cluster_ref) if cluster_ref else plan.cluster
        return model, cluster.world_size, cluster, plan.layout, kind, (), None
    if not model_ref or not cluster_ref:
        raise BadInputError(f"{config}: a {kind} config needs --model and --cluster (e.g. --model llama3.1-70b "
                            "--cluster dgx-h100:32)")
    model, cluster = load_model(model_ref), load_cluster(cluster_ref)
    read = read_config(config, model, cluster.world_size)
    for note in read.notes:
        console.warn(note)
    return model, cluster.world_size, cluster, read.layout, kind, read.mismatches, read.stack


def violations(model: ModelSpec, cluster: Any, layout: Layout, min_mfu: float | None,
               headroom_gib: float, stack: ExecutionStack | None = None) -> tuple[list[dict[str, str]], dict[str, Any] | None]:
    """Every broken rule with its fix, and estimate()'s JSON when the layout is valid enough to estimate."""
    found = [{"rule": p, "fix": suggest_fix(p)} for p in layout_problems(model, layout, cluster.world_size)]
    if found:
        return found, None
    est = estimate(model, cluster, layout, stack=stack).to_json()
    mem = est["memory"]
    if mem["peak_gib"] + headroom_gib > mem["capacity_gib"]:
        found.append({"rule": f"memory: peak {mem['peak_gib']:.1f} GiB ({mem['peak_stage']} stage) + headroom "
                              f"{headroom_gib:g} GiB > {mem['capacity_gib']:.1f} GiB per GPU",
                      "fix": "raise tp/pp, use zero=3 or more recompute, or lower the micro-batch size"})
    if min_mfu is not None and est["mfu"] < min_mfu:
        found.append({"rule": f"predicted MFU {est['mfu']:.3f} < --min-mfu {min_mfu:g}",
                      "fix": "run `clusterplan plan` for a faster layout on this cluster"})
    return found, est


@click.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "model_ref", default=None, help="Model preset or file (required unless CONFIG is a plan).")
@click.option("--cluster", "cluster_ref", default=None, help="PRESET:NODES or a cluster file (idem).")
@click.option("--min-mfu", type=float, default=None, help="Fail when the predicted MFU is below this (0..1).")
@click.option("--headroom-gib", type=float, default=0.0, help="Memory each GPU must keep free.")
@stack_option("the one the config runs: megatron-core, torchtitan (torchtitan-compile when compiled), deepspeed")
@format_option
def check(config: Path, model_ref: str | None, cluster_ref: str | None, min_mfu: float | None, headroom_gib: float,
          stack_name: str | None, fmt: str) -> None:
    """Check a plan, torchtitan TOML or Megatron-LM args against divisibility, memory and MFU rules."""
    if min_mfu is not None and not 0 <= min_mfu <= 1:  # NaN fails too
        raise BadInputError(f"--min-mfu {min_mfu:g}: give a fraction between 0 and 1 (e.g. 0.35 for 35%)")
    if not 0 <= headroom_gib < float("inf"):
        raise BadInputError(f"--headroom-gib {headroom_gib:g}: give a finite number of GiB >= 0")
    model, world, cluster, layout, kind, mismatches, read_stack = _load(config, model_ref, cluster_ref)
    stack = get_stack(stack_name or read_stack)
    found, est = violations(model, cluster, layout, min_mfu, headroom_gib, stack)
    require_finite(est)
    found = [{"rule": m, "fix": "give the --model the config trains, or fix the config"} for m in mismatches] + found
    summary = f"{config.name} ({kind}): {model.name}, {layout.short()} on {world} GPUs"
    if est is not None:
        summary += f", peak {est['memory']['peak_gib']:.1f} GiB, MFU {est['mfu']:.3f}"
    if fmt == "json":
        console.json({"config": str(config), "kind": kind, "model": model.name, "world": world,
                      "layout": layout.to_dict(), "ok": not found, "violations": found, "estimate": est})
    elif not found:
        console.text(f"ok: {summary}")
    else:
        console.text(f"FAIL: {summary}")
        for v in found:
            console.text(f"  - {v['rule']}\n    fix: {v['fix']}")
    if found:
        sys.exit(1)
