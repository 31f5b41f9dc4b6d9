"""On an NVIDIA GPU: the routed experts' GEMMs of MoE layers, timed as one batched GEMM (torch.bmm over the local
experts, equal token counts: forced balance, as the reference runs) and as the experts' GEMMs one after another in
one stream (a per-expert loop without TE's multi-stream), to set beside the model's grouped-GEMM price.

    python bench/bench_grouped_gemm.py --out grouped_gemm.csv

Shapes: `estimate --gemms` expert rows (forward, input gradient, weight gradient of experts in / out) of CONFIGS, bf16.
Each variant is captured into a CUDA graph (>= 2 ms per replay), median of 7 replays, with the same 8192^3 reference
GEMM timed around it as bench_gemm_k.py does (ref_tflops), so the clock can be divided out. Without a GPU it says so
and exits 0.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gemm_k import (  # noqa: E402
    REF_REPLAYS,
    REF_SIDE,
    REPLAYS,
    SAMPLE_S,
    estimated_gemms,
    gemm_closure,
    graph_of,
    out_and_meta,
    replay_times,
)

CLUSTER = "dgx-h100:4"
CONFIGS = (
    ("qwen3-30b-a3b", "ep=8,dp=32,mbs=2,gbs=512,seq=4096"),
    ("qwen3-235b-a22b", "ep=16,dp=32,mbs=1,gbs=512,seq=4096"),
    ("gpt-oss-120b", "ep=8,dp=32,mbs=2,gbs=512,seq=4096"),
    ("deepseek-v3", "ep=32,dp=32,mbs=1,gbs=512,seq=4096"),
)
VARIANTS = ("bmm", "loop")
FIELDS = ("gpu", "torch", "cuda", "date", "model", "matrix", "pass", "m", "n", "k", "count", "variant", "median_s",
          "inner", "tflops", "ref_tflops")


def expert_shapes() -> list[dict]:
    """The routed experts' GEMMs of CONFIGS, as estimate --gemms lists them."""
    return [{"model": model, "matrix": g.matrix, "pass": g.gemm_pass, "m": int(g.m), "n": int(g.n), "k": int(g.k),
             "count": int(g.count)} for model, _, g in estimated_gemms(CLUSTER, CONFIGS) if g.matrix.startswith("experts")]


def closure(variant: str, m: int, n: int, k: int, count: int):  # noqa: ANN201
    import torch

    a = torch.randn(count, m, k, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(count, k, n, device="cuda", dtype=torch.bfloat16)
    if variant == "bmm":
        return lambda: torch.bmm(a, b)

    def loop() -> None:
        for i in range(count):
            torch.mm(a[i], b[i])

    return loop


def main() -> None:
    started = out_and_meta(__doc__)
    if started is None:
        return
    out, meta = started
    import numpy as np
    import torch

    ref_fn = gemm_closure(REF_SIDE, REF_SIDE, REF_SIDE, "bf16", "none", torch.device("cuda"))  # its operands live on
    ref_graph, ref_inner = graph_of(ref_fn, sample_s=SAMPLE_S)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for s in expert_shapes():
            for variant in VARIANTS:
                fn = closure(variant, s["m"], s["n"], s["k"], s["count"])  # keeps the graph's operands alive
                graph, inner = graph_of(fn, sample_s=SAMPLE_S)
                ref_s = replay_times(ref_graph, ref_inner, REF_REPLAYS)
                median_s = float(np.median(replay_times(graph, inner, REPLAYS)))
                ref_s += replay_times(ref_graph, ref_inner, REF_REPLAYS)
                flops = 2.0 * s["m"] * s["n"] * s["k"] * s["count"]
                writer.writerow({**meta, **s, "variant": variant, "median_s": f"{median_s:.9g}", "inner": inner,
                                 "tflops": f"{flops / median_s / 1e12:.2f}",
                                 "ref_tflops": f"{2 * REF_SIDE ** 3 / float(np.median(ref_s)) / 1e12:.2f}"})
                print(f"{s['model']:>16} {s['matrix']:>12} {s['pass']:>8} {variant:>4}: "
                      f"{flops / median_s / 1e12:7.1f} TFLOP/s", flush=True)
                del graph, fn
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
