"""`clusterplan export PLAN --to torchtitan|torchtitan-py|megatron|deepspeed`: a plan as a runnable launch config."""

from __future__ import annotations

import click

from clusterplan.cli.console import console
from clusterplan.cli.options import output_path
from clusterplan.fileio import write_atomic
from clusterplan.frameworks import EXPORTERS, export_plan
from clusterplan.models.training.planfile import read_plan


@click.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--to", "target", required=True, type=click.Choice(list(EXPORTERS)),
              help="Framework: torchtitan (v0.2 TOML), torchtitan-py (main's Python recipe), megatron, deepspeed.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, callback=output_path,
              help="Write the config to this file (atomically) instead of stdout.")
def export(plan_path: str, target: str, out_path: str | None) -> None:
    """Write a plan file as a launch config with the command that starts it.

    \b
    Example: clusterplan export plan.yaml --to megatron --out train.sh

    The config goes to stdout (or --out); the launch line and any notes go to stderr.
    Exits 2 when the plan cannot be read or the framework cannot run it (the line says why).
    """
    plan = read_plan(plan_path)
    result = export_plan(target, plan.model, plan.cluster, plan.layout)
    if out_path:
        write_atomic(out_path, result.text)
        console.info(f"wrote {out_path}")
    else:
        click.echo(result.text, nl=False)
    for note in result.notes:
        console.warn(note)
    console.info(f"launch: {result.launch}")
