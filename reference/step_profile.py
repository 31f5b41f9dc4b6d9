"""Where our own eager training steps spent their GPU time, by kernel category, beside the model's terms for the same
runs (hardware_db/data/calibration/nvidia-h200-x1-2026-12-04-step-profile.json, from bench/bench_step_profile.py on
one H200 with PyTorch 2.11: the three plans of bench/gpu_plans/ as `validate` runs them).

    python -m clusterplan.reference.step_profile

Per run: measured milliseconds per step of GEMM, attention, elementwise (+ copies and the loss) and optimizer kernels,
the GPU's busy time and the step's wall time; beside them the model's layer parts on the H200 datasheet rates
(models/training/layer_parts.py dense_layer_parts x layers x micro-batches, the recompute's forward where the run
recomputes; the LM head's GEMMs in `gemm` and its loss and casts in `elementwise`, compute.head_time x micro-batches)
and its optimizer term. A diagnostic view; nothing is fitted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import head_gemm_times, head_time
from clusterplan.models.training.layer_parts import dense_layer_parts
from clusterplan.models.training.planfile import read_plan
from clusterplan.validate.predict import predicted_step, runtime_stack
from clusterplan.validate.rules import executed_layout
from clusterplan.validate.scale import scale_model

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "hardware_db" / "data" / "calibration" / "nvidia-h200-x1-2026-12-04-step-profile.json"
CLUSTER = "hgx-h200:1"
MEASURED_GROUPS = {"gemm": ("gemm",), "attention": ("attention",), "elementwise": ("elementwise", "copy", "loss"),
                   "optimizer": ("optimizer",)}
"""The model's parts and the profile categories (bench_step_profile.CATEGORIES) each is set against."""
MODEL_GROUPS = {"gemm": ("gemm",), "attention": ("attention",),
                "elementwise": ("elementwise", "autocast_cast", "autocast_weight")}
"""layer_parts.PARTS summed into each group (the autocast casts run on copy and elementwise kernels)."""


@dataclass(frozen=True)
class StepProfileRow:
    plan: str
    measured_ms: dict[str, float]
    modelled_ms: dict[str, float]
    gpu_busy_ms: float
    step_wall_ms: float


def step_profile_rows() -> list[StepProfileRow]:
    data = json.loads(PROFILE.read_text())
    cluster = load_cluster(CLUSTER)
    hw = HardwareRates.of(cluster)
    rows = []
    for r in data["results"]:
        plan = read_plan(ROOT / "bench" / "gpu_plans" / r["plan"])
        layout = executed_layout(plan.layout)
        model = scale_model(plan.model, layout, r["scale"])
        bf16 = layout.with_(precision="bf16")  # the run autocasts (validate: cli/validate.py _compare)
        parts = dense_layer_parts(ModelShapes.of(model), LayoutArrays.from_layouts([bf16]), hw, runtime_stack())
        scale_ms = model.n_layers * (bf16.gbs // bf16.mbs) * 1e3
        recompute = 1.0 if bf16.recompute == "full" else 0.0
        modelled = {k: sum((parts.forward_s.get(p, 0.0) * (1.0 + (0.0 if p == "autocast_weight" else recompute))
                            + parts.backward_s.get(p, 0.0)) for p in group) * scale_ms
                    for k, group in MODEL_GROUPS.items()}
        arrays = LayoutArrays.from_layouts([bf16])
        head_f, head_b = head_time(ModelShapes.of(model), arrays, hw, runtime_stack())
        gemm_f, gemm_b = head_gemm_times(ModelShapes.of(model), arrays, hw)
        micro_ms = (bf16.gbs // bf16.mbs) * 1e3
        modelled["gemm"] += float(gemm_f[0] + gemm_b[0]) * micro_ms
        modelled["elementwise"] += float(head_f[0] + head_b[0] - gemm_f[0] - gemm_b[0]) * micro_ms
        modelled["optimizer"] = predicted_step(model, cluster, bf16, None)["time"]["optimizer_s"] * 1e3
        measured = {k: sum(r["by_category_ms"].get(c, 0.0) for c in cats) for k, cats in MEASURED_GROUPS.items()}
        rows.append(StepProfileRow(plan=r["plan"], measured_ms=measured, modelled_ms=modelled,
                                   gpu_busy_ms=r["gpu_busy_ms"], step_wall_ms=r["step_wall_ms"]))
    return rows


def main() -> None:
    for row in step_profile_rows():
        print(f"{row.plan}: step {row.step_wall_ms:.1f} ms wall, GPU busy {row.gpu_busy_ms:.1f} ms "
              f"(idle {row.step_wall_ms - row.gpu_busy_ms:.1f} ms)")
        for part, measured in row.measured_ms.items():
            modelled = row.modelled_ms[part]
            print(f"  {part:12s} measured {measured:7.1f} ms  modelled {modelled:7.1f} ms  "
                  f"({modelled / measured - 1:+.0%})")


if __name__ == "__main__":
    main()
