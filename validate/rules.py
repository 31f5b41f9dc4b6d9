"""What a real validation run can execute, and the layout it executes instead of the plan's (no torch here)."""

from __future__ import annotations

from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.training.layout import Layout


def real_run_problems(model: ModelSpec, layout: Layout) -> list[str]:
    """Parts of a layout a real run cannot execute (the dry run still checks their sharding)."""
    problems = []
    if layout.cp > 1:
        problems.append(f"context parallel (cp={layout.cp}) fails in torch 2.13 on CPU and is not wired here")
    if layout.etp > 1:
        problems.append(f"expert tensor parallel (etp={layout.etp}) is not wired here")
    if model.is_moe and layout.tp > 1:
        problems.append(f"MoE layers with tp={layout.tp}: the router and experts are not tensor-parallel here")
    if layout.schedule == "zb":
        problems.append("zero-bubble schedules are not wired here")
    return problems


def executed_layout(layout: Layout) -> Layout:
    """The layout torch runs: fp32 parameters with AdamW (bf16 autocast on GPU); ZeRO-1/2 run as FSDP2 (zero 3),
    since torch has no ZeRO-1/2 for DTensor models; zero 0 runs as replicate-only HSDP (DDP); MoE dropless
    (runtime/expert_dispatch.py sends every routed token copy: no capacity factor)."""
    layout = layout.with_(precision="fp32", optimizer="adam", moe_capacity_factor=None)
    if layout.dp == 1:
        return layout
    if layout.zero == 0:
        return layout.with_(dp_replicate=layout.dp)
    return layout.with_(zero=3)
