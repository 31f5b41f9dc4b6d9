"""`clusterplan serve-plan`: the cheapest GPU mix that serves a workload within TTFT/TPOT targets."""

from __future__ import annotations

import math
from pathlib import Path

import click

from clusterplan.cli.console import console
from clusterplan.cli.options import format_option, output_path, plot_option, price_options, quiet_option
from clusterplan.cli.render import prices_line
from clusterplan.errors import BadInputError, InfeasibleError
from clusterplan.fileio import dumps_json, require_finite, write_atomic
from clusterplan.hardware_db import get_gpu, get_link
from clusterplan.hardware_db.engines import get_engine
from clusterplan.hardware_db.prices import choose_prices
from clusterplan.models.serving.launch import LaunchConfig, launch_lines, launch_notes
from clusterplan.models.serving.model import MAMBA_SSM_DTYPES
from clusterplan.solver.melange import MAX_SLICE_FACTOR, LimitsTooTight
from clusterplan.solver.serve import (
    Limits,
    Pool,
    ServePlan,
    SloUnreachable,
    Workload,
    candidate_instances,
    make_workload,
    melange_table,
    plan_serving,
)
from clusterplan.solver.serve_frontier import CostSloFrontier, cost_slo_frontier

DEFAULT_GPUS = "A10G,L4,L40S,A100-80GB,H100,H200"


def _ints(text: str, what: str) -> tuple[int, ...]:
    parts = [v.strip() for v in text.split(",")]
    try:
        if "" in parts:
            raise ValueError
        values = tuple(int(v) for v in parts)
    except ValueError:
        raise BadInputError(f"{what} {text!r}: give comma-separated integers, e.g. 1,2,4,8") from None
    if min(values) < 1:
        raise BadInputError(f"{what} {text!r}: give positive integers")
    if len(set(values)) < len(values):
        raise BadInputError(f"{what} {text!r}: each value once")
    return values


def _available(text: str | None) -> tuple[tuple[str, int], ...]:
    out = []
    for part in (text or "").split(","):
        if part.strip():
            name, _, count = part.partition("=")
            if not count.strip().isdigit() or len(count.strip()) > 9:  # at most 999,999,999 GPUs
                raise BadInputError(f"--available {part!r}: write GPU=COUNT, COUNT a whole number of GPUs (e.g. "
                                    "A10G=8,H100=16)")
            gpu = get_gpu(name.strip()).name
            if any(gpu == seen for seen, _ in out):
                raise BadInputError(f"--available {text!r}: {gpu} given twice; give each GPU type once with its total")
            out.append((gpu, int(count)))
    return tuple(out)


def _pool_json(pool: Pool, model_ref: str, max_len: int, disagg: bool) -> dict:
    inst = pool.instance
    launch = LaunchConfig(repo=model_ref, tp=inst.tp, pp=inst.pp, weight_dtype=inst.weight_dtype,
                          kv_dtype=inst.kv_dtype, mamba_ssm_dtype=inst.mamba_ssm_dtype, max_seqs=pool.max_batch, max_model_len=max_len,
                          chunk_tokens=inst.max_batched_tokens, memory_utilization=inst.knobs.memory_utilization,
                          role=pool.role if disagg else "colocated",
                          chunked_prefill=get_engine(inst.engine).chunked_prefill)
    return {"role": pool.role, "gpu": inst.gpu.name, "tp": inst.tp, "pp": inst.pp, "instances": pool.count,
            "gpus": pool.count * inst.n_gpus, "max_batch": pool.max_batch, "rate_rps": round(pool.rate_rps, 4),
            "utilisation": round(pool.utilisation, 4), "ttft_ms": round(pool.ttft_s * 1e3, 2),
            "tpot_ms": round(pool.tpot_s * 1e3, 3), "usd_per_hour": round(pool.count * inst.usd_per_hour, 4),
            **launch_lines(launch), "launch_notes": launch_notes(launch)}


def _known_gpus(names: tuple[str, ...], explicit: bool) -> tuple[str, ...]:
    """The requested GPU names the database knows (an unknown name the user typed is an error, later)."""
    out = []
    for name in names:
        try:
            out.append(get_gpu(name).name)
        except BadInputError:
            if explicit:
                raise
    return tuple(out)


