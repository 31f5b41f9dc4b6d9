"""The reduction-depth constant k_0 of gemm.yaml (bf16_k_overhead, and fp8_k_overhead on sm_100) fitted on OpenXLA's
published GEMM performance table (data/xla_matmul_ptable.csv); the per-tensor fp8 k_0 of Hopper (fp8_k_overhead on
GH100) fitted on our own H200 sweep (data/h200_gemm_kdepth.csv, bench/bench_gemm_k.py); and their checks.

Model of a measured batched GEMM b x (m x k) x (k x n), one per (b, m, n) shape family:
    time = kernel_s + max(2 b m n k / (rate_shape x k / (k + k_0)),  operand and result bytes / HBM)
with each shape's long-k rate free (so the GPU's tile and wave losses, which the planner prices apart in
models/hardware/gemm.py, do not leak into k_0), one per-kernel fixed time and one k_0, fitted by log least squares
on the 60 entries whose m and n are 2,048 or 4,096 (the k-loop dominates; smaller shapes are launch- and wave-bound).

Our own sweep is fitted the same way on all its rows (M = N = 4096 and 8192, k 128 .. 16,384, three passes), each
rate divided by the reference GEMM timed around it and multiplied by the run's median reference (its header: the
H200's clock moved with power, up to 20 % between passes).

    python -m clusterplan.reference.gemm_kdepth      # every fit and check, as gemm.yaml's sources quote them
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from clusterplan.hardware_db import get_gpu
from clusterplan.models.hardware.gemm import OUTPUT_BYTES
from clusterplan.reference.report import read_rows

PTABLE_CSV = "xla_matmul_ptable.csv"
LARGE_MIN = 2048
"""Fit rows: m and n both at least this (60 of each table's 375 entries)."""
OWN_CSV = "h200_gemm_kdepth.csv"
SM_GPU = {"sm_90": "H100-SXM5-80GB", "sm_100": "B200", "own_h200": "H200-SXM-141GB"}
"""The GPU whose HBM roofline prices each section's rows (XLA's hlo_op_profiles name sm_90 'NVIDIA H100 80GB HBM3';
own_h200: our own sweep)."""
HBM_BYTES_PER_S = {sm: get_gpu(name).hbm_bytes_per_s * get_gpu(name).hbm_fraction for sm, name in SM_GPU.items()}
"""gpus.yaml's HBM bandwidth x its achieved fraction, as models/hardware/rates.py prices it."""
OPERAND_BYTES = {"bf16": 2.0, "fp8": 1.0}
"""Both dtypes write bf16 results (gemm.OUTPUT_BYTES; the table's keys: bf16 x bf16 -> bf16, f8e4m3fn x f8e4m3fn ->
bf16)."""


@dataclass(frozen=True)
class PtableRows:
    """One (version, sm, dtype) slice of the table as arrays."""

    version: str
    sm: str
    dtype: str
    batch: np.ndarray
    m: np.ndarray
    n: np.ndarray
    k: np.ndarray
    flops_per_s: np.ndarray


@dataclass(frozen=True)
class KDepthFit:
    """The fitted k_0 with the per-kernel time and the residuals (predicted / measured - 1) of the fitted rows."""

    rows: PtableRows
    k_overhead: float
    kernel_s: float
    shape_rates_flops_per_s: dict[tuple[int, int, int], float]
    residuals: np.ndarray
    residuals_without_k: np.ndarray
    """The same fit with k_0 held at 0 (shape rates and kernel time refitted)."""

    def rms(self, without_k: bool = False) -> float:
        r = self.residuals_without_k if without_k else self.residuals
        return float(np.sqrt(np.mean(r ** 2)))


def ptable_rows(version: str, sm: str, dtype: str, *, large: bool = True) -> PtableRows:
    rows = [r for r in read_rows(PTABLE_CSV) if (r["version"], r["sm"], r["dtype"]) == (version, sm, dtype)]
    if large:
        rows = [r for r in rows if int(r["m"]) >= LARGE_MIN and int(r["n"]) >= LARGE_MIN]
    if not rows:
        raise ValueError(f"{PTABLE_CSV}: no rows for version {version}, {sm}, {dtype}")
    cols = {c: np.array([float(r[c]) for r in rows]) for c in ("b", "m", "n", "k", "flops_per_s")}
    return PtableRows(version=version, sm=sm, dtype=dtype, batch=cols["b"], m=cols["m"], n=cols["n"], k=cols["k"],
                      flops_per_s=cols["flops_per_s"])


def own_rows(run: int, dtype: str, scaling: str, *, normalised: bool = True) -> PtableRows:
    """One (run, dtype, scaling) slice of our own H200 sweep; `normalised`: each rate x the run's median reference rate
    / the reference rate timed around it (run 3 only: the clock divided out)."""
    rows = [r for r in read_rows(OWN_CSV) if (int(r["run"]), r["dtype"], r["scaling"]) == (run, dtype, scaling)]
    if not rows:
        raise ValueError(f"{OWN_CSV}: no rows for run {run}, {dtype}, {scaling}")
    cols = {c: np.array([float(r[c]) for r in rows]) for c in ("m", "n", "k", "tflops")}
    rate = cols["tflops"] * 1e12
    if normalised:
        ref = np.array([float(r["ref_tflops"]) for r in rows])
        rate = rate * np.median(ref) / ref
    return PtableRows(version=f"run{run}", sm="own_h200", dtype=dtype, batch=np.ones(len(rows)), m=cols["m"],
                      n=cols["n"], k=cols["k"], flops_per_s=rate)


def predicted_flops_per_s(rows: PtableRows, k_overhead: float, kernel_s: float,
                          shape_rates: np.ndarray, shape_index: np.ndarray) -> np.ndarray:
    """The module docstring's model of each row's measured rate."""
    flops = 2.0 * rows.batch * rows.m * rows.n * rows.k
    compute_s = flops / (shape_rates[shape_index] * rows.k / (rows.k + k_overhead))
    traffic_s = rows.batch * ((rows.m + rows.n) * rows.k * OPERAND_BYTES[rows.dtype]
                              + rows.m * rows.n * OUTPUT_BYTES) / HBM_BYTES_PER_S[rows.sm]
    return flops / (kernel_s + np.maximum(compute_s, traffic_s))


def fit_k_overhead(rows: PtableRows) -> KDepthFit:
    shapes = sorted({(int(b), int(m), int(n)) for b, m, n in zip(rows.batch, rows.m, rows.n, strict=True)})
    index = np.array([shapes.index((int(b), int(m), int(n)))
                      for b, m, n in zip(rows.batch, rows.m, rows.n, strict=True)])
    tflops = 1e12  # parameters in TFLOP/s and microseconds keep the solver well scaled

    def residual(params: np.ndarray, k_overhead: float | None) -> np.ndarray:
        k0, kernel_us, rates = (params[0], params[1], params[2:]) if k_overhead is None else \
            (k_overhead, params[0], params[1:])
        return np.log(predicted_flops_per_s(rows, k0, kernel_us * 1e-6, rates * tflops, index) / rows.flops_per_s)

    start_rates = [1000.0] * len(shapes)
    fit = least_squares(residual, [200.0, 3.0, *start_rates], args=(None,),
                        bounds=([0.0, 0.0] + [10.0] * len(shapes), [1e4, 100.0] + [1e4] * len(shapes)))
    plain = least_squares(residual, [3.0, *start_rates], args=(0.0,),
                          bounds=([0.0] + [10.0] * len(shapes), [100.0] + [1e4] * len(shapes)))
    k0, kernel_us, rates = fit.x[0], fit.x[1], fit.x[2:]
    return KDepthFit(rows=rows, k_overhead=float(k0), kernel_s=float(kernel_us) * 1e-6,
                     shape_rates_flops_per_s={s: float(r) * tflops for s, r in zip(shapes, rates, strict=True)},
                     residuals=np.expm1(residual(fit.x, None)), residuals_without_k=np.expm1(residual(plain.x, 0.0)))


FITS = (("372d578", "sm_90", "bf16"), ("a305421", "sm_100", "bf16"), ("a305421", "sm_100", "fp8"))
"""The fits gemm.yaml carries: H100 bf16 (bf16_k_overhead of the GH100 GPUs), B200 bf16 and fp8 (B200, GB200)."""
CHECKS = (("9bebee8", "sm_90", "bf16"), ("a305421", "sm_90", "bf16"))
"""Later re-measurements of the sm_90 bf16 table: fitted alike, not used for the constant."""


OWN_FIT = (3, "fp8", "tensor")
"""Our own H200 sweep's per-tensor fp8 slice (cuBLAS, clock divided out): fp8_k_overhead of the GH100 GPUs."""
OWN_CHECKS = ((4, "fp8", "tensor", True), (3, "bf16", "none", True), (4, "bf16", "none", True),
              (3, "fp8", "row", True), (3, "fp8", "tensor", False), (2, "fp8", "tensor", False))
"""Checks, not used for a constant: the re-measurement on a fresh machine (run 4), bf16 against the XLA fit (128),
CUTLASS row-wise against DeepGEMM's block-scaled 720, and the per-tensor fit without the clock division (run 3) and on
the run without the reference GEMM (run 2)."""


def main() -> None:
    for label, (run, dtype, scaling, normalised) in (("fitted", (*OWN_FIT, True)),
                                                     *(("checked", c) for c in OWN_CHECKS)):
        f = fit_k_overhead(own_rows(run, dtype, scaling, normalised=normalised))
        print(f"{label:8s} own H200 run {run} {dtype:4s} {scaling:6s} {'clock-divided' if normalised else 'raw':13s} "
              f"rows {len(f.residuals)}: k_0 = {f.k_overhead:.0f}, kernel {f.kernel_s * 1e6:.1f} us, residuals "
              f"{f.residuals.min():+.1%} .. {f.residuals.max():+.1%} (rms {f.rms():.1%}); without the k term rms "
              f"{f.rms(without_k=True):.1%}")
    for label, slices in (("fitted", FITS), ("checked", CHECKS)):
        for version, sm, dtype in slices:
            f = fit_k_overhead(ptable_rows(version, sm, dtype))
            print(f"{label:8s} {version} {sm:6s} {dtype:4s} rows {len(f.residuals)}: k_0 = {f.k_overhead:.0f}, "
                  f"kernel {f.kernel_s * 1e6:.1f} us, residuals {f.residuals.min():+.1%} .. {f.residuals.max():+.1%} "
                  f"(rms {f.rms():.1%}); without the k term {f.residuals_without_k.min():+.1%} .. "
                  f"{f.residuals_without_k.max():+.1%} (rms {f.rms(without_k=True):.1%})")


if __name__ == "__main__":
    main()
