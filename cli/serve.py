"""`clusterplan serve-plan`: the cheapest GPU mix that serves a workload within TTFT/TPOT targets."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click
import numpy as np

from clusterplan.cli.console import console
from clusterplan.cli.options import format_option, output_path
from clusterplan.errors import BadInputError, InfeasibleError
from clusterplan.fileio import dumps_json, require_finite, show, write_atomic
from clusterplan.hardware_db import get_gpu, get_link
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.serving.model import DTYPE_BYTES, ServingInstance, knobs_for_gpu, serving_memory
from clusterplan.models.serving.sim import Slo
from clusterplan.models.serving.traffic import load_trace, make_buckets, parse_length
from clusterplan.solver.serve import Limits, Pool, ServePlan, Workload, melange_table, plan_colocated

DEFAULT_GPUS = "A10G,L4,L40S,A100-80GB,H100,H200"
MAX_SLICE_FACTOR = 1000
"""Most slices per request bucket in the mix ILP (Melange uses 4-8); the ILP grows linearly with it."""


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BadInputError(f"{what} {text!r}: give comma-separated integers, e.g. 1,2,4,8") from None
    if not values or min(values) < 1:
        raise BadInputError(f"{what} {text!r}: give positive integers")
    return values


def _available(text: str | None) -> tuple[tuple[str, int], ...]:
    out = []
    for part in (text or "").split(","):
        if part.strip():
            name, _, count = part.partition("=")
            if not count.strip().isdigit() or len(count.strip()) > 9:  # at most 999,999,999 GPUs
                raise BadInputError(f"--available {part!r}: write GPU=COUNT, e.g. A10G=8,H100=16")
            out.append((get_gpu(name.strip()).name, int(count)))
    return tuple(out)


def _instances(model: ModelSpec, gpus: str, tps: tuple[int, ...], pps: tuple[int, ...], calibration: Any, weight_dtype: str,
               kv_dtype: str, explicit: bool, max_sizes: int = 3) -> tuple[ServingInstance, ...]:
    """Per GPU type, the smallest `max_sizes` (tp, pp) instances that hold the model with KV room, if priced."""
    out, seen = [], set()
    names = [g.strip() for g in gpus.split(",") if g.strip()]
    if not names:
        raise BadInputError(f"--gpus {gpus!r}: give GPU names, e.g. --gpus {DEFAULT_GPUS}")
    for name in names:
        try:
            gpu = get_gpu(name)
        except BadInputError:
            if explicit:
                raise
            continue  # a default GPU the database does not have yet
        if gpu.name in seen:
            continue  # named twice (or by two aliases): one set of instances
        seen.add(gpu.name)
        if gpu.price is None:
            console.warn(f"{gpu.name} has no price in the hardware database; left out")
            continue
        knobs = knobs_for_gpu(gpu, calibration, weight_dtype)
        fitting = []
        for tp in tps:
            for pp in pps:
                if model.n_heads % tp or pp > model.n_layers:
                    continue
                inst = ServingInstance(model=model, gpu=gpu, tp=tp, pp=pp, weight_dtype=weight_dtype,
                                       kv_dtype=kv_dtype, knobs=knobs)
                if serving_memory(inst).kv_capacity_tokens > 0:
                    fitting.append(inst)
        # The `max_sizes` smallest instances that fit: larger ones rarely pay for their GPUs.
        out.extend(sorted(fitting, key=lambda i: (i.n_gpus, i.pp))[:max_sizes])
    if not out:
        raise InfeasibleError(f"{model.name} fits on none of {gpus} at tp {tps} / pp {pps} (weights need "
                              f"{model.total_params() * DTYPE_BYTES[weight_dtype] / 2**30:.0f} GiB in {weight_dtype}); allow larger --tp or --pp or bigger GPUs")
    return tuple(out)


def _workload(rate: float | None, input_len: str | None, output_len: str | None, trace: str | None, ttft_ms: float,
              tpot_ms: float, percentile: float, seed: int) -> Workload:
    if not 0 < percentile < 100:
        raise BadInputError(f"--percentile {percentile}: give a percentile between 0 and 100, e.g. 50, 90 or 99")
    if not (ttft_ms > 0 and tpot_ms > 0):  # NaN fails too
        raise BadInputError("--ttft-ms and --tpot-ms must be > 0")
    rng = np.random.default_rng(seed)
    if rate is not None and not 0 < rate < math.inf:  # NaN fails too; checked before `rate or` can replace a 0
        raise BadInputError(f"--rate {rate}: give a finite request rate > 0 (requests per second)")
    if trace:
        reqs = load_trace(trace)
        inp, out, gaps = np.asarray(reqs.input_tokens), np.asarray(reqs.output_tokens), reqs.unit_gaps()
        rate = rate or reqs.rate_rps
    else:
        if rate is None or input_len is None or output_len is None:
            raise BadInputError("give --rate, --input-len and --output-len, or --trace FILE")
        inp = parse_length(input_len, "--input-len").sample(rng, 4000)
        out = parse_length(output_len, "--output-len").sample(rng, 4000)
        gaps = rng.exponential(size=4000)  # Poisson arrivals
    if not 0 < rate < math.inf:
        raise BadInputError(f"--rate {rate}: give a finite request rate > 0 (requests per second)")
    slo = Slo(ttft_s=ttft_ms / 1e3, tpot_s=tpot_ms / 1e3, percentile=percentile)
    return Workload(rate_rps=float(rate), buckets=tuple(make_buckets(inp, out)), unit_gaps=tuple(gaps.tolist()),
                    slo=slo, seed=seed)


def _pool_json(pool: Pool, model_ref: str, max_len: int, disagg: bool) -> dict:
    inst = pool.instance
    return {"role": pool.role, "gpu": inst.gpu.name, "tp": inst.tp, "pp": inst.pp, "instances": pool.count,
            "gpus": pool.count * inst.n_gpus, "max_batch": pool.max_batch, "rate_rps": round(pool.rate_rps, 4),
            "utilisation": round(pool.utilisation, 4), "ttft_ms": round(pool.ttft_s * 1e3, 2),
            "tpot_ms": round(pool.tpot_s * 1e3, 3), "usd_per_hour": round(pool.count * inst.usd_per_hour, 4),
            "vllm": _vllm_line(inst, pool, model_ref, max_len, disagg),
            "sglang": _sglang_line(inst, pool, model_ref, max_len, disagg)}


def _vllm_line(inst: ServingInstance, pool: Pool, model_ref: str, max_len: int, disagg: bool) -> str:
    # vLLM engine arguments (research/style-and-ecosystem.md B.2).
    line = (f"vllm serve {model_ref} --tensor-parallel-size {inst.tp} --pipeline-parallel-size {inst.pp} "
            f"--max-num-seqs {pool.max_batch} --max-model-len {max_len} "
            f"--gpu-memory-utilization {inst.knobs.memory_utilization:g} "
            f"--enable-chunked-prefill --max-num-batched-tokens {inst.max_batched_tokens}")
    line += " --quantization fp8" if inst.weight_dtype == "fp8" else ""
    line += " --kv-cache-dtype fp8" if inst.kv_dtype == "fp8" else ""
    if disagg:
        line += ' --kv-transfer-config \'{"kv_connector":"NixlConnector","kv_role":"kv_both"}\''
    return line


def _sglang_line(inst: ServingInstance, pool: Pool, model_ref: str, max_len: int, disagg: bool) -> str:
    # SGLang server arguments (research/style-and-ecosystem.md B.2).
    line = (f"python -m sglang.launch_server --model-path {model_ref} --tp {inst.tp} --pp-size {inst.pp} "
            f"--max-running-requests {pool.max_batch} --context-length {max_len} "
            f"--mem-fraction-static {inst.knobs.memory_utilization:g} --chunked-prefill-size {inst.max_batched_tokens}")
    line += " --quantization fp8" if inst.weight_dtype == "fp8" else ""
    line += " --kv-cache-dtype fp8_e4m3" if inst.kv_dtype == "fp8" else ""  # SGLang's name for fp8 KV (B.2)
    return line + (f" --disaggregation-mode {pool.role}" if disagg else "")


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
    console.text("\nlaunch, per instance:")
    for p in data["pools"]:
        console.text(f"  [{p['role']} x{p['instances']}] {p['vllm']}")
        console.text(f"  [{p['role']} x{p['instances']}] {p['sglang']}")


def _capacity_table_plan(path: str, rate: float | None, slice_factor: int | None, max_gpus: int | None) -> dict:
    """Melange-format JSON: {gpu_info: {NAME: {cost_per_hour, tputs[i][j]}}, workload_distribution, total_request_rate}."""
    from clusterplan.fileio import load_mapping
    from clusterplan.solver.melange import MixProblem, solve_mix

    data = load_mapping(path)
    try:
        info = data["gpu_info"]
        names = tuple(sorted(info))
        dist = [float(w) for row in data["workload_distribution"] for w in row]
        costs = tuple(float(info[n].get("cost_per_hour", info[n].get("cost"))) for n in names)
        caps = tuple(tuple(float(v) for row in info[n]["tputs"] for v in row) for n in names)
        total = float(rate if rate is not None else data["total_request_rate"])
        sf = slice_factor or data.get("slice_factor", 4)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadInputError(f"{path}: capacity table needs gpu_info.NAME.cost_per_hour and .tputs, workload_distribution "
                            f"and total_request_rate (or --rate) ({type(exc).__name__}: {exc})") from None
    numbers = [*dist, *costs, *(v for row in caps for v in row), total]
    if not all(math.isfinite(v) for v in numbers) or min(costs, default=1) <= 0 or min(dist, default=0) < 0 \
            or sum(dist) <= 0 or min((v for row in caps for v in row), default=0) < 0 or total <= 0:
        raise BadInputError(f"{path}: capacity table numbers must be finite, cost_per_hour and total_request_rate "
                            "(or --rate) > 0, tputs and workload_distribution >= 0 with some traffic")
    if isinstance(sf, bool) or not isinstance(sf, int) or not 1 <= sf <= MAX_SLICE_FACTOR:
        # the ILP has one variable per slice, bucket and GPU type: 1e9 slices would exhaust memory
        raise BadInputError(f"{show(path)}: capacity table slice_factor must be an integer from 1 to {MAX_SLICE_FACTOR} (as "
                            f"--slice-factor), got {str(sf)[:40]}")
    rates = tuple(w * total for w in dist)
    mix = solve_mix(MixProblem(type_names=names, usd_per_hour=costs, capacity_rps=caps, bucket_rps=rates,
                               slice_factor=sf, max_gpus=max_gpus))
    singles = {}
    for n, c, cap in zip(names, costs, caps, strict=True):
        load = sum(r / v if v > 0 else math.inf for r, v in zip(rates, cap, strict=True) if r > 0)
        if math.isfinite(load):
            singles[n] = math.ceil(load - 1e-9) * c
    best = min(singles.items(), key=lambda kv: (kv[1], kv[0])) if singles else None
    return {"mode": "capacity-table", "rate_rps": total, "slice_factor": sf, "counts": mix.counts,
            "usd_per_hour": round(mix.usd_per_hour, 4),
            "utilisation": {n: round(mix.load[n] / mix.counts[n], 4) for n in mix.counts},
            "best_single_type": None if best is None else {
                "instance": best[0], "usd_per_hour": round(best[1], 4),
                "saving_fraction": round(1 - mix.usd_per_hour / best[1], 4)}}


@click.command("serve-plan")
@click.option("--model", "model_ref", help="Preset name, config.json or model YAML.")
@click.option("--rate", type=float, help="Offered load in requests per second.")
@click.option("--input-len", help="Prompt tokens: 512, uniform:LOW:HIGH, normal:MEAN:STD, lognormal:MU:SIGMA (of the log) or a CSV tokens,weight.")
@click.option("--output-len", help="Output tokens, same forms as --input-len.")
@click.option("--trace", type=click.Path(dir_okay=False), help="CSV arrival_s,input_tokens,output_tokens (replaces the above).")
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
@click.option("--weight-dtype", default="bf16", help="Weight precision (bf16, fp8, int4, ...).")
@click.option("--kv-dtype", default="bf16", help="KV-cache precision.")
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Seed of sampled lengths and arrivals (same seed, same plan).")
@format_option
def serve_plan(model_ref: str | None, rate: float | None, input_len: str | None, output_len: str | None,
               trace: str | None, ttft_ms: float | None, tpot_ms: float | None, percentile: float, gpus: str,
               tp_text: str, pp_text: str, max_gpus: int | None, available: str | None, disaggregate: str,
               kv_link: str, capacity_table: str | None, save_capacity: str | None, slice_factor: int | None,
               calibration: str | None,
               weight_dtype: str, kv_dtype: str, seed: int, fmt: str) -> None:
    """Cheapest GPU mix (type, tp, pp, count) that serves a workload within TTFT/TPOT targets."""
    if capacity_table:
        data = require_finite(_capacity_table_plan(capacity_table, rate, slice_factor, max_gpus))
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
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.models.hardware.calibration import load_calibration

    model = load_model(model_ref)
    work = _workload(rate, input_len, output_len, trace, ttft_ms, tpot_ms, percentile, seed)
    cal = load_calibration(calibration)
    instances = _instances(model, gpus, _ints(tp_text, "--tp"), _ints(pp_text, "--pp"), cal, weight_dtype, kv_dtype,
                           explicit=gpus != DEFAULT_GPUS)
    limits = Limits(max_gpus=max_gpus, available_gpus=_available(available), slice_factor=slice_factor or 4)
    plans, errors = {}, {}
    modes = {"off": ["colocated"], "on": ["disaggregated"], "auto": ["colocated", "disaggregated"]}[disaggregate]
    with console.status(f"simulating {len(instances)} instance types x {len(work.buckets)} request buckets"):
        for mode in modes:
            bound = _disagg_bound(plans, instances, work) if mode == "disaggregated" else None
            if bound is not None:
                errors[mode] = f"cannot go below ${bound:.2f}/h (rate bound), above the colocated plan; not simulated"
                continue
            try:
                plans[mode] = _plan(mode, instances, work, limits, kv_link, save_capacity)
            except InfeasibleError as exc:
                errors[mode] = str(exc)
    if not plans:
        raise InfeasibleError(next(iter(errors.values())))
    chosen = min(plans.values(), key=lambda p: (p.usd_per_hour, p.mode))
    others = {m: p.usd_per_hour for m, p in plans.items()} | {m: math.inf for m in errors}

    ref = str(Path(model_ref).parent if Path(model_ref).name == "config.json" else model_ref)
    singles = next((p.alternatives for p in plans.values() if p.alternatives), {})
    data = _plan_json(chosen, others, ref, work, singles) | {"disaggregation": _verdict(others, errors)}
    for pool in data["pools"]:
        over = [f"{k} {pool[k + '_ms']:.1f} ms" for k, limit in (("ttft", ttft_ms), ("tpot", tpot_ms))
                if pool[k + "_ms"] > limit]
        if over:
            console.warn(f"{pool['gpu']} tp{pool['tp']} ({pool['role']}) simulated on its whole request mix reaches "
                         f"p{percentile:g} {', '.join(over)}, over the target (capacities are per size bucket)")
    require_finite(data)
    console.json(data) if fmt == "json" else _print_table(data)


def _disagg_bound(plans: dict[str, ServePlan], instances: tuple[ServingInstance, ...], work: Workload) -> float | None:
    """The disaggregated cost bound when it already exceeds the colocated plan (skip simulating), else None."""
    from clusterplan.solver.disagg import disagg_lower_bound_usd

    if "colocated" not in plans:
        return None
    bound = disagg_lower_bound_usd(instances, work)
    return bound if bound >= plans["colocated"].usd_per_hour else None


def _verdict(others: dict[str, float], errors: dict[str, str]) -> str:
    """When disaggregation wins and when colocation does, in one line."""
    col, dis = others.get("colocated", math.inf), others.get("disaggregated", math.inf)
    if math.isfinite(col) and math.isfinite(dis):
        winner, loser, a, b = ("disaggregated", "colocated", dis, col) if dis < col else ("colocated", "disaggregated", col, dis)
        return f"{winner} wins: ${a:.2f}/h vs {loser} ${b:.2f}/h ({1 - a / b:.0%} cheaper)"
    for mode, why in errors.items():
        return f"{mode}: {why}"
    return f"only {next(iter(others))} was planned (--disaggregate)"


def _plan(mode: str, instances: tuple[ServingInstance, ...], work: Workload, limits: Limits, kv_link: str,
          save_capacity: str | None) -> ServePlan:
    if mode == "colocated":
        plan, table = plan_colocated(instances, work, limits)
        if save_capacity:
            write_atomic(save_capacity, dumps_json(melange_table(table, work)))
            console.info(f"capacity table written to {save_capacity} (edit it, then plan with --capacity-table)")
        return plan
    from clusterplan.solver.disagg import plan_disaggregated

    return plan_disaggregated(instances, work, limits, get_link(kv_link))
