"""Exhaustive layout search: every candidate of the space is priced by the vectorised cost model, memory first.

Exact within the model: no candidate is skipped except by a rule it breaks or by memory, so the best plan is the
true optimum of the cost model over the space (solver/space.py).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, replace

import numpy as np

from clusterplan.errors import BadInputError, InfeasibleError
from clusterplan.hardware_db.stacks import ExecutionStack, get_stack
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.calibration import Calibration
from clusterplan.models.hardware.cluster import Cluster, preset_ref
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.estimate import (
    TIME_TERMS,
    Estimate,
    evaluate,
    fp8_all_layouts,
    no_bf16_gpus,
    precision_problems,
    stack_memory,
)
from clusterplan.models.training.goodput import cluster_usd_per_hour, time_to_train, usd_missing_reason
from clusterplan.models.training.layout import Layout, canonical_fp8_recipe
from clusterplan.models.training.memory import GIB
from clusterplan.models.training.rules import RuleCode
from clusterplan.solver.results import RankedPlan, SearchResult
from clusterplan.solver.space import enumerate_space

OBJECTIVES = ("time", "cost", "time-to-train", "cost-to-train", "pareto")
TOKEN_OBJECTIVES = ("time-to-train", "cost-to-train", "pareto")
"""Objectives that need --tokens: they rank by expected wall-clock or dollars with failures (models/training/goodput)."""


def search(model: ModelSpec, cluster: Cluster, gbs: int, seq: int, *, fixed: dict | None = None, top: int = 5,
           calibration: Calibration | None = None, objective: str = "time", tokens: float | None = None,
           headroom_gib: float = 0.0, suggest: bool = True, stack: ExecutionStack | None = None) -> SearchResult:
    """The `top` fastest layouts whose most loaded GPU keeps `headroom_gib` free, as `stack` runs them
    (None: megatron-core).

    When none fits, NothingFits carries the nearest options that fit (solver/feasible.py) unless `suggest` is False
    (the options' own searches raise a plain InfeasibleError).
    """
    start = time.perf_counter()
    given = stack or get_stack()
    stack = recipe_stack(cluster, given, fixed or {})
    hw = HardwareRates.of(cluster, calibration)
    shapes = ModelShapes.of(model)
    precisions = precision_options(cluster, stack, fixed or {})
    space = enumerate_space(model, cluster.world_size, hw.domain, gbs, seq, fixed, stack, precisions)
    rejected = Counter(space.rejected)
    arrays = space.arrays
    candidates = len(arrays) + sum(rejected.values())
    # Memory first: only layouts that fit are timed.
    memory = stack_memory(shapes, arrays, stack, fp8_all_layouts(cluster))
    fits = memory.peak <= hw.memory_bytes - headroom_gib * GIB
    rejected[RuleCode.OUT_OF_MEMORY] += int((~fits).sum())
    kept = np.nonzero(fits)[0]
    survivors = arrays.take(kept)
    if not len(survivors):
        if not suggest:
            raise InfeasibleError(f"no layout of {model.name} fits {cluster.describe()}")
        raise _nothing_fits(model, cluster, gbs, seq, fixed, calibration, headroom_gib, stack, objective, candidates,
                            rejected)
    ev = evaluate(shapes, survivors, hw, cluster.world_size, stack, fp8_all_layouts(cluster), memory.take(kept))
    # The cluster's hourly price, its spare nodes included (they are paid for while they wait); none where a GPU type
    # has no price (a partial sum would understate the cost).
    price = cluster_usd_per_hour(cluster, cluster.reliability.spare_nodes)
    score = ev.time.step_s  # cost per token ranks like step time on a fixed cluster
    never = np.zeros(len(score))
    train = time_to_train(tokens, ev.tokens_per_s, shapes, survivors, ev.memory, cluster) if tokens else None
    if train is not None and objective in TOKEN_OBJECTIVES:
        # Expected wall-clock with failures (and so its dollars on this cluster): checkpoint size differs by layout.
        # A plan that never finishes (failures outpace its progress) ranks after every one that does, by step time.
        never = np.isinf(train.wall_s).astype(float)
        score = np.where(never > 0, ev.time.step_s, train.wall_s)
    # Deterministic order: finishing first, score, then the layout's own fields as tie-breakers.
    keys = [survivors.tp, survivors.pp, survivors.vpp, survivors.cp, survivors.mbs, survivors.zero,
            survivors.recompute, survivors.schedule, survivors.ep]
    order = np.lexsort(tuple(reversed([never, np.round(score, 12)] + keys)))[:top]
    plans = []
    for rank, i in enumerate(order):
        layout = with_pinned_recipe(survivors.layout(int(i)), fixed or {}, given)
        est = Estimate(model=model, cluster=cluster, layout=layout, reasons=(), evaluation=ev, index=int(i))
        usd = float(ev.time.step_s[i]) / 3600 * price if price else None
        plans.append(RankedPlan(
            estimate=est, rank=rank + 1, dominant_terms=dominant_terms_of(est.to_json()),
            usd_per_step=None if usd is None else round(usd, 6),
            usd_per_million_tokens=None if usd is None else round(usd / (gbs * seq) * 1e6, 6),
            days_without_failures=round(tokens / float(ev.tokens_per_s[i]) / 86400, 4) if tokens else None,
            time_to_train=train.to_json(int(i)) if train is not None else None))
    notes = (f"stack {stack.name} cannot run: " + ", ".join(f"{k} ({v:,})" for k, v in sorted(space.left_out.items())),
             ) if space.left_out else ()
    if model.is_moe and (fixed or {}).get("moe_capacity_factor") is None and stack.moe_token_drop:
        notes += (TOKEN_DROP_NOTE,)
    if "fp8" in precisions and not (fixed or {}).get("fp8_recipe"):
        others = [r for r in stack.fp8_recipes[1:]
                  if not precision_problems(cluster, Layout(precision="fp8"), stack, r)]
        if others:
            notes += (f"fp8 recipes {', '.join(others)} ({stack.fp8_recipes[0]} priced; a recipe changes the numerics "
                      "as well as the speed): pin --fix fp8_recipe=R to price one",)
    return SearchResult(plans=with_why_best(plans, objective), candidates=candidates, feasible=len(survivors),
                        rejected=rejected, seconds=time.perf_counter() - start, objective=objective, notes=notes)


TOKEN_DROP_NOTE = ("token-dropping MoE not searched (every plan is dropless): a capacity factor changes what the "
                   "model learns; pin --fix moe_capacity_factor=C to price it")


def recipe_stack(cluster: Cluster, stack: ExecutionStack, fixed: dict) -> ExecutionStack:
    """The stack running the pinned fp8 recipe (--fix fp8_recipe=X, Layout.fp8_recipe), which the stack and every
    GPU must run; the stack as it is when none is pinned. A search prices one recipe: the stack's first unless
    pinned (the recipes differ in numerics, not only in speed: MXFP8's block scales are the accuracy choice NVIDIA's
    Blackwell recipes make, at a cost the model prices)."""
    recipe = str(fixed.get("fp8_recipe") or "")
    if not recipe:
        return stack
    if fixed.get("precision", "fp8") != "fp8":
        raise BadInputError(f"--fix fp8_recipe={recipe} needs precision=fp8, got precision={fixed['precision']}; "
                            "unpin one of them")
    problems = precision_problems(cluster, Layout(precision="fp8", fp8_recipe=recipe), stack, recipe)
    if problems:
        raise BadInputError(f"--fix {problems[0].message}")
    return stack.running(recipe)


def with_pinned_recipe(layout: Layout, fixed: dict, stack: ExecutionStack) -> Layout:
    """A searched layout with the pinned fp8 recipe written in (the search's columns do not carry it: one recipe
    per search, recipe_stack), in its one spelling on `stack` (the stack as given, not recipe_stack's)."""
    recipe = str(fixed.get("fp8_recipe") or "")
    return replace(layout, fp8_recipe=canonical_fp8_recipe(recipe, stack)) if recipe and layout.precision == "fp8" \
        else layout


BF16_LAYER_KEYS = ("bf16_first_layers", "bf16_last_layers")
"""Layout keys that keep layers in bf16 under fp8 (Layout.bf16_first_layers / bf16_last_layers)."""


def precision_options(cluster: Cluster, stack: ExecutionStack, fixed: dict) -> tuple[str, ...]:
    """The precisions a search tries: bf16 everywhere, fp8 too where estimate's precision rule lets it run (every
    GPU has fp8 tensor cores, the stack an fp8 recipe: its first, e.g. Transformer Engine per-tensor current scaling
    for megatron-core, or the pinned one). A pinned precision the GPUs or the stack cannot run is bad input, said in
    one line; a pinned fp8 recipe pins fp8."""
    if fixed.get("fp8_recipe"):  # recipe_stack checked it (search, closest_layout call it first)
        return ("fp8",)
    fp8_problems = precision_problems(cluster, Layout(precision="fp8"), stack)
    bf16_layers = [k for k in BF16_LAYER_KEYS if fixed.get(k)]
    # Layers kept out of fp8 pin fp8 training.
    pinned = fixed.get("precision", "fp8" if bf16_layers else None)
    if bf16_layers and pinned != "fp8":
        raise BadInputError(f"--fix {bf16_layers[0]}={fixed[bf16_layers[0]]} keeps layers out of fp8 and needs "
                            f"precision=fp8, got precision={pinned}; unpin one of them")
    half = "fp16" if no_bf16_gpus(cluster) else "bf16"  # GPUs without bf16 tensor cores (V100) train in fp16
    if pinned is not None:
        problems = fp8_problems if pinned == "fp8" else precision_problems(cluster, Layout(precision=str(pinned)),
                                                                           stack)
        if problems:
            raise BadInputError(f"--fix {problems[0].message}")
        return (str(pinned),)
    return (half,) if fp8_problems else (half, "fp8")


def sub_clusters(cluster: Cluster, *, all_types: bool = False) -> list[Cluster]:
    """Jobs on fewer of the cluster's nodes: every divisor node count of one node type and every power of two below
    its count (of each type's group with `all_types`, else of a single-type cluster only): 32 of 36 NVL72 trays, where
    a power-of-two global batch and mesh fit and all 36 force odd pipeline or data-parallel degrees. Failure rates,
    storage and prices stay the cluster's."""
    if not all_types and (not cluster.is_homogeneous or len(cluster.groups) != 1):
        raise InfeasibleError("this objective searches node counts of one node type; give a PRESET:NODES cluster")
    out = []
    for group in cluster.groups if all_types else cluster.groups[:1]:
        powers = {1 << k for k in range(group.count.bit_length())}
        for nodes in sorted({n for n in range(1, group.count + 1) if group.count % n == 0} | powers):
            whole = len(cluster.groups) == 1 and nodes == group.count
            out.append(replace(cluster, name=preset_ref(group, nodes), groups=(replace(group, count=nodes),),
                               node_bandwidth_gb_per_s=cluster.node_bandwidth_gb_per_s if whole else None))
    return out


def sweep_nodes(model: ModelSpec, cluster: Cluster, gbs: int, seq: int, *, fixed: dict | None, top: int,
                calibration: Calibration | None, tokens: float | None, headroom_gib: float, objective: str,
                all_types: bool = False, progress=None, stack: ExecutionStack | None = None
                ) -> tuple[list[RankedPlan], int, int, Counter, tuple[str, ...]]:
    """The `top` plans of every sub-cluster (sub_clusters), with the search's counts summed and its notes."""
    plans: list[RankedPlan] = []
    candidates, feasible, rejected, notes = 0, 0, Counter[RuleCode](), ()
    subs = sub_clusters(cluster, all_types=all_types)
    for k, sub in enumerate(subs):
        if progress is not None:
            progress(k, len(subs), sub.name)
        try:
            result = search(model, sub, gbs, seq, fixed=fixed, top=top, calibration=calibration, tokens=tokens,
                            headroom_gib=headroom_gib, suggest=False, objective=objective, stack=stack)
        except InfeasibleError:
            continue
        plans += result.plans
        notes = result.notes
        candidates, feasible = candidates + result.candidates, feasible + result.feasible
        rejected.update(result.rejected)
    if not plans:
        # Re-run on the whole cluster for the nearest-fit message.
        search(model, cluster, gbs, seq, fixed=fixed, top=1, calibration=calibration, headroom_gib=headroom_gib,
               stack=stack)
    return plans, candidates, feasible, rejected, notes


def search_by_cost(model: ModelSpec, cluster: Cluster, gbs: int, seq: int, *, fixed: dict | None = None,
                   top: int = 5, calibration: Calibration | None = None, tokens: float | None = None,
                   headroom_gib: float = 0.0, objective: str = "cost", progress=None,
                   stack: ExecutionStack | None = None) -> SearchResult:
    """Cheapest layouts, allowing the job to use fewer of the cluster's nodes (every divisor count): a smaller job
    can be cheaper when communication or the bubble grows faster than compute shrinks, and with failures (`cost-to-
    train`) because a smaller job fails less often. `cost` ranks by $ per 1M tokens, `cost-to-train` by the total $
    of --tokens with failures."""
    to_train = objective == "cost-to-train"
    unpriced = usd_missing_reason(cluster)
    if unpriced is not None:
        other = "time-to-train" if to_train else "time"
        raise InfeasibleError(f"--objective {objective} needs a price: {unpriced}; or use --objective {other}")
    start = time.perf_counter()
    plans, candidates, feasible, rejected, notes = sweep_nodes(
        model, cluster, gbs, seq, fixed=fixed, top=top, calibration=calibration, tokens=tokens,
        headroom_gib=headroom_gib, objective=objective, all_types=to_train, progress=progress, stack=stack)

    def key(p: RankedPlan) -> tuple[float, float]:
        if to_train and p.time_to_train is not None:
            usd = p.time_to_train.get("usd")
            return (usd if usd is not None else float("inf"), p.step_time_s)
        return (p.usd_per_million_tokens, p.step_time_s)

    plans.sort(key=key)
    return SearchResult(plans=with_why_best(plans[:top], objective), candidates=candidates, feasible=feasible,
                        rejected=rejected, seconds=time.perf_counter() - start, objective=objective, notes=notes)


def dominant_terms_of(data: dict) -> tuple[str, ...]:
    terms = sorted((t for t in TIME_TERMS if t in data["time"]), key=lambda t: -data["time"][t])
    return tuple(f"{t.removesuffix('_s')} {data['time'][t] / data['step_time_s']:.0%}" for t in terms[:3]
                 if data["time"][t] > 0)


def with_why_best(plans: list[RankedPlan], objective: str) -> tuple[RankedPlan, ...]:
    """New plans ranked 1.. in the given order, #1 saying why it beats #2, first in what the objective ranks by: $ per
    1M tokens (cost), expected dollars or days to train with failures (cost-to-train, time-to-train); plans of these
    objectives may run on different node counts."""
    ranked = [replace(p, rank=rank, why_best=None) for rank, p in enumerate(plans, start=1)]
    if len(ranked) > 1:
        a, b = ranked[0], ranked[1]
        why = why_best(a.to_json(), b.to_json())
        lead = _objective_lead(a, b, objective)
        ranked[0] = replace(a, why_best=lead + why if lead else why)
    return tuple(ranked)


def _objective_lead(a: RankedPlan, b: RankedPlan, objective: str) -> str:
    """What #1 and #2 score on the objective's own measure, when it is not the step time ('' otherwise)."""
    gpus = f"on {a.cluster.world_size} GPUs vs "
    if objective == "cost" and a.usd_per_million_tokens is not None and b.usd_per_million_tokens is not None:
        return (f"${a.usd_per_million_tokens:.4g} per 1M tokens {gpus}${b.usd_per_million_tokens:.4g} for #2 on "
                f"{b.cluster.world_size} GPUs; ")
    key = {"cost-to-train": "usd", "time-to-train": "days"}.get(objective)
    if key is None or a.time_to_train is None or b.time_to_train is None:
        return ""
    x, y = a.time_to_train.get(key), b.time_to_train.get(key)
    if x is None or y is None:
        return ""
    what = "expected $ to train" if key == "usd" else "expected days to train"
    fmt = (lambda v: f"${v:,.0f}") if key == "usd" else (lambda v: f"{v:.4g} days")  # noqa: E731
    return f"{what} {fmt(x)} {gpus}{fmt(y)} for #2 on {b.cluster.world_size} GPUs; "


def why_best(best: dict, runner: dict) -> str:
    """The time terms where the best plan gains most over the runner-up, in seconds per step."""
    defaults = asdict(Layout())  # a key a layout dict leaves out holds its default (never "None")
    value = lambda lay, k: lay.get(k, defaults.get(k))  # noqa: E731
    changed = [f"{k}={value(best['layout'], k)} (vs {value(runner['layout'], k)})"
               for k in [*best["layout"], *(k for k in runner["layout"] if k not in best["layout"])]
               if value(best["layout"], k) != value(runner["layout"], k)]
    if abs(runner["step_time_s"] - best["step_time_s"]) <= 1e-6 * best["step_time_s"]:
        return (f"ties with #2 at {best['step_time_s']:.4g} s ({', '.join(changed)} predict the same time); "
                "ties go to smaller tp, then pp, vpp, cp, micro-batch")
    diffs = sorted(((runner["time"].get(t, 0.0) - best["time"].get(t, 0.0), t) for t in TIME_TERMS), reverse=True)
    gains = [f"{t.removesuffix('_s')} -{d:.3g} s" for d, t in diffs if d > 0][:2]
    losses = [f"{t.removesuffix('_s')} +{-d:.3g} s" for d, t in diffs if d < 0][-1:]
    return (f"{', '.join(changed) or 'same layout'}: saves {', '.join(gains) or 'nothing'}"
            + (f", pays {', '.join(losses)}" if losses else "")
            + f"; step {best['step_time_s']:.4g} s vs {runner['step_time_s']:.4g} s")


def _nothing_fits(model: ModelSpec, cluster: Cluster, gbs: int, seq: int, fixed: dict | None,
                  calibration: Calibration | None, headroom_gib: float, stack: ExecutionStack, objective: str,
                  candidates: int, rejected: Counter) -> InfeasibleError:
    """The error `plan` answers with (solver/feasible.NothingFits): one line (the cause and the nearest option that
    fits) and, for the output, every option found with the search's counts."""
    from clusterplan.solver.feasible import NothingFits, nearest_plan  # feasible searches with search()

    nearest = nearest_plan(model, cluster, gbs, seq, fixed=fixed, headroom_gib=headroom_gib, calibration=calibration,
                           stack=stack)
    hint = "" if nearest.options or nearest.cause is not None else (
        "; pin fewer keys with --fix, or a --gbs that more data-parallel sizes divide; "
        "`clusterplan estimate --layout ...` names the rule a layout breaks")
    message = (f"no layout of {model.name} fits {cluster.describe()} at gbs={gbs}, seq={seq} ({nearest.reason}); "
               f"{nearest.summary()}{hint}")
    counts = {"candidates": candidates, "feasible": 0, "objective": objective,
              "rejected": {str(code): n for code, n in sorted(rejected.items(), key=lambda kv: str(kv[0]))}}
    return NothingFits(message, nearest, counts)
