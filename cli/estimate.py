"""`clusterplan estimate`: memory and step time of one layout, with the breakdown behind each number."""

from __future__ import annotations

import click

from clusterplan.cli.common import calibration_option, warn_foreign_calibration
from clusterplan.cli.console import console
from clusterplan.cli.options import (
    format_option,
    plot_option,
    price_options,
    quiet_option,
    stack_option,
    tokens_option,
)
from clusterplan.cli.plot import check_plot_path
from clusterplan.cli.render import (
    prices_line,
    render_estimate,
    render_layer_gemms,
    render_layer_parts,
    render_nearest,
    render_stage_split,
    render_time_to_train,
)
from clusterplan.errors import BadInputError
from clusterplan.fileio import require_finite
from clusterplan.hardware_db.prices import price_rule
from clusterplan.hardware_db.stacks import ExecutionStack, get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.calibration import Calibration, load_calibration
from clusterplan.models.hardware.cluster import Cluster, load_cluster, price_cluster
from clusterplan.models.training.estimate import estimate as run_estimate
from clusterplan.models.training.goodput import (
    cluster_prices_json,
    estimate_time_to_train,
    short_budget_warning,
)
from clusterplan.models.training.layer_gemms import layer_gemms
from clusterplan.models.training.layer_parts import layer_parts
from clusterplan.models.training.layout import CHOICES, Layout, stack_problems
from clusterplan.models.training.pipeline_split import with_stack_split
from clusterplan.models.training.planfile import PlanFile, read_plan
from clusterplan.models.training.rules import RuleCode
from clusterplan.reference.intervals import attach as attach_interval
from clusterplan.solver.feasible import nearest_layout
from clusterplan.solver.hetero import evaluate_stages, mixed_problems

BATCH_KEYS = ("seq", "gbs")
"""Layout keys that set the batch: estimate warns when --layout leaves them at Layout's defaults."""


def layout_keys(text: str) -> set[str]:
    """The keys a `key=value,...` layout text names (Layout.parse reads the same form)."""
    return {part.split("=", 1)[0].strip() for part in text.split(",") if "=" in part}


@click.command()
@click.option("--model", "model_ref", default=None,
              help="Preset name (`clusterplan models list`), config.json path, or model YAML (or the --plan file's).")
@click.option("--cluster", "cluster_ref", default=None,
              help="PRESET:NODES (e.g. dgx-h100:8), PRESET:NODESxGPUS for GPUS of each node (dgx-h100:1x4) or a cluster YAML file (or the --plan file's).")
@click.option("--layout", "layout_text", default=None,
              help="key=value list: dp, dp_replicate, tp, pp, vpp, cp, cp_kind (ring, a2a, allgather, a2a+p2p), cp_a2a "
                   "(a2a+p2p's all-to-all group), ep, etp, sp, zero, mbs, gbs, seq, "
                   "recompute, recompute_layers, schedule, precision, fp8_recipe (tensorwise, delayed, mxfp8, blockwise, "
                   "rowwise, nvfp4; implies precision=fp8; default the stack's first), fp8_params (fp8-only weights, Megatron "
                   "--fp8-param-gather), optimizer, bf16_moments (Adam m and v in bf16, Megatron "
                   "--use-precision-aware-optimizer), precision_aware (Megatron --use-precision-aware-optimizer: 2-byte master "
                   "remainders under the distributed optimizer; default 1, 0 = a full fp32 master), bf16_first_layers / bf16_last_layers (layers kept in bf16 under fp8, Megatron "
                   "--first-last-layers-bf16; imply precision=fp8), flash_attn, first_stage_layers, "
                   "last_stage_layers, pp_layers (layers of each pipeline rank, e.g. 6/5/5/0), moe_dispatcher, moe_a2a_overlap, moe_capacity_factor (token-dropping MoE; unset = "
                   "dropless), moe_imbalance (busiest EP rank's routed rows over the mean; 1 = force-balanced), "
                   "recompute_modules (Megatron --recompute-modules, '+'-separated: core_attn, moe_act, layernorm, "
                   "mla_up_proj, mlp, moe, shared_experts), fp32_grads (0 = gradients reduced in bf16), offload_layers "
                   "(activations offloaded to the host, pp 1), cuda_graphs (none, attn, full). dp defaults to world / (tp*pp*cp); zero to 1, "
                   "or on a stack without ZeRO-1 (torchtitan, llm-foundry) to its full sharding, 3; recompute to "
                   "selective, or none on a stack without selective recompute (nanotron, deepspeed, llm-foundry).")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), default=None,
              help="A plan file (`plan --out`) instead of --layout: its model, cluster and layout, and for a "
                   "mixed-GPU plan its stages, priced stage by stage as `plan` printed them.")
