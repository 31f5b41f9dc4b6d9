"""On an NVIDIA GPU: the weight GEMMs of real training layers, timed, to check the GEMM shape model on shapes it
was not fitted on.

    python bench/bench_gemm_shapes.py --out gemm_shapes.csv

For each layer of CONFIGS (dense models, tensor-parallel degrees 1-8, bf16 and fp8) the shapes come from
`estimate --gemms` (models/training/layer_gemms.py: forward, input-gradient and weight-gradient GEMM of every weight
matrix); each distinct m x n x k x precision is timed as bench_gemm_k.py times it: captured into one CUDA graph,
median of 7 replays, the same dtype's 8192^3 reference GEMM replayed around it (`ref_tflops`) so the clock's drift
can be divided out; bf16 through torch.matmul, fp8 per-tensor scaled through torch._scaled_mm (cuBLAS). Shapes run
in a seeded random order. Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

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

CLUSTER = "hgx-h200:1"
CONFIGS = (
    ("llama3.1-8b", "tp=1,mbs=2,seq=8192,dp=8,gbs=16"),
    ("llama3.1-8b", "tp=2,sp=1,mbs=1,seq=4096,dp=4,gbs=4"),
    ("llama3.1-70b", "tp=4,sp=1,mbs=1,seq=8192,dp=2,gbs=2"),
    ("llama3.1-70b", "tp=8,sp=1,mbs=1,seq=8192,dp=1,gbs=1"),
    ("llama3.1-405b", "tp=8,sp=1,mbs=1,seq=8192,dp=1,gbs=1"),
    ("mistral-nemo-12b", "tp=2,sp=1,mbs=1,seq=4096,dp=4,gbs=4"),
    ("gemma2-9b", "tp=1,mbs=1,seq=8192,dp=8,gbs=8"),
    ("megatron-gpt-145.6b", "tp=8,sp=1,mbs=1,seq=2048,dp=1,gbs=1"),
)
"""(model, layout) pairs: dense layers whose GEMMs span m, n, k from 1,792 to 53,248 (the mbs x seq tokens, the
hidden and FFN widths over tp)."""
PRECISIONS = ("bf16", "fp8")
FIELDS = ("gpu", "torch", "cuda", "date", "model", "layout", "matrix", "pass", "m", "n", "k", "precision",
          "median_s", "inner", "tflops", "ref_tflops")
SEED = 20261204


def layer_shapes() -> list[dict]:
    """Every (model, layout, precision) layer GEMM of CONFIGS, as estimate --gemms lists it."""
    configs = tuple((model, f"{layout},precision={precision}") for model, layout in CONFIGS for precision in PRECISIONS)
    return [{"model": model, "layout": layout, "matrix": g.matrix, "pass": g.gemm_pass, "m": int(g.m), "n": int(g.n),
             "k": int(g.k), "precision": g.precision} for model, layout, g in estimated_gemms(CLUSTER, configs)]


def main() -> None:
    started = out_and_meta(__doc__)
    if started is None:
        return
    out, meta = started
    import numpy as np
    import torch

    device = torch.device("cuda", 0)
    shapes = layer_shapes()
    distinct = sorted({(s["m"], s["n"], s["k"], s["precision"]) for s in shapes})
    random.Random(SEED).shuffle(distinct)
    scaling = {"bf16": "none", "fp8": "tensor"}
    refs = {}
    for precision in PRECISIONS:
        fn = gemm_closure(REF_SIDE, REF_SIDE, REF_SIDE, precision, scaling[precision], device)
        refs[precision] = (*graph_of(fn, sample_s=SAMPLE_S), fn)
    measured = {}
    for m, n, k, precision in distinct:
        fn = gemm_closure(m, n, k, precision, scaling[precision], device)
        graph, inner = graph_of(fn, sample_s=SAMPLE_S)
        ref_graph, ref_inner, _ = refs[precision]
        ref_s = replay_times(ref_graph, ref_inner, REF_REPLAYS)
        median_s = float(np.median(replay_times(graph, inner, REPLAYS)))
        ref_s += replay_times(ref_graph, ref_inner, REF_REPLAYS)
        measured[m, n, k, precision] = (median_s, inner, 2 * REF_SIDE ** 3 / float(np.median(ref_s)) / 1e12)
        print(f"{precision:>4} {m:>6} x {n:>6} x {k:>6}: {2 * m * n * k / median_s / 1e12:8.1f} TFLOP/s", flush=True)
        del graph, fn
        torch.cuda.empty_cache()
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for s in shapes:
            median_s, inner, ref_tflops = measured[s["m"], s["n"], s["k"], s["precision"]]
            writer.writerow({**meta, **s, "median_s": f"{median_s:.9g}", "inner": inner,
                             "tflops": f"{2 * s['m'] * s['n'] * s['k'] / median_s / 1e12:.2f}",
                             "ref_tflops": f"{ref_tflops:.2f}"})
    print(f"wrote {out} ({len(shapes)} layer GEMMs, {len(distinct)} distinct shapes)")


if __name__ == "__main__":
    main()
