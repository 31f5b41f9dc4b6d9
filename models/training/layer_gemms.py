"""One transformer layer's weight GEMMs on one rank, as the GEMM shape model prices them (`estimate --gemms`).

For each weight matrix of a layer (compute.layer_linears: attention in / out, MLP or experts in / out, shared experts)
its three GEMMs per micro-batch: forward Y = X W (m = tokens, n = out, k = in), input gradient dX = dY W^T (m =
tokens, n = in, k = out) and weight gradient dW = X^T dY (m = in, n = out, k = tokens), with the two factors of
models/hardware/gemm.py behind each time: the wave / tile efficiency of its m x n over the SMs and the reduction-depth
factor k / (k + k_0) of its precision. Whole GEMMs: tensor-parallel overlap runs some of them in chunks
(tp_overlap.py), and recompute repeats forwards; the step's compute term prices both, this view shows neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.gemm import OUTPUT_BYTES
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import PREC_FP8, LayoutArrays
from clusterplan.models.training.compute import (
    Linear,
    layer_linears,
    linear_gemm_shapes,
    linear_gemm_time_s,
    wgrad_output_bytes,
)
from clusterplan.models.training.estimate import Estimate
from clusterplan.models.training.moe_layer import GROUPED_GEMM_STREAMS

DENSE_MATRICES = ("attention in", "attention out", "mlp in", "mlp out")
MOE_MATRICES = ("attention in", "attention out", "experts in", "experts out", "router + shared in", "shared out")
"""Names of compute.layer_linears' entries, in its order (dense layer / MoE layer; the MoE layer's dense part is
the router with any shared experts' input projection)."""
BLOCK_MATRICES = {"attention": DENSE_MATRICES[:2], "mlp": DENSE_MATRICES[2:], "mamba": ("in_proj", "out_proj"),
                  "moe": MOE_MATRICES[2:]}
"""A hybrid block's linears (ModelShapes.block): Megatron-Core MambaMixer's in_proj (its norm fused) and out_proj."""

LATENT_MATRICES = ("latent down", "latent up")
"""A latent MoE layer's h -> latent and latent -> h projections (compute.layer_linears appends them last)."""

PASSES = ("forward", "dgrad", "wgrad")


@dataclass(frozen=True)
class LayerGemm:
    """One GEMM of one layer and micro-batch on one rank; `count` equal GEMMs (a rank's local experts) in one row."""

    layer: str
    matrix: str
    gemm_pass: str
    m: float
    n: float
    k: float
    count: float
    precision: str
    time_s: float
    wave_efficiency: float | None
    """Useful share of the SM-tile slots paid for (gemm.py wave_efficiency); None on a calibrated GEMM curve."""
    k_depth: float | None
    """k / (k + k_0) of the GEMM's precision (1 where gemm.yaml has no k_0); None on a calibrated GEMM curve."""

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k * self.count

    def to_json(self) -> dict:
        return {"layer": self.layer, "matrix": self.matrix, "pass": self.gemm_pass, "m": round(self.m, 3),
                "n": round(self.n, 3), "k": round(self.k, 3), "count": round(self.count, 3),
                "precision": self.precision, "time_s": float(f"{self.time_s:.6g}"),
                "tflops_per_s": float(f"{self.flops / self.time_s / 1e12:.6g}") if self.time_s > 0 else 0.0,
                "wave_efficiency": None if self.wave_efficiency is None else round(self.wave_efficiency, 4),
                "k_depth": None if self.k_depth is None else round(self.k_depth, 4)}


@dataclass(frozen=True)
class LayerGemms:
    gpu: str
    gemms: tuple[LayerGemm, ...]

    def layer_time_s(self, layer: str) -> float:
        return sum(g.time_s for g in self.gemms if g.layer == layer)

    def to_json(self) -> dict:
        layers = sorted({g.layer for g in self.gemms})
        return {"gpu": self.gpu, "scope": "whole GEMMs: before tensor-parallel overlap chunking; recompute not repeated",
                "layer_time_s": {layer: float(f"{self.layer_time_s(layer):.6g}") for layer in layers},
                "gemms": [g.to_json() for g in self.gemms]}


