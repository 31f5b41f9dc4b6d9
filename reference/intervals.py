"""Error bars on predicted step times, from the model's measured error on the reference sets.

Method (README "How sure is a prediction?"):
- Residual of a reference row: r = ln(predicted time / measured time) (throughput rows: ln(published tokens/s /
  predicted tokens/s)). Rows: every published set reference/ compares on tokens/s, as its table counts it (Narayanan
  et al. 2021 Table 1, Korthikanti et al. 2022 Table 5, NeMo 25.11 / Megatron-Bridge and its NVFP4 and hybrid
  summaries, the other NeMo releases, NeMo's long-sequence runs, the Megatron-Core MoE report, Mixtral, MLPerf, the
  DGX Cloud recipes, Llama 3 405B, DeepSeek-V3, torchtitan and its later runs, OLMo-core, llm-foundry, the Ultra-Scale
  sweep and SmolLM3): the rows a table shows but does not compare, and those a constant was fitted on alone, are left
  out. Table 1 and Korthikanti Table 5 stay in: TRAINING_GEMM_SHARE was fitted on them jointly (README "Fitted
  constants"), so their residuals are in-sample; every other row's point prediction is held out (the error bars draw
  on it, nothing is fitted to it).
- Regime of a row or a prediction: GPU generation, dense / MoE / hybrid, precision (16-bit, fp8 or fp4), sequence
  band and scale band. A prediction uses the residuals of the rows that share the most of its regime, relaxing the
  attributes in the order scale, sequence, precision, generation, model kind until at least MIN_ROWS rows from at
  least MIN_SETS published sets match.
- Interval: a normal prediction interval for one new residual, mean +- t(1 - a/2, n-1) s sqrt(1 + 1/n) at rate
  1 - a = RATE; the measured time then lies in [predicted e^-(mean + h), predicted e^-(mean - h)].
- With --calibration: the calibration's own spread, the largest RMS log error of its fits (GEMM, attention),
  centred on the prediction.
The residuals are computed once by `python -m clusterplan.reference.intervals --write` (also `make reference`)
into data/residuals.json (`--coverage` prints the leave-one-out and leave-one-set-out coverage the README quotes); tests/test_intervals.py fails when they no longer match the model.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from clusterplan.fileio import dumps_json, write_atomic

RESIDUALS = Path(__file__).resolve().parent / "data" / "residuals.json"
RATE = 0.8
"""Stated coverage of an interval (nominal; the leave-one-out test measures the achieved rate)."""
MIN_ROWS = 4
MIN_SETS = 2
"""A regime's rows count once they come from at least this many published sets: a new run's error varies between
sources more than within one (leave-one-set-out coverage 66.7 % with one set allowed, 73.0 % with two; both on
the 618 rows, tests/test_intervals.py)."""
# Student t quantile at 0.9 (two-sided 80 %) for 1..30 degrees of freedom (standard table; checked against
# scipy.stats.t.ppf in tests/test_intervals.py). Beyond 30: z + (z^3 + z) / (4 dof) (Cornish-Fisher, first term).
T90 = (3.0777, 1.8856, 1.6377, 1.5332, 1.4759, 1.4398, 1.4149, 1.3968, 1.3830, 1.3722, 1.3634, 1.3562, 1.3502,
       1.3450, 1.3406, 1.3368, 1.3334, 1.3304, 1.3277, 1.3253, 1.3232, 1.3212, 1.3195, 1.3178, 1.3163, 1.3150,
       1.3137, 1.3125, 1.3114, 1.3104)
Z90 = 1.2815516
RELAX_ORDER = ("scale", "seq", "precision", "generation", "moe")
GENERATIONS = ((r"^(A100|A10|A30|A40)", "ampere"), (r"^(H100|H200|H800|H20|GH200)", "hopper"),
               (r"^(B200|B300|GB200|GB300)", "blackwell"), (r"^(L4|L40)", "ada"), (r"^V100", "volta"))


def generation(gpu_name: str) -> str:
    for pattern, gen in GENERATIONS:
        if re.match(pattern, gpu_name, re.IGNORECASE):
            return gen
    return "other"


def seq_band(seq: int) -> str:
    return "short" if seq <= 2048 else "medium" if seq <= 8192 else "long"


def scale_band(gpus: int) -> str:
    return "node" if gpus <= 8 else "pod" if gpus <= 256 else "large"


def regime(gpu_name: str, moe: bool, precision: str, seq: int, gpus: int, fp8_recipe: str = "",
           hybrid: bool = False) -> dict[str, str]:
    """A row's or prediction's regime; an NVFP4 one is its own precision, "fp4" (the published NVFP4 rows: the
    Megatron-Bridge NVFP4 summaries, MLPerf v5.1), never borrowing the fp8 rows' spread alone. A
    dense hybrid Mamba stack is its own model kind ("hybrid" in the moe key): its interval draws on the hybrid rows;
    one with MoE blocks on the MoE rows."""
    label = "fp4" if fp8_recipe == "nvfp4" else "fp8" if precision.startswith("fp8") else "16-bit"
    kind = "moe" if moe else "hybrid" if hybrid else "dense"  # a hybrid with MoE blocks draws on the MoE rows
    return {"generation": generation(gpu_name), "moe": kind, "precision": label, "seq": seq_band(seq),
            "scale": scale_band(gpus)}


@dataclass(frozen=True, slots=True)
class Interval:
    low_ratio: float
    """Lower bound of measured / predicted time."""
    high_ratio: float
    rows: int
    matched_on: tuple[str, ...]
    source: str

    def to_json(self, predicted_s: float) -> dict[str, Any]:
        low, high = _r(predicted_s * self.low_ratio), _r(predicted_s * self.high_ratio)
        return {"low_s": low, "high_s": high, "rate": RATE, "rows": self.rows, "matched_on": list(self.matched_on),
                "source": self.source, "placement": placement(low, high, predicted_s)}


def _r(x: float) -> float:
    return float(f"{x:.6g}")


def t90(dof: int) -> float:
    """Student t quantile at 0.9 with `dof` degrees of freedom (RATE = 0.8 two-sided)."""
    if dof <= len(T90):
        return T90[dof - 1]
    return Z90 + (Z90**3 + Z90) / (4 * dof)


def prediction_interval(residuals: list[float], *, centre: float | None = None) -> tuple[float, float]:
    """(low, high) of measured/predicted from log residuals r = ln(pred/meas); centre fixes the mean (calibration)."""
    n = len(residuals)
    mean = sum(residuals) / n if centre is None else centre
    dof = n - 1 if centre is None else n
    s = math.sqrt(sum((r - mean) ** 2 for r in residuals) / dof)
    half = t90(dof) * s * math.sqrt(1 + 1 / n)
    return math.exp(-(mean + half)), math.exp(-(mean - half))


def match(rows: list[dict[str, Any]], want: dict[str, str]) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """The rows sharing the most of `want`, relaxing RELAX_ORDER until MIN_ROWS match from MIN_SETS sets (from as many
    as there are of its model kind, where fewer publish it: the dense hybrids' one)."""
    keys = list(reversed(RELAX_ORDER))  # most important first
    sets = min(MIN_SETS, max(len({r["set"] for r in rows if r["regime"]["moe"] == want["moe"]}), 1))
    for drop in range(len(keys) + 1):
        on = tuple(keys[: len(keys) - drop])
        hit = [r for r in rows if all(r["regime"][k] == want[k] for k in on)]
        if len(hit) >= MIN_ROWS and len({r["set"] for r in hit}) >= sets:
            return hit, on
    return rows, ()


@lru_cache(maxsize=1)
def load_residuals() -> tuple[dict[str, Any], ...]:
    with open(RESIDUALS, encoding="utf-8") as fh:
        return tuple(json.load(fh)["rows"])


def interval_for(want: dict[str, str], rows: list[dict[str, Any]] | None = None) -> Interval:
    rows = list(load_residuals()) if rows is None else rows
    hit, on = match(rows, want)
    low, high = prediction_interval([r["residual"] for r in hit])
    same = ", ".join(f"{k}={want[k]}" for k in on) or "any regime"
    return Interval(low_ratio=low, high_ratio=high, rows=len(hit), matched_on=on,
                    source=f"residuals of the {len(hit)} reference rows with {same}")


def calibration_interval(path: str) -> Interval | None:
    """The calibration's spread: its fits' largest RMS log error (None when the file records none)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    fits = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "rms_log_error" in node and "points" in node:
                fits.append((float(node["rms_log_error"]), int(node["points"])))
            for v in node.values():
                walk(v)

    walk(data)
    if not fits:
        return None
    rms, n = max(fits)
    n = max(n, 2)
    # n residuals of spread rms, centred on zero: the fit's own deviations.
    sample = [rms, -rms] * (n // 2) + ([0.0] if n % 2 else [])
    low, high = prediction_interval(sample, centre=0.0)
    return Interval(low_ratio=low, high_ratio=high, rows=n, matched_on=("calibration",),
                    source=f"calibration {path}: largest RMS log error of its fits {rms:.3g} over {n} points")


def regime_of(plan: dict[str, Any], gpu_name: str, moe: bool, hybrid: bool = False) -> dict[str, str]:
    lay = plan["layout"]
    gpus = lay["tp"] * lay["pp"] * lay["dp"] * lay["cp"]
    return regime(gpu_name, moe, lay["precision"], lay["seq"], gpus, lay.get("fp8_recipe", ""), hybrid)


def attach(plan: dict[str, Any], gpu_name: str, moe: bool, calibration_path: str | None = None,
           hybrid: bool = False) -> None:
    """Add `step_time_interval` (and interval bounds of days and $ to train) to one plan's or estimate's JSON;
    `hybrid`: the model is a hybrid Mamba stack (ModelSpec.is_hybrid)."""
    if "step_time_s" not in plan:
        return
    iv = calibration_interval(calibration_path) if calibration_path else None
    iv = iv or interval_for(regime_of(plan, gpu_name, moe, hybrid))
    out = iv.to_json(plan["step_time_s"])
    out["regime"] = regime_of(plan, gpu_name, moe, hybrid)
    plan["step_time_interval"] = out
    t = plan.get("time_to_train")
    if t and t.get("days") is not None:
        # Expected wall-clock is proportional to the useful time at fixed failure rates (goodput.expected_wall_s).
        t["days_interval"] = [_r(t["days"] * iv.low_ratio), _r(t["days"] * iv.high_ratio)]
        if t.get("usd") is not None:
            t["usd_interval"] = [_r(t["usd"] * iv.low_ratio), _r(t["usd"] * iv.high_ratio)]


def ties(plans: list[dict[str, Any]]) -> list[int]:
    """Ranks of the plans within #1's interval re-centred on #1's prediction: a tie with #1, not a ranking.

    The interval's offset from the prediction is the regime's bias (its rows ran slower or faster than predicted),
    which moves every plan of the regime alike and cannot reorder them; its spread can. So a plan ties with #1 when
    its predicted days (or step time) lie within a factor sqrt(high / low) of #1's, the interval's half-width as a
    ratio around its geometric centre."""
    if not plans or "step_time_interval" not in plans[0]:
        return []
    if all(p.get("time_to_train", {}).get("days") for p in plans):
        lo, hi = plans[0]["time_to_train"]["days_interval"]
        best, value = plans[0]["time_to_train"]["days"], (lambda p: p["time_to_train"]["days"])
    else:
        lo, hi = plans[0]["step_time_interval"]["low_s"], plans[0]["step_time_interval"]["high_s"]
        best, value = plans[0]["step_time_s"], (lambda p: p["step_time_s"])
    half = math.sqrt(hi / lo)
    return [p["rank"] for p in plans[1:] if best / half <= value(p) <= best * half]


def placement(low: float, high: float, predicted: float) -> str:
    """Where an interval lies against its prediction: 'above' when the regime's measured runs were all slower than
    predicted (the prediction below the interval), 'below' when faster, else 'around'."""
    return "above" if predicted < low else "below" if predicted > high else "around"


def covered(row: dict[str, Any], others: list[dict[str, Any]]) -> bool:
    """Whether `row`'s measured time lies in the interval `others` give its regime."""
    iv = interval_for(row["regime"], others)
    return iv.low_ratio <= math.exp(-row["residual"]) <= iv.high_ratio


def leave_one_out(rows: list[dict[str, Any]]) -> int:
    """Rows whose measured time lies in the interval the other rows give them."""
    return sum(covered(row, rows[:i] + rows[i + 1:]) for i, row in enumerate(rows))


def leave_one_set_out(rows: list[dict[str, Any]]) -> int:
    """Rows whose measured time lies in the interval the other published sets give them (a run from a source none
    of the sets came from)."""
    return sum(covered(row, [r for r in rows if r["set"] != row["set"]]) for row in rows)


# ---- generating the residuals -----------------------------------------------------------------------------------

GPU_IN_TEXT = re.compile(r"(GB300|GB200|B300|B200|GH200|H200|H100|H800|A100|MI355X|MI325X|MI300X)", re.IGNORECASE)
"""The GPU a reference row's system or node names (DGX-H100, grand-teton-h100-96gb, h100_bf16, mi300x-8, ...)."""


def gpu_named(system: str) -> str:
    """The GPU of a system or node name; a cluster preset naming none (AWS p5) by the preset's GPU."""
    found = GPU_IN_TEXT.search(system)
    if found:
        return found.group(1).upper()
    from clusterplan.models.hardware.cluster import load_cluster

    return load_cluster(system if ":" in system else f"{system}:1").gpu.name


def residual_row(set_name: str, label: str, published_tokens_per_s: float, predicted_tokens_per_s: float, gpu: str,
                 moe: bool, precision: str, seq: int, gpus: int, fp8_recipe: str = "",
                 hybrid: bool = False) -> dict[str, Any]:
    """One reference row's residual, ln(published / predicted tokens/s) = ln(predicted / measured step time)."""
    return {"set": set_name, "label": label,
            "residual": _r(math.log(published_tokens_per_s / predicted_tokens_per_s)),
            "regime": regime(gpu, moe, precision, seq, gpus, fp8_recipe, hybrid)}


def _published_sets() -> list[dict[str, Any]]:
    """Every other published set that reference/ compares on tokens/s, each row as its table counts it (the rows a
    table shows but does not compare, and the rows a fitted constant was fitted on, are left out)."""
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.reference import (
        bridge_hybrid,
        bridge_nvfp4,
        deepseek_v3,
        dgxc,
        foundry,
        llama3,
        mcore_moe,
        mixtral,
        mlperf,
        nemo,
        nemo_long,
        olmo_core,
        smol,
        titan,
        titan_community,
        ultrascale,
    )
    from clusterplan.reference.bridge import layout_text

    out = []
    for name, bridge_set in (("megatron-bridge-nvfp4", bridge_nvfp4.nvfp4_rows()),
                             ("megatron-bridge-hybrid", bridge_hybrid.hybrid_rows())):
        for b in bridge_set:
            if b.expressible and b.layout is not None and b.predicted_tokens_per_s:
                spec = load_model(b.preset)
                out.append(residual_row(name, f"{b.release} {b.label} {b.gpus} GPUs", b.published_tokens_per_s,
                                        b.predicted_tokens_per_s, gpu_named(b.system), spec.is_moe,
                                        b.layout.precision, b.layout.seq, b.gpus,
                                        b.layout.fp8_recipe or "", spec.is_hybrid))
    for d in dgxc.dgxc_rows():
        if d.expressible:
            spec = dgxc.dgxc_model(d.model)
            # the only published hybrid Mamba runs (Nemotron-H 56B): the residuals of hybrid predictions' intervals
            out.append(residual_row("dgxc-hybrid" if spec.is_hybrid else "dgxc", f"dgxc {d.label}",
                                    d.published_tokens_per_s, d.predicted_tokens_per_s, gpu_named(d.system),
                                    spec.is_moe, d.layout.precision, d.layout.seq, d.gpus, hybrid=spec.is_hybrid))
    models = nemo.nemo_models()
    for n in nemo.nemo_rows():
        if n.expressible:
            out.append(residual_row("nemo-h100", f"nemo {n.release} {n.model} {n.gpus} {layout_text(n.layout)}",
                                    n.published_tokens_per_s, n.predicted_tokens_per_s, gpu_named(nemo.NODE),
                                    models[n.model].is_moe, n.layout.precision, n.layout.seq, n.gpus))
    for n in nemo_long.long_rows():
        if n.expressible:
            # the release's systems (reference/nemo_long.py SYSTEMS): 24.03 on DGX-H100, the 25.x rows on Blackwell
            system = "H100" if n.release.startswith("24") else "B200"
            out.append(residual_row("nemo-long-context", f"nemo-long {n.release} {n.model} {n.gpus}",
                                    n.published_tokens_per_s, n.predicted_tokens_per_s, system,
                                    load_model(nemo_long.MODELS[n.model]).is_moe, n.layout.precision, n.layout.seq,
                                    n.gpus))
    for m in mcore_moe.held_out(mcore_moe.mcore_moe_rows()):
        out.append(residual_row("mcore-moe", f"{m.source} {m.system} {m.model} {m.precision} {m.gpus} "
                                f"{layout_text(m.layout)} {m.routing}", m.published_tokens_per_s,
                                m.predicted_tokens_per_s, gpu_named(m.system), True, m.layout.precision,
                                m.layout.seq, m.gpus))
    for x in mixtral.mixtral_rows():
        if x.expressible:
            out.append(residual_row("mixtral", x.label, x.published_tokens_per_s, x.predicted_tokens_per_s,
                                    gpu_named(x.system), True, x.layout.precision, x.layout.seq, x.gpus))
    for p in mlperf.mlperf_rows():
        if p.expressible:
            out.append(residual_row("mlperf", p.label, p.published_tokens_per_s, p.predicted_tokens_per_s,
                                    gpu_named(p.system), False, p.layout.precision, p.layout.seq, p.gpus,
                                    p.layout.fp8_recipe or ""))
    for r in llama3.llama3_rows():
        out.append(residual_row("llama3-405b", f"llama3 {r.gpus} s{r.seq}", r.published_tokens_per_s,
                                r.predicted_tokens_per_s, gpu_named(llama3.NODE), False, r.layout.precision, r.seq,
                                r.gpus))
    for r in deepseek_v3.deepseek_rows():
        out.append(residual_row("deepseek-v3", r.label, r.published_tokens_per_s, r.predicted_tokens_per_s,
                                gpu_named(deepseek_v3.NODE), True, r.layout.precision, r.layout.seq, r.gpus))
    for t in titan.titan_rows():
        if t.expressible:
            out.append(residual_row("torchtitan-h100", t.label, t.published_tokens_per_s, t.predicted_tokens_per_s,
                                    gpu_named(titan.NODE), False, t.layout.precision, t.layout.seq, t.gpus))
    for c in titan_community.community_rows():
        if c.time_compared:
            out.append(residual_row("torchtitan-community", f"{c.set} {c.model} {c.gpus} {c.techniques}",
                                    c.published_tokens_per_s, c.predicted_tokens_per_s, gpu_named(c.node),
                                    load_model(c.model).is_moe, c.layout.precision, c.layout.seq, c.gpus))
    for o in olmo_core.olmo_core_rows():
        out.append(residual_row("olmo-core", o.label, o.published_tokens_per_s, o.predicted_tokens_per_s,
                                gpu_named(olmo_core.NODE), False, o.layout.precision, o.layout.seq,
                                o.layout.world))
    for f in foundry.foundry_rows():
        if not f.reason:
            out.append(residual_row("llm-foundry", f"mpt {f.section} {f.size} s{f.seq} {f.gpus} mbs{f.mbs}",
                                    f.published_tokens_per_s, f.predicted_tokens_per_s, gpu_named(f.section), False,
                                    f.layout.precision, f.seq, f.gpus))
    for u in ultrascale.ultrascale_rows():
        if u.expressible and not u.fitted:
            out.append(residual_row("ultrascale", f"ultrascale {u.model} {u.label}", u.published_tokens_per_s,
                                    u.predicted_tokens_per_s, gpu_named(ultrascale.NODE), False, u.layout.precision,
                                    u.layout.seq, u.layout.world))
    for m in smol.smol_rows():
        if m.expressible:
            out.append(residual_row("smol", m.label, m.published_tokens_per_s, m.predicted_tokens_per_s,
                                    gpu_named(m.cluster), False, m.layout.precision, m.layout.seq, m.gpus))
    return out


def compute_rows() -> list[dict[str, Any]]:
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.reference.bridge import bridge_rows
    from clusterplan.reference.report import korthikanti_times, read_rows, table1

    rows = []
    t1 = read_rows("megatron2021_table1.csv")
    for r, c in zip(t1, table1(), strict=True):
        rows.append({"set": "narayanan2021-table1", "label": c.label, "residual": _r(math.log(c.predicted / c.measured)),
                     "regime": regime("A100", False, "fp16", 2048, int(r["gpus"]))})
    kt = read_rows("korthikanti2022.csv")
    for i, c in enumerate(korthikanti_times()):
        r = kt[i // 2]
        rows.append({"set": "korthikanti2022-table5", "label": c.label,
                     "residual": _r(math.log(c.predicted / c.measured)),
                     "regime": regime("A100", False, "fp16", 2048, int(r["gpus"]))})
    for b in bridge_rows():
        if b.expressible:
            rows.append(residual_row("megatron-bridge-2511", f"{b.label} {b.gpus} GPUs", b.published_tokens_per_s,
                                     b.predicted_tokens_per_s, gpu_named(b.system), load_model(b.preset).is_moe,
                                     b.layout.precision, b.layout.seq, b.gpus))
    return rows + _published_sets()


def write() -> None:
    write_atomic(RESIDUALS, dumps_json({"method": "ln(predicted / measured step time) per reference row "
                                                  "(reference/intervals.py)", "rows": compute_rows()}))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
        print(f"wrote {RESIDUALS}")
    elif sys.argv[1:] == ["--coverage"]:  # the README's error-bar figures
        stored = list(load_residuals())
        n = len(stored)
        loo, loso = leave_one_out(stored), leave_one_set_out(stored)
        print(f"{n} rows of {len({r['set'] for r in stored})} sets: leave-one-out {loo} ({loo / n:.1%}), "
              f"leave-one-set-out {loso} ({loso / n:.1%}) inside the {RATE:.0%} intervals")
    else:
        print(dumps_json({"rows": compute_rows()}))
