"""`clusterplan serve-estimate`: TTFT, TPOT, ITL, end-to-end latency and throughput of one serving configuration."""

from __future__ import annotations

import contextlib

import click

from clusterplan.cli.console import console
from clusterplan.cli.options import format_option, plot_option, quiet_option
from clusterplan.errors import BadInputError
from clusterplan.hardware_db.engines import get_engine
from clusterplan.models.architecture.catalog import hf_repo
from clusterplan.models.serving.estimate import LoadKind, LoadSweep, ServingEstimate, Stats, estimate_for
from clusterplan.models.serving.launch import LaunchConfig, launch_lines, launch_notes
from clusterplan.models.serving.model import MAMBA_SSM_DTYPES


def _stats_json(s: Stats, scale: float, digits: int) -> dict[str, float]:
    return {k: round(getattr(s, k) * scale, digits) for k in ("mean", "p50", "p90", "p99")}


TERMS = ("overhead", "compute", "memory", "allreduce", "p2p", "total")


def _terms_json(t: object) -> dict[str, float]:
    """A step's parts in ms, keyed overhead_ms, compute_ms, ... (StepTerms fields are in s)."""
    return {f"{k}_ms": round(float(getattr(t, f"{k}_s")) * 1e3, 4) for k in TERMS}


def sweep_json(s: LoadSweep) -> dict:
    """The latency-against-load sweep: `load` is req/s (open loop) or requests in flight (closed, static)."""
    return {
        "kind": str(s.kind), "load_unit": "requests_per_s" if s.kind is LoadKind.OPEN else "requests_in_flight",
        "requested": s.requested, "saturation": {"load": round(s.saturation_load, 4), "running": s.saturation_running,
                                                 "requests_per_s": round(s.saturation_rps, 5)},
        "points": [{"load": p.load, "ttft_ms": _stats_json(p.ttft_s, 1e3, 3), "tpot_ms": _stats_json(p.tpot_s, 1e3, 4),
                    "requests_per_s": round(p.request_throughput_rps, 5),
                    "output_tokens_per_s": round(p.output_tokens_per_s, 3),
                    "mean_running_batch": round(p.mean_running_batch, 3), "past_saturation": p.past_saturation}
                   for p in s.points],
    }


OVERLOAD_SERVED_SHARE = 0.9
"""An open-loop run that serves under this share of the offered rate is overloaded: its queue grows with time, so
its latency percentiles are set by the run's length (a display threshold: a stable run serves all it is offered, up
to the ramp at its ends)."""

