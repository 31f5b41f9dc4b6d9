"""What `clusterplan experts` answers: both EPLB policies, our optimiser, judged under the engine's own dispatch.

- Baselines at their best: EPLB's hierarchical policy (when the model routes within expert groups that divide over
  the nodes, e.g. DeepSeek-V3's 8 groups) and its global policy (always); the better one under the engine's rule is
  "the best baseline".
- The optimiser: under home-origin rules (every engine) the busiest GPU sets both expert time and NIC time, so it is
  the min-max balancer (solver/experts_balance.py) started from the best baseline; under the chained research model
  the layer-by-layer ILP (solver/experts_ilp.py) that trades balance for cross-node locality.
- Chosen per layer: the optimiser's layer only where it is no worse than the best baseline's layer on both max/mean
  and all-to-all time and better on one; else the baseline's layer, and the report says which layers it kept.
  Under home origin layers are independent, so the chosen placement is never worse than the best baseline on
  worst max/mean, total all-to-all time or expert time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from clusterplan.errors import BadInputError
from clusterplan.fileio import dumps_json
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.moe.metrics import (
    DEFAULT_RULE_FOR_FORMAT,
    DISPATCH_RULES,
    DispatchRule,
    LayerMetrics,
    Placement,
    TokenOrigin,
    evaluate,
    fabric_for,
    slots_from_counts,
    summary,
)
from clusterplan.models.moe.routing import RoutingStats, check_against_model, load_stats
from clusterplan.progress import ProgressFn
from clusterplan.solver.experts import eplb_policy
from clusterplan.solver.experts_balance import balance_layer

PLACEMENT_FORMAT = "clusterplan.expert_placement/v1"
MAX_EP_GPUS = 8192
"""Largest expert-parallel group placed: its GPU x GPU float64 traffic matrix is 0.5 GiB."""
SGLANG_EXPERT_LOCATION_FAMILIES = ("deepseek_v2", "deepseek_v3", "qwen2_moe", "qwen3_moe")
"""Model types whose SGLang implementation defines get_model_config_for_expert_location (models/deepseek_v2.py,
qwen2_moe.py, qwen3_moe.py), i.e. honour --init-expert-location; SGLang's Mixtral does not."""
METHODS = ("eplb", "ilp", "balance", "both")


@dataclass(frozen=True, kw_only=True, slots=True)
class ExpertsRequest:
    model_ref: str
    cluster_ref: str
    stats_path: str
    slots_per_gpu: int | None = None
    method: str = "both"
    time_limit_s: float = 60.0
    expert_groups: int | None = None
    dispatch_dtype: str = "bf16"
    tokens_per_step: int | None = None
    seed: int = 0
    engine: str | None = None
    """Dispatch rule name (models/moe/metrics.py DISPATCH_RULES); None: the rule of the out format's engine."""
    out_format: str = "clusterplan"


@dataclass(frozen=True, kw_only=True, slots=True)
class ExpertsResult:
    report: dict[str, Any]
    """Everything `experts` prints, as plain data (deterministic for the same inputs)."""
    chosen: Placement
    model: ModelSpec
    placement_file: dict[str, Any]
    solve_s: float
    """Optimiser wall time (stderr only: it varies between runs, the JSON does not)."""


def moe_model(ref: str) -> ModelSpec:
    model = load_model(ref)
    if not model.is_moe:
        raise BadInputError(f"model {model.name} is dense (no routed experts); expert placement needs an MoE model")
    return model


