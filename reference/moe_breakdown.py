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

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.memory import stage_layers
from clusterplan.models.training.step import MoeLayerBreakdown, moe_layer_breakdown
from clusterplan.reference import bridge
from clusterplan.reference.report import read_rows


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


def row_key(r: dict[str, str]) -> str:
    return f"{r['system']} {r['model']} {r['precision']}"


def breakdowns(keys: list[str] | None = None) -> list[RowBreakdown]:
    """The MoE rows of bridge.BRIDGE_CSV (those named by `keys`, 'SYSTEM MODEL PRECISION', when given)."""
    out = []
    for r in read_rows(bridge.BRIDGE_CSV):
        if keys and row_key(r) not in keys:
            continue
        model, _ = bridge.row_model(r)
        if not model.is_moe:
            continue
        layout, _ = bridge.bridge_layout(r, model)
        _, cluster, reason = bridge.bridge_cluster(r["system"], int(r["gpus"]))
        if cluster is None:
            continue
        stack = get_stack(bridge.STACK)
        est = estimate(model, cluster, layout, stack=stack, fp8_recipe=bridge.fp8_recipe(r["precision"], cluster))
        shapes, arrays = ModelShapes.of(model), LayoutArrays.from_layouts([layout])
        layers = stage_layers(shapes, arrays)
        most = float(max(layers.first[0], layers.middle[0], layers.last[0]))
        units = float(arrays.microbatches[0]) * most
        tokens = layout.gbs * layout.seq
        published_step = tokens / (float(r["tokens_per_s_per_gpu"]) * int(r["gpus"]))
        predicted_step = float(est.evaluation.time.step_s[0])
        out.append(RowBreakdown(label=row_key(r), layout=bridge.layout_text(layout),
                                published_layer_s=published_step / units, predicted_layer_s=predicted_step / units,
                                breakdown=moe_layer_breakdown(shapes, arrays, est.evaluation.hw, stack)))
    return out


def print_breakdown(rows: list[RowBreakdown]) -> None:
    for row in rows:
        b = row.breakdown
        print(f"\n{row.label}  {row.layout}")
        print(f"  per layer and micro-batch: published <= {row.published_layer_s * 1e3:.2f} ms, predicted "
              f"{row.predicted_layer_s * 1e3:.2f} ms (step time over micro-batches x layers of the fullest rank)")
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
    keys = list(sys.argv[1:] if argv is None else argv)
    rows = breakdowns(keys or None)
    if keys and len(rows) != len(keys):
        found = {r.label for r in rows}
        missing = [k for k in keys if k not in found]
        print(f"no MoE row named {', '.join(missing)}; name rows as 'SYSTEM MODEL PRECISION', e.g. "
              "'DGX-H100 Qwen3_30B_a3B FP8-CS'", file=sys.stderr)
        return 2
    print_breakdown(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