def estimate_json(e: ServingEstimate) -> dict:
    inst, load, gpus = e.instance, e.load, e.n_gpus
    launch = LaunchConfig(repo=hf_repo(inst.model.name) or inst.model.name, tp=inst.tp, pp=inst.pp, ep=inst.ep,
                          attention_dp=inst.attention_dp, weight_dtype=inst.weight_dtype, kv_dtype=inst.kv_dtype,
                          mamba_ssm_dtype=inst.mamba_ssm_dtype, max_seqs=e.max_seqs, max_model_len=e.max_model_len, chunk_tokens=inst.max_batched_tokens,
                          memory_utilization=inst.knobs.memory_utilization,
                          chunked_prefill=get_engine(inst.engine).chunked_prefill)
    sweep = {"load_sweep": sweep_json(e.load_sweep)} if e.load_sweep is not None else {}
    overloaded = bool(load.rate_rps) and e.request_throughput_rps < OVERLOAD_SERVED_SHARE * load.rate_rps
    return {
        "model": inst.model.name, "gpu": inst.gpu.name, "tp": inst.tp, "pp": inst.pp, "ep": inst.ep,
        "attention_dp": inst.attention_dp, "engine": inst.engine, "gpus": gpus,
        "weight_dtype": inst.weight_dtype, "kv_dtype": inst.kv_dtype,
        **({"mamba_ssm_dtype": inst.mamba_ssm_dtype} if inst.mamba_ssm_dtype != "bf16" else {}),
        "load": {"kind": str(load.kind), "rate_rps": load.rate_rps or None, "clients": load.clients or None,
                 "requests_measured": e.requests, "seed": load.seed, "overloaded": overloaded},
        "ttft_ms": _stats_json(e.ttft_s, 1e3, 3), "tpot_ms": _stats_json(e.tpot_s, 1e3, 4),
        "itl_ms": _stats_json(e.itl_s, 1e3, 4), "e2e_s": _stats_json(e.e2e_s, 1.0, 5),
        "throughput": {
            "requests_per_s": round(e.request_throughput_rps, 5),
            "requests_per_s_per_gpu": round(e.request_throughput_rps / gpus, 5),
            "output_tokens_per_s": round(e.output_tokens_per_s, 3),
            "output_tokens_per_s_per_gpu": round(e.output_tokens_per_s / gpus, 3),
            "total_tokens_per_s_per_gpu": round((e.output_tokens_per_s + e.input_tokens_per_s) / gpus, 3)},
        "mean_running_batch": round(e.mean_running_batch, 3),
        "kv_cache": {"capacity_tokens": e.kv_capacity_tokens, "peak_fraction": round(e.kv_peak_fraction, 5),
                     "mean_fraction": round(e.kv_mean_fraction, 5)},
        "prefill_step": {"prompt_tokens": e.prefill_tokens} | _terms_json(e.prefill),
        "decode_step": {"batch": e.decode_batch, "context_tokens": e.decode_context_tokens} | _terms_json(e.decode),
        "launch": launch_lines(launch),
        "launch_notes": launch_notes(launch),
    } | sweep


def _render(d: dict) -> None:
    load = d["load"]
    kind = load["kind"]
    what = f"open loop at {load['rate_rps']:g} req/s" if kind == "open" else \
        f"closed loop of {load['clients']} clients" if kind == "closed" else f"static batch of {load['clients']}"
    console.text(f"{d['model']} on {d['gpus']}x {d['gpu']} (tp {d['tp']}, pp {d['pp']}, weights {d['weight_dtype']}, "
                 f"KV {d['kv_dtype']}), {what}; {load['requests_measured']} requests measured")
    rows = [(name, *(f"{d[key][q]:.{dig}f}" for q in ("mean", "p50", "p90", "p99")))
            for name, key, dig in (("TTFT ms", "ttft_ms", 1), ("TPOT ms", "tpot_ms", 2), ("ITL ms", "itl_ms", 2),
                                   ("e2e s", "e2e_s", 3))]
    console.table(None, ["metric", "mean", "p50", "p90", "p99"], rows, justify_right=[False, True, True, True, True])
    t = d["throughput"]
    console.text(f"throughput {t['requests_per_s']:.3f} req/s ({t['requests_per_s_per_gpu']:.3f} per GPU), "
                 f"{t['output_tokens_per_s']:.1f} output tok/s ({t['output_tokens_per_s_per_gpu']:.1f} per GPU); "
                 f"mean running batch {d['mean_running_batch']:.1f}")
    kv = d["kv_cache"]
    console.text(f"KV cache {kv['capacity_tokens']} tokens: peak {kv['peak_fraction']:.0%}, mean {kv['mean_fraction']:.0%}")
    p, q = d["prefill_step"], d["decode_step"]
    console.table("one step, ms", ["step", "overhead", "compute", "memory", "all-reduce", "p2p", "total"],
                  [(f"prefill {p['prompt_tokens']} tok", *(f"{p[k + '_ms']:.3f}" for k in TERMS)),
                   (f"decode b{q['batch']} ctx {q['context_tokens']}", *(f"{q[k + '_ms']:.3f}" for k in TERMS))],
                  justify_right=[False] + [True] * 6)
    console.text("compute, memory and all-reduce are per pipeline stage; the step costs overhead + pp x "
                 "(max(compute, memory) + all-reduce) + p2p")
    engine = d["engine"] if d["engine"] in d["launch"] else {"vllm-v0": "vllm"}.get(d["engine"], "vllm")
    console.text(f"\nlaunch ({engine}): {d['launch'][engine]}")
    for note in d["launch_notes"]:
        console.info(f"launch note: {note}")
    if "load_sweep" in d:
        _render_sweep(d["load_sweep"])