@click.option("--moe-dispatcher", "moe_dispatcher", type=click.Choice(CHOICES["moe_dispatcher"]), default=None,
              help="MoE token dispatcher (overrides the layout's moe_dispatcher): alltoall = NCCL all-to-all, deepep / "
                   "hybridep = Megatron-Core's flex dispatcher backends (one copy per destination GPU, one RDMA copy "
                   "per destination node).")
@click.option("--moe-a2a-overlap", "moe_a2a_overlap", is_flag=True, default=False,
              help="Megatron-Core's 1F1B all-to-all overlap (--overlap-moe-expert-parallel-comm; needs ep > 1 and, "
                   "with pp > 1, the interleaved schedule).")
@calibration_option
@click.option("--tokens", type=float, default=None, callback=tokens_option,
              help="Token budget: adds expected days and $ to train it, failures and checkpoints included.")
@click.option("--gemms", "show_gemms", is_flag=True, default=False,
              help="Also list one layer's weight GEMMs (forward, input and weight gradient) with their shapes, TFLOP/s and "
                   "the two factors behind each time: wave/tile efficiency and the k-depth term (JSON: layer_gemms).")
@click.option("--parts", "show_parts", is_flag=True, default=False,
              help="Also split one dense layer's compute by part (weight GEMMs, fp8 casts, attention core, elementwise), "
                   "forward and backward, and name the attention kernel curve that prices the core (JSON: layer_parts).")
