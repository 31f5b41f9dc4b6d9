"""Per-layer view of the Megatron-Bridge MoE rows: what one MoE layer costs per micro-batch on one rank, by phase.

    python -m clusterplan.reference.moe_breakdown                      # every expressible MoE row
    python -m clusterplan.reference.moe_breakdown "DGX-H100 Qwen3_30B_a3B FP8-CS"

For each row: the layout, the published time per MoE layer and micro-batch the row implies (step time over the
slowest stage's layer-micro-batches, embedding, head and bubble included, so an upper bound on one layer's share),
and the model's GPU and host time per phase (models/training/step.py moe_layer_breakdown: the same numbers
step_time adds), the exposed host time and the local experts' GEMM shapes. A diagnostic view; nothing is fitted.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from clusterplan.models.training.step import MoeLayerBreakdown, moe_layer_breakdown
from clusterplan.reference import layer_view


@dataclass(frozen=True)
class RowBreakdown:
    label: str
    layout: str
    published_layer_s: float
    """Published step time / (micro-batches x the most layers a pipeline rank holds): every other cost of the
    step spread over the layers, so an upper bound on what one layer took."""
    predicted_layer_s: float
    """The same quotient of the predicted step time."""
    breakdown: MoeLayerBreakdown


def breakdowns(keys: list[str] | None = None) -> list[RowBreakdown]:
    """The MoE rows of bridge.BRIDGE_CSV (those named by `keys`, 'SYSTEM MODEL PRECISION', when given)."""
    return [RowBreakdown(label=run.label, layout=run.layout, published_layer_s=run.published_layer_s,
                         predicted_layer_s=run.predicted_layer_s,
                         # the stack with the row's fp8 recipe first, as estimate ran it (host ops and casts differ)
                         breakdown=moe_layer_breakdown(run.shapes, run.arrays, run.evaluation.hw,
                                                       run.evaluation.stack))
            for run in layer_view.row_runs(keys, moe=True)]


def print_breakdown(rows: list[RowBreakdown]) -> None:
    for row in rows:
        b = row.breakdown
        layer_view.print_layer_times(row.label, row.layout, row.published_layer_s, row.predicted_layer_s)
        print(f"  {'phase':20} {'GPU ms':>8} {'host ops':>9} {'host ms':>8}")
        for p in b.phases:
            print(f"  {p.name:20} {float(p.gpu_s[0]) * 1e3:8.3f} {float(p.host_ops[0]):9.2f} "
                  f"{float(p.host_s[0]) * 1e3:8.3f}")
        print(f"  GPU {float(b.gpu_s[0]) * 1e3:.3f} ms + exposed host {float(b.exposed_host_s[0]) * 1e3:.3f} ms "
              f"= {float(b.total_s[0]) * 1e3:.3f} ms")
        shapes = ", ".join(f"{name} {float(m[0]):.0f} x {float(n[0]):.0f} x {float(k[0]):.0f}"
                           for name, m, n, k in b.expert_gemms)
        print(f"  {float(b.local_experts[0]):.0f} local experts, each forward: {shapes} (tokens x out x in)")


def main(argv: list[str] | None = None) -> int:
    return layer_view.run_cli(argv, "MoE", "DGX-H100 Qwen3_30B_a3B FP8-CS", breakdowns, print_breakdown)


if __name__ == "__main__":
    sys.exit(main())
