"""Pictures for `--plot FILE` (PNG or SVG by the file's extension), drawn headless with matplotlib's Agg backend.

Each function draws from the command's JSON (so a picture never shows a number the JSON does not carry),
writes the file atomically and returns the arrays it plotted (tests compare them with the JSON).
matplotlib is imported only here, only when a plot is asked for (`pip install clusterplan[plot]`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from clusterplan.errors import BadInputError
from clusterplan.fileio import write_atomic_bytes
from clusterplan.models.training.estimate import MEMORY_TERMS, POSITIONS, TIME_TERMS
from clusterplan.models.training.step import BACKWARD_SHARE_2X
from clusterplan.models.training.timeline import Timeline, simulate

FORMATS = {".png": "png", ".svg": "svg"}
COLORS = {"weights": "#4C72B0", "grads": "#55A868", "optimizer": "#C44E52", "activations": "#8172B2",
          "other": "#937860", "compute_s": "#4C72B0", "tp_comm_s": "#DD8452", "cp_comm_s": "#DA8BC3",
          "ep_comm_s": "#8C8C8C", "host_s": "#B47CC7", "pp_comm_s": "#CCB974", "dp_comm_s": "#64B5CD", "bubble_s": "#C44E52",
          "optimizer_s": "#55A868", "offload_s": "#8172B2", "F": "#4C72B0", "B": "#DD8452", "W": "#55A868"}


def check_plot_path(path: str | None) -> str | None:
    """`--plot FILE`: the extension picks the format; anything else is a one-line error."""
    if path is not None and Path(path).suffix.lower() not in FORMATS:
        raise BadInputError(f"--plot {path}: give a file name ending in .png or .svg")
    return path


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise BadInputError("--plot needs matplotlib: pip install 'clusterplan[plot]'") from exc
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "clusterplan"  # stable SVG ids: same inputs, same file
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str) -> None:
    fmt = FORMATS[Path(path).suffix.lower()]
    buf = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    fig.savefig(buf, format=fmt, dpi=110, bbox_inches="tight", metadata=metadata)
    _pyplot().close(fig)
    write_atomic_bytes(path, buf.getvalue())


# ---- estimate ----------------------------------------------------------------------------------------------------
FORWARD_SHARE_FULL_RECOMPUTE = 1.0 / 4.0
"""Forward's share of a micro-batch under full recompute: forward 1, the recomputed forward 1, backward 2
(BACKWARD_SHARE_2X's 2:1), so 1 : 3 of the time."""


def timeline_of(data: dict[str, Any]) -> Timeline | None:
    """The pipeline timeline of an estimate's layout, from its JSON: each stage's compute and in-stage communication
    per micro-batch split 1:2 between forward and backward (1:3 under full recompute, which repeats the forward),
    the exposed pipeline send/recv spread over its hops."""
    lay = data["layout"]
    if lay["pp"] <= 1 or "time" not in data:
        return None
    t = data["time"]
    m = lay["gbs"] // (lay["dp"] * lay["mbs"])
    # the exposed host time (MoE layers; dense layers on a stack that prices them) lengthens each micro-batch too
    per_mb = sum(t.get(k, 0.0) for k in ("compute_s", "tp_comm_s", "cp_comm_s", "ep_comm_s", "host_s")) / m
    fwd_share = FORWARD_SHARE_FULL_RECOMPUTE if lay["recompute"] == "full" else 1.0 - BACKWARD_SHARE_2X
    v = lay["vpp"] if lay["schedule"] == "interleaved-1f1b" else 1
    hops = 2 * (m * v + lay["pp"] - 1)  # as the step model counts them (models/training/step.py)
    return simulate(lay["schedule"], lay["pp"], m, per_mb * fwd_share, per_mb * (1 - fwd_share), v=v,
                    p2p_s=t["pp_comm_s"] / hops)


def plot_estimate(data: dict[str, Any], path: str) -> dict[str, Any]:
    """Memory per pipeline stage stacked by term against capacity; step time by term; the pipeline timeline."""
    plt = _pyplot()
    timeline = timeline_of(data)
    fig, axes = plt.subplots(1, 3 if timeline else 2, figsize=(16 if timeline else 11, 4.2),
                             gridspec_kw={"width_ratios": [1, 1, 2.2] if timeline else [1, 1]})
    mem = data["memory"]
    stages = list(POSITIONS) if data["layout"]["pp"] > 1 else ["first"]
    plotted: dict[str, Any] = {"memory_gib": {p: {} for p in stages}, "capacity_gib": mem["capacity_gib"]}
    ax = axes[0]
    bottom = [0.0] * len(stages)
    for term in MEMORY_TERMS:
        values = [mem["by_stage"][p][f"{term}_gib"] for p in stages]
        ax.bar(stages if len(stages) > 1 else ["every stage"], values, bottom=bottom, label=term, color=COLORS[term])
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        for p, v in zip(stages, values, strict=True):
            plotted["memory_gib"][p][term] = v
    ax.axhline(mem["capacity_gib"], color="black", linestyle="--", linewidth=1)
    ax.text(-0.4, mem["capacity_gib"], f" capacity {mem['capacity_gib']:.0f} GiB", va="bottom", fontsize=8)
    ax.set_ylabel("GiB per GPU")
    ax.set_title("memory per pipeline stage")
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[1]
    terms = [t for t in TIME_TERMS if data["time"].get(t, 0.0) > 0]
    values = [data["time"][t] for t in terms]
    plotted["time_s"] = dict(zip(terms, values, strict=True))
    ax.barh([t.removesuffix("_s") for t in terms], values, color=[COLORS[t] for t in terms])
    ax.invert_yaxis()
    ax.set_xlabel("seconds per step")
    ax.set_title(f"step {data['step_time_s']:.3g} s, MFU {data['mfu']:.1%}")
    if timeline:
        plotted["timeline"] = plot_timeline(axes[2], timeline, data["layout"])
    fig.suptitle(f"{data['model']} on {data['cluster']}", fontsize=10)
    _save(fig, path)
    return plotted


TIMELINE_SEPARATED_OPS = 64
"""Ops of one kind on one stage up to which the timeline draws a white separator between them."""


def plot_timeline(ax: Any, timeline: Timeline, layout: dict[str, Any]) -> dict[str, Any]:
    """Micro-batches per stage over time; gaps are the bubble (and exposed send/recv)."""
    bars = []
    lanes: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for op in timeline.ops:
        lanes.setdefault((op.stage, op.kind), []).append((op.start_s, op.end_s - op.start_s))
        bars.append((op.stage, op.kind, op.microbatch, op.chunk, op.start_s, op.end_s))
    # one call per stage and kind: each broken_barh call rescales the axes, so one per op grew with micro-batches
    for (stage, kind), spans in sorted(lanes.items()):
        # white separators between ops while they stay wider than the separator; with hundreds they would hide them
        ax.broken_barh(spans, (stage - 0.4, 0.8), facecolors=COLORS[kind], edgecolor="white",
                       linewidth=0.3 if len(spans) <= TIMELINE_SEPARATED_OPS else 0.0)
    ax.set_yticks(range(timeline.pp), [f"stage {s}" for s in range(timeline.pp)])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    name = layout["schedule"] + (f" (vpp {layout['vpp']})" if layout["schedule"] == "interleaved-1f1b" else "")
    ax.set_title(f"{name}: bubble {timeline.bubble_s / timeline.makespan_s:.1%} of the pipeline "
                 f"(F forward, B backward" + (", W weight gradient)" if layout["schedule"] == "zb" else ")"),
                 fontsize=9)
    handles = [ax.barh([0], [0], color=COLORS[k], label=k) for k in ("F", "B", "W") if any(b[1] == k for b in bars)]
    ax.legend(handles=handles, fontsize=7, loc="upper right")
    return {"bars": bars, "makespan_s": timeline.makespan_s, "bubble_s": timeline.bubble_s}


# ---- plan --------------------------------------------------------------------------------------------------------

def plot_plan(data: dict[str, Any], path: str) -> dict[str, Any]:
    """Top plans' step time by term; with --tokens the (days, $) of each plan and the time-cost frontier."""
    plt = _pyplot()
    plans = data["plans"]
    to_train = all("time_to_train" in p and p["time_to_train"].get("usd") is not None for p in plans)
    fig, axes = plt.subplots(1, 2 if to_train else 1, figsize=(14 if to_train else 8, 4.2), squeeze=False)
    ax = axes[0][0]
    labels = [f"#{p['rank']} {_short(p)}" for p in plans]
    plotted: dict[str, Any] = {"labels": labels, "time_s": {}}
    left = [0.0] * len(plans)
    for term in TIME_TERMS:
        values = [p["time"].get(term, 0.0) for p in plans]
        if not any(values):
            continue
        ax.barh(labels, values, left=left, color=COLORS[term], label=term.removesuffix("_s"))
        left = [a + b for a, b in zip(left, values, strict=True)]
        plotted["time_s"][term] = values
    ax.invert_yaxis()
    ax.set_xlabel("seconds per step")
    ax.set_title("top plans: step time by term")
    ax.legend(fontsize=7, loc="lower right")
    if to_train:
        ax = axes[0][1]
        days = [p["time_to_train"]["days"] for p in plans]
        usd = [p["time_to_train"]["usd"] / 1e6 for p in plans]
        plotted["plans_days"], plotted["plans_musd"] = days, usd
        dom = data.get("dominated", [])
        if dom:
            ddays, dusd = [d["days"] for d in dom], [d["usd"] / 1e6 for d in dom]
            ax.scatter(ddays, dusd, color="#AAAAAA", label="dominated")
            plotted["dominated_days"], plotted["dominated_musd"] = ddays, dusd
            for d in dom:
                ax.annotate(f"{d['gpus']}", (d["days"], d["usd"] / 1e6), fontsize=7, color="#888888")
        if data["search"]["objective"] == "pareto":
            ax.plot(days, usd, color="#C44E52", marker="o", label="frontier")
        else:
            ax.scatter(days, usd, color="#4C72B0", label="plans")
        for p, x, y in zip(plans, days, usd, strict=True):
            ax.annotate(f"#{p['rank']} {p['time_to_train']['gpus']} GPUs", (x, y), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("days to train (failures included, log scale)")
        ax.set_ylabel("million $")
        ax.set_title(f"time and cost for {plans[0]['time_to_train']['tokens']:.3g} tokens")
        ax.legend(fontsize=7)
    fig.suptitle(f"{plans[0]['model']}", fontsize=10)
    _save(fig, path)
    return plotted


def _short(p: dict[str, Any]) -> str:
    lay = p["layout"]
    gpus = lay["tp"] * lay["pp"] * lay["dp"] * lay["cp"]
    return (f"{gpus} GPUs tp{lay['tp']} pp{lay['pp']}" + (f"v{lay['vpp']}" if lay["vpp"] > 1 else "")
            + f" dp{lay['dp']}" + (f" cp{lay['cp']}" if lay["cp"] > 1 else "") + (f" ep{lay['ep']}" if lay["ep"] > 1 else ""))


# ---- experts -----------------------------------------------------------------------------------------------------

def plot_experts(data: dict[str, Any], path: str) -> dict[str, Any]:
    """Per MoE layer, the busiest GPU's load over the mean (max/mean) and the dispatch + combine time of every
    method `experts` reports (both EPLB policies, the optimiser, the chosen placement), under its dispatch rule."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2), squeeze=False)
    plotted: dict[str, Any] = {"max_over_mean": {}, "all_to_all_ms": {}}
    for name, method in data["methods"].items():
        layers = method["layers"]
        ratio = [row["max_over_mean"] for row in layers]
        a2a = [row["all_to_all_s"] * 1e3 for row in layers]
        style = {"linewidth": 2.2} if name == "chosen" else {"linewidth": 1.0, "alpha": 0.8}
        axes[0][0].plot(range(len(ratio)), ratio, label=name, **style)
        axes[0][1].plot(range(len(a2a)), a2a, label=name, **style)
        plotted["max_over_mean"][name], plotted["all_to_all_ms"][name] = ratio, a2a
    axes[0][0].set_ylabel("busiest GPU / mean load")
    axes[0][1].set_ylabel("dispatch + combine, ms")
    for ax in axes[0]:
        ax.set_xlabel("MoE layer")
        ax.legend(fontsize=7)
    rule = data["dispatch_rule"]["name"]
    fig.suptitle(f"{data['model']} on {data['cluster']} ({data['num_gpus']} GPUs), {rule} dispatch", fontsize=10)
    _save(fig, path)
    return plotted


# ---- serve-estimate ----------------------------------------------------------------------------------------------

QUANTILES = ("p50", "p90", "p99")


def plot_serve_estimate(data: dict[str, Any], path: str) -> dict[str, Any]:
    """TTFT and TPOT percentiles and throughput against load (the JSON's load_sweep), saturation and the
    requested load marked."""
    plt = _pyplot()
    sweep = data["load_sweep"]
    points = sweep["points"]
    loads = [p["load"] for p in points]
    open_loop = sweep["load_unit"] == "requests_per_s"
    unit = "requests per second (open loop)" if open_loop else \
        f"requests in flight ({'closed loop' if sweep['kind'] == 'closed' else 'static batch'})"
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), squeeze=False)
    plotted: dict[str, Any] = {"load": loads, "ttft_ms": {}, "tpot_ms": {},
                               "requests_per_s": [p["requests_per_s"] for p in points],
                               "saturation_load": sweep["saturation"]["load"], "requested": sweep["requested"]}
    for ax, key, title in ((axes[0][0], "ttft_ms", "time to first token, ms"),
                           (axes[0][1], "tpot_ms", "time per output token, ms")):
        for q, color in zip(QUANTILES, ("#4C72B0", "#DD8452", "#C44E52"), strict=True):
            values = [p[key][q] for p in points]
            ax.plot(loads, values, marker="o", markersize=3, color=color, label=q)
            plotted[key][q] = values
        ax.set_ylabel(title)
    axes[0][0].set_yscale("log")  # TTFT grows by orders of magnitude once the queue builds
    axes[0][2].plot(loads, plotted["requests_per_s"], marker="o", markersize=3, color="#55A868",
                    label="served (whole run; past saturation it counts the final drain)")
    if open_loop:
        axes[0][2].plot(loads, loads, color="#AAAAAA", linestyle=":", label="offered")
    axes[0][2].axhline(sweep["saturation"]["requests_per_s"], color="black", linestyle="--", linewidth=0.8)
    axes[0][2].set_ylabel("requests per second served (dashed: saturation)")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for ax in axes[0]:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(unit)
        ax.axvline(sweep["saturation"]["load"], color="black", linestyle="--", linewidth=1)
        ax.axvline(sweep["requested"], color="#8172B2", linestyle=":", linewidth=1.5)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_title(f"saturation (dashed) at {sweep['saturation']['load']:.4g}, requested (dotted) "
                         f"{sweep['requested']:g}", fontsize=9)
    fig.suptitle(f"{data['model']} on {data['gpus']}x {data['gpu']} (tp {data['tp']}, pp {data['pp']}, "
                 f"{data['engine']}): latency against load", fontsize=10)
    _save(fig, path)
    return plotted


# ---- serve-plan --------------------------------------------------------------------------------------------------

def plot_serve_plan(data: dict[str, Any], path: str) -> dict[str, Any]:
    """$ per 1M output tokens against the SLO percentile's TTFT and TPOT (the JSON's cost_vs_slo): every
    candidate instance type alone at rising loads (filled where it meets the SLO), the SLO line, the cheapest
    cost at each target (the frontier, a staircase) and the chosen plan."""
    plt = _pyplot()
    f = data["cost_vs_slo"]
    q = f"p{f['percentile']:g}"
    fig, axes = plt.subplots(1, 2, figsize=(15, 5), squeeze=False)
    cmap = plt.get_cmap("tab10")
    gpus = sorted({c["gpu"] for c in f["candidates"]})
    markers = ("o", "s", "^", "D", "v", "P", "X", "h")
    tps = sorted({c["tp"] * c["pp"] for c in f["candidates"]})
    plotted: dict[str, Any] = {"candidates": {}, "frontier": {}, "slo_ms": {}, "chosen": {}}
    for panel, (ax, key, name) in enumerate(((axes[0][0], "ttft", "TTFT"), (axes[0][1], "tpot", "TPOT"))):
        for cand in f["candidates"]:
            xs = [p[f"{key}_ms"] for p in cand["points"]]
            ys = [p["usd_per_million_output_tokens"] for p in cand["points"]]
            ok = [p["meets_slo"] for p in cand["points"]]
            color = cmap(gpus.index(cand["gpu"]) % 10)  # one colour per GPU type, one marker per GPU count
            marker = markers[tps.index(cand["tp"] * cand["pp"]) % len(markers)]
            ax.plot(xs, ys, color=color, linewidth=0.8, alpha=0.7, marker=marker, markersize=4, markerfacecolor="none",
                    label=cand["instance"] if panel else None)
            ax.scatter([x for x, k in zip(xs, ok, strict=True) if k], [y for y, k in zip(ys, ok, strict=True) if k],
                       color=color, marker=marker, s=16, zorder=3)
            plotted["candidates"].setdefault(cand["instance"], {})[key] = (xs, ys, ok)
        refs = f[f"{key}_frontier"]
        fx = [f["candidates"][c]["points"][k][f"{key}_ms"] for c, k in refs]
        fy = [f["candidates"][c]["points"][k]["usd_per_million_output_tokens"] for c, k in refs]
        if fx:
            ax.step(fx + [max(fx) * 1.5], fy + [fy[-1]], where="post", color="black", linewidth=1.8,
                    label="cheapest at each target" if panel else None)
        plotted["frontier"][key] = (fx, fy)
        slo = f[f"{key}_slo_ms"]
        ax.axvline(slo, color="#C44E52", linestyle="--", linewidth=1.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        right = max(ax.get_xlim()[1], slo * 1.5)
        ax.axvspan(slo, right, color="#C44E52", alpha=0.06)
        ax.set_xlim(right=right)
        ax.text(slo, ax.get_ylim()[1], f" {q} {name} target {slo:g} ms", color="#C44E52", fontsize=8, va="top")
        plotted["slo_ms"][key] = slo
        chosen = (data[f"{key}_ms"], data["usd_per_million_output_tokens"])
        ax.scatter([chosen[0]], [chosen[1]], marker="*", s=220, color="gold", edgecolors="black", zorder=5,
                   label=f"chosen plan ({data['mode']})" if panel else None)
        plotted["chosen"][key] = chosen
        ax.set_xlabel(f"{q} {name}, ms (log scale)")
        ax.set_ylabel("$ per 1M output tokens (log scale)")
    axes[0][0].set_title("filled: meets both targets; hollow: misses one; shaded: past the target", fontsize=9)
    axes[0][1].set_title("each line: one instance type alone, load rising to the left", fontsize=9)
    axes[0][1].legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"{data['model']} at {data['rate_rps']:g} req/s: cost against SLO", fontsize=10)
    _save(fig, path)
    return plotted
