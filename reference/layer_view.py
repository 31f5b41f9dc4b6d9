"""What the per-layer views of the Megatron-Bridge rows share (reference/dense_breakdown.py, moe_breakdown.py): each
row estimated as bridge.py runs it, the published and predicted time per layer and micro-batch it implies, and the
command line that prints them."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.estimate import Evaluation, estimate
from clusterplan.models.training.memory import stage_layers
from clusterplan.reference import bridge
from clusterplan.reference.report import read_rows


@dataclass(frozen=True)
class RowRun:
    """One Megatron-Bridge row as `estimate` ran it, with its time per layer and micro-batch."""

    label: str
    layout: str
    shapes: ModelShapes
    arrays: LayoutArrays
    evaluation: Evaluation
    published_layer_s: float
    """Published step time / (micro-batches x the most layers a pipeline rank holds): every other cost of the
    step spread over the layers, so an upper bound on what one layer took."""
    predicted_layer_s: float
    """The same quotient of the predicted step time."""


def row_key(r: dict[str, str]) -> str:
    return f"{r['system']} {r['model']} {r['precision']}"


def row_runs(keys: Sequence[str] | None, moe: bool) -> list[RowRun]:
    """The expressible MoE (`moe`) or dense rows of bridge.BRIDGE_CSV, those named 'SYSTEM MODEL PRECISION' by `keys`
    when given."""
    out = []
    for r in read_rows(bridge.BRIDGE_CSV):
        if keys and row_key(r) not in keys:
            continue
        model, _ = bridge.row_model(r)
        if model.is_moe != moe:
            continue
        layout, _ = bridge.bridge_layout(r, model)
        _, cluster, _ = bridge.bridge_cluster(r["system"], int(r["gpus"]))
        if cluster is None:
            continue
        est = estimate(model, cluster, layout, stack=get_stack(bridge.STACK),
                       fp8_recipe=bridge.fp8_recipe(r["precision"], cluster))
        shapes, arrays = ModelShapes.of(model), LayoutArrays.from_layouts([layout])
        layers = stage_layers(shapes, arrays)
        units = float(arrays.microbatches[0]) * float(max(layers.first[0], layers.middle[0], layers.last[0]))
        published_step_s = layout.gbs * layout.seq / (float(r["tokens_per_s_per_gpu"]) * int(r["gpus"]))
        out.append(RowRun(label=row_key(r), layout=bridge.layout_text(layout), shapes=shapes, arrays=arrays,
                          evaluation=est.evaluation, published_layer_s=published_step_s / units,
                          predicted_layer_s=float(est.evaluation.time.step_s[0]) / units))
    return out


def print_layer_times(label: str, layout: str, published_layer_s: float, predicted_layer_s: float) -> None:
    print(f"\n{label}  {layout}")
    print(f"  per layer and micro-batch: published <= {published_layer_s * 1e3:.2f} ms, predicted "
          f"{predicted_layer_s * 1e3:.2f} ms (step time over micro-batches x layers of the fullest rank)")


def run_cli(argv: list[str] | None, kind: str, example: str, build: Callable[[list[str] | None], list],
            show: Callable[[list], None]) -> int:
    """`python -m clusterplan.reference.<view> [ROW ...]`: exit 2 with one line when a named row is not one of them."""
    keys = list(sys.argv[1:] if argv is None else argv)
    rows = build(keys or None)
    if keys and len(rows) != len(keys):
        found = {r.label for r in rows}
        missing = [k for k in keys if k not in found]
        print(f"no {kind} row named {', '.join(missing)}; name rows as 'SYSTEM MODEL PRECISION', e.g. '{example}'",
              file=sys.stderr)
        return 2
    show(rows)
    return 0
