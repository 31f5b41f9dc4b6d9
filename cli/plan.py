"""`clusterplan plan`: search layouts and rank them by predicted step time, memory of every GPU checked."""

from __future__ import annotations

import math
from dataclasses import asdict

import click

from clusterplan.cli.common import calibration_option, cluster_option, load_inputs, model_option
from clusterplan.cli.console import console
from clusterplan.cli.options import (
    MAX_TOKENS,
    format_option,
    output_path,
    plot_option,
    price_options,
    quiet_option,
    stack_option,
)
from clusterplan.cli.plot import check_plot_path, plot_plan
from clusterplan.cli.render import (
    STAGE_COLUMNS,
    fmt_duration,
    interval_placement_note,
    mixed_step_label,
    prices_line,
    render_nearest,
    stage_rows,
)
from clusterplan.errors import BadInputError, InfeasibleError
from clusterplan.fileio import load_mapping, path_exists, require_finite
from clusterplan.hardware_db.prices import price_rule
from clusterplan.hardware_db.stacks import get_stack
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.goodput import cluster_prices_json, short_budget_warning, usd_missing_reason
from clusterplan.models.training.layout import (
    Layout,
    bf16_layers_label,
    check_step_tokens,
    cp_label,
    megatron_keeps_remainders,
    precision_label,
)
from clusterplan.models.training.planfile import write_plan
from clusterplan.reference.intervals import attach as attach_interval
from clusterplan.reference.intervals import ties
from clusterplan.solver.check import MAX_HEADROOM_GIB
from clusterplan.solver.feasible import NothingFits
from clusterplan.solver.hetero import TRAIN_KEYS, best_choice_to_train, choice_time_to_train, hetero_plan
from clusterplan.solver.pareto import pareto
from clusterplan.solver.placement import rerank_on_links
from clusterplan.solver.search import OBJECTIVES, TOKEN_OBJECTIVES, search, search_by_cost

MAX_TOP = 1000
"""Most plans shown: with a measured bandwidth matrix each one is re-placed on the links (up to 10 s of search
each), and a table of 1,000 layouts is already beyond reading."""


def parse_fix(text: str | None, world: int) -> dict:
    """`--fix "tp=8,recompute=full"`: the same keys as estimate's --layout, each pinned in the search."""
    if not text:
        return {}
    names = [item.split("=", 1)[0].strip() for item in text.split(",") if item.strip()]
    twice = sorted({k for k in names if names.count(k) > 1})
    if twice:
        raise BadInputError(f"--fix: {', '.join(twice)} given twice; give each key once")
    keys = set(names)
    # HSDP's replicate degree pinned alone (dp searched) is checked against a dp it divides, not against dp = 1.
    extra = ""
    if "dp_replicate" in keys and "dp" not in keys:
        extra = ",dp=" + next(item.split("=", 1)[1] for item in text.split(",")
                              if "=" in item and item.split("=", 1)[0].strip() == "dp_replicate")
    full = asdict(Layout.parse(text + extra, option="--fix"))  # every field, also those to_dict leaves out
    for key in ("gbs", "seq"):
        if key in keys:
            raise BadInputError(f"--fix: give {key} with --{key}, not in --fix")
    if "pp_layers" in keys and keys & {"first_stage_layers", "last_stage_layers"}:
        raise BadInputError("--fix: pp_layers holds the first and last ranks' layers too; drop "
                            "first_stage_layers/last_stage_layers")
    return {k: full[k] for k in keys}


@click.command()
@model_option
@cluster_option
@click.option("--gbs", type=click.IntRange(min=1), required=True, help="Global batch size in sequences.")
@click.option("--seq", type=click.IntRange(min=1), required=True, help="Sequence length in tokens.")
@click.option("--fix", "fix_texts", multiple=True, help='Pin layout keys, e.g. "tp=8,pp=8,recompute=full" (the keys of estimate --layout, fp8_params and '
                   'moe_imbalance among them; gbs and seq have their own options); repeat it or separate by commas.')