@stack_option()
@price_options
@format_option
@plot_option
@quiet_option
def estimate(model_ref: str | None, cluster_ref: str | None, layout_text: str | None, plan_path: str | None,
             moe_dispatcher: str | None, moe_a2a_overlap: bool, calibration_path: str | None, tokens: float | None,
             show_gemms: bool, show_parts: bool, stack_name: str | None, provider: str | None, pricing: str | None,
             prices_path: str | None, fmt: str, plot_path: str | None) -> None:
    """Predict per-GPU memory and step time of one training layout.

    Example: clusterplan estimate --model llama3.1-70b --cluster dgx-h100:8 --layout "tp=8,pp=4,gbs=512,seq=8192"
    or: clusterplan estimate --plan plan.yaml
    Exits 1 when the layout is infeasible (the reasons are printed; out of memory: the term that overflows and the
    nearest changes that fit, each priced), 2 on bad input.
    """
    check_plot_path(plot_path)
    console.set_format(fmt)
    if plan_path is not None and layout_text is not None:
        raise BadInputError("give --plan PLAN.yaml or --layout, not both (the plan file holds its layout)")
    if plan_path is None and None in (model_ref, cluster_ref, layout_text):
        raise BadInputError("estimate needs --model, --cluster and --layout (e.g. --layout \"tp=8,pp=4\"), or --plan "
                            "PLAN.yaml from `clusterplan plan --out`")
    prices = price_rule(provider, pricing, prices_path)
    plan = read_plan(plan_path) if plan_path is not None else None
    model = load_model(model_ref) if model_ref is not None else plan.model
    cluster = load_cluster(cluster_ref, prices) if cluster_ref is not None else price_cluster(plan.cluster, prices)
    calibration = load_calibration(calibration_path)
    warn_foreign_calibration(calibration, cluster, calibration_path)
    stack = get_stack(stack_name or (plan.stack if plan is not None else None))
    if plan is not None and plan.stages:
        if moe_dispatcher is not None or moe_a2a_overlap or show_gemms or show_parts:
            raise BadInputError("--moe-dispatcher / --moe-a2a-overlap / --gemms / --parts take a single-GPU-type "
                                "plan; write the first two into the mixed plan's layout, or estimate one stage's GPU "
                                "type with --layout")
        _estimate_mixed(plan, model, cluster, calibration, stack, fmt, tokens, plot_path)
        return
    layout = plan.layout if plan is not None else Layout.parse(layout_text, world=cluster.world_size,
                                                                  defaults={"zero": stack.default_zero,
                                                                            "recompute": stack.default_recompute})
    if plan is None:
        unnamed = [k for k in BATCH_KEYS if k not in layout_keys(layout_text)]
        if unnamed:  # the batch shapes every number; a default filled in silently reads as the user's choice
            console.warn("--layout names no " + " or ".join(unnamed) + ": priced at "
                         + ", ".join(f"{k}={getattr(layout, k)}" for k in unnamed) + " (give them to price your batch)")
    split = with_stack_split(model, layout, stack.pp_split)  # the split the stack makes of its own
    if split != layout:
        layout = split
        console.info(f"stack {stack.name} splits pipeline ranks by block cost ({stack.pp_split}): layers "
                     f"{'/'.join(map(str, layout.pp_layers))} (give pp_layers or first/last_stage_layers to price "
                     "another)")
    if moe_dispatcher is not None:
        layout = layout.with_(moe_dispatcher=moe_dispatcher)
    if moe_a2a_overlap:
        layout = layout.with_(moe_a2a_overlap=True)
    est = run_estimate(model, cluster, layout, calibration, stack=stack)
    beyond = model.beyond_context(layout.seq)  # priced as given: a context extension
    if beyond is not None:
        console.warn(beyond)
    result = est.to_json()
    nearest = nearest_layout(model, cluster, est, calibration, stack)  # out of memory: what to change, priced
    for problem in stack_problems(layout, stack):  # priced as given; say what the stack would not run (as export)
        console.warn(f"{problem} (priced as given; `clusterplan plan --stack {stack.name}` searches only what it runs)")
    if nearest is not None:
        result["nearest_feasible"] = nearest.to_json()
    if tokens is not None and est.feasible:
        result["time_to_train"] = estimate_time_to_train(est, tokens)
        result["prices"] = cluster_prices_json(cluster)  # the rows behind its dollars, with the rule that chose them
        short = short_budget_warning(tokens, layout.gbs, layout.seq)
        if short is not None:
            console.warn(short)
    if show_gemms and "step_time_s" in result:
        result["layer_gemms"] = layer_gemms(est).to_json()
    if show_parts and "step_time_s" in result:
        parts = layer_parts(est)
        if parts is None:
            console.warn("--parts: a hybrid's blocks are not split by part (--gemms lists each block kind's GEMMs)"
                         if est.model.is_hybrid else
                         "--parts: the model has no dense layer (--gemms lists its MoE layer's GEMMs)")
        else:
            result["layer_parts"] = parts.to_json()
    attach_interval(result, cluster.gpu.name, model.is_moe, calibration_path, hybrid=model.is_hybrid)
    if fmt == "json":
        console.json(result)
    else:
        render_estimate(result)
        if nearest is not None:
            render_nearest(nearest)
        if "time_to_train" in result:
            render_time_to_train(result["time_to_train"])
            if result["time_to_train"].get("usd") is not None:
                console.text(prices_line(result["prices"]))
        if "layer_gemms" in result:
            render_layer_gemms(result["layer_gemms"])
        if "layer_parts" in result:
            render_layer_parts(result["layer_parts"])
    if "usd_missing_reason" in (result.get("time_to_train") or {}):  # no $ to train: say why, and how to price it
        console.info(f"no $ to train: {result['time_to_train']['usd_missing_reason']}")
    if plot_path and "step_time_s" in result:
        from clusterplan.cli.plot import plot_estimate

        plot_estimate(result, plot_path)
        console.info(f"wrote {plot_path}")
    if not result["feasible"]:
        # the one line on stderr, as plan gives it: why, and the nearest change that fits when one was priced
        # (a rule other than memory with its fix: the memory fix is the nearest layout, when one was priced)
        why = "; ".join(str(r) if r.code is RuleCode.OUT_OF_MEMORY else f"{r} (fix: {r.fix})" for r in est.reasons)
        console.error(f"infeasible: {why}" + (f"; {nearest.summary()}" if nearest is not None else ""))
        raise SystemExit(1)


def _estimate_mixed(plan: PlanFile, model: ModelSpec, cluster: Cluster, calibration: Calibration | None, stack: ExecutionStack, fmt: str,
                    tokens: float | None, plot_path: str | None) -> None:
    """A mixed-GPU plan file: per-stage memory and step time on each stage's GPU type (solver/hetero.py)."""
    if tokens is not None or plot_path:
        raise BadInputError("--tokens and --plot take one GPU type; a mixed-GPU plan prints its stages only "
                            "(drop --tokens/--plot)")
    problems = mixed_problems(model, cluster, plan.layout)
    if problems:
        for rule in problems:
            console.error(f"{rule.message} (fix: {rule.fix})")
        raise SystemExit(1)
    split = evaluate_stages(model, cluster, plan.layout, plan.stages, calibration, stack)
    result = {"model": model.name, "cluster": cluster.describe(), "layout": plan.layout.to_dict(),
              "feasible": split.fits, "mixed_gpu_types": split.to_json()}
    require_finite(result)
    if fmt == "json":
        console.json(result)
    else:
        console.text(f"{model.name} on {cluster.describe()}: {plan.layout.short()}")
        render_stage_split(result["mixed_gpu_types"])
    if not split.fits:
        raise SystemExit(1)
