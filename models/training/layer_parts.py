"""The compute of one dense transformer layer per micro-batch on one rank, split by part as
models/training/compute.py layer_time adds it: weight GEMMs, fp8 casts, the attention core at its kernel curve, and the
elementwise kernels (norms, RoPE, activation, residuals) with any eager clamp, and under torch.autocast over fp32
parameters its casts (models/training/autocast.py: the activations' and the weights') (`estimate --parts`; the
Megatron-Bridge rows' view in reference/dense_breakdown.py). Recompute excluded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clusterplan.hardware_db.stacks import MIXED_PRECISION_AUTOCAST, ExecutionStack
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.autocast import (
    activation_cast_times,
    half_autocast,
    layer_matmul_params,
    weight_cast_times,
)
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import (
    CORE_FROM_GEMMS,
    CORE_FROM_PROFILE,
    DEFAULT_FP8_RECIPE,
    PREC_FP8,
    clamp_bytes,
    cp_runs_blocks,
    elementwise_bytes,
    flash_core_source,
    flash_core_times,
    fp8_cast_times,
    glu_split_backward_s,
    layer_flops,
    layer_linears,
    linear_times,
    qkv_layout_copy_times,
    stack_tp_overlap,
    unfused_extra_bytes,
    wgrad_output_bytes,
)
from clusterplan.models.training.estimate import Estimate

PARTS = ("gemm", "fp8_cast", "attention", "elementwise", "autocast_cast", "autocast_weight")
"""The layer's compute parts, in layer_time's order: autocast_cast = the activations' casts (run again in a
recompute), autocast_weight = the weights' (cast once per step, gradients upcast and accumulated); these two only
where the stack runs torch.autocast over fp32 parameters."""


@dataclass(frozen=True)
class DenseLayerParts:
    """Forward and backward seconds of one dense layer per micro-batch on one rank, by part (PARTS)."""

    forward_s: dict[str, float]
    backward_s: dict[str, float]
    whole_gemm_s: float = 0.0
    """The weight GEMMs forward + backward as whole GEMMs (estimate --gemms' sum); `gemm` differs from it where the
    stack's tensor-parallel overlap runs each GEMM as chunks (tp_overlap.py)."""

    @property
    def total_s(self) -> float:
        return sum(self.forward_s.values()) + sum(self.backward_s.values())


def dense_layer_parts(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates,
                      stack: ExecutionStack) -> DenseLayerParts:
    """layer_time's forward and backward of a dense layer (first row of L), split into PARTS; recompute excluded."""
    recipe = stack.fp8_recipes[0] if stack.fp8_recipes else DEFAULT_FP8_RECIPE
    fhw = hw.for_fp8_recipe(recipe, forward=True)
    hw = hw.for_fp8_recipe(recipe)
    fp8 = L.precision == PREC_FP8
    linears = layer_linears(shapes, L, False)
    overlap = stack_tp_overlap(stack, L, hw, fp8)
    wgrad_bytes = wgrad_output_bytes(L, stack)
    gemm_f, gemm_b, _ = linear_times(linears, hw, fp8, overlap, fhw, wgrad_bytes)
    whole_f, whole_b, _ = linear_times(linears, hw, fp8, None, fhw, wgrad_bytes)
    cast_f, cast_b = fp8_cast_times(linears, L, hw, recipe, stack.fp8_weight_copy)
    _, core = layer_flops(shapes, L, False)
    attn_f, attn_b = flash_core_times(shapes, L, hw, core, stack.attention_kernel, cp_runs_blocks(L, stack))
    elem = (elementwise_bytes(shapes, L, False) + unfused_extra_bytes(shapes, L, False, stack)) / hw.hbm_bytes_per_s
    clamp_f, clamp_ratio = clamp_bytes(shapes, L, False, stack.compiled)
    clamp = clamp_f / hw.hbm_bytes_per_s
    copy_f, copy_b = qkv_layout_copy_times(shapes, L, hw, stack)
    casting = half_autocast(L, stack.mixed_precision == MIXED_PRECISION_AUTOCAST)
    act_f, act_b = activation_cast_times(shapes, L, hw, False)
    weight_f, weight_b = weight_cast_times(layer_matmul_params(shapes, L, False), L, hw)

    def first(x: np.ndarray | float) -> float:
        return float(np.ravel(x)[0])

    forward = {"gemm": first(gemm_f), "fp8_cast": first(np.where(fp8, cast_f, 0.0)), "attention": first(attn_f),
               "elementwise": first(elem + clamp + copy_f)}
    backward = {"gemm": first(gemm_b), "fp8_cast": first(np.where(fp8, cast_b, 0.0)), "attention": first(attn_b),
                "elementwise": first(2 * elem + clamp_ratio * clamp + copy_b
                                     + glu_split_backward_s(shapes, L, hw, stack, False))}
    if bool(np.ravel(casting)[0]):  # the autocast parts only where the run autocasts
        forward.update(autocast_cast=first(act_f), autocast_weight=first(weight_f))
        backward.update(autocast_cast=first(act_b), autocast_weight=first(weight_b))
    return DenseLayerParts(forward_s=forward, backward_s=backward, whole_gemm_s=first(whole_f + whole_b))


UNFUSED = "unfused GEMMs (flash attention off)"


@dataclass(frozen=True)
class LayerParts:
    """`estimate --parts`: one dense layer's forward and backward compute by part, and which attention curve priced
    its core."""

    gpu: str
    attention_kernel: str
    """The stack's attention kernel (stacks.yaml attention_kernel)."""
    attention_source: str
    """What priced the core (compute.flash_core_source): a measured curve family (attention_kernels.yaml), the
    calibration's profile fit, the score/value GEMMs, or the unfused GEMMs with flash attention off."""
    parts: DenseLayerParts
    tp_overlap: str = "none"
    """The stack's tensor-parallel overlap (stacks.yaml tp_overlap): what chunks the `gemm` part's GEMMs."""

    @property
    def attention_curve(self) -> str | None:
        """The measured kernel family that priced the core; None when no curve did."""
        return None if self.attention_source in (CORE_FROM_PROFILE, CORE_FROM_GEMMS, UNFUSED) else self.attention_source

    def to_json(self) -> dict:
        return {"gpu": self.gpu, "attention_kernel": self.attention_kernel, "attention_curve": self.attention_curve,
                "attention_source": self.attention_source,
                "scope": "one dense layer, one micro-batch, one rank; recompute excluded",
                "forward_s": {k: float(f"{v:.6g}") for k, v in self.parts.forward_s.items()},
                "backward_s": {k: float(f"{v:.6g}") for k, v in self.parts.backward_s.items()},
                "tp_overlap": self.tp_overlap, "whole_gemm_s": float(f"{self.parts.whole_gemm_s:.6g}")}


def layer_parts(est: Estimate) -> LayerParts | None:
    """The dense layer's parts of `est`'s layout as its stack runs it; None for a model without dense layers, or a
    hybrid, whose blocks are not split by part."""
    shapes = ModelShapes.of(est.model)
    if shapes.n_moe_layers >= shapes.n_layers or shapes.blocks:
        return None
    ev = est.evaluation
    kernel = ev.stack.attention_kernel
    source = flash_core_source(ev.hw, kernel) if est.layout.flash_attn else UNFUSED
    return LayerParts(gpu=ev.hw.gpu_name, attention_kernel=kernel, attention_source=source,
                      parts=dense_layer_parts(shapes, LayoutArrays.from_layouts([est.layout]), ev.hw, ev.stack),
                      tp_overlap=ev.stack.tp_overlap)