def _plan_json(plan: ServePlan, others: dict[str, float], model_ref: str, work: Workload,
               alternatives: dict[str, float]) -> dict:
    max_len = max(max(b.input_tokens) + max(b.output_tokens) for b in work.buckets)
    max_len = int(math.ceil(max_len / 256) * 256)
    disagg = plan.mode == "disaggregated"
    singles = {k: v for k, v in alternatives.items() if math.isfinite(v)}
    best = min(singles.items(), key=lambda kv: (kv[1], kv[0])) if singles else None
    q = work.slo.percentile
    return {
        "mode": plan.mode, "model": model_ref, "rate_rps": work.rate_rps, "buckets": len(work.buckets),
        "slo": {"ttft_ms": work.slo.ttft_s * 1e3, "tpot_ms": work.slo.tpot_s * 1e3, "percentile": q},
        "pools": [_pool_json(p, model_ref, max_len, disagg) for p in plan.pools],
        "usd_per_hour": round(plan.usd_per_hour, 4),
        "usd_per_million_output_tokens": round(plan.usd_per_million_output_tokens, 4),
        "ttft_ms": round(max(p.ttft_s for p in plan.pools) * 1e3, 2),
        "tpot_ms": round(max(p.tpot_s for p in plan.pools) * 1e3, 3),
        "best_single_type": None if best is None else {
            "instance": best[0], "usd_per_hour": round(best[1], 4),
            "saving_fraction": round(1 - plan.usd_per_hour / best[1], 4)},
        "modes_usd_per_hour": {k: (round(v, 4) if math.isfinite(v) else None) for k, v in sorted(others.items())},
    }


def frontier_json(f: CostSloFrontier) -> dict:
    """Cost against SLO (solver/serve_frontier.py): each candidate's points and the two frontiers as
    [candidate, point] indices."""
    return {
        "percentile": f.slo.percentile, "ttft_slo_ms": f.slo.ttft_s * 1e3, "tpot_slo_ms": f.slo.tpot_s * 1e3,
        "candidates": [{"instance": c.instance.label, "gpu": c.instance.gpu.name, "tp": c.instance.tp,
                        "pp": c.instance.pp, "gpus": c.instance.n_gpus, "usd_per_hour": round(c.instance.usd_per_hour, 4),
                        "saturation_rps": round(c.saturation_rps, 4),
                        "points": [{"rate_rps": round(p.rate_rps, 4), "ttft_ms": round(p.ttft_s * 1e3, 2),
                                    "tpot_ms": round(p.tpot_s * 1e3, 3),
                                    "usd_per_million_output_tokens": round(p.usd_per_million_output_tokens, 4),
                                    "meets_slo": p.meets_slo} for p in c.points]}
                       for c in f.candidates],
        "ttft_frontier": [list(ref) for ref in f.ttft_frontier],
        "tpot_frontier": [list(ref) for ref in f.tpot_frontier],
    }


def _print_frontier(f: dict) -> None:
    """Each candidate's cheapest point within the SLO, and the cheapest cost at each TTFT target."""
    q = f"p{f['percentile']:g}"
    rows = []
    for c in f["candidates"]:
        ok = [p for p in c["points"] if p["meets_slo"]]
        best = min(ok, key=lambda p: p["usd_per_million_output_tokens"]) if ok else None
        rows.append((c["instance"], f"{c['usd_per_hour']:.2f}", f"{c['saturation_rps']:.2f}",
                     f"{best['rate_rps']:.2f}" if best else "-", f"{best['ttft_ms']:.0f}" if best else "-",
                     f"{best['tpot_ms']:.1f}" if best else "-",
                     f"{best['usd_per_million_output_tokens']:.3f}" if best else "misses the SLO at every load"))
    console.table(f"\ncost against SLO: each instance type alone at its busiest load within the SLO ({q})",
                  ["instance", "$/h", "sat. req/s", "req/s", "TTFT ms", "TPOT ms", "$/1M out"], rows,
                  justify_right=[False] + [True] * 6)
    steps = [f["candidates"][c]["points"][k] | {"instance": f["candidates"][c]["instance"]} for c, k in f["ttft_frontier"]]
    if steps:  # at most FRONTIER_ROWS steps, evenly spaced, the cheapest (loosest) one always shown
        shown = sorted({round(i * (len(steps) - 1) / (FRONTIER_ROWS - 1)) for i in range(FRONTIER_ROWS)})
        console.text(f"cheapest $/1M output tokens by {q} TTFT target (TPOT within target; {len(steps)} steps in the "
                     "JSON's ttft_frontier): " + ", ".join(
                         f"<= {steps[i]['ttft_ms']:.0f} ms ${steps[i]['usd_per_million_output_tokens']:.3f} "
                         f"({steps[i]['instance']})" for i in shown))