def _render_sweep(s: dict) -> None:
    open_loop = s["load_unit"] == "requests_per_s"
    unit = "req/s" if open_loop else "in flight"
    sat = s["saturation"]
    console.table(f"\nlatency against load (saturation at {sat['load']:g} {unit}, {sat['requests_per_s']:.3f} req/s)",
                  ["load " + unit, "TTFT p50 ms", "TTFT p90 ms", "TPOT p50 ms", "TPOT p90 ms", "req/s", ""],
                  [(f"{p['load']:g}", f"{p['ttft_ms']['p50']:.1f}", f"{p['ttft_ms']['p90']:.1f}",
                    f"{p['tpot_ms']['p50']:.2f}", f"{p['tpot_ms']['p90']:.2f}", f"{p['requests_per_s']:.3f}",
                    "requested" if p["load"] == s["requested"] else "past saturation" if p["past_saturation"] else "")
                   for p in s["points"]], justify_right=[True] * 6 + [False])


@click.command("serve-estimate")
@click.option("--model", "model_ref", required=True, help="Preset name, config.json or model YAML.")
@click.option("--gpu", "gpu_name", required=True, help="GPU type (name or alias), e.g. H100.")
@click.option("--tp", type=click.IntRange(min=1, max=1024), default=1, help="Tensor-parallel size.")
@click.option("--pp", type=click.IntRange(min=1, max=1024), default=1, help="Pipeline-parallel size.")
@click.option("--ep", type=click.IntRange(min=1, max=1024), default=1,
              help="Expert-parallel size (MoE): experts split whole over this many of the tp GPUs.")
@click.option("--attention-dp", type=click.IntRange(min=1, max=1024), default=1,
              help="Data-parallel attention groups among the tp GPUs (DeepSeek-style DP attention).")
@click.option("--engine", "engine_name", default="vllm",
              help="Engine profile (hardware_db engines.yaml): vllm, vllm-v0, sglang, trtllm.")
@click.option("--weight-dtype", default="bf16", help="Weight precision (bf16, fp8, int8, int4, fp4).")
@click.option("--kv-dtype", default="bf16", help="KV-cache precision: fp32, bf16, fp16, fp8, int8, fp4, int4 (bytes per element as the name says).")
@click.option("--mamba-ssm-dtype", type=click.Choice(MAMBA_SSM_DTYPES), default="bf16",
              help="A hybrid's SSM state dtype: bf16 (the model's) or fp32 (vLLM --mamba-ssm-cache-dtype float32, "
                   "SGLang --mamba-ssm-dtype float32, as NVIDIA's Nemotron serving recipes set it).")
@click.option("--max-batch", type=click.IntRange(min=1, max=10**6),
              help="Most running sequences (vLLM --max-num-seqs, SGLang --max-running-requests); default: the engine's.")
@click.option("--chunk", type=click.IntRange(min=1, max=10**7),
              help="Token budget of one step (vLLM --max-num-batched-tokens, SGLang --chunked-prefill-size); "
                   "default: the engine's.")
