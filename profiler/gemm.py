"""GEMM throughput: one (m, n, k) shape in one dtype, timed on the local device.

F = 2*m*n*k FLOPs per GEMM (one multiply-add is two FLOPs); achieved TFLOP/s = F / median time.
fp8 uses torch._scaled_mm (Hopper and newer), whose dimensions must be multiples of 16.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clusterplan.profiler.sweep import Measurement
from clusterplan.profiler.timer import adaptive_repeats, summarize, time_runs

CANDIDATE_DTYPES = {"cpu": ("fp32", "bf16"), "cuda": ("bf16", "fp16", "fp32", "fp8")}


def torch_dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
            "fp8": torch.float8_e4m3fn}[name]


def sample_seconds(cuda: bool) -> float:
    """Shortest timed sample: 1 ms of queued kernels on GPU (launch gaps hidden, as in a real step), 20 ms on CPU:
    longer than a scheduler time slice, so processes that share cores measure their share of them (a short sample
    mostly runs between preemptions, at a whole core's speed, and its median would hide the sharing)."""
    return 1e-3 if cuda else 2e-2


def _round16(x: int) -> int:
    return -(-x // 16) * 16


def gemm_fn(m: int, n: int, k: int, dtype: str, device: Any) -> Callable[[], object]:
    """A closure that runs C = A @ B once on fresh random operands of the given shape."""
    import torch

    if dtype == "fp8":
        a = torch.randn(m, k, device=device).to(torch.float8_e4m3fn)
        b = torch.randn(n, k, device=device).to(torch.float8_e4m3fn).t()  # column-major, as _scaled_mm wants
        one = torch.ones((), device=device)
        return lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    a = torch.randn(m, k, device=device, dtype=torch_dtype(dtype))
    b = torch.randn(k, n, device=device, dtype=torch_dtype(dtype))
    return lambda: torch.matmul(a, b)


def available_dtypes(device: Any) -> list[str]:
    """The dtypes whose GEMM runs on this device (bf16 on an old CPU or fp8 before Hopper may not)."""
    names = []
    for name in CANDIDATE_DTYPES[device.type]:
        try:
            gemm_fn(32, 32, 32, name, device)()
        except (RuntimeError, TypeError, NotImplementedError, AttributeError):
            continue
        names.append(name)
    return names


def measure_gemm(meas: Measurement, device: Any, *, budget_s: float) -> dict[str, Any]:
    m, n, k = meas.shape
    if meas.dtype == "fp8":
        m, n, k = _round16(m), _round16(n), _round16(k)
    fn = gemm_fn(m, n, k, meas.dtype, device)
    cuda = device.type == "cuda"
    repeats, inner = adaptive_repeats(fn, cuda=cuda, budget_s=budget_s, sample_s=sample_seconds(cuda))
    timing = summarize(time_runs(fn, cuda=cuda, warmup=1, repeats=repeats, inner=inner))
    flops = 2 * m * n * k
    return {"key": meas.key, "dtype": meas.dtype, "m": m, "n": n, "k": k, "flops": flops, **timing.to_dict(),
            "inner": inner, "tflops": flops / timing.median_s / 1e12}