@click.option("--objective", type=click.Choice(OBJECTIVES), default="time",
              help="time: fastest step on the whole cluster; cost: cheapest per token, possibly on fewer nodes; "
                   "time-to-train: fewest expected days for --tokens, failures and checkpoints included; "
                   "cost-to-train: fewest expected dollars for --tokens, on any node count of each GPU type; "
                   "pareto: the plans no other beats on both days and dollars.")
@click.option("--tokens", type=float, default=None,
              help="Token budget (e.g. 15e12): adds expected days, $ and goodput with failures to every plan.")
@click.option("--top", type=click.IntRange(min=1, max=MAX_TOP), default=5, help="How many plans to show.")
@click.option("--headroom-gib", type=click.FloatRange(min=0), default=2.0,
              help="Memory each GPU must keep free beyond the predicted peak (safety margin against OOM).")
@calibration_option
@stack_option()
@price_options
@format_option
@click.option("--timing", is_flag=True,
              help="Add the search's wall time (`search.seconds`) to the JSON; off by default so the same inputs give "
                   "byte-identical JSON.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, callback=output_path,
              help="Write the best plan as a plan file for check / validate / export.")
@plot_option
@quiet_option
def plan(model_ref: str, cluster_ref: str, gbs: int, seq: int, fix_texts: tuple[str, ...], objective: str,
         tokens: float | None, top: int, headroom_gib: float, calibration_path: str | None, stack_name: str | None,
         provider: str | None, pricing: str | None, prices_path: str | None, fmt: str, timing: bool,
         out_path: str | None, plot_path: str | None) -> None:
    """Search data/tensor/pipeline/context/expert parallelism, ZeRO, micro-batch and recompute; rank by step time.

    Example: clusterplan plan --model llama3.1-70b --cluster dgx-h100:8 --gbs 512 --seq 8192
    Exits 1 when no layout fits (the cause and the nearest options that fit are printed), 2 on bad input.
    """
    if objective in TOKEN_OBJECTIVES and tokens is None:
        raise BadInputError(f"--objective {objective} needs --tokens (e.g. --tokens 15e12)")
    if tokens is not None and not 0 < tokens <= MAX_TOKENS:  # NaN fails too
        raise BadInputError(f"--tokens {tokens:g}: give a positive token budget, at most {MAX_TOKENS:g} (e.g. "
                            "--tokens 15e12)")
    if not math.isfinite(headroom_gib) or headroom_gib > MAX_HEADROOM_GIB:
        raise BadInputError(f"--headroom-gib {headroom_gib:g}: give GiB to keep free per GPU, at most "
                            f"{MAX_HEADROOM_GIB:g} (e.g. --headroom-gib 2)")
    check_plot_path(plot_path)
    console.set_format(fmt)
    prices = price_rule(provider, pricing, prices_path)
    model, cluster, calibration = load_inputs(model_ref, cluster_ref, calibration_path, prices)
    check_step_tokens(gbs, seq, "--gbs/--seq")
    # priced as given, said once the search has run (bad input found in it stays the one line on stderr)
    input_warnings = [w for w in (model.beyond_context(seq, "--seq"),
                            short_budget_warning(tokens, gbs, seq) if tokens is not None else None) if w is not None]
    fix_text = ",".join(t for t in fix_texts if t.strip()) or None  # --fix repeated: one pin list
    fixed = parse_fix(fix_text, cluster.world_size)
    stack = get_stack(stack_name)
    try:
        if objective == "pareto" and click.get_current_context().get_parameter_source("top") \
                == click.core.ParameterSource.COMMANDLINE:
            console.warn("--top does not apply to --objective pareto: it lists every plan no other beats on both "
                         "days and dollars")
        if objective in ("pareto", "cost", "cost-to-train"):
            with console.progress(f"searching {model.name} over node counts") as progress:
                if objective == "pareto":
                    result = pareto(model, cluster, gbs, seq, tokens=tokens, fixed=fixed, calibration=calibration,
                                    headroom_gib=headroom_gib, progress=progress, stack=stack)
                else:
                    result = search_by_cost(model, cluster, gbs, seq, fixed=fixed, top=top, calibration=calibration,
                                            tokens=tokens, headroom_gib=headroom_gib, objective=objective,
                                            progress=progress, stack=stack)
        else:
            with console.status(f"searching layouts of {model.name} on {cluster.world_size} GPUs"):
                result = search(model, cluster, gbs, seq, fixed=fixed, top=top, calibration=calibration,
                                objective=objective, tokens=tokens, headroom_gib=headroom_gib, stack=stack)
    except NothingFits as exc:  # an answer, not an error: the cause and the nearest options that fit; exit 1
        for line in input_warnings:
            console.warn(line)
        _render_nothing_fits(exc, fmt)
        raise SystemExit(1) from None
    for line in input_warnings:
        console.warn(line)
    if objective != "pareto":
        result = rerank_on_links(result, calibration)
    data = result.to_json()
    usd_missing = usd_missing_reason(cluster)  # the cost objectives refuse an unpriced cluster before this
    if usd_missing is not None:
        data["usd_missing_reason"] = usd_missing
    data["prices"] = cluster_prices_json(cluster)  # the rows behind every $ above, with the rule that chose them
    for p in data["plans"]:
        attach_interval(p, p["hardware"]["gpu"], model.is_moe, calibration_path, hybrid=model.is_hybrid)
    data["ties_with_best"] = ties(data["plans"]) if objective != "pareto" else []
    if timing:
        data["search"]["seconds"] = round(result.seconds, 4)
    mixed = None
    mixed_refused = ""
    if not cluster.is_homogeneous and objective != "pareto":
        with console.status("balancing pipeline stages across GPU types"):
            try:
                mixed = hetero_plan(model, cluster, gbs, seq, calibration, fixed, stack, headroom_gib)
                data["mixed_gpu_types"] = mixed.to_json()
            except InfeasibleError as exc:  # the plans above stand; the mixed pipeline is an addition to them
                mixed_refused = str(exc)
                data["mixed_gpu_types"] = {"refused": mixed_refused}
    # On a mixed cluster the best answer may be the balanced pipeline or one type's nodes alone, not plan #1: the
    # fastest step (time) or the fewest days / dollars to train (time-to-train, cost-to-train)
    choice, train = None, None
    if mixed is not None and objective == "time":
        choice = mixed.best_choice(data["plans"][0]["step_time_s"])
        train = choice_time_to_train(mixed, choice, model, cluster, tokens, stack) if tokens else None
    elif mixed is not None and objective in TRAIN_KEYS and tokens:
        choice, train = best_choice_to_train(mixed, data["plans"][0].get("time_to_train"), objective, model, cluster,
                                             tokens, stack)
    if choice is not None:
        data["best_on_cluster"] = _best_on_cluster(choice, data) | {"objective": objective}
        if train is not None:
            data["best_on_cluster"]["time_to_train"] = train
    require_finite(data)  # before --out is written and before anything is printed
    saved = "plan #1"
    if out_path:
        best = result.plans[0].to_json()
        if mixed is not None and choice == "one_gpu_type":
            # one GPU type's nodes alone beat every plan across the types: that is the plan to run
            saved = f"the {mixed.fastest_only_gpu} nodes alone, {BEATS[objective]} any plan across the GPU types"
            alone = mixed.fastest_only_cluster(cluster)
            write_plan(out_path, model_ref=model_ref, cluster_ref=_plan_cluster_ref(cluster_ref, cluster, alone),
                       layout=mixed.fastest_only_layout, stack=stack.name,
                       prediction={"step_time_s": round(mixed.fastest_only_step_s, 6)})
        elif mixed is not None and choice == "mixed_pipeline":
            saved = f"the mixed-GPU pipeline: {mixed.layout.pp} stages"
            write_plan(out_path, model_ref=model_ref, cluster_ref=cluster_ref, layout=mixed.layout, stack=stack.name,
                       prediction={"step_time_s": round(mixed.balanced.step_time_s, 6),
                                   "stage_peak_gib": [round(p, 3) for p in mixed.balanced.peak_gib]},
                       stages=mixed.balanced.stages)
        else:
            write_plan(out_path, model_ref=model_ref, cluster_ref=_plan_cluster_ref(cluster_ref, cluster,
                                                                                    result.plans[0].cluster),
                       layout=result.plans[0].layout, stack=stack.name,
                       prediction={k: v for k, v in best.items() if k in ("step_time_s", "mfu", "memory")})
    if fmt == "json":
        console.json(data)
    else:
        if "best_on_cluster" in data:
            _render_best_on_cluster(data["best_on_cluster"])
        _render(data)
        if objective == "pareto":
            _render_pareto(data)
        if mixed is not None:
            _render_mixed(data["mixed_gpu_types"])
    s = data["search"]
    rejected = ", ".join(f"{k} {v:,}" for k, v in s["rejected"].items() if v)
    console.info(f"searched {s['candidates']:,} layouts in {result.seconds:.2f} s: {s['feasible']:,} fit"
                 + (f"; rejected {rejected}" if rejected else ""))
    if usd_missing is not None:  # the table has no $ columns: say why, and how to price the GPUs
        console.info(f"no $ columns: {usd_missing}")
    for note in result.notes:  # what the stack cannot run, left out of the search
        console.info(f"left out: {note}")
    if mixed is not None and mixed.pins_not_applied:
        console.info(f"mixed GPU types: searched without the pins of {', '.join(mixed.pins_not_applied)} (its 1F1B "
                     "pipeline of equal-width stages does not take them)")
    if mixed_refused:
        console.info(f"mixed GPU types: {mixed_refused}")
    if out_path:
        console.info(f"wrote {out_path} ({saved})" if mixed is not None else f"wrote {out_path}")
    if plot_path:
        plot_plan(data, plot_path)
        console.info(f"wrote {plot_path}")