def _factors(hw: HardwareRates, m: float, n: float, k: float, batch: float,
             fp8: bool, m_sd: float = 0.0) -> tuple[float | None, float | None]:
    """(wave efficiency, k-depth factor) of one GEMM under the shape model; (None, None) on a calibrated curve."""
    shape = hw.gemm_shape
    if shape is None:
        return None, None
    wave = shape.wave_efficiency(np.array([m]), np.array([n]), batch, m_sd=m_sd)
    return float(np.ravel(wave)[0]), float(np.ravel(shape.k_depth(np.array([k]), np.array([fp8])))[0])


def _linear_gemms(layer: str, matrix: str, g: Linear, forward_hw: HardwareRates, hw: HardwareRates,
                  fp8: bool, wgrad_bytes: float) -> list[LayerGemm]:
    """The linear's three GEMMs (compute.linear_gemm_shapes) timed as compute.linear_times times them, the weight
    gradient moving `wgrad_bytes` per output element (compute.wgrad_output_bytes); none for an empty matrix (a MoE
    layer without shared experts has no 'shared out')."""
    tokens, fan_in, fan_out = (float(np.ravel(x)[0]) for x in (g.tokens, g.in_features, g.out_features))
    if tokens * fan_in * fan_out <= 0:
        return []
    count = float(np.ravel(g.count)[0])
    batch = min(float(GROUPED_GEMM_STREAMS), count) if g.streamed else count
    flag = np.array([fp8])
    out = []
    for gemm_pass, (m, n, k), rates in zip(PASSES, linear_gemm_shapes(tokens, fan_in, fan_out), (forward_hw, hw, hw),
                                           strict=True):
        output_bytes = wgrad_bytes if gemm_pass == "wgrad" else OUTPUT_BYTES
        m_sd = 0.0 if gemm_pass == "wgrad" else float(np.ravel(g.rows_sd)[0])  # the rows are m but in dW = X^T dY
        time_s = linear_gemm_time_s(g, rates, np.array([m]), np.array([n]), np.array([k]), flag, output_bytes, m_sd)
        wave, k_depth = _factors(rates, m, n, k, batch, fp8, m_sd)
        out.append(LayerGemm(layer=layer, matrix=matrix, gemm_pass=gemm_pass, m=m, n=n, k=k, count=count,
                             precision="fp8" if fp8 else "bf16", time_s=float(np.ravel(time_s)[0]),
                             wave_efficiency=wave, k_depth=k_depth))
    return out


def layer_gemms(est: Estimate) -> LayerGemms:
    """The weight GEMMs of a dense and / or an MoE layer (those the model has), or of each block kind of a hybrid, of
    `est`'s layout."""
    ev = est.evaluation
    shapes, arrays = ModelShapes.of(est.model), LayoutArrays.from_layouts([est.layout])
    fp8 = bool(arrays.precision[0] == PREC_FP8)
    hw = ev.hw
    recipe = ev.stack.fp8_recipes[0] if (fp8 and ev.stack.fp8_recipes) else None
    forward_hw = hw.for_fp8_recipe(recipe, forward=True) if recipe else hw
    backward_hw = hw.for_fp8_recipe(recipe) if recipe else hw
    kinds = []
    if shapes.blocks:  # a hybrid: each block kind's own linears (compute.layer_linears of its shapes)
        kinds = [(block.block, block, block.block == "moe", BLOCK_MATRICES[block.block]) for _, block in shapes.blocks]
    if not shapes.blocks and shapes.n_moe_layers < shapes.n_layers:
        kinds.append(("dense", shapes, False, DENSE_MATRICES))
    if not shapes.blocks and shapes.n_moe_layers > 0:
        kinds.append(("moe", shapes, True, MOE_MATRICES))
    gemms: list[LayerGemm] = []
    wgrad_bytes = float(np.ravel(wgrad_output_bytes(arrays, ev.stack))[0])
    kinds = [(layer, kind_shapes, moe, names + (LATENT_MATRICES if moe and kind_shapes.moe_latent else ()))
             for layer, kind_shapes, moe, names in kinds]
    for layer, kind_shapes, moe, names in kinds:
        for name, linear in zip(names, layer_linears(kind_shapes, arrays, moe), strict=True):
            gemms += _linear_gemms(layer, name, linear, forward_hw, backward_hw, fp8, wgrad_bytes)
    return LayerGemms(gpu=hw.gpu_name, gemms=tuple(gemms))
