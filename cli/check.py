"""`clusterplan check CONFIG`: a CI gate in front of a training config.

CONFIG is a clusterplan plan file, a torchtitan TOML or a Megatron-LM arguments file. Exit 0 with one summary line
when every rule holds; 1 with each violated rule and its fix; 2 when the input cannot be read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from clusterplan.cli.console import console
from clusterplan.cli.options import format_option, stack_option
from clusterplan.cli.render import render_stage_split
from clusterplan.fileio import require_finite
from clusterplan.solver.check import check_config


@click.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "model_ref", default=None,
              help="Model preset or file; left out, the config's own: a plan's, a printed Megatron-Bridge "
                   "ConfigContainer's, a Megatron-LM script's flags (with --vocab-size), a torchtitan TOML's [model].")
@click.option("--cluster", "cluster_ref", default=None, help="PRESET:NODES[xGPUS] or a cluster file (idem).")
@click.option("--min-mfu", type=float, default=None, help="Fail when the predicted MFU is below this (0..1).")
@click.option("--headroom-gib", type=float, default=0.0, help="Memory each GPU must keep free.")
@stack_option("the one the config runs: megatron-core, torchtitan (compiled: torchtitan-compile-loss, or "
              "torchtitan-compile when compile.components leaves out the loss), deepspeed")
@format_option
def check(config: Path, model_ref: str | None, cluster_ref: str | None, min_mfu: float | None, headroom_gib: float,
          stack_name: str | None, fmt: str) -> None:
    """Check a plan, torchtitan TOML or recipe, Megatron-LM args, Megatron-Bridge config YAML or DeepSpeed JSON against
    divisibility, memory and MFU rules."""
    result = check_config(config, model_ref, cluster_ref, min_mfu, headroom_gib, stack_name)
    for note in result.notes:
        console.warn(note)
    est = result.estimate
    require_finite(est)
    summary = (f"{config.name} ({result.kind}): {result.model.name}, {result.layout.short()} on "
               f"{result.cluster.world_size} GPUs")
    if est is not None:
        summary += f", peak {est['memory']['peak_gib']:.1f} GiB, MFU {est['mfu']:.3f}"
    mixed = result.mixed
    require_finite(mixed)
    if mixed is not None:
        summary += (f" of {len({st['gpu'] for st in mixed['stages']})} types, peak "
                    + " / ".join(f"{st['peak_gib']:.1f}" for st in mixed["stages"])
                    + f" GiB by stage, step {mixed['step_time_s']:.4g} s")
    if fmt == "json":
        console.json(result.to_json())
    else:
        console.text(f"{'ok' if result.ok else 'FAIL'}: {summary}")
        if mixed is not None:
            render_stage_split(mixed)
        for rule in result.violations:
            console.text(f"  - {rule.message}\n    fix: {rule.fix}")
    if not result.ok:
        sys.exit(1)