def _plan_cluster_ref(cluster_ref: str, cluster: Cluster, chosen: Cluster) -> str | dict:
    """The cluster a saved plan runs on: the given one, or the node count of it the cost objectives chose (a
    PRESET:NODES, or the cluster file's own mapping with its one group's count changed, prices and failure rates
    kept)."""
    if chosen.n_nodes == cluster.n_nodes:
        return cluster_ref
    if not path_exists(cluster_ref):
        return chosen.name  # sub_clusters names a one-group preset cluster PRESET:NODES
    doc = dict(load_mapping(cluster_ref))
    # the one group the plan runs on (sub_clusters keeps a group's preset and GPU), at its chosen node count; a
    # measured bandwidth matrix or pods of the whole cluster describe nodes the plan no longer has
    pick = chosen.groups[0]
    index = next(i for i, g in enumerate(cluster.groups) if g.preset == pick.preset and g.gpu.name == pick.gpu.name)
    group = dict(doc["groups"][index]) | {"count": chosen.n_nodes}
    kept = {k: v for k, v in doc.items() if k not in ("groups", "node_bandwidth_gb_per_s", "pods", "name")}
    nodes = f"{chosen.n_nodes} node{'s' if chosen.n_nodes != 1 else ''}"
    return {"name": f"{doc.get('name', 'cluster')} ({nodes})", **kept, "groups": [group]}


