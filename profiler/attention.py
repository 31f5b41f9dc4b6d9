"""Scaled-dot-product attention forward and forward+backward, causal, for the raw record.

FLOPs: forward 4 * b * h * s^2 * d (QK^T and PV, 2 FLOPs per multiply-add), halved by the causal mask;
backward 2.5x forward (FlashAttention-2, Dao 2023, section 3.1 benchmark convention).
"""

from __future__ import annotations

from typing import Any

from clusterplan.profiler.gemm import sample_seconds, torch_dtype
from clusterplan.profiler.sweep import Measurement
from clusterplan.profiler.timer import adaptive_repeats, summarize, time_runs


def measure_attention(meas: Measurement, device: Any, *, budget_s: float) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    b, h, s, d = meas.shape
    q, k, v = (torch.randn(b, h, s, d, device=device, dtype=torch_dtype(meas.dtype), requires_grad=True)
               for _ in range(3))
    grad = torch.randn(b, h, s, d, device=device, dtype=torch_dtype(meas.dtype))

    def fwd() -> object:
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def fwd_bwd() -> object:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return torch.autograd.grad(out, (q, k, v), grad)

    cuda = device.type == "cuda"
    fwd_flops = 4 * b * h * s * s * d / 2
    record: dict[str, Any] = {"key": meas.key, "dtype": meas.dtype, "batch": b, "heads": h, "seq": s, "head_dim": d,
                              "causal": True, "fwd_flops": fwd_flops, "bwd_flops": 2.5 * fwd_flops}
    for name, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        repeats, inner = adaptive_repeats(fn, cuda=cuda, budget_s=budget_s / 2, hi=30, sample_s=sample_seconds(cuda))
        timing = summarize(time_runs(fn, cuda=cuda, warmup=1, repeats=repeats, inner=inner))
        record[name] = {**timing.to_dict(), "inner": inner}
    record["fwd_tflops"] = fwd_flops / record["fwd"]["median_s"] / 1e12
    record["fwd_bwd_tflops"] = 3.5 * fwd_flops / record["fwd_bwd"]["median_s"] / 1e12
    return record
