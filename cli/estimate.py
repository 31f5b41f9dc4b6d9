"""`clusterplan estimate`: memory and step time of one layout, with the breakdown behind each number."""

from __future__ import annotations

import click

from clusterplan.cli.common import calibration_option, cluster_option, load_inputs, model_option
from clusterplan.cli.console import console
from clusterplan.cli.options import format_option, plot_option, quiet_option, stack_option, tokens_option
from clusterplan.cli.plot import check_plot_path
from clusterplan.cli.render import render_estimate, render_nearest, render_time_to_train
from clusterplan.hardware_db.stacks import get_stack
from clusterplan.models.training.estimate import estimate as run_estimate
from clusterplan.models.training.goodput import estimate_time_to_train
from clusterplan.models.training.layout import Layout
from clusterplan.reference.intervals import attach as attach_interval
from clusterplan.solver.feasible import nearest_layout


@click.command()
@model_option
@cluster_option
@click.option("--layout", "layout_text", required=True,
              help="key=value list: dp, dp_replicate, tp, pp, vpp, cp, cp_kind, ep, etp, sp, zero, mbs, gbs, seq, "
                   "recompute, recompute_layers, schedule, precision, optimizer, flash_attn, first_stage_layers, "
                   "last_stage_layers. dp defaults to world / (tp*pp*cp).")
@calibration_option
@click.option("--tokens", type=float, default=None, callback=tokens_option,
              help="Token budget: adds expected days and $ to train it, failures and checkpoints included.")
@stack_option()
@format_option
@plot_option
@quiet_option
def estimate(model_ref: str, cluster_ref: str, layout_text: str, calibration_path: str | None,
             tokens: float | None, stack_name: str | None, fmt: str, plot_path: str | None) -> None:
    """Predict per-GPU memory and step time of one training layout.

    Example: clusterplan estimate --model llama3.1-70b --cluster dgx-h100:8 --layout "tp=8,pp=4,gbs=512,seq=8192"
    Exits 1 when the layout is infeasible (the reasons are printed; out of memory: the term that overflows and the
    nearest changes that fit, each priced), 2 on bad input.
    """
    check_plot_path(plot_path)
    console.set_format(fmt)
    model, cluster, calibration = load_inputs(model_ref, cluster_ref, calibration_path)
    stack = get_stack(stack_name)
    layout = Layout.parse(layout_text, world=cluster.world_size)
    est = run_estimate(model, cluster, layout, calibration, stack=stack)
    result = est.to_json()
    nearest = nearest_layout(model, cluster, est, calibration, stack)  # out of memory: what to change, priced
    if nearest is not None:
        result["nearest_feasible"] = nearest.to_json()
    if tokens is not None and est.feasible:
        result["time_to_train"] = estimate_time_to_train(est, tokens)
    attach_interval(result, cluster.gpu.name, model.is_moe, calibration_path)
    if fmt == "json":
        console.json(result)
    else:
        render_estimate(result)
        if nearest is not None:
            render_nearest(nearest)
        if "time_to_train" in result:
            render_time_to_train(result["time_to_train"])
    if plot_path and "step_time_s" in result:
        from clusterplan.cli.plot import plot_estimate

        plot_estimate(result, plot_path)
        console.info(f"wrote {plot_path}")
    if not result["feasible"]:
        raise SystemExit(1)