BEATS = {"time": "faster than", "time-to-train": "fewer days to train than",
         "cost-to-train": "fewer dollars to train than"}
"""How a mixed cluster's named answer beats the others, by the objective that named it (the first line, --out)."""


def _best_on_cluster(choice: str, data: dict) -> dict:
    """The best of a mixed cluster's three answers (HeteroPlan.best_choice: fastest step; best_choice_to_train: fewest
    days or dollars) with its step time and where it is."""
    mixed = data["mixed_gpu_types"]
    if choice == "one_gpu_type":
        alone = mixed["fastest_type_only"]
        return {"choice": choice, "step_time_s": alone["step_time_s"], "gpu": alone["gpu"],
                "layout": alone["layout"], "where": "mixed_gpu_types.fastest_type_only"}
    if choice == "mixed_pipeline":
        return {"choice": choice, "step_time_s": mixed["balanced"]["step_time_s"], "layout": mixed["layout"],
                "where": "mixed_gpu_types.balanced"}
    return {"choice": choice, "step_time_s": data["plans"][0]["step_time_s"], "layout": data["plans"][0]["layout"],
            "where": "plans[0]"}


def _render_best_on_cluster(best: dict) -> None:
    """The answer first on a mixed cluster: the ranked table below splits layers evenly over the GPU types."""
    objective = best.get("objective", "time")
    what = {"one_gpu_type": f"the {best.get('gpu')} nodes alone ({_layout_label(best['layout'])}), {BEATS[objective]} any "
                            "plan across the GPU types (below the table)",
            "mixed_pipeline": f"the pipeline balanced across the GPU types ({_layout_label(best['layout'])}, below "
                              "the table)",
            "ranked": "plan #1 of the table"}[best["choice"]]
    train = best.get("time_to_train")
    to_train = ""
    if train is not None and train.get("days") is not None:
        dollars = f", ${train['usd']:,.0f}" if train.get("usd") is not None else ""
        to_train = f" ({train['days']:.4g} days{dollars} to train {train['tokens']:.3g} tokens, failures included)"
    head = {"time": "fastest", "time-to-train": "fewest days to train", "cost-to-train": "cheapest to train"}[objective]
    # the cost objectives' table also ranks node counts of one type (search.sub_clusters), not only the even split
    table = ("" if objective == "cost-to-train" else "; the table ranks layouts over every GPU at an even layer split, "
             "paced by the slowest type")
    console.text(f"{head} on this mixed cluster: {what}, step {best['step_time_s']:.4g} s{to_train}{table}")


