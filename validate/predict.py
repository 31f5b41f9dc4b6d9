"""What the cost model predicts for a validation run: per-rank memory terms by pipeline position, and step time.

No torch here: validate's CLI imports it before deciding whether to spawn ranks.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any

from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.calibration import Calibration
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.estimate import estimate, stack_memory
from clusterplan.models.training.layout import Layout
from clusterplan.runtime.stack import runtime_stack

POSITIONS = ("first", "middle", "last")
MEASURED_TERMS = ("weights", "grads", "optimizer", "activations")


def position_of(pp_rank: int, pp: int) -> str:
    """Which of the memory model's stage positions a pipeline rank is (pp = 1 is `first`, with the head)."""
    if pp_rank == 0:
        return "first"
    return "last" if pp_rank == pp - 1 else "middle"


def rank_layout(layout: Layout, pp_rank: int) -> Layout:
    """The layout whose `middle` position prices pipeline rank `pp_rank`: under a per-rank list (Layout.pp_layers)
    every middle rank takes this rank's layers, so its weights, gradients and optimizer state are its own (its
    activations keep the second rank's micro-batches in flight, an upper bound past rank 1); else the layout."""
    ranks = layout.pp_layers
    if not ranks or layout.pp < 3 or pp_rank in (0, layout.pp - 1):
        return layout
    return replace(layout, pp_layers=(ranks[0], *([ranks[pp_rank]] * (layout.pp - 2)), ranks[-1]))


def predicted_bytes(model: ModelSpec, layout: Layout) -> dict[str, dict[str, float]]:
    """Bytes per rank of each term at each pipeline position, from models/training/memory.py."""
    mem = stack_memory(ModelShapes.of(model), LayoutArrays.from_layouts([layout]), runtime_stack(layout.dp > 1))
    terms = ("weights", "grads", "optimizer", "activations", "other", "total")
    return {pos: {term: float(mem.by_position[i, j, 0]) for j, term in enumerate(terms)}
            for i, pos in enumerate(POSITIONS)}


def run_calibration(calibration: Calibration | None, layout: Layout) -> Calibration | None:
    """The calibration priced at the run's GEMM dtype: estimate() reads the bf16 curve, an fp32 run needs fp32's."""
    if calibration is None or layout.precision != "fp32" or calibration.gemm_curve("fp32") is None:
        return calibration
    gemm = MappingProxyType({**calibration.gemm, "bf16": calibration.gemm_curve("fp32")})
    return replace(calibration, gemm=gemm)


def predicted_step(model: ModelSpec, cluster: Cluster, layout: Layout,
                   calibration: Calibration | None) -> dict[str, Any]:
    """estimate()'s JSON for the run (step time and its terms), with the reasons it gives; the run's layers are
    eager PyTorch, so the calibration's eager-layer section applies."""
    return estimate(model, cluster, layout, run_calibration(calibration, layout), eager_layers=True,
                    stack=runtime_stack(layout.dp > 1)).to_json()