FRONTIER_ROWS = 5


def _print_table(data: dict) -> None:
    slo = data["slo"]
    console.text(f"{data['model']} at {data['rate_rps']:g} req/s, p{slo['percentile']:g} TTFT <= {slo['ttft_ms']:g} ms, "
                 f"TPOT <= {slo['tpot_ms']:g} ms: {data['mode']} plan")
    console.table(None, ["role", "GPU", "tp", "pp", "instances", "max batch", "req/s", "util", "TTFT ms", "TPOT ms", "$/h"],
                  [(p["role"], p["gpu"], p["tp"], p["pp"], p["instances"], p["max_batch"], f"{p['rate_rps']:.2f}",
                    f"{p['utilisation']:.0%}", f"{p['ttft_ms']:.0f}", f"{p['tpot_ms']:.1f}", f"{p['usd_per_hour']:.2f}")
                   for p in data["pools"]], justify_right=[False, False] + [True] * 9)
    console.text(f"\ncost ${data['usd_per_hour']:.2f}/h, ${data['usd_per_million_output_tokens']:.3f} per 1M output tokens; "
                 f"predicted p{slo['percentile']:g} TTFT {data['ttft_ms']:.0f} ms, TPOT {data['tpot_ms']:.1f} ms")
    best = data["best_single_type"]
    if best:
        console.text(f"best single instance type: {best['instance']} at ${best['usd_per_hour']:.2f}/h "
                     f"(this plan saves {best['saving_fraction']:.0%})")
    console.text(data["disaggregation"])
    used = {p["gpu"] for p in data["pools"]}  # the JSON has every requested GPU's row; the line, the plan's
    console.text(prices_line(data["prices"] | {"rows": {g: r for g, r in data["prices"]["rows"].items() if g in used}}))
    console.text("\nlaunch, per instance:")
    for p in data["pools"]:
        console.text(f"  [{p['role']} x{p['instances']}] {p['vllm']}")
        console.text(f"  [{p['role']} x{p['instances']}] {p['sglang']}")
        console.text(f"  [{p['role']} x{p['instances']}] {p['trtllm']}")
    for note in sorted({n for p in data["pools"] for n in p["launch_notes"]}):
        console.info(f"launch note: {note}")
    if "cost_vs_slo" in data:
        _print_frontier(data["cost_vs_slo"])


CAPACITY_TABLE_UNUSED = ("model_ref", "input_len", "output_len", "trace", "ttft_ms", "tpot_ms", "percentile", "gpus",
                         "tp_text",
                         "pp_text", "available", "disaggregate", "kv_link", "save_capacity", "calibration",
                         "engine_name", "prices_path", "provider", "pricing", "weight_dtype", "kv_dtype",
                         "mamba_ssm_dtype", "seed")
"""serve-plan parameters a --capacity-table plan does not read (it takes --rate, --slice-factor and --max-gpus)."""


@click.command("serve-plan")
@click.option("--model", "model_ref", help="Preset name, config.json or model YAML.")
@click.option("--rate", type=float, help="Offered load in requests per second.")
@click.option("--input-len", help="Prompt tokens: 512, uniform:LOW:HIGH, normal:MEAN:STD, lognormal:MU:SIGMA (of the log) or a CSV tokens,weight.")
@click.option("--output-len", help="Output tokens, same forms as --input-len.")
@click.option("--trace", type=click.Path(dir_okay=False), help="CSV arrival_s,input_tokens,output_tokens: its lengths replace --input-len / --output-len, its arrivals set the rate (with --rate, its arrival pattern is rescaled to that rate).")
@click.option("--ttft-ms", type=float, help="Time-to-first-token target at the percentile.")
@click.option("--tpot-ms", type=float, help="Time-per-output-token target at the percentile.")
@click.option("--percentile", type=float, default=90.0, help="SLO percentile (50, 90, 99, ...).")
@click.option("--gpus", default=DEFAULT_GPUS, help="GPU types to consider (names or aliases).")
@click.option("--tp", "tp_text", default="1,2,4,8", help="Tensor-parallel sizes to consider.")
@click.option("--pp", "pp_text", default="1", help="Pipeline-parallel sizes to consider.")
@click.option("--max-gpus", type=click.IntRange(min=1, max=10**9), help="Most GPUs the plan may use in total (instances, with --capacity-table).")
@click.option("--available", help="GPUs available per type, e.g. A10G=8,H100=16.")
@click.option("--disaggregate", type=click.Choice(["auto", "on", "off"]), default="auto",
              help="Separate prefill and decode pools: on, off, or whichever is cheaper.")
