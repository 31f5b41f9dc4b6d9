"""Human tables for estimate/plan results (the JSON carries the same numbers)."""

from __future__ import annotations

from typing import Any

from clusterplan.cli.console import console
from clusterplan.fileio import require_finite
from clusterplan.models.training.estimate import MEMORY_TERMS, TIME_TERMS


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
    console.text(f"step {data['step_time_s']:.3f} s   {data['tokens_per_s']:,.0f} tokens/s   "
                 f"{data['tflops_per_gpu']:.0f} TFLOP/s/GPU   MFU {data['mfu']:.1%}   HFU {data['hfu']:.1%}")
    console.text(f"MFU basis: {data['mfu_basis']}")
    step = data["step_time_s"]
    console.table("time per step", ["term", "seconds", "share"],
                  [(t.removesuffix("_s"), f"{data['time'][t]:.4f}", f"{data['time'][t] / step:.1%}") for t in TIME_TERMS])
    mem = data["memory"]
    stages = mem["by_stage"]
    rows = [(term, *(f"{stages[p][term + '_gib']:.2f}" for p in ("first", "middle", "last")))
            for term in MEMORY_TERMS + ("total",)]
    console.table(f"memory per GPU, GiB (peak {mem['peak_gib']:.1f} of {mem['capacity_gib']:.1f} on the "
                  f"{mem['peak_stage']} stage, headroom {mem['headroom_gib']:.1f})",
                  ["term", "first stage", "middle", "last stage"], rows)
