"""`clusterplan estimate`: memory and step time of one layout, with the breakdown behind each number."""

from __future__ import annotations

import click

from clusterplan.cli.common import calibration_option, cluster_option, load_inputs, model_option
from clusterplan.cli.console import console
from clusterplan.cli.options import format_option, stack_option
from clusterplan.cli.render import render_estimate
from clusterplan.hardware_db.stacks import get_stack
from clusterplan.models.training.estimate import estimate as run_estimate
from clusterplan.models.training.layout import Layout


@click.command()
@model_option
@cluster_option
@click.option("--layout", "layout_text", required=True,
              help="key=value list: dp, dp_replicate, tp, pp, vpp, cp, cp_kind, ep, etp, sp, zero, mbs, gbs, seq, "
                   "recompute, recompute_layers, schedule, precision, optimizer, flash_attn, first_stage_layers, "
                   "last_stage_layers. dp defaults to world / (tp*pp*cp).")
@calibration_option
@stack_option()
@format_option
def estimate(model_ref: str, cluster_ref: str, layout_text: str, calibration_path: str | None, stack_name: str | None,
             fmt: str) -> None:
    """Predict per-GPU memory and step time of one training layout.

    Example: clusterplan estimate --model llama3.1-70b --cluster dgx-h100:8 --layout "tp=8,pp=4,gbs=512,seq=8192"
    Exits 1 when the layout is infeasible (the reasons are printed), 2 on bad input.
    """
    model, cluster, calibration = load_inputs(model_ref, cluster_ref, calibration_path)
    stack = get_stack(stack_name)
    layout = Layout.parse(layout_text, world=cluster.world_size)
    result = run_estimate(model, cluster, layout, calibration, stack=stack).to_json()
    if fmt == "json":
        console.json(result)
    else:
        render_estimate(result)
    if not result["feasible"]:
        raise SystemExit(1)
