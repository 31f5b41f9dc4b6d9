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

import numpy as np

from clusterplan.hardware_db.stacks import ExecutionStack
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import (
    PREC_FP8,
    TpOverlap,
    clamp_bytes,
    cp_runs_blocks,
    elementwise_bytes,
    flash_core_times,
    fp8_cast_times,
    layer_flops,
    layer_linears,
    linear_times,
    unfused_extra_bytes,
)
from clusterplan.models.training.tp_overlap import async_tp_gathers_fused
from clusterplan.reference import layer_view

PARTS = ("gemm", "fp8_cast", "attention", "elementwise")
"""The layer's compute parts, in layer_time's order."""


@dataclass(frozen=True)
class DenseLayerParts:
    """Forward and backward seconds of one dense layer per micro-batch on one rank, by part (PARTS)."""

    forward_s: dict[str, float]
    backward_s: dict[str, float]

    @property
    def total_s(self) -> float:
        return sum(self.forward_s.values()) + sum(self.backward_s.values())


def dense_layer_parts(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates,
                      stack: ExecutionStack) -> DenseLayerParts:
    """layer_time's forward and backward of a dense layer (first row of L), split into PARTS; recompute excluded."""
    recipe = stack.fp8_recipes[0] if stack.fp8_recipes else "tensorwise"
    fhw = hw.for_fp8_recipe(recipe, forward=True)
    hw = hw.for_fp8_recipe(recipe)
    fp8 = L.precision == PREC_FP8
    linears = layer_linears(shapes, L, False)
    overlap = (TpOverlap(stack.tp_overlap, (L.sp > 0) & (L.tp > 1), L.tp, async_tp_gathers_fused(stack, fp8))
               if stack.tp_overlap != "none" else None)
    gemm_f, gemm_b, _ = linear_times(linears, hw, fp8, overlap, fhw)
    cast_f, cast_b = fp8_cast_times(linears, L, hw, recipe, stack.fp8_weight_copy)
    _, core = layer_flops(shapes, L, False)
    attn_f, attn_b = flash_core_times(shapes, L, hw, core, stack.attention_kernel, cp_runs_blocks(L, stack))
    elem = (elementwise_bytes(shapes, L, False) + unfused_extra_bytes(shapes, L, False, stack)) / hw.hbm_bytes_per_s
    clamp_f, clamp_ratio = clamp_bytes(shapes, L, False, stack.compiled)
    clamp = clamp_f / hw.hbm_bytes_per_s

    def first(x: np.ndarray | float) -> float:
        return float(np.ravel(x)[0])

    return DenseLayerParts(
        forward_s={"gemm": first(gemm_f), "fp8_cast": first(np.where(fp8, cast_f, 0.0)),
                   "attention": first(attn_f), "elementwise": first(elem + clamp)},
        backward_s={"gemm": first(gemm_b), "fp8_cast": first(np.where(fp8, cast_b, 0.0)),
                    "attention": first(attn_b), "elementwise": first(2 * elem + clamp_ratio * clamp)})


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
        for part in PARTS:
            both = p.forward_s[part] + p.backward_s[part]
            print(f"  {part:12} {p.forward_s[part] * 1e3:8.3f} {p.backward_s[part] * 1e3:8.3f} "
                  f"{both / p.total_s:6.1%}")
        print(f"  compute {p.total_s * 1e3:.3f} ms per layer and micro-batch on {row.gpu}")


def main(argv: list[str] | None = None) -> int:
    return layer_view.run_cli(argv, "dense", "DGX-B200 LLAMA3_8B FP8-CS", breakdowns, print_breakdown)


if __name__ == "__main__":
    sys.exit(main())