def default_slots(n_experts: int, n_gpus: int) -> int:
    """Enough slots for every expert plus one spare per GPU (DeepSeek-V3 prefill: 32 redundant on 32 GPUs)."""
    return -(-n_experts // n_gpus) + 1 if n_experts >= n_gpus else 1


def layer_row(m: LayerMetrics) -> dict[str, float]:
    return {"max_load_tokens": m.max_load_tokens, "mean_load_tokens": m.mean_load_tokens,
            "max_over_mean": m.max_over_mean, "cross_gpu_tokens": m.cross_gpu_tokens,
            "cross_node_tokens": m.cross_node_tokens, "cross_gpu_bytes": m.cross_gpu_bytes,
            "cross_node_bytes": m.cross_node_bytes, "max_nic_tokens": m.max_nic_tokens,
            "all_to_all_s": m.all_to_all_s, "expert_compute_s": m.expert_compute_s}


def placement_document(placement: Placement, *, method: str, model: ModelSpec, cluster_ref: str,
                       rule: str) -> dict[str, Any]:
    """The placement file: per MoE layer, each physical slot's logical expert (EPLB / vLLM map shapes)."""
    moe_layers = [i for i in range(model.n_layers) if model.is_moe_layer(i)][: placement.n_layers]
    return {
        "format": PLACEMENT_FORMAT, "method": method, "model": model.name, "cluster": cluster_ref,
        "dispatch_rule": rule,
        "num_gpus": placement.n_gpus, "num_nodes": placement.n_nodes, "slots_per_gpu": placement.slots_per_gpu,
        "num_logical_experts": placement.n_experts, "num_physical_experts": placement.n_slots,
        "moe_layers": moe_layers,
        "physical_to_logical_map": placement.phy2log.tolist(),
        "logical_to_physical_map": placement.logical_to_physical().tolist(),
        "logical_replica_count": placement.replica_count().tolist(),
    }


ENGINE_FORMATS = {"sglang-static": "sglang", "sglang-dynamic": "sglang", "trtllm": "trtllm"}
"""The placement file each engine's dispatch rule is read from (the others, vllm and chained, judge a clusterplan
file): a placement judged under one engine's rule and written for another would launch under a rule it was not
judged by."""


def dispatch_rule(engine: str | None, out_format: str) -> DispatchRule:
    name = engine or DEFAULT_RULE_FOR_FORMAT[out_format]
    if name not in DISPATCH_RULES:
        raise BadInputError(f"--engine {name!r}: choose one of {', '.join(DISPATCH_RULES)}")
    if out_format in ("sglang", "trtllm") and ENGINE_FORMATS.get(name) != out_format:
        raise BadInputError(f"--engine {name} with --out-format {out_format}: the file launches under "
                            f"{out_format}'s dispatch, not {name}'s; give a matching --engine (or drop it)")
    return DISPATCH_RULES[name]


def check_target(model: ModelSpec, out_format: str) -> None:
    """Refuse a placement file the target engine would ignore."""
    if out_format == "sglang" and model.family not in SGLANG_EXPERT_LOCATION_FAMILIES:
        raise BadInputError(f"--out-format sglang: SGLang's {model.family} model does not load expert locations "
                            f"(only {', '.join(SGLANG_EXPERT_LOCATION_FAMILIES)}); use --out-format trtllm or "
                            "clusterplan")


def launch_flags(placement: Placement, model: ModelSpec, out_format: str, path: str,
                 rule: str | None = None) -> list[str]:
    """The flags that make the engine load the placement file (checked against each engine's arguments); `rule`:
    the dispatch rule the placement was judged under (sglang-static or sglang-dynamic for SGLang)."""
    redundant = placement.n_slots - placement.n_experts
    if out_format == "sglang":
        # sglang/srt/server_args.py: --ep-size, --ep-num-redundant-experts, --init-expert-location,
        # --ep-dispatch-algorithm (the rule this placement was judged under).
        algorithm = "dynamic" if rule == "sglang-dynamic" else "static"
        return ["--ep-size", str(placement.n_gpus), "--ep-num-redundant-experts", str(redundant),
                "--init-expert-location", path, "--ep-dispatch-algorithm", algorithm]
    if out_format == "trtllm":
        # trtllm-serve --extra_llm_api_options FILE, whose moe_config.load_balancer names this YAML.
        return ["--ep_size", str(placement.n_gpus), "--extra_llm_api_options", "<options.yaml with "
                f"moe_config: {{load_balancer: {path}}}>"]
    return []


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


def _layer_stack(rows: list[np.ndarray], like: Placement) -> Placement:
    return Placement(phy2log=np.array(rows, dtype=np.int64), n_experts=like.n_experts,
                     slots_per_gpu=like.slots_per_gpu, gpus_per_node=like.gpus_per_node)


def balanced_placement(stats: RoutingStats, start: Placement,
                       progress: ProgressFn | None = None) -> tuple[Placement, list[float]]:
    """Min-max balance every layer from `start`'s packing (same replica counts); returns the gaps per layer."""
    rows, gaps = [], []
    spg = start.slots_per_gpu
    for layer in range(start.n_layers):
        experts = start.phy2log[layer]
        counts = np.bincount(experts, minlength=start.n_experts)
        weights = stats.tokens_per_expert[layer][experts] / counts[experts]
        done = balance_layer(weights.astype(float), experts, np.arange(start.n_slots) // spg, start.n_gpus)
        per_gpu = np.zeros((start.n_experts, start.n_gpus), dtype=np.int64)
        np.add.at(per_gpu, (experts, done.gpu_of_replica), 1)
        rows.append(slots_from_counts(per_gpu))
        gaps.append(done.gap)
        if progress is not None:
            progress(layer + 1, start.n_layers, f"layer {layer} balanced")
    return _layer_stack(rows, start), gaps


def _no_worse(mine: LayerMetrics, theirs: LayerMetrics) -> bool:
    tol = 1 + 1e-9
    return mine.max_over_mean <= theirs.max_over_mean * tol and mine.all_to_all_s <= theirs.all_to_all_s * tol


def _better(mine: LayerMetrics, theirs: LayerMetrics) -> bool:
    return _no_worse(mine, theirs) and (mine.max_over_mean < theirs.max_over_mean * (1 - 1e-9)
                                         or mine.all_to_all_s < theirs.all_to_all_s * (1 - 1e-9))


def choose_layers(best: Placement, optimised: Placement, theirs: list[LayerMetrics],
                  mine: list[LayerMetrics]) -> tuple[Placement, list[int]]:
    """Per layer the optimiser's placement where it wins (`mine` against `theirs`, the best baseline's metrics),
    else the best baseline's; returns the layers kept."""
    rows, kept = [], []
    for layer in range(best.n_layers):
        if _better(mine[layer], theirs[layer]):
            rows.append(optimised.phy2log[layer])
        else:
            rows.append(best.phy2log[layer])
            kept.append(layer)
    return _layer_stack(rows, best), kept


def _worse(mine: dict[str, float], theirs: dict[str, float]) -> bool:
    return any(mine[k] > theirs[k] * (1 + 1e-9) for k in ("max_over_mean_worst", "all_to_all_s"))


def _score(layers: list[LayerMetrics]) -> tuple[float, float]:
    s = summary(layers)
    return s["all_to_all_s"] + s["expert_compute_s"], s["max_over_mean_worst"]


def plan_experts(req: ExpertsRequest, progress: ProgressFn | None = None) -> ExpertsResult:
    """Baselines, optimiser and chosen placement under the engine's dispatch rule (see module doc);
    progress follows the optimiser layer by layer."""
    from clusterplan.solver.experts_ilp import IlpOptions, ilp_placement

    if req.method not in METHODS:
        raise BadInputError(f"--method {req.method!r}: choose one of {', '.join(METHODS)}")
    model, cluster = moe_model(req.model_ref), load_cluster(req.cluster_ref)
    check_target(model, req.out_format)
    rule = dispatch_rule(req.engine, req.out_format)
    stats = load_stats(req.stats_path)
    check_against_model(stats, model.n_experts, model.n_moe_layers, model.name)
    fabric = fabric_for(cluster, model, req.dispatch_dtype)
    spg = req.slots_per_gpu if req.slots_per_gpu is not None else default_slots(model.n_experts, fabric.n_gpus)
    if spg < 1:
        raise BadInputError("--slots-per-gpu must be >= 1")
    if spg > model.n_experts:  # more would put two copies of one expert on a GPU
        raise BadInputError(f"--slots-per-gpu {spg}: give at most {model.name}'s {model.n_experts} routed experts")
    if fabric.n_gpus > MAX_EP_GPUS:
        raise BadInputError(f"--cluster {req.cluster_ref}: {fabric.n_gpus} GPUs; expert placement handles up to "
                            f"{MAX_EP_GPUS} GPUs in one expert-parallel group, give the nodes of one group")
    if req.tokens_per_step is not None and not 1 <= req.tokens_per_step <= 2**53:
        raise BadInputError("--tokens-per-step must be >= 1 (and at most 2**53)")
    groups = req.expert_groups if req.expert_groups is not None else model.expert_groups
    if groups < 1 or model.n_experts % groups:
        raise BadInputError(f"--expert-groups {groups}: {model.n_experts} experts do not split into {groups} expert "
                            "groups; give a divisor")
    scale = req.tokens_per_step / float(stats.tokens_per_layer(model.top_k).mean()) if req.tokens_per_step else 1.0
    shape = dict(slots_per_gpu=spg, n_gpus=fabric.n_gpus, gpus_per_node=fabric.gpus_per_node)
    baselines = {"eplb-global": eplb_policy(stats.tokens_per_expert, n_groups=1, n_nodes=1, **shape)}
    if groups > 1 and groups % fabric.n_nodes == 0:
        baselines["eplb-hierarchical"] = eplb_policy(stats.tokens_per_expert, n_groups=groups,
                                                     n_nodes=fabric.n_nodes, **shape)
    placements: dict[str, Placement] = dict(baselines)
    judged: dict[str, list[LayerMetrics]] = {}  # each placement evaluated once under the rule

    def metrics(name: str) -> list[LayerMetrics]:
        if name not in judged:
            judged[name] = evaluate(placements[name], stats, fabric, scale, rule)
        return judged[name]

    best_name = min(sorted(baselines), key=lambda k: _score(metrics(k)))
    best = baselines[best_name]
    report: dict[str, Any] = {
        "model": model.name, "cluster": req.cluster_ref, "stats": req.stats_path, "num_gpus": fabric.n_gpus,
        "num_nodes": fabric.n_nodes, "slots_per_gpu": spg, "expert_groups": groups, "layers": stats.n_layers,
        "transitions": stats.transitions is not None, "dispatch_dtype": req.dispatch_dtype, "token_scale": scale,
        "dispatch_rule": {"name": rule.name, "replica": rule.replica.value, "origin": rule.origin.value,
                          "source": rule.source},
        "best_baseline": best_name,
    }
    chosen_name = best_name
    optimiser = "ilp" if req.method == "ilp" or (req.method == "both" and rule.origin is TokenOrigin.CHAINED) \
        else ("balance" if req.method in ("balance", "both") else None)
    if optimiser is not None:
        start = time.monotonic()
        if optimiser == "ilp":
            ilp = ilp_placement(stats, fabric, best, IlpOptions(time_limit_s=req.time_limit_s, seed=req.seed),
                                progress)
            optimised = ilp.placement
            # gap over the solved layers only (None when none was solved); hit_time_limit counts CBC runs stopped on
            # time and layers left unsolved because the time was up.
            report["solver"] = {"optimiser": "ilp", "gap": ilp.gap, "objective_us": ilp.log.objective_us,
                                "bound_us": ilp.log.bound_us, "subproblems": ilp.log.subproblems,
                                "proven_optimal": ilp.log.proven_optimal,
                                "hit_time_limit": ilp.log.hit_time_limit + len(ilp.unsolved_layers),
                                "solved_layers": stats.n_layers - len(ilp.unsolved_layers),
                                "unsolved_layers": list(ilp.unsolved_layers), "node_locked": ilp.node_locked}
        else:
            optimised, gaps = balanced_placement(stats, best, progress)
            report["solver"] = {"optimiser": "balance", "max_gap": max(gaps), "layers_at_bound":
                                sum(1 for g in gaps if g <= 1e-9), "unsolved_layers": []}
        placements[optimiser] = optimised
        placements["chosen"], kept = choose_layers(best, optimised, metrics(best_name), metrics(optimiser))
        if rule.origin is TokenOrigin.CHAINED and _worse(summary(metrics("chosen")), summary(metrics(best_name))):
            # chained layers interact (each starts where the last ran): guard the whole placement
            placements["chosen"], kept = best, list(range(best.n_layers))
            judged.pop("chosen")
        chosen_name = "chosen"
        report["solver"].update({"layers_kept_baseline": kept, "layers_won": stats.n_layers - len(kept)})
        solve_s = time.monotonic() - start
    else:
        solve_s = 0.0
    methods = {}
    for name in sorted(placements):
        methods[name] = {"summary": summary(metrics(name)), "layers": [layer_row(m) for m in metrics(name)]}
    report["methods"] = methods
    if chosen_name == "chosen":
        base, mine = methods[best_name]["summary"], methods["chosen"]["summary"]
        report["improvement_over_best_baseline"] = {k: (1 - mine[k] / base[k]) if base[k] else 0.0
                                                    for k in sorted(base)}
    doc = placement_document(placements[chosen_name], method=chosen_name if chosen_name != "chosen" else
                             f"{optimiser}+{best_name}", model=model, cluster_ref=req.cluster_ref, rule=rule.name)
    return ExpertsResult(report=report, chosen=placements[chosen_name], model=model, placement_file=doc,
                         solve_s=solve_s)


@dataclass(frozen=True, kw_only=True, slots=True)
class RebalanceRequest:
    model_ref: str
    cluster_ref: str
    windows_path: str
    intervals: tuple[int, ...] = (1, 2, 4, 8)
    policy: str = "eplb-global"
    """How each window's placement is made: 'eplb-global' (what engines run online) or 'balance' (ours)."""
    engine: str = "vllm"
    slots_per_gpu: int | None = None
    weight_bytes: float = 2.0
    """Bytes per expert weight moved (bf16 2, fp8 1)."""
    steps_per_window: float = 1000.0


REBALANCE_POLICIES = ("eplb-global", "balance")


def plan_rebalance(req: RebalanceRequest) -> tuple[dict[str, Any], list[Any]]:
    """Report of `experts rebalance`: per interval, MoE time per step, rebalance traffic and amortised cost."""
    from clusterplan.models.moe.windows import load_windows
    from clusterplan.solver.experts_rebalance import compare_intervals

    if req.policy not in REBALANCE_POLICIES:
        raise BadInputError(f"--policy {req.policy!r}: choose one of {', '.join(REBALANCE_POLICIES)}")
    if not req.intervals or any(not 1 <= k <= 10_000 for k in req.intervals):
        raise BadInputError("--intervals: give window counts between 1 and 10000, e.g. 1,2,4,8")
    if not (0 < req.steps_per_window < float("inf") and 0 < req.weight_bytes <= 4):
        raise BadInputError("--steps-per-window must be > 0 and --weight-bytes in (0, 4]")
    model, cluster = moe_model(req.model_ref), load_cluster(req.cluster_ref)
    rule = dispatch_rule(req.engine, "clusterplan")
    windows = load_windows(req.windows_path)
    check_against_model(windows.window(0), model.n_experts, model.n_moe_layers, model.name)
    fabric = fabric_for(cluster, model)
    spg = req.slots_per_gpu if req.slots_per_gpu is not None else default_slots(model.n_experts, fabric.n_gpus)
    shape = dict(slots_per_gpu=spg, n_gpus=fabric.n_gpus, gpus_per_node=fabric.gpus_per_node)

    def place(i: int) -> Placement:
        loads = windows.tokens_per_expert[i]
        base = eplb_policy(loads, n_groups=1, n_nodes=1, **shape)
        if req.policy == "eplb-global":
            return base
        return balanced_placement(windows.window(i), base)[0]

    expert_bytes = model.expert_params() * req.weight_bytes
    rows = compare_intervals(windows, place, list(req.intervals), fabric, rule, expert_bytes, req.steps_per_window)
    online = [r for r in rows if r.interval != "oracle"]
    best = min(online, key=lambda r: r.total_s_per_step)
    report = {"model": model.name, "cluster": req.cluster_ref, "windows": windows.n_windows, "policy": req.policy,
              "dispatch_rule": rule.name, "steps_per_window": req.steps_per_window,
              "expert_bytes": expert_bytes, "best_interval": best.interval,
              "intervals": [{"interval": r.interval, "rebalances": r.rebalances, "moe_s_per_step": r.moe_s_per_step,
                             "worst_max_over_mean": r.worst_max_over_mean,
                             "moved_bytes_per_rebalance": r.moved_bytes_per_rebalance,
                             "rebalance_s": r.rebalance_s, "overhead_s_per_step": r.overhead_s_per_step,
                             "total_s_per_step": r.total_s_per_step} for r in rows]}
    return report, rows