def _render_nothing_fits(exc: NothingFits, fmt: str) -> None:
    """No layout fits: the JSON (plans empty, `nearest_feasible`) or a table of the options; the one line on stderr."""
    data = {"plans": [], "feasible": False, "nearest_feasible": exc.nearest.to_json(), "search": exc.counts}
    require_finite(data)
    if fmt == "json":
        console.json(data)
    else:
        render_nearest(exc.nearest)
    console.error(str(exc))


def _layout_label(lay: dict) -> str:
    """A layout's short label in the plan tables (the keys that differ between plans)."""
    return (f"tp{lay['tp']} pp{lay['pp']}" + (f"v{lay['vpp']}" if lay["vpp"] > 1 else "")
            + f" dp{lay['dp']}"
            + (f"({lay['dp_replicate']}x{lay['dp'] // lay['dp_replicate']})" if lay.get("dp_replicate", 1) > 1 else "")
            + (" " + cp_label(lay["cp"], lay["cp_kind"], lay.get("cp_a2a", 1)) if lay["cp"] > 1 else "")
            + (f" ep{lay['ep']}" + (f"etp{lay['etp']}" if lay.get("etp", 1) > 1 else "") if lay["ep"] > 1 else "")
            + f" mbs{lay['mbs']} zero{lay['zero']} {lay['recompute']}"
            + (f"({lay['recompute_layers']} layers)" if lay.get("recompute_layers") else "")
            + (" sp" if lay["sp"] else "")
            + (f" {lay['schedule']}" if lay["pp"] > 1 else "")
            # uneven pipeline ends: two plans that differ only in them would print the same label
            + (f" ends {lay.get('first_stage_layers', 0) or '-'}/{lay.get('last_stage_layers', 0) or '-'}"
               if lay["pp"] > 1 and not lay.get("pp_layers")
               and (lay.get("first_stage_layers") or lay.get("last_stage_layers")) else "")
            + (" " + precision_label(lay["precision"], lay.get("fp8_recipe", ""), lay.get("fp8_params", False))
               if lay["precision"] != "bf16" else "")
            + (" " + bf16_layers_label(lay.get("bf16_first_layers", 0), lay.get("bf16_last_layers", 0))
               if lay.get("bf16_first_layers") or lay.get("bf16_last_layers") else "")
            + (" bf16-moments" if lay.get("bf16_moments") else "")
            + (" fp32-master" if lay.get("precision_aware") is False
               and megatron_keeps_remainders(Layout.from_dict(lay)) else "")
            + (f" {lay['moe_dispatcher']}" if lay.get("moe_dispatcher", "alltoall") != "alltoall" else "")
            + (" a2a-overlap" if lay.get("moe_a2a_overlap") else "")
            + (f" drop{lay['moe_capacity_factor']:g}" if lay.get("moe_capacity_factor") is not None else "")
            + (f" graphs:{lay['cuda_graphs']}" if lay.get("cuda_graphs", "none") != "none" else "")
            + (" layers " + "/".join(map(str, lay["pp_layers"])) if lay.get("pp_layers") else ""))


