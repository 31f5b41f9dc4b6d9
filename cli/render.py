"""Human tables for estimate/plan results (the JSON carries the same numbers)."""

from __future__ import annotations

from typing import Any

from clusterplan.cli.console import console
from clusterplan.fileio import require_finite
from clusterplan.hardware_db.prices import CHEAPEST
from clusterplan.hardware_db.schema import GIVEN_PROVIDER
from clusterplan.models.training.estimate import MEMORY_TERMS, TIME_TERMS
from clusterplan.models.training.rules import RuleCode
from clusterplan.solver.feasible import NearestFeasible

HOST_CALL_NAMES = {"kernel_op": "kernel launches", "aten_call": "ATen calls", "triton_launch": "Triton launches",
                   "autograd_function": "autograd Functions"}
"""How estimate's text names each kind of dense host call (hardware_db.stacks DENSE_HOST_CALLS)."""

PLACEMENT_NOTES = {"above": "; it lies above the prediction: this regime's published runs ran slower than predicted",
                   "below": "; it lies below the prediction: this regime's published runs ran faster than predicted"}
"""What an interval's placement (reference.intervals.placement) tells a reader, appended to its line."""


def interval_placement_note(iv: dict) -> str:
    """The note for an interval that does not contain its prediction ('' where it does)."""
    return PLACEMENT_NOTES.get(iv.get("placement", "around"), "")