@click.option("--kv-link", default="ib-ndr", help="Link that carries KV caches from prefill to decode instances.")
@click.option("--capacity-table", type=click.Path(dir_okay=False), help="Measured capacities (Melange JSON) instead of the model.")
@click.option("--save-capacity", type=click.Path(dir_okay=False), callback=output_path,
              help="Write the simulated colocated capacity table (Melange JSON, --capacity-table format).")
@click.option("--slice-factor", type=click.IntRange(min=1, max=MAX_SLICE_FACTOR), help="Slices per request bucket in the ILP (default 4).")
@click.option("--calibration", type=click.Path(dir_okay=False), help="Calibration file from `clusterplan profile`.")
@click.option("--engine", "engine_name", default="vllm", help="Engine profile: vllm, vllm-v0, sglang, trtllm.")
@price_options
@click.option("--weight-dtype", default="bf16", help="Weight precision (bf16, fp8, int4, ...).")
@click.option("--kv-dtype", default="bf16", help="KV-cache precision: fp32, bf16, fp16, fp8, int8, fp4, int4 (bytes per element as the name says).")
@click.option("--mamba-ssm-dtype", type=click.Choice(MAMBA_SSM_DTYPES), default="bf16",
              help="A hybrid's SSM state dtype: bf16 (the model's) or fp32 (vLLM --mamba-ssm-cache-dtype float32, "
                   "SGLang --mamba-ssm-dtype float32).")
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Seed of sampled lengths and arrivals (same seed, same plan).")
@click.option("--frontier", is_flag=True, help="Also simulate every candidate instance type alone at loads up to "
                                               "saturation: cost per token against TTFT/TPOT (implied by --plot).")