def _render(data: dict) -> None:
    plans = data["plans"]
    console.text(f"{plans[0]['model']} on {plans[0]['cluster']}")
    by_size = len({p["cluster"] for p in plans}) > 1
    priced = all("usd_per_million_tokens" in p for p in plans)
    to_train = all("time_to_train" in p for p in plans)
    rows = []
    for p in plans:
        lay = p["layout"]
        short = _layout_label(lay)
        gpus = lay["tp"] * lay["pp"] * lay["dp"] * lay["cp"]
        rows.append((p["rank"], short, *([_gpus_label(p, gpus)] if by_size else []), f"{p['step_time_s']:.3f}",
                     f"{p['tokens_per_s']:,.0f}", f"{p['mfu']:.1%}",
                     *([f"{p['usd_per_million_tokens']:.4f}"] if priced else []),
                     *(_train_cells(p["time_to_train"]) if to_train else []),
                     f"{p['memory']['peak_gib']:.1f}", f"{p['memory']['headroom_gib']:.1f}", ", ".join(p["dominant_terms"])))
    columns = ["#", "layout", *(["GPUs"] if by_size else []), "step s", "tokens/s", "MFU",
               *(["$/1M tok"] if priced else []), *(["days", "$ total", "goodput", "ckpt every"] if to_train else []),
               "peak GiB", "headroom", "dominant terms"]
    console.table(None, columns, rows, justify_right=[c not in ("layout", "dominant terms") for c in columns])
    if priced:
        console.text(prices_line(data["prices"]))
    if "why_best" in plans[0]:
        console.text(f"why #1: {plans[0]['why_best']}")
    if "step_time_interval" in plans[0]:
        iv = plans[0]["step_time_interval"]
        days = to_train and "days_interval" in plans[0]["time_to_train"]
        what = "days" if days else "step time"
        console.text(f"{iv['rate']:.0%} interval of #1's {what}: "
                     + (f"{plans[0]['time_to_train']['days_interval'][0]:.1f}-"
                        f"{plans[0]['time_to_train']['days_interval'][1]:.1f} days" if days
                        else f"{iv['low_s']:.3g}-{iv['high_s']:.3g} s")
                     + f" ({iv['source']})" + interval_placement_note(iv))
    if "moe_routing" in plans[0]:
        console.text(f"MoE routing of #1: {plans[0]['moe_routing']}")
    if data.get("ties_with_best"):
        console.text(f"#{', #'.join(str(r) for r in data['ties_with_best'])} "
                     f"{'is' if len(data['ties_with_best']) == 1 else 'are'} within #1's interval around its prediction: "
                     "a tie, not a ranking")
    if "placement" not in plans[0]:
        return
    pl = plans[0]["placement"]
    console.text(f"placement of #1 (mesh {' x '.join(f'{k}{v}' for k, v in pl['mesh'].items())}, tp innermost; "
                 f"{pl['method']}):")
    if "node_order" in pl:
        _render_links(pl)
    shown = pl["nodes"][:4]
    console.table(None, ["node", "ranks", *pl["mesh_order"]],
                  [(n["node"], f"{n['ranks'][0]}-{n['ranks'][1]}",
                    *(_span(n[a]) for a in pl["mesh_order"])) for n in shown])
    if pl["nodes_total"] > len(shown):
        console.text(f"... {pl['nodes_total'] - len(shown)} more nodes follow the same pattern")