def render_estimate(data: dict[str, Any]) -> None:
    require_finite(data)  # a table must not say "step inf s": the same check as the JSON
    console.text(f"{data['model']} on {data['cluster']}")
    lay = data["layout"]
    console.text("layout: " + ", ".join(f"{k}={v}" for k, v in lay.items()))
    if not data["feasible"]:
        for reason in data["reasons"]:
            console.text(f"  infeasible: {reason}")
    if "step_time_s" not in data:
        return
    if set(data.get("reason_codes", [])) - {RuleCode.OUT_OF_MEMORY.name}:  # a layout that cannot run as written
        console.text("priced as written, which cannot run for the reasons above (what it would cost, not a plan):")
    console.text(f"step {data['step_time_s']:.3f} s   {data['tokens_per_s']:,.0f} tokens/s   "
                 f"{data['tflops_per_gpu']:.0f} TFLOP/s/GPU   MFU {data['mfu']:.1%}   HFU {data['hfu']:.1%}")
    if "step_time_interval" in data:
        iv = data["step_time_interval"]
        console.text(f"  {iv['rate']:.0%} interval {iv['low_s']:.3g}-{iv['high_s']:.3g} s ({iv['source']})"
                     + interval_placement_note(iv))
    console.text(f"MFU basis: {data['mfu_basis']}")
    hw = data.get("hardware", {})
    if "gemm_best_shape_tflops" in hw:
        rates = hw["gemm_best_shape_tflops"]
        basis = ("measured by clusterplan profile" if hw.get("calibrated") else
                 "MAMF x training share" + (f" x {hw['gemm_sustained_scale']:.3f} sustained under full-node load"
                                            if hw.get("gemm_sustained_scale", 1.0) != 1.0 else ""))
        recipes = "".join(f", {rates[r]:,.0f} {r}" for r in ("mxfp8", "nvfp4") if r in rates)
        console.text(f"GEMM rate at the best shape: {rates['bf16']:,.0f} TFLOP/s bf16, {rates['fp8']:,.0f} fp8"
                     f"{recipes} ({hw['gpu']}: {basis})")
    if "scale_up_placement" in hw:
        console.text(f"placement: {hw['scale_up_placement']}")
    if "fp8_recipe" in data:
        console.text(f"fp8 recipe: {data['fp8_recipe']}")
    if "moe_routing" in data:
        console.text(f"MoE routing: {data['moe_routing']}")
    if "fp8_weights" in data:
        console.text(f"fp8 weights: {data['fp8_weights']}")
    if "bf16_layers" in data:
        b = data["bf16_layers"]
        extra = ", ".join(f"{kind} {ms:+.3f} ms" for kind, ms in b["extra_ms_per_layer"].items())
        console.text(f"bf16 layers under fp8: first {b['first']}, last {b['last']} (per pipeline rank "
                     f"{'/'.join(map(str, b['per_rank']))}); one costs its fp8 self {extra} per micro-batch")
    if "dense_host" in data:
        h = data["dense_host"]
        calls = ", ".join(f"{h['calls_forward'][k]:g} + {h['calls_backward'][k]:g} {HOST_CALL_NAMES.get(k, k)} at "
                          f"{h['call_us'][k]:g} us" for k in h["calls_forward"])
        again = (f" + the recomputed forward on {h['recompute_share']:.0%} of the layers"
                 if h.get("recompute_share") else "")
        scale = (f", x {h['uncounted_scale']:g} for what the count leaves out (fitted)"
                 if h.get("uncounted_scale", 1) != 1 else "")
        console.text(f"dense host calls per layer and micro-batch ({h['host_cpu']}; forward + backward): {calls}"
                     f"{scale}{again} = {h['layer_ms']:.3f} ms; `host` is what outlasts the layer's GPU time")
    if "hybrid_blocks" in data:
        blocks = data["hybrid_blocks"]
        console.table("hybrid blocks, one micro-batch on one rank (forward / backward ms; the Mamba mixer's part)",
                      ["block", "count", "forward", "backward", "mixer fwd", "mixer bwd", "mixer B/token"],
                      [(kind, b["count"], f"{b['forward_ms']:.3f}", f"{b['backward_ms']:.3f}",
                        f"{b['mixer_forward_ms']:.3f}" if "mixer_forward_ms" in b else "",
                        f"{b['mixer_backward_ms']:.3f}" if "mixer_backward_ms" in b else "",
                        (f"{b['mixer_bytes_per_token']['forward']:,.0f} + {b['mixer_bytes_per_token']['backward']:,.0f}"
                         if "mixer_bytes_per_token" in b else "")) for kind, b in blocks.items()])
        if "mamba" in blocks:
            console.text(f"Mamba mixer bytes move at {blocks['mamba']['mixer_rate_share']:.2f} of the HBM copy rate "
                         "(mamba_ssm's SSD kernels as measured; models/hardware/mamba_kernels.py)")
            if "cp_all_to_all_ms" in blocks["mamba"]:
                console.text(f"Mamba context parallelism: {blocks['mamba']['cp_all_to_all_ms']:.3f} ms per block and "
                             "micro-batch (six all-to-alls each way and their copies, in cp_comm)")
    step = data["step_time_s"]
    console.table("time per step", ["term", "seconds", "share"],
                  [(t.removesuffix("_s"), f"{data['time'][t]:.4f}", f"{data['time'][t] / step:.1%}") for t in TIME_TERMS
                   if t in data["time"]])
    mem = data["memory"]
    stages = mem["by_stage"]
    # The stages that exist: pp 1 is one stage (the first position's, with the embedding and the head), pp 2 has
    # no middle one. The JSON keeps all three positions.
    pp = int(lay.get("pp", 1))
    shown = (("first", "all layers"),) if pp == 1 else (("first", "first stage"), ("last", "last stage")) if pp == 2 \
        else (("first", "first stage"), ("middle", _middle_label(lay)), ("last", "last stage"))
    rows = [(term, *(f"{stages[p][term + '_gib']:.2f}" for p, _ in shown)) for term in MEMORY_TERMS + ("total",)]
    where = "" if pp == 1 else f" on the {mem['peak_stage']} stage"
    console.table(f"memory per GPU, GiB (peak {mem['peak_gib']:.1f} of {mem['capacity_gib']:.1f}{where}, "
                  f"headroom {mem['headroom_gib']:.1f})", ["term", *(label for _, label in shown)], rows)


def _middle_label(lay: dict[str, Any]) -> str:
    """The middle column's name: the heaviest middle rank's layers under a per-rank list (Layout.pp_layers), priced
    with the second rank's micro-batches in flight (an upper bound for the other middle ranks)."""
    ranks = lay.get("pp_layers") or []
    return f"heaviest middle ({max(ranks[1:-1])} layers)" if len(ranks) > 2 else "middle"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.1f} s"