@click.option("--input-len", default=None, help="Prompt tokens: 512, uniform:LOW:HIGH, normal:MEAN:STD, lognormal:MU:SIGMA or a CSV.")
@click.option("--output-len", default=None, help="Output tokens, same forms as --input-len.")
@click.option("--rate", type=float, help="Open loop: Poisson arrivals at this many requests per second.")
@click.option("--trace", type=click.Path(dir_okay=False), help="Open loop: CSV arrival_s,input_tokens,output_tokens.")
@click.option("--concurrency", type=click.IntRange(min=1, max=10**6), help="Closed loop: this many clients.")
@click.option("--batch", type=click.IntRange(min=1, max=10**6), help="Static batch: this many requests at t = 0.")
@click.option("--requests", type=click.IntRange(min=1, max=10**6), help="Requests to simulate (default 1000; a batch its size).")
@click.option("--calibration", type=click.Path(dir_okay=False), help="Calibration file from `clusterplan profile`.")
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Seed of sampled lengths and arrivals.")
@click.option("--sweep", is_flag=True, help="Also simulate loads around this one up to past saturation (latency "
                                            "against load; implied by --plot).")
@plot_option
@quiet_option
@format_option
def serve_estimate(model_ref: str, gpu_name: str, tp: int, pp: int, ep: int, attention_dp: int, engine_name: str,
                   weight_dtype: str, kv_dtype: str, mamba_ssm_dtype: str, max_batch: int | None, chunk: int | None, input_len: str | None, output_len: str | None, rate: float | None, trace: str | None,
                   concurrency: int | None, batch: int | None, requests: int | None, calibration: str | None,
                   seed: int, sweep: bool, plot_path: str | None, fmt: str) -> None:
    """Latency percentiles and throughput of one configuration under one load.

    Example: clusterplan serve-estimate --model llama3.1-70b --gpu H100 --tp 2 --concurrency 32 --input-len 4000 --output-len 500
    """
    loads = [name for name, v in (("--rate", rate), ("--trace", trace), ("--concurrency", concurrency),
                                  ("--batch", batch)) if v is not None]
    if len(loads) != 1 and not (set(loads) == {"--rate", "--trace"}):
        raise BadInputError("give one load: --rate R (open loop), --trace FILE, --concurrency N (closed loop) "
                            f"or --batch N (static batch); got {', '.join(loads) or 'none'}")
    from clusterplan.cli.plot import check_plot_path
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.models.hardware.calibration import load_calibration

    check_plot_path(plot_path)
    sweeping = sweep or plot_path is not None  # one simulation alone takes well under a second: no bar
    with console.progress("latency against load") if sweeping else contextlib.nullcontext(None) as progress:
        est = estimate_for(load_model(model_ref), gpu_name, tp=tp, pp=pp, ep=ep, attention_dp=attention_dp,
                           engine=engine_name, weight_dtype=weight_dtype, kv_dtype=kv_dtype,
                           mamba_ssm_dtype=mamba_ssm_dtype, max_batch=max_batch, chunk_tokens=chunk, input_len=input_len, output_len=output_len,
                           rate=rate, trace=trace, clients=concurrency or batch or 0, static=batch is not None,
                           requests=requests or 0, calibration=load_calibration(calibration), seed=seed,
                           sweep=sweeping, progress=progress)
    data = estimate_json(est)
    if plot_path:
        from clusterplan.cli.plot import plot_serve_estimate

        plot_serve_estimate(data, plot_path)
        console.info(f"wrote {plot_path}")
    if data["load"]["overloaded"]:
        console.warn(f"overloaded: {data['load']['rate_rps']:g} req/s offered, "
                     f"{data['throughput']['requests_per_s']:.3f} served; the queue grows through the run, so the "
                     "latencies grow with the requests simulated (--requests): lower --rate, or serve it on more "
                     "instances (serve-plan)")
    console.json(data) if fmt == "json" else _render(data)
    if ep > 1:  # said once, on stderr: the number it changes is the launch line's, not a time
        console.info(f"--ep {ep}: each GPU holds the same expert weight bytes split whole ({ep} ways) as sliced, so "
                     "the step is priced as tp; the token exchange in place of the all-reduce and the experts' load "
                     "imbalance across ranks are not priced (the launch line carries --ep)")
