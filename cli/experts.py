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
from clusterplan.cli.options import format_option, output_path
from clusterplan.errors import BadInputError
from clusterplan.fileio import dumps_json, require_finite, write_atomic
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.moe.metrics import (
    BYTES_PER_ELEMENT,
    LayerMetrics,
    Placement,
    evaluate,
    fabric_for,
    summary,
)
from clusterplan.models.moe.routing import (
    SynthConfig,
    check_against_model,
    load_stats,
    save_stats,
    synth_stats,
)

PLACEMENT_FORMAT = "clusterplan.expert_placement/v1"


def _moe_model(ref: str) -> ModelSpec:
    model = load_model(ref)
    if not model.is_moe:
        raise BadInputError(f"model {model.name} is dense (no routed experts); expert placement needs an MoE model")
    return model


MAX_EP_GPUS = 8192
"""Largest expert-parallel group placed: its GPU x GPU float64 traffic matrix is 0.5 GiB."""


def _default_slots(n_experts: int, n_gpus: int) -> int:
    """Enough slots for every expert plus one spare per GPU (DeepSeek-V3 prefill: 32 redundant on 32 GPUs)."""
    return -(-n_experts // n_gpus) + 1 if n_experts >= n_gpus else 1


def _default_groups(n_experts: int, n_nodes: int) -> int:
    """One expert group per node (DeepSeek-V3 node-limited routing) when experts divide, else 1 (global policy)."""
    return n_nodes if n_experts % n_nodes == 0 else 1


def _layer_row(m: LayerMetrics) -> dict[str, float]:
    return {"max_load_tokens": m.max_load_tokens, "mean_load_tokens": m.mean_load_tokens,
            "max_over_mean": m.max_over_mean, "cross_gpu_tokens": m.cross_gpu_tokens,
            "cross_node_tokens": m.cross_node_tokens, "cross_gpu_bytes": m.cross_gpu_bytes,
            "cross_node_bytes": m.cross_node_bytes, "max_nic_tokens": m.max_nic_tokens,
            "all_to_all_s": m.all_to_all_s, "expert_compute_s": m.expert_compute_s}


def placement_document(placement: Placement, *, method: str, model: ModelSpec, cluster_ref: str) -> dict[str, Any]:
    """The placement file: per MoE layer, each physical slot's logical expert (EPLB / vLLM map shapes)."""
    moe_layers = [i for i in range(model.n_layers) if model.is_moe_layer(i)][: placement.n_layers]
    return {
        "format": PLACEMENT_FORMAT, "method": method, "model": model.name, "cluster": cluster_ref,
        "num_gpus": placement.n_gpus, "num_nodes": placement.n_nodes, "slots_per_gpu": placement.slots_per_gpu,
        "num_logical_experts": placement.n_experts, "num_physical_experts": placement.n_slots,
        "moe_layers": moe_layers,
        "physical_to_logical_map": placement.phy2log.tolist(),
        "logical_to_physical_map": placement.logical_to_physical().tolist(),
        "logical_replica_count": placement.replica_count().tolist(),
    }


def _full_rows(placement: Placement, model: ModelSpec) -> dict[int, list[int]]:
    """Rows for every model layer index: the placement on the MoE layers it covers; elsewhere the trivial
    map slot -> slot % experts (SGLang's `init_trivial`), which dense layers ignore."""
    moe_layers = [i for i in range(model.n_layers) if model.is_moe_layer(i)]
    trivial = [slot % placement.n_experts for slot in range(placement.n_slots)]
    rows = {i: trivial for i in range(model.n_layers)}
    for row, layer in zip(placement.phy2log.tolist(), moe_layers, strict=False):
        rows[layer] = row
    return rows


def engine_file(placement: Placement, model: ModelSpec, out_format: str, document: dict[str, Any]) -> str:
    """Text of the --out file: ours (JSON), SGLang's --init-expert-location JSON, or TensorRT-LLM's YAML."""
    if out_format == "clusterplan":
        return dumps_json(document)
    rows = _full_rows(placement, model)
    if out_format == "sglang":
        # SGLang init_by_mapping takes only physical_to_logical_map, indexed by model layer (num_hidden_layers).
        return dumps_json({"physical_to_logical_map": [rows[i] for i in range(model.n_layers)]})
    import yaml

    # TensorRT-LLM moe_config.load_balancer: MoE layer index -> slot assignments; 0 updates = static placement.
    moe = {i: rows[i] for i in range(model.n_layers) if model.is_moe_layer(i)}
    return yaml.safe_dump({"num_slots": placement.n_slots, "initial_global_assignments": moe,
                           "layer_updates_per_iter": 0}, sort_keys=True, default_flow_style=None, width=1 << 20)


@click.group("experts", invoke_without_command=True)
@click.option("--model", "-m", "model_ref", help="MoE model: preset, config.json or YAML.")
@click.option("--cluster", "-c", "cluster_ref", help="Cluster: PRESET:NODES (e.g. dgx-h100:8) or a YAML file.")
@click.option("--stats", "stats_path", help="Routing statistics (.npz, .npy, .json, .csv; see README).")
@click.option("--slots-per-gpu", type=int, default=None, help="Expert slots per GPU [default: experts/GPUs + 1 spare].")
@click.option("--method", type=click.Choice(["ilp", "eplb", "both"]), default="both", help="Placement method(s).")
@click.option("--time-limit", "time_limit_s", type=float, default=60.0, help="ILP wall-clock limit in seconds.")
@click.option("--expert-groups", type=int, default=None,
              help="EPLB expert groups [default: one per node if experts divide, else 1 = global policy].")
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
@click.pass_context
def experts(ctx: click.Context, model_ref: str | None, cluster_ref: str | None, stats_path: str | None,
            slots_per_gpu: int | None, method: str, time_limit_s: float, expert_groups: int | None,
            dispatch_dtype: str, tokens_per_step: int | None, seed: int, out_path: str | None, out_format: str, fmt: str) -> None:
    """Place MoE experts on GPUs: EPLB baseline and ILP, with load and all-to-all metrics."""
    if ctx.invoked_subcommand is not None:
        return
    missing = [flag for flag, v in (("--model", model_ref), ("--cluster", cluster_ref), ("--stats", stats_path))
               if v is None]
    if missing:
        raise BadInputError(f"experts: missing {', '.join(missing)}; e.g. clusterplan experts --model deepseek-v3 "
                            "--cluster dgx-h100:8 --stats stats.npz (make stats with `clusterplan experts synth`)")
    if not 0 < time_limit_s < math.inf:  # NaN and inf fail too
        raise BadInputError("--time-limit must be a finite number of seconds > 0")
    result, chosen, model = run_placement(model_ref=model_ref, cluster_ref=cluster_ref, stats_path=stats_path,
                           slots_per_gpu=slots_per_gpu, method=method, time_limit_s=time_limit_s,
                           expert_groups=expert_groups, dispatch_dtype=dispatch_dtype,
                           tokens_per_step=tokens_per_step, seed=seed)
    require_finite(result)
    _render(result, fmt)
    if out_path:
        write_atomic(out_path, engine_file(chosen, model, out_format, result["placement_file"]))
        covered = f"{chosen.n_layers} of {model.n_moe_layers} MoE layers"
        console.info(f"wrote {out_path} ({result['placement_file']['method']} placement, {out_format} format, "
                      f"{covered})")


def _methods(placements: dict[str, Placement], stats: Any, fabric: Any, scale: float) -> dict[str, Any]:
    out = {}
    for name, placement in placements.items():
        layers = evaluate(placement, stats, fabric, scale)
        out[name] = {"summary": summary(layers), "layers": [_layer_row(m) for m in layers]}
    return out


def _improvement(base: dict[str, float], ilp: dict[str, float]) -> dict[str, float]:
    """Relative reduction of each summary figure by the ILP (0.1 = 10 % lower than EPLB)."""
    return {k: (1 - ilp[k] / base[k]) if base[k] else 0.0 for k in sorted(base)}


def run_placement(*, model_ref: str, cluster_ref: str, stats_path: str, slots_per_gpu: int | None, method: str,
                  time_limit_s: float, expert_groups: int | None, dispatch_dtype: str, tokens_per_step: int | None,
                  seed: int) -> tuple[dict[str, Any], Placement, ModelSpec]:
    """Everything `experts` prints, as plain data (deterministic for the same inputs unless CBC hits a limit)."""
    from clusterplan.solver.experts import eplb_placement
    from clusterplan.solver.experts_ilp import IlpOptions, ilp_placement

    model, cluster = _moe_model(model_ref), load_cluster(cluster_ref)
    stats = load_stats(stats_path)
    check_against_model(stats, model.n_experts, model.n_moe_layers, model.name)
    fabric = fabric_for(cluster, model, dispatch_dtype)
    spg = slots_per_gpu if slots_per_gpu is not None else _default_slots(model.n_experts, fabric.n_gpus)
    if spg < 1:
        raise BadInputError("--slots-per-gpu must be >= 1")
    if spg > model.n_experts:  # more would put two copies of one expert on a GPU
        raise BadInputError(f"--slots-per-gpu {spg}: give at most {model.name}'s {model.n_experts} routed experts")
    if fabric.n_gpus > MAX_EP_GPUS:  # the metrics hold GPU x GPU traffic matrices
        raise BadInputError(f"--cluster {cluster_ref}: {fabric.n_gpus} GPUs; expert placement handles up to "
                            f"{MAX_EP_GPUS} GPUs in one expert-parallel group, give the nodes of one group")
    groups = expert_groups if expert_groups is not None else _default_groups(model.n_experts, fabric.n_nodes)
    if tokens_per_step is not None and not 1 <= tokens_per_step <= 2**53:
        raise BadInputError("--tokens-per-step must be >= 1 (and at most 2**53)")
    scale = tokens_per_step / float(stats.tokens_per_layer(model.top_k).mean()) if tokens_per_step else 1.0
    base = eplb_placement(stats.tokens_per_expert, slots_per_gpu=spg, n_gpus=fabric.n_gpus,
                          gpus_per_node=fabric.gpus_per_node, n_groups=groups)
    if stats.n_layers < model.n_moe_layers:
        console.warn(f"{stats_path}: {stats.n_layers} of {model.name}'s {model.n_moe_layers} MoE layers; "
                     "placing the first ones only")
    placements = {"eplb": base} if method in ("eplb", "both") else {}
    result: dict[str, Any] = {"model": model.name, "cluster": cluster_ref, "stats": stats_path,
                              "num_gpus": fabric.n_gpus, "num_nodes": fabric.n_nodes, "slots_per_gpu": spg,
                              "expert_groups": groups, "layers": stats.n_layers,
                              "transitions": stats.transitions is not None, "dispatch_dtype": dispatch_dtype,
                              "token_scale": scale}
    if method in ("ilp", "both"):
        with console.status("solving the placement ILP"):
            ilp = ilp_placement(stats, fabric, base, IlpOptions(time_limit_s=time_limit_s, seed=seed))
        solved = stats.n_layers - len(ilp.unsolved_layers)
        console.info(f"ILP: {solved} of {stats.n_layers} layers solved ({ilp.log.subproblems} subproblems) in "
                     f"{ilp.solve_s:.1f} s, {_gap_words(ilp.gap, solved)}")
        placements["ilp"] = ilp.placement
        if ilp.free_placement is not None:
            placements["ilp-free"] = ilp.free_placement
        # hit_time_limit counts CBC runs stopped on time and layers left unsolved because the time was up.
        result["solver"] = {"gap": ilp.gap, "objective_us": ilp.log.objective_us, "bound_us": ilp.log.bound_us,
                            "subproblems": ilp.log.subproblems, "proven_optimal": ilp.log.proven_optimal,
                            "hit_time_limit": ilp.log.hit_time_limit + len(ilp.unsolved_layers),
                            "solved_layers": solved, "unsolved_layer_count": len(ilp.unsolved_layers),
                            "fallback_layers": list(ilp.fallback_layers),
                            "unsolved_layers": list(ilp.unsolved_layers), "node_locked": ilp.node_locked}
        if ilp.log.hit_time_limit or ilp.unsolved_layers:
            console.warn(f"the ILP hit its time limit ({len(ilp.unsolved_layers)} of {stats.n_layers} layers unsolved, "
                         "placed by balanced packing); results may differ between runs (raise --time-limit)")
    result["methods"] = _methods(placements, stats, fabric, scale)
    if "ilp" in placements and "eplb" in placements:
        result["ilp_improvement"] = _improvement(result["methods"]["eplb"]["summary"],
                                                 result["methods"]["ilp"]["summary"])
    chosen = "ilp" if "ilp" in placements else "eplb"
    result["placement_file"] = placement_document(placements[chosen], method=chosen, model=model,
                                                  cluster_ref=cluster_ref)
    return result, placements[chosen], model


def _gap_words(gap: float | None, solved_layers: int) -> str:
    """The optimality gap over what was solved; no number when nothing was (packing proves nothing)."""
    if gap is None:
        return "no layer solved (no gap to report)"
    return f"gap {gap:.2%} over the {solved_layers} solved layers"


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
    if "solver" in result:
        sol = result["solver"]
        console.text(f"ILP {_gap_words(sol['gap'], sol['solved_layers'])}, {sol['subproblems']} subproblems "
                     f"({sol['proven_optimal']} proven optimal, {sol['unsolved_layer_count']} layers unsolved); "
                     "baseline kept for layers "
                     f"{sol['fallback_layers'] or 'none'}")
        if sol["node_locked"]:
            console.text("the free ILP (ilp-free) sent more bytes across nodes than EPLB, so ilp keeps EPLB's "
                         "experts per node and re-places them on each node's GPUs")
    if "ilp_improvement" in result:
        imp = result["ilp_improvement"]
        console.text(f"ILP vs EPLB: worst max/mean {imp['max_over_mean_worst']:.1%} lower, cross-node bytes "
                     f"{imp['cross_node_bytes']:.1%} lower, all-to-all time {imp['all_to_all_s']:.1%} lower")


@experts.command("synth")
@click.option("--model", "-m", "model_ref", help="MoE model giving experts, top-k and MoE layers.")
@click.option("--experts", "n_experts", type=int, default=None, help="Experts per layer (instead of --model).")
@click.option("--top-k", type=int, default=None, help="Experts per token (instead of --model).")
@click.option("--layers", "n_layers", type=int, default=None, help="MoE layers [default: all of the model's].")
@click.option("--tokens", "n_tokens", type=int, default=16384, help="Tokens routed per layer.")
@click.option("--zipf", "zipf_exponent", type=float, default=0.8, help="Popularity exponent (rank^-s).")
@click.option("--affinity", "affinity_logit", type=float, default=2.0, help="Cross-layer successor logit bonus.")
@click.option("--seed", type=int, default=0)
@click.option("--out", "out_path", required=True, callback=output_path, type=click.Path(dir_okay=False),
              help="Output file: .npz (recommended), .json, .csv (+ .transitions.csv) or .npy (no transitions).")
@format_option
def synth(model_ref: str | None, n_experts: int | None, top_k: int | None, n_layers: int | None, n_tokens: int,
          zipf_exponent: float, affinity_logit: float, seed: int, out_path: str, fmt: str) -> None:
    """Write seeded synthetic routing statistics (Zipf-like load, cross-layer affinity)."""
    if model_ref:
        model = _moe_model(model_ref)
        n_experts, top_k = n_experts or model.n_experts, top_k or model.top_k
        n_layers = n_layers or model.n_moe_layers
    if n_experts is None or top_k is None or n_layers is None:
        raise BadInputError("experts synth: give --model, or all of --experts, --top-k and --layers")
    if Path(out_path).suffix.lower() not in (".npz", ".npy", ".json", ".csv"):
        raise BadInputError(f"--out {out_path}: use a .npz, .npy, .json or .csv file name")
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