def render_layer_gemms(g: dict[str, Any]) -> None:
    """The `layer_gemms` block (estimate --gemms): each weight GEMM of one layer with its shape model factors."""
    def factor(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    console.table(f"weight GEMMs of one layer and micro-batch on one rank of {g['gpu']} ({g['scope']})",
                  ["layer", "matrix", "pass", "m", "n", "k", "count", "precision", "TFLOP/s", "wave eff",
                   "k-depth", "ms"],
                  [(r["layer"], r["matrix"], r["pass"], f"{r['m']:,.0f}", f"{r['n']:,.1f}".removesuffix(".0"),
                    f"{r['k']:,.1f}".removesuffix(".0"), f"{r['count']:g}", r["precision"], f"{r['tflops_per_s']:,.0f}",
                    factor(r["wave_efficiency"]), factor(r["k_depth"]), f"{r['time_s'] * 1e3:.3f}")
                   for r in g["gemms"]],
                  justify_right=[False, False, False] + [True] * 4 + [False] + [True] * 4)
    for layer, seconds in g["layer_time_s"].items():
        console.text(f"{layer} layer: {seconds * 1e3:.3f} ms of weight GEMMs per micro-batch")


def render_layer_parts(p: dict[str, Any]) -> None:
    """The `layer_parts` block (estimate --parts): one dense layer's compute by part, and the attention curve."""
    fwd, bwd = p["forward_s"], p["backward_s"]
    console.table(f"compute of {p['scope']} on {p['gpu']}", ["part", "forward ms", "backward ms", "total ms"],
                  [(part, f"{fwd[part] * 1e3:.3f}", f"{bwd[part] * 1e3:.3f}", f"{(fwd[part] + bwd[part]) * 1e3:.3f}")
                   for part in fwd],
                  justify_right=[False, True, True, True])
    gemm_ms, whole_ms = (fwd["gemm"] + bwd["gemm"]) * 1e3, p["whole_gemm_s"] * 1e3
    if abs(gemm_ms - whole_ms) > 1e-3 * whole_ms:
        console.text(f"gemm: {gemm_ms:.3f} ms as the stack's tensor-parallel overlap ({p['tp_overlap']}) runs them, "
                     f"in chunks; {whole_ms:.3f} ms as whole GEMMs (estimate --gemms)")
    if p["attention_curve"] is not None:
        console.text(f"attention core: stack kernel {p['attention_kernel']}, priced on the {p['attention_curve']} curve "
                     "(hardware_db/data/attention_kernels.yaml)")
    else:
        console.text(f"attention core: stack kernel {p['attention_kernel']}, priced as {p['attention_source']}")


SOURCE_SHOWN_CHARS = 60
"""A price row's source in the one-line `prices:` note is cut to its first clause, at most this many characters (the
JSON carries it whole)."""


def short_source(source: str) -> str:
    """The first clause of a row's source (before ' (', '; ' or ': '), cut to SOURCE_SHOWN_CHARS."""
    cut = min((i for i in (source.find(" ("), source.find("; "), source.find(": ")) if i > 0), default=len(source))
    text = source[:cut]
    return text if len(text) <= SOURCE_SHOWN_CHARS else text[:SOURCE_SHOWN_CHARS - 3] + "..."


def fmt_usd(usd: float) -> str:
    """A $/GPU-hour as the table gives it: cents, or every digit where the row has more (1.844)."""
    return f"{usd:.2f}" if round(usd, 2) == usd else f"{usd:g}"


def prices_line(prices: dict[str, Any]) -> str:
    """The one line that says what each GPU type costs in the answer and where the price comes from: the row
    (provider, pricing, date, source) and the rule that chose it, or the cluster file's own price."""
    parts = []
    for gpu, r in prices["rows"].items():
        where = (f"your cluster file's {r['source']}, in place of the price table" if r["provider"] == GIVEN_PROVIDER
                 else f"{r['provider']} {r['pricing']}, {r['date']}, {short_source(r['source'])}")
        parts.append(f"{gpu} ${fmt_usd(r['usd_per_gpu_hour'])}/GPU-h ({where})")
    if "provider" in prices and any(r["provider"] != GIVEN_PROVIDER for r in prices["rows"].values()):
        who = (f"each GPU type's cheapest {prices['pricing']} row" if prices["provider"] == CHEAPEST
               else f"provider {prices['provider']}'s {prices['pricing']} rows")
        snapshot = f" snapshot {prices['snapshot']}" if prices["snapshot"] else ""
        parts.append(f"rule: {who}, {prices['table']}{snapshot} (--provider / --pricing / --prices FILE change it)")
    return "prices: " + "; ".join(parts)


def render_time_to_train(t: dict[str, Any]) -> None:
    """The `time_to_train` block: days and dollars with failures, and where the wall-clock time goes."""
    days = "never (failures outpace progress)" if t["days"] is None else f"{t['days']:.1f} days"
    usd = f", ${t['usd']:,.0f}" if t.get("usd") is not None else ""
    console.text(f"time to train {t['tokens']:.3g} tokens: {days}{usd} (goodput {t['goodput']:.1%}; "
                 f"{t['days_without_failures']:.1f} days without failures)")
    if "days_interval" in t:
        lo, hi = t["days_interval"]
        money = f", ${t['usd_interval'][0]:,.0f}-{t['usd_interval'][1]:,.0f}" if "usd_interval" in t else ""
        console.text(f"  interval: {lo:.1f}-{hi:.1f} days{money} (the step time's interval)")
    ck, fl = t["checkpoint"], t["failures"]
    mtbf = f"{fl['mtbf_hours']:.1f} h" if fl["mtbf_hours"] is not None else "none"
    console.text(f"  failures: {fl['unexpected_per_day']:.2f}/day unexpected (MTBF {mtbf}), {fl['planned_per_day']:.2f}/day "
                 f"planned; each loses {fmt_duration(fl['lost_work_per_failure_s'])} of work and "
                 f"{fmt_duration(fl['restart_per_failure_s'])} to restart")
    console.text(f"  checkpoint ({ck['mode']}): {ck['total_gib']:,.0f} GiB, {ck['per_rank_gib']:.1f} GiB per rank; "
                 f"blocks {fmt_duration(ck['blocking_s'])}, durable after {fmt_duration(ck['persist_s'])} more, "
                 f"every {fmt_duration(ck['interval_s'])} ({ck['interval_method']})")
    console.text("  wall-clock: " + ", ".join(f"{k.replace('_', ' ')} {v:.1%}" for k, v in t["wall_share"].items() if v))


STAGE_COLUMNS = ["stage", "GPU", "layers", "stage s", "peak GiB", "of GiB", "free GiB"]
"""A mixed-GPU plan's per-stage table (plan, check, estimate --plan print the same columns)."""


def stage_layers_label(stage: dict[str, Any]) -> str:
    """`16-32 (17)`: a stage's first and last transformer layer and how many."""
    first = stage["first_layer"]
    return f"{first}-{first + stage['layers'] - 1} ({stage['layers']})"


def stage_rows(split: dict[str, Any]) -> list[tuple[Any, ...]]:
    """One row per stage of StageSplit.to_json(): its GPU, layers, time per micro-batch, peak, capacity, free."""
    return [(i, st["gpu"], stage_layers_label(st), f"{st['stage_s']:.4f}", f"{st['peak_gib']:.1f}",
             f"{st['capacity_gib']:.1f}", f"{st['capacity_gib'] - st['peak_gib']:.1f}")
            for i, st in enumerate(split["stages"])]


def render_stage_split(split: dict[str, Any]) -> None:
    """A mixed-GPU plan's stages and step time, as `plan` shows its balanced split."""
    console.text(f"mixed GPU types: {len(split['stages'])} pipeline stages, each keeping {split['headroom_gib']:g} GiB "
                 "headroom")
    console.table(None, STAGE_COLUMNS, stage_rows(split), justify_right=[c not in ("GPU",) for c in STAGE_COLUMNS])
    console.text(f"step {mixed_step_label(split)}" + ("" if split["fits"] else "; out of memory on a stage"))


def mixed_step_label(split: dict[str, Any]) -> str:
    """`33.58 s (pipeline 33.32 + pp sends 0.01 + gradient sync and optimizer 0.25)`: a mixed split's step and its
    terms (StageSplit.to_json)."""
    return (f"{split['step_time_s']:.4g} s (pipeline {split['pipeline_s']:.4g} + pp sends {split['pp_comm_s']:.2g} + "
            f"gradient sync and optimizer {split['tail_s']:.2g})")


def render_nearest(nearest: NearestFeasible) -> None:
    """The cause of an out-of-memory answer and the options that fit, smallest change first."""
    # A memory cause: it does not fit; none (fp8 on GPUs without fp8 tensor cores): it cannot run.
    console.text(f"{'does not fit' if nearest.cause is not None else 'cannot run'}: {nearest.reason}")
    if not nearest.options:
        console.text(nearest.summary())
        return
    console.table(f"nearest options that {'fit' if nearest.cause is not None else 'run'} (fewest knobs changed, "
                  "then fewest GPUs added, then fastest)",
                  ["#", "change", "layout", "GPUs", "step s", "tokens/s", "peak GiB", "memory freed GiB"],
                  [(k, ", ".join(map(str, o.changes)), o.layout.short(), f"{o.gpus_added:+d}" if o.gpus_added else "",
                    f"{o.step_time_s:.4g}", f"{o.tokens_per_s:,.0f}", f"{o.peak_gib:.1f} of {o.capacity_gib:.1f}",
                    ", ".join(f"{t} {d:+.1f}" for t, d in sorted(o.memory_change_gib.items(), key=lambda kv: kv[1])[:2]
                              if d < 0))
                   for k, o in enumerate(nearest.options, start=1)],
                  justify_right=[True, False, False, True, True, True, True, False])
