"""On an NVIDIA GPU: forward and backward throughput of PyTorch's attention kernels, in the FlashAttention-3 paper's
benchmark setting, to set beside hardware_db/data/attention_kernels.yaml's published curves.

    python bench/bench_attention.py --out attention.csv

Setting (FA3 paper Sec. 4.1): batch x seq = 16k tokens, hidden 2048 (heads = 2048 / head_dim), bf16, causal and not,
seq 512 .. 16k, head dim 64 and 128, and causal head dim 128 at 32k and 64k (one sequence; LONG_SEQS). Each of torch's
SDPA backends (flash = FlashAttention-2 in PyTorch, cudnn,
efficient = xformers' memory-efficient kernel) is timed with CUDA events over back-to-back calls, median of 7
samples of at least 2 ms: forward under no_grad; backward as autograd.grad of the output (retain_graph, as the
FlashAttention benchmark's benchmark_backward times it). FLOPs as the papers count them: forward 4 x batch x heads x
seq^2 x head_dim, halved when causal; backward 2.5 x forward. Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gemm_k import out_and_meta  # noqa: E402

TOKENS = 16384
HIDDEN = 2048
SEQS = (512, 1024, 2048, 4096, 8192, 16384)
HEAD_DIMS = (64, 128)
BACKENDS = ("flash", "cudnn", "efficient")
LONG_SEQS = (32768, 65536)
"""Beyond the FA3 paper's 16k, causal head dim 128 only, one sequence of 16 heads, FlashAttention-2 and cuDNN: where
attention_kernels.yaml holds the 16k rate flat and the long-sequence reference rows (reference/nemo_long.py) run."""
LONG_BACKENDS = ("flash", "cudnn")
BWD_OVER_FWD_FLOPS = 2.5
"""FlashAttention-2 paper Sec. 4.1: the backward pass is 2.5x the forward's matmul FLOPs."""
SAMPLE_S = 2e-3
SAMPLES = 7
FIELDS = ("gpu", "torch", "cuda", "date", "backend", "direction", "causal", "head_dim", "seq", "batch", "heads",
          "median_s", "p10_s", "p90_s", "inner", "tflops")


def timed(fn, *, sample_s: float, samples: int) -> tuple[float, float, float, int]:  # noqa: ANN001
    import numpy as np
    import torch

    for _ in range(2):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    one_s = max(start.elapsed_time(end) / 1e3, 1e-7)
    inner = int(min(100, max(1, -(-sample_s // one_s))))
    times = []
    for _ in range(samples):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / inner)
    t = np.asarray(times)
    return float(np.median(t)), float(np.percentile(t, 10)), float(np.percentile(t, 90)), inner


def measure_case(backend: object, shape: tuple[int, int, int, int], causal: bool) -> tuple[tuple, tuple]:
    """Forward and backward timings of one SDPA backend on one (batch, heads, seq, head_dim) shape."""
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch.nn.attention import sdpa_kernel

    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    with sdpa_kernel(backend):
        with torch.no_grad():
            fwd = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                        sample_s=SAMPLE_S, samples=SAMPLES)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        dout = torch.randn_like(out)
        bwd = timed(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True),
                    sample_s=SAMPLE_S, samples=SAMPLES)
    return fwd, bwd


def main() -> None:
    started = out_and_meta(__doc__)
    if started is None:
        return
    out, meta = started
    from torch.nn.attention import SDPBackend

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION}
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        cases = [(name, head_dim, causal, seq) for name in BACKENDS for head_dim in HEAD_DIMS
                 for causal in (True, False) for seq in SEQS]
        cases += [(name, 128, True, seq) for name in LONG_BACKENDS for seq in LONG_SEQS]
        for name, head_dim, causal, seq in cases:
            batch, heads = max(1, TOKENS // seq), HIDDEN // head_dim
            fwd_flops = 4 * batch * heads * seq * seq * head_dim / (2 if causal else 1)
            try:
                fwd, bwd = measure_case(backend[name], (batch, heads, seq, head_dim), causal)
            except (RuntimeError, TypeError, NotImplementedError) as exc:
                print(f"{name} hd{head_dim} causal={causal} seq {seq}: not run "
                      f"({str(exc).splitlines()[0][:120]})", file=sys.stderr)
                continue
            for direction, (median_s, p10_s, p90_s, inner), flops in (
                    ("forward", fwd, fwd_flops), ("backward", bwd, BWD_OVER_FWD_FLOPS * fwd_flops)):
                tflops = flops / median_s / 1e12
                writer.writerow({**meta, "backend": name, "direction": direction, "causal": causal,
                                 "head_dim": head_dim, "seq": seq, "batch": batch, "heads": heads,
                                 "median_s": f"{median_s:.9g}", "p10_s": f"{p10_s:.9g}",
                                 "p90_s": f"{p90_s:.9g}", "inner": inner, "tflops": f"{tflops:.1f}"})
                print(f"{name:>9} {direction:>8} hd {head_dim:>3} causal {causal!s:>5} seq {seq:>5}: "
                      f"{tflops:6.1f} TFLOP/s", flush=True)
            f.flush()


if __name__ == "__main__":
    main()
