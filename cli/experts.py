"""`clusterplan experts`: place MoE experts (and replicas) on GPUs from routing statistics.

`clusterplan experts --model M --cluster C --stats FILE` compares the EPLB baseline with the ILP;
`clusterplan experts synth --model M --out stats.npz` writes seeded synthetic statistics.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from clusterplan.cli.console import console
from clusterplan.cli.options import format_option, output_path, plot_option, quiet_option
from clusterplan.cli.plot import check_plot_path
from clusterplan.errors import BadInputError
from clusterplan.fileio import require_finite, write_atomic
from clusterplan.models.moe.metrics import BYTES_PER_ELEMENT, DISPATCH_RULES
from clusterplan.models.moe.routing import SynthConfig, save_stats, synth_stats
from clusterplan.models.moe.windows import save_windows, synth_windows
from clusterplan.solver.experts_plan import (
    METHODS,
    REBALANCE_POLICIES,
    ExpertsRequest,
    RebalanceRequest,
    engine_file,
    launch_flags,
    moe_model,
    plan_experts,
    plan_rebalance,
)


@click.group("experts", invoke_without_command=True)
@click.option("--model", "-m", "model_ref", help="MoE model: preset, config.json or YAML.")
@click.option("--cluster", "-c", "cluster_ref", help="Cluster: PRESET:NODES (e.g. dgx-h100:8), PRESET:NODESxGPUS (dgx-h100:1x4) or a YAML file.")
@click.option("--stats", "stats_path", help="Routing statistics (.npz, .npy, .json, .csv; see README).")
@click.option("--slots-per-gpu", type=int, default=None, help="Expert slots per GPU [default: experts/GPUs + 1 spare].")
@click.option("--method", type=click.Choice(list(METHODS)), default="both",
              help="eplb: both EPLB policies only; balance: + our min-max balancer; ilp: + the layer ILP; both: + the "
                   "optimiser that suits the dispatch rule (balance, or the ILP under --engine chained).")
@click.option("--engine", type=click.Choice(sorted(DISPATCH_RULES)), default=None,
              help="Dispatch rule the placement is judged under [default: the engine of --out-format; vllm for "
                   "clusterplan files]. 'chained' is the research model where tokens stay where their experts ran.")
@click.option("--time-limit", "time_limit_s", type=float, default=60.0, help="ILP wall-clock limit in seconds.")
@click.option("--expert-groups", type=int, default=None,
              help="Expert groups for EPLB's hierarchical policy [default: the model's own (DeepSeek-V3 n_group 8); "
                   "1 = global policy only].")
@click.option("--dispatch-dtype", type=click.Choice(sorted(BYTES_PER_ELEMENT)), default="bf16",
              help="Dispatch precision (combine is BF16).")
@click.option("--tokens-per-step", type=int, default=None,
              help="Tokens per step across the cluster [default: the statistics' own token count].")
@click.option("--seed", type=int, default=0, help="CBC random seed.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), callback=output_path,
              help="Write the placement file here.")
@click.option("--out-format", type=click.Choice(["clusterplan", "sglang", "trtllm"]), default="clusterplan",
              help="Placement file for clusterplan (JSON), SGLang --init-expert-location (JSON) or TensorRT-LLM "
                   "moe_config.load_balancer (YAML).")
@format_option
@plot_option
@quiet_option
@click.pass_context
def experts(ctx: click.Context, model_ref: str | None, cluster_ref: str | None, stats_path: str | None,
            slots_per_gpu: int | None, method: str, engine: str | None, time_limit_s: float,
            expert_groups: int | None, dispatch_dtype: str, tokens_per_step: int | None, seed: int,
            out_path: str | None, out_format: str, fmt: str, plot_path: str | None) -> None:
    """Place MoE experts on GPUs: both EPLB policies and our optimiser, judged under the engine's dispatch."""
    if ctx.invoked_subcommand is not None:
        return
    missing = [flag for flag, v in (("--model", model_ref), ("--cluster", cluster_ref), ("--stats", stats_path))
               if v is None]
    if missing:
        raise BadInputError(f"experts: missing {', '.join(missing)}; e.g. clusterplan experts --model deepseek-v3 "
                            "--cluster dgx-h100:8 --stats stats.npz (make stats with `clusterplan experts synth`)")
    if not 0 < time_limit_s < math.inf:  # NaN and inf fail too
        raise BadInputError("--time-limit must be a finite number of seconds > 0")
    check_plot_path(plot_path)  # before any work
    req = ExpertsRequest(model_ref=model_ref, cluster_ref=cluster_ref, stats_path=stats_path,
                         slots_per_gpu=slots_per_gpu, method=method, time_limit_s=time_limit_s,
                         expert_groups=expert_groups, dispatch_dtype=dispatch_dtype, tokens_per_step=tokens_per_step,
                         seed=seed, engine=engine, out_format=out_format)
    with console.progress("placing experts") as progress:
        result = plan_experts(req, progress)
    require_finite(result.report)
    if plot_path:
        from clusterplan.cli.plot import plot_experts

        plot_experts(result.report, plot_path)
    if "solver" in result.report:
        console.info(f"{result.report['solver']['optimiser']}: {result.solve_s:.1f} s")
    _render(result.report, fmt)
    if out_path:
        write_atomic(out_path, engine_file(result.chosen, result.model, out_format, result.placement_file))
        covered = f"{result.chosen.n_layers} of {result.model.n_moe_layers} MoE layers"
        console.info(f"wrote {out_path} ({result.placement_file['method']} placement, {out_format} format, "
                     f"{covered})")
        flags = launch_flags(result.chosen, result.model, out_format, out_path, result.report["dispatch_rule"]["name"])
        if flags:
            console.info("launch with: " + " ".join(flags))


