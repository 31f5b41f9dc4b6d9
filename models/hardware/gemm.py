"""GEMM time by shape: wave and tile quantisation over the GPU's SMs on top of its measured best-shape rate (MAMF),
bounded below by the HBM roofline. Vectorised over numpy arrays of m, n, k.

A GEMM of m x n (x batch) output is cut into ceil(m/tile_m) x ceil(n/tile_n) tiles; the SMs run them one tile each
per wave, so ceil(tiles / SMs) waves are paid for and the padded/idle share is lost (NVIDIA Deep Learning
Performance guide, "Matrix Multiplication Background": tile and wave quantization). The library picks the better of
the two tile orientations. Time is the larger of compute at that efficiency and the operand/result traffic at the
achieved HBM rate (roofline, Williams et al. 2009).

Reduction depth: each output tile pays a fixed prologue (pipeline fill) and epilogue (accumulator conversion and store)
beside its k-loop, so a GEMM of depth k runs at k / (k + k_0) of its long-k rate, k_0 being the depth whose k-loop
takes as long as that fixed part (NVIDIA DL performance guide, "Matrix Multiplication Background": arithmetic
intensity grows with k). k_0 per precision where a k sweep is published or measured: per-tensor scaled fp8 (cuBLAS)
from our own H200 sweep on Hopper and OpenXLA's sm_100 table on Blackwell (gemm.yaml fp8_k_overhead), block-scaled
fp8 from DeepGEMM's H800 table (blockwise_fp8_k_overhead), bf16 from OpenXLA's H100 and sm_100 tables
(bf16_k_overhead); 0 (no term) elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clusterplan.hardware_db import GemmTiling
from clusterplan.models.normal import ceil_moments, expected_ceil

OUTPUT_BYTES = 2.0
"""GEMM outputs are written in bf16/fp16 (fp8 recipes too: Transformer Engine returns the high-precision dtype)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class GemmShapeModel:
    sm_count: int | None
    """Tiles one wave runs (None: no quantisation, e.g. a GPU without a gemm.yaml entry)."""
    tile_m: int
    tile_n: int
    max_flops: float
    """bf16 rate of a GEMM that fills every wave exactly (FLOP/s)."""
    max_flops_fp8: float
    hbm_bytes_per_s: float
    fp8_k_overhead: float = 0.0
    """k_0 of the fp8 k-depth term (elements of k); 0: no k-depth term."""
    bf16_k_overhead: float = 0.0
    """k_0 of the bf16 k-depth term; 0: none."""
    blockwise_fp8_k_overhead: float = 0.0
    """k_0 of block-scaled fp8 GEMMs (HardwareRates.for_fp8_recipe swaps it in for the blockwise recipe); 0: as
    fp8_k_overhead."""
    bf16_kernel_s: float = 0.0
    fp8_kernel_s: float = 0.0
    """Fixed seconds of one GEMM kernel (GemmTiling.bf16_kernel_s / fp8_kernel_s): not in time_s (below 1 % of a
    dense training GEMM); kernel_s gives it to the per-expert GEMMs."""

    @classmethod
    def of(cls, tiling: GemmTiling | None, *, best_shape_flops: float, best_shape_flops_fp8: float,
           hbm_bytes_per_s: float) -> GemmShapeModel:
        """Anchor the model so that the MAMF shape runs at `best_shape_flops` (the measured MAMF rate x share)."""
        if tiling is None:
            return cls(sm_count=None, tile_m=1, tile_n=1, max_flops=best_shape_flops,
                       max_flops_fp8=best_shape_flops_fp8, hbm_bytes_per_s=hbm_bytes_per_s)
        model = cls(sm_count=tiling.sm_count, tile_m=tiling.tile_m, tile_n=tiling.tile_n, max_flops=1.0,
                    max_flops_fp8=1.0, hbm_bytes_per_s=hbm_bytes_per_s)
        at_best, k_depth_at_best, k_depth_at_best_fp8 = 1.0, 1.0, 1.0
        if tiling.mamf_shape is not None:
            m, n, k = tiling.mamf_shape
            at_best = float(model.wave_efficiency(np.array([m], float), np.array([n], float))[0])
            k_depth_at_best = k / (k + tiling.bf16_k_overhead)
            # the fp8 MAMF was measured at a long k too (gemm.yaml sources.mamf), taken at the bf16 shape's k
            k_depth_at_best_fp8 = k / (k + tiling.fp8_k_overhead)
        return cls(sm_count=tiling.sm_count, tile_m=tiling.tile_m, tile_n=tiling.tile_n,
                   max_flops=best_shape_flops / at_best / k_depth_at_best,
                   max_flops_fp8=best_shape_flops_fp8 / at_best / k_depth_at_best_fp8,
                   hbm_bytes_per_s=hbm_bytes_per_s, fp8_k_overhead=tiling.fp8_k_overhead,
                   bf16_k_overhead=tiling.bf16_k_overhead, blockwise_fp8_k_overhead=tiling.blockwise_fp8_k_overhead,
                   bf16_kernel_s=tiling.bf16_kernel_s, fp8_kernel_s=tiling.fp8_kernel_s)

    def kernel_s(self, fp8: np.ndarray) -> np.ndarray:
        """Fixed seconds of one GEMM kernel of each precision (the per-kernel term of the k-depth fits)."""
        return np.where(fp8, self.fp8_kernel_s, self.bf16_kernel_s)

    def wave_efficiency(self, m: np.ndarray, n: np.ndarray, batch: np.ndarray | float = 1.0,
                        sm_margin: int = 0, m_sd: np.ndarray | float = 0.0) -> np.ndarray:
        """Useful share of the SM-tile slots paid for, m n batch / (waves x SMs x tile area), for the best of the
        library's tile and its half-height variant, in either orientation. The half tile reuses each loaded operand
        over fewer outputs, so its per-SM rate is scaled by its reuse tm tn / (tm + tn) relative to the full tile's
        (operand loads per MAC, the shared-memory roofline of a tiled GEMM). `m_sd`: the rows of each GEMM of the
        batch vary about m with this standard deviation, independently (a dropless expert's routed rows), so the
        row tiles and the waves are their expectations (normal.ceil_moments; the batch's tiles a normal sum):
        about half a tile more than m / tile per GEMM, and no wave step at an exact tile fit."""
        if self.sm_count is None:
            return np.ones_like(np.asarray(m, dtype=float))
        sms = float(self.sm_count - sm_margin)
        tm, tn = self.tile_m, self.tile_n
        half = tm // 2
        full_reuse = tm * tn / (tm + tn)
        useful = m * n * batch
        spread = np.any(np.asarray(m_sd) > 0)
        if spread:
            moments = {d: ceil_moments(m, m_sd, d) for d in {tm, tn, half}}
            ceil_m = {d: mean for d, (mean, _) in moments.items()}
        else:  # exact tiles (dense GEMMs, drop-and-pad experts): the search's hot path, no moment arrays
            ceil_m = {d: np.ceil(m / d) for d in {tm, tn, half}}
        ceil_n = {d: np.ceil(n / d) for d in {tm, tn, half}}
        best = np.zeros_like(useful, dtype=float)
        waves = np.empty_like(best)
        for a, b in ((tm, tn), (tn, tm), (half, tn), (tn, half)):
            # in place: these arrays span every candidate layout of a search
            np.multiply(ceil_m[a], ceil_n[b], out=waves)
            waves *= batch / sms
            if spread:  # the batch's tiles: a sum of `batch` independent GEMMs' (normal), over the SMs
                waves = expected_ceil(waves, np.sqrt(moments[a][1] * batch) * ceil_n[b] / sms, 1.0)
            else:
                np.ceil(waves, out=waves)
            np.maximum(waves, 1.0, out=waves)
            scale = min(1.0, a * b / (a + b) / full_reuse) / (sms * a * b)
            np.divide(scale, waves, out=waves)
            np.maximum(best, waves, out=best)
        best *= useful
        return best

    def k_depth(self, k: np.ndarray, fp8: np.ndarray) -> np.ndarray:
        """k / (k + k_0) of each GEMM's precision: the fixed per-tile prologue/epilogue over its k-loop (module
        docstring); 1 where that precision has no k_0."""
        k_0 = np.where(fp8, self.fp8_k_overhead, self.bf16_k_overhead) if fp8.any() else self.bf16_k_overhead
        return k / np.maximum(k + k_0, 1.0)

    def time_s(self, m: np.ndarray, n: np.ndarray, k: np.ndarray, fp8: np.ndarray | bool = False,
               batch: np.ndarray | float = 1.0, sm_margin: int = 0,
               output_bytes: np.ndarray | float = OUTPUT_BYTES, m_sd: np.ndarray | float = 0.0) -> np.ndarray:
        """Seconds of one (batched) GEMM C[m,n] = A[m,k] B[k,n]; 0 when any dimension is 0. `output_bytes`: HBM
        bytes per element of C (OUTPUT_BYTES written; a GEMM that accumulates into C reads it too: beta = 1).
        `m_sd`: the standard deviation of each batched GEMM's rows about m (wave_efficiency)."""
        m, n, k = (np.asarray(x, dtype=float) for x in (m, n, k))
        fp8 = np.asarray(fp8, dtype=bool)
        flops = 2.0 * m * n * k * batch
        eff = np.array(np.broadcast_to(self.wave_efficiency(np.maximum(m, 1.0), np.maximum(n, 1.0), batch, sm_margin,
                                                           m_sd),
                                       flops.shape))
        rate = np.where(fp8, self.max_flops_fp8, self.max_flops) if fp8.any() else self.max_flops
        if (self.fp8_k_overhead and fp8.any()) or (self.bf16_k_overhead and not fp8.all()):
            eff *= self.k_depth(k, fp8)
        if sm_margin and self.sm_count:
            # SMs held by a concurrent communication kernel: the GEMM runs on the rest at the same per-SM rate.
            eff *= (self.sm_count - sm_margin) / self.sm_count
        eff *= rate
        compute = np.divide(flops, eff, out=eff, where=flops > 0)
        operand_bytes = np.where(fp8, 1.0, 2.0) if fp8.any() else 2.0
        traffic = batch * ((m * k + k * n) * operand_bytes + m * n * output_bytes) / self.hbm_bytes_per_s
        np.maximum(compute, traffic, out=compute)
        compute[flops <= 0] = 0.0
        return compute