@plot_option
@quiet_option
@format_option
def serve_plan(model_ref: str | None, rate: float | None, input_len: str | None, output_len: str | None,
               trace: str | None, ttft_ms: float | None, tpot_ms: float | None, percentile: float, gpus: str,
               tp_text: str, pp_text: str, max_gpus: int | None, available: str | None, disaggregate: str,
               kv_link: str, capacity_table: str | None, save_capacity: str | None, slice_factor: int | None,
               calibration: str | None, engine_name: str, provider: str | None, pricing: str | None,
               prices_path: str | None,
               weight_dtype: str, kv_dtype: str, mamba_ssm_dtype: str, seed: int, frontier: bool,
               plot_path: str | None, fmt: str) -> None:
    """Cheapest GPU mix (type, tp, pp, count) that serves a workload within TTFT/TPOT targets."""
    from clusterplan.cli.plot import check_plot_path

    check_plot_path(plot_path)
    if capacity_table and (plot_path or frontier):
        raise BadInputError("--plot and --frontier simulate the model's instances; they do not work with "
                            "--capacity-table (drop one)")
    if capacity_table:  # the table holds the capacities: options that pick or simulate instances do nothing
        ctx = click.get_current_context()
        flag = {p.name: p.opts[0] for p in ctx.command.params}
        unused = [flag[name] for name in CAPACITY_TABLE_UNUSED
                  if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if unused:
            raise BadInputError(f"{', '.join(unused)}: --capacity-table plans from the table's measured capacities "
                                "(with --rate, --slice-factor, --max-gpus); drop them")
    if save_capacity and disaggregate == "on":
        raise BadInputError("--save-capacity writes the colocated instances' capacity table; --disaggregate on plans "
                            "no colocated instances: use --disaggregate auto or off")
    if capacity_table:
        from clusterplan.fileio import load_mapping
        from clusterplan.solver.melange import plan_from_capacity_table

        data = require_finite(plan_from_capacity_table(load_mapping(capacity_table), capacity_table, rate, slice_factor,
                                                       max_gpus))
        if fmt == "json":
            console.json(data)
        else:
            console.table(None, ["GPU", "instances", "util"], [(n, c, f"{data['utilisation'][n]:.0%}")
                                                              for n, c in data["counts"].items()])
            best = data["best_single_type"]
            console.text(f"cost ${data['usd_per_hour']:.2f}/h" + (
                f"; best single type {best['instance']} ${best['usd_per_hour']:.2f}/h, saving {best['saving_fraction']:.0%}"
                if best else ""))
        return
    if not model_ref or ttft_ms is None or tpot_ms is None:
        raise BadInputError("give --model, --ttft-ms and --tpot-ms (or --capacity-table FILE)")
    link = get_link(kv_link)  # a wrong name is refused whatever --disaggregate says
    if disaggregate == "off" and click.get_current_context().get_parameter_source("kv_link") \
            == click.core.ParameterSource.COMMANDLINE:
        raise BadInputError(f"--kv-link {link.name} has no effect with --disaggregate off (no KV moves between "
                            "instances); drop --kv-link or use --disaggregate on/auto")
    from clusterplan.models.architecture.catalog import hf_repo, load_model
    from clusterplan.models.hardware.calibration import load_calibration

    model = load_model(model_ref)
    work = make_workload(rate, input_len, output_len, trace, ttft_ms, tpot_ms, percentile, seed, model)
    names = tuple(g.strip() for g in gpus.split(",") if g.strip())
    if not names:
        raise BadInputError(f"--gpus {gpus!r}: give GPU names, e.g. --gpus {DEFAULT_GPUS}")
    prices = choose_prices(_known_gpus(names, explicit=gpus != DEFAULT_GPUS), provider, pricing, prices_path)
    tps, pps = _ints(tp_text, "--tp"), _ints(pp_text, "--pp")
    limits = Limits(max_gpus=max_gpus, available_gpus=_available(available), slice_factor=slice_factor or 4)
    try:
        instances, warnings = candidate_instances(model, names, tps, pps, load_calibration(calibration), weight_dtype,
                                                  kv_dtype, explicit=gpus != DEFAULT_GPUS, engine=engine_name,
                                                  prices=prices, mamba_ssm_dtype=mamba_ssm_dtype)
        for line in warnings:
            console.warn(line)
        with console.progress(f"simulating {len(instances)} instance types x {len(work.buckets)} request buckets") \
                as progress:
            answer = plan_serving(instances, work, limits, disaggregate, link, progress)
    except InfeasibleError as exc:  # an answer, not bad input (README "When nothing fits"): exit 1
        if fmt == "json":
            nearest = exc.nearest if isinstance(exc, SloUnreachable | LimitsTooTight) else None
            console.json({"pools": [], "feasible": False, "reason": str(exc), "nearest_feasible": nearest})
        console.error(str(exc))
        raise SystemExit(1) from None
    if save_capacity and answer.capacity is not None:
        write_atomic(save_capacity, dumps_json(melange_table(answer.capacity, work)))
        console.info(f"capacity table written to {save_capacity} (edit it, then plan with --capacity-table)")
    ref = hf_repo(model.name) or str(Path(model_ref).parent if Path(model_ref).name == "config.json" else model_ref)
    data = _plan_json(answer.chosen, answer.modes_usd_per_hour, ref, work, answer.alternatives) | {
        "disaggregation": answer.verdict, "engine": engine_name, "prices": prices.to_json()}
    for pool in data["pools"]:
        over = [f"{k} {pool[k + '_ms']:.1f} ms" for k, limit in (("ttft", ttft_ms), ("tpot", tpot_ms))
                if pool[k + "_ms"] > limit]
        if over:
            console.warn(f"{pool['gpu']} tp{pool['tp']} ({pool['role']}) simulated on its whole request mix reaches "
                         f"p{percentile:g} {', '.join(over)}, over the target (capacities are per size bucket)")
    if frontier or plot_path:
        with console.progress("cost against SLO") as progress:
            data["cost_vs_slo"] = frontier_json(cost_slo_frontier(instances, work, progress))
    require_finite(data)
    if plot_path:
        from clusterplan.cli.plot import plot_serve_plan

        plot_serve_plan(data, plot_path)
        console.info(f"wrote {plot_path}")
    console.json(data) if fmt == "json" else _print_table(data)