def _render(result: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        console.json({k: v for k, v in result.items() if k != "placement_file"})
        return
    console.text(f"{result['model']} on {result['cluster']} ({result['num_gpus']} GPUs, {result['num_nodes']} "
                 f"nodes), {result['layers']} MoE layers, {result['slots_per_gpu']} slots/GPU, "
                 f"{'with' if result['transitions'] else 'no'} cross-layer transitions")
    rows = []
    for name, data in result["methods"].items():
        s = data["summary"]
        rows.append((name, f"{s['max_over_mean_worst']:.3f}", f"{s['max_over_mean_avg']:.3f}",
                     f"{s['cross_gpu_bytes'] / 1e9:.3f}", f"{s['cross_node_bytes'] / 1e9:.3f}",
                     f"{s['all_to_all_s'] * 1e3:.3f}", f"{s['expert_compute_s'] * 1e3:.3f}"))
    console.table(None, ["method", "max/mean worst", "max/mean avg", "cross-GPU GB", "cross-node GB",
                         "all-to-all ms", "expert ms"], rows)
    rule = result["dispatch_rule"]
    console.text(f"judged under the {rule['name']} dispatch rule ({rule['replica']} replica choice, tokens start "
                 f"{'at home' if rule['origin'] == 'home' else 'where their last experts ran'}); best baseline: "
                 f"{result['best_baseline']}")
    if "solver" in result:
        sol = result["solver"]
        if sol["optimiser"] == "ilp":
            gap = "no layer solved (no gap to report)" if sol["gap"] is None else \
                f"gap {sol['gap']:.2%} over the {sol['solved_layers']} solved layers"
            console.text(f"ILP {gap}, {sol['subproblems']} subproblems ({sol['proven_optimal']} proven optimal, "
                         f"{len(sol['unsolved_layers'])} layers unsolved)")
        else:
            console.text(f"balancer: worst gap to the lower bound {sol['max_gap']:.2%}; {sol['layers_at_bound']} "
                         f"layers at the bound")
        kept = sol["layers_kept_baseline"]
        console.text(f"{sol['optimiser']} wins {sol['layers_won']} of {result['layers']} layers; the best baseline "
                     f"is kept where it cannot win ({len(kept)} layers)")
    if "improvement_over_best_baseline" in result:
        imp = result["improvement_over_best_baseline"]
        console.text(f"chosen vs {result['best_baseline']}: worst max/mean {_lower(imp['max_over_mean_worst'])}, "
                     f"all-to-all time {_lower(imp['all_to_all_s'])}, expert time "
                     f"{_lower(imp['expert_compute_s'])}, cross-node bytes {_lower(imp['cross_node_bytes'])}")


def _lower(share: float) -> str:
    """An improvement share as words: '12.0% lower', '0.1% higher' (not '-0.1% lower'), 'the same'."""
    if abs(share) < 5e-4:
        return "the same"
    return f"{share:.1%} lower" if share > 0 else f"{-share:.1%} higher"


@experts.command("synth")
@click.option("--model", "-m", "model_ref", help="MoE model giving experts, top-k and MoE layers.")
@click.option("--experts", "n_experts", type=int, default=None, help="Experts per layer (instead of --model).")
@click.option("--top-k", type=int, default=None, help="Experts per token (instead of --model).")
@click.option("--layers", "n_layers", type=int, default=None, help="MoE layers [default: all of the model's].")
@click.option("--tokens", "n_tokens", type=int, default=16384, help="Tokens routed per layer.")
@click.option("--zipf", "zipf_exponent", type=float, default=0.8,
              help="Popularity exponent (rank^-s); 0.8 matches the imbalance ratio (max-mean)/mean 1.56 TRT-LLM "
                   "measured on DeepSeek-R1 EP32.")
@click.option("--affinity", "affinity_logit", type=float, default=2.0, help="Cross-layer successor logit bonus.")
@click.option("--seed", type=int, default=0)
@click.option("--windows", "n_windows", type=int, default=None,
              help="Write W windows of drifting loads ([W, L, E] in .npz) for `experts rebalance`.")
@click.option("--drift", type=float, default=0.1, help="With --windows: share of expert ranks swapped per window.")
@click.option("--out", "out_path", required=True, callback=output_path, type=click.Path(dir_okay=False),
              help="Output file: .npz (recommended), .json, .csv (+ .transitions.csv) or .npy (no transitions).")
@format_option
def synth(model_ref: str | None, n_experts: int | None, top_k: int | None, n_layers: int | None, n_tokens: int,
          zipf_exponent: float, affinity_logit: float, seed: int, n_windows: int | None, drift: float,
          out_path: str, fmt: str) -> None:
    """Write seeded synthetic routing statistics (Zipf-like load, cross-layer affinity; or drifting windows)."""
    if n_layers is not None and n_layers < 1:
        raise BadInputError(f"experts synth: --layers {n_layers}: give at least 1 MoE layer (or drop --layers with "
                            "--model for all of them)")
    if n_windows is None and click.get_current_context().get_parameter_source("drift") \
            == click.core.ParameterSource.COMMANDLINE:
        raise BadInputError("experts synth: --drift shapes drifting windows; give --windows W with it, or drop --drift")
    if model_ref:
        model = moe_model(model_ref)
        for flag, given, own in (("--experts", n_experts, model.n_experts), ("--top-k", top_k, model.top_k)):
            if given is not None and given != own:
                raise BadInputError(f"experts synth: {flag} {given} contradicts {model.name}'s {own}; drop {flag} "
                                    "(the model gives it) or --model (to write statistics of another shape)")
        if n_layers is not None and n_layers > model.n_moe_layers:
            raise BadInputError(f"experts synth: --layers {n_layers} is more than {model.name}'s "
                                f"{model.n_moe_layers} MoE layers; give at most {model.n_moe_layers}, or drop --layers")
        n_experts, top_k = model.n_experts, model.top_k
        n_layers = n_layers or model.n_moe_layers
    if n_experts is None or top_k is None or n_layers is None:
        raise BadInputError("experts synth: give --model, or all of --experts, --top-k and --layers")
    if Path(out_path).suffix.lower() not in (".npz", ".npy", ".json", ".csv"):
        raise BadInputError(f"--out {out_path}: use a .npz, .npy, .json or .csv file name")
    if n_windows is not None:
        if Path(out_path).suffix.lower() != ".npz":
            raise BadInputError(f"--out {out_path}: windows are written as .npz")
        if not (math.isfinite(zipf_exponent) and zipf_exponent >= 0):
            raise BadInputError("--zipf must be a finite number >= 0")
        wins = synth_windows(n_windows=n_windows, n_layers=n_layers, n_experts=n_experts, top_k=top_k,
                             n_tokens=n_tokens, zipf_exponent=zipf_exponent, drift=drift, seed=seed)
        save_windows(wins, out_path)
        console.info(f"wrote {out_path}: {n_windows} windows x {n_layers} layers x {n_experts} experts, drift {drift}")
        return
    stats = synth_stats(SynthConfig(n_layers=n_layers, n_experts=n_experts, top_k=top_k, n_tokens=n_tokens,
                                    zipf_exponent=zipf_exponent, affinity_logit=affinity_logit, seed=seed))
    written = save_stats(stats, out_path)
    load = stats.tokens_per_expert
    info = {"files": [str(p) for p in written], "layers": n_layers, "experts": n_experts, "top_k": top_k,
            "tokens": n_tokens, "seed": seed, "hottest_expert_over_mean": float((load.max(1) / load.mean(1)).mean())}
    if fmt == "json":
        console.json(info)
        return
    console.text(f"wrote {', '.join(info['files'])}: {n_layers} layers x {n_experts} experts, top-{top_k}, "
                 f"{n_tokens} tokens, hottest expert {info['hottest_expert_over_mean']:.1f}x the mean (seed {seed})")


@experts.command("rebalance")
@click.option("--model", "-m", "model_ref", required=True, help="MoE model: preset, config.json or YAML.")
@click.option("--cluster", "-c", "cluster_ref", required=True, help="Cluster: PRESET:NODES[xGPUS] or a YAML file.")
@click.option("--stats", "windows_path", required=True, help="Windows of routing statistics (.npz, [W, L, E]).")
@click.option("--intervals", default="1,2,4,8", help="Windows between rebalances to compare, comma-separated.")
@click.option("--policy", type=click.Choice(list(REBALANCE_POLICIES)), default="eplb-global",
              help="How each rebalance places experts.")
@click.option("--engine", type=click.Choice(sorted(DISPATCH_RULES)), default="vllm", help="Dispatch rule.")
@click.option("--slots-per-gpu", type=int, default=None, help="Expert slots per GPU [default: experts/GPUs + 1].")
@click.option("--weight-bytes", type=float, default=2.0, help="Bytes per expert weight moved (bf16 2, fp8 1).")
@click.option("--steps-per-window", type=float, default=1000.0, help="Forward steps one window of loads spans.")
@format_option
def rebalance(model_ref: str, cluster_ref: str, windows_path: str, intervals: str, policy: str, engine: str,
              slots_per_gpu: int | None, weight_bytes: float, steps_per_window: float, fmt: str) -> None:
    """How often to rebalance as routing drifts: MoE time per step against what each rebalance moves."""
    try:
        ks = tuple(int(x) for x in intervals.split(",") if x.strip())
    except ValueError:
        raise BadInputError(f"--intervals {intervals!r}: give whole window counts, e.g. 1,2,4,8") from None
    report, rows = plan_rebalance(RebalanceRequest(
        model_ref=model_ref, cluster_ref=cluster_ref, windows_path=windows_path, intervals=ks, policy=policy,
        engine=engine, slots_per_gpu=slots_per_gpu, weight_bytes=weight_bytes, steps_per_window=steps_per_window))
    if fmt == "json":
        console.json(report)
        return
    console.text(f"{report['model']} on {report['cluster']}, {report['windows']} windows of {steps_per_window:g} "
                 f"steps, {policy} placements, {engine} dispatch")
    console.table(None, ["rebalance every", "rebalances", "MoE ms/step", "worst max/mean", "moved GB each",
                         "rebalance s", "overhead ms/step", "total ms/step"],
                  [(r.interval, str(r.rebalances), f"{r.moe_s_per_step * 1e3:.3f}", f"{r.worst_max_over_mean:.3f}",
                    f"{r.moved_bytes_per_rebalance / 1e9:.2f}", f"{r.rebalance_s:.3f}",
                    f"{r.overhead_s_per_step * 1e3:.4f}", f"{r.total_s_per_step * 1e3:.3f}") for r in rows])
    console.text(f"best online interval: {report['best_interval']} window(s) between rebalances "
                 "(oracle: each window placed from its own loads, a bound)")