def _render_links(pl: dict) -> None:
    """Each axis's link under the chosen node order against the default one, and what that did to the step."""
    base = pl["default_axis_links_gb_per_s"]
    links = ", ".join(f"{axis} {gb:g}" + (f" (default {base[axis]:g})" if base.get(axis) != gb else "")
                      for axis, gb in pl["axis_links_gb_per_s"].items())
    console.text(f"  node order {' '.join(str(n) for n in pl['node_order'])}; slowest link per axis, GB/s: "
                 + (links or "none crosses nodes"))
    gain, default_s = pl["gain_s"], pl["step_time_default_order_s"]
    terms = ", ".join(f"{term.removesuffix('_s')} {change:+.4g} s" for term, change in pl["time_change_s"].items())
    console.text(f"  step {pl['step_time_placed_s']:.6g} s vs {default_s:.6g} s in default order: "
                 + (f"{gain:.6g} s ({gain / default_s:.1%}) faster" if gain > 0 else "the default order is fastest")
                 + (f" ({terms})" if terms else ""))


def _gpus_label(p: dict, gpus: int) -> str:
    types = p["cluster"].split("(", 1)[1].split(")")[0].split(" x ", 1)[-1] if "(" in p["cluster"] else ""
    return f"{gpus} {types}".strip()


def _train_cells(t: dict) -> list[str]:
    return [f"{t['days']:.1f}" if t["days"] is not None else "never",
            f"{t['usd']:,.0f}" if t.get("usd") is not None else "-", f"{t['goodput']:.1%}",
            fmt_duration(t["checkpoint"]["interval_s"])]


def _render_pareto(data: dict) -> None:
    console.text("time-cost frontier (no other plan is both faster and cheaper):")
    for p in data["plans"]:
        console.text(f"  #{p['rank']} {p['cluster']}: {p['trade_off']}")
    if data["dominated"]:
        console.text(f"{len(data['dominated'])} more node counts are dominated (slower and dearer than a plan above): "
                     + ", ".join(f"{d['gpus']} GPUs by #{d['dominated_by']}" for d in data["dominated"][:8])
                     + (" ..." if len(data["dominated"]) > 8 else ""))


def _span(values: list[int]) -> str:
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


def _render_mixed(mixed: dict) -> None:
    lay, bal = mixed["layout"], mixed["balanced"]
    console.text("")
    console.text(f"mixed GPU types: pipeline of {lay['pp']} stages ({_layout_label(lay)}), layers balanced by stage "
                 f"speed under each type's memory less {bal['headroom_gib']:g} GiB headroom")
    even = dict(enumerate(mixed["even_split"]["stages"])) if mixed["even_split"] else {}
    rows = []
    for row, ev in zip(stage_rows(bal), (even.get(i) for i in range(len(bal["stages"]))), strict=True):
        rows.append((*row, ev["layers"] if ev else "-",
                     (f"{ev['peak_gib']:.1f}" + ("" if ev["peak_gib"] + bal["headroom_gib"] <= ev["capacity_gib"]
                                                 else " over")) if ev else "-"))
    columns = [*STAGE_COLUMNS, "even split layers", "even peak GiB"]
    console.table(None, columns, rows, justify_right=[c != "GPU" for c in columns])
    parts = [f"step {mixed_step_label(bal)}"]
    if mixed["even_split"]:
        ev = mixed["even_split"]
        parts.append(f"even split {ev['step_time_s']:.4g} s" + ("" if ev["fits"] else " but out of memory"))
    if mixed.get("fastest_type_only"):
        gain = mixed["gain_vs_fastest_only"]
        parts.append(f"fastest type alone ({mixed['fastest_type_only']['gpu']}) "
                     f"{mixed['fastest_type_only']['step_time_s']:.4g} s "
                     + (f"(balanced mix is {gain:+.0%} faster)" if gain >= 0 else
                        f"(faster than the balanced mix by {-gain / (1 + gain):.0%}: run on those nodes alone; "
                        "--out writes that plan)"))
    console.text("; ".join(parts))
