"""Per-layer view of the Megatron-Bridge dense rows: what one transformer layer costs per micro-batch on one rank.

    python -m clusterplan.reference.dense_breakdown                          # every expressible dense row
    python -m clusterplan.reference.dense_breakdown "DGX-B200 LLAMA3_8B FP8-CS"

For each row: the layout, the published time per layer and micro-batch the row implies (step time over the slowest
stage's layer-micro-batches, embedding, head, bubble and communication included, so an upper bound on one layer's
share), the predicted one (the same quotient), and the layer's forward + backward compute split as
models/training/compute.py layer_time adds it: weight GEMMs, fp8 casts, the attention core at its kernel curve, and
the elementwise kernels (norms, RoPE, activation, residuals) with any eager clamp. The split sums to layer_time's
forward + backward (tests/test_dense_breakdown.py). A diagnostic view; nothing is fitted.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from clusterplan.models.training.layer_parts import PARTS, DenseLayerParts, dense_layer_parts  # noqa: F401
from clusterplan.reference import layer_view


@dataclass(frozen=True)
class RowBreakdown:
    label: str
    layout: str
    gpu: str
    published_layer_s: float
    """Published step time / (micro-batches x the most layers a pipeline rank holds): an upper bound on one
    layer's share."""
    predicted_layer_s: float
    """The same quotient of the predicted step time."""
    parts: DenseLayerParts


def breakdowns(keys: list[str] | None = None) -> list[RowBreakdown]:
    """The dense rows of bridge.BRIDGE_CSV (those named by `keys`, 'SYSTEM MODEL PRECISION', when given)."""
    return [RowBreakdown(label=run.label, layout=run.layout, gpu=run.evaluation.hw.gpu_name,
                         published_layer_s=run.published_layer_s, predicted_layer_s=run.predicted_layer_s,
                         # the stack with the row's fp8 recipe first, as estimate ran it
                         parts=dense_layer_parts(run.shapes, run.arrays, run.evaluation.hw, run.evaluation.stack))
            for run in layer_view.row_runs(keys, moe=False)]


def print_breakdown(rows: list[RowBreakdown]) -> None:
    for row in rows:
        p = row.parts
        layer_view.print_layer_times(row.label, row.layout, row.published_layer_s, row.predicted_layer_s)
        print(f"  {'part':12} {'fwd ms':>8} {'bwd ms':>8} {'share':>6}")
        for part in p.forward_s:
            both = p.forward_s[part] + p.backward_s[part]
            print(f"  {part:12} {p.forward_s[part] * 1e3:8.3f} {p.backward_s[part] * 1e3:8.3f} "
                  f"{both / p.total_s:6.1%}")
        print(f"  compute {p.total_s * 1e3:.3f} ms per layer and micro-batch on {row.gpu}")


def main(argv: list[str] | None = None) -> int:
    return layer_view.run_cli(argv, "dense", "DGX-B200 LLAMA3_8B FP8-CS", breakdowns, print_breakdown)


if __name__ == "__main__":
    sys.exit(main())
