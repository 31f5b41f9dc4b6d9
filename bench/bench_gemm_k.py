"""On an NVIDIA GPU: GEMM throughput against reduction depth k, bf16 and fp8 (per-tensor and row-wise scaling).

    python bench/bench_gemm_k.py --out gemm_k.csv [--budget-s 0.2]

The data behind a GEMM k-depth term (gemm.yaml `bf16_k_overhead` / `fp8_k_overhead`): for M = N in SIDES, every k
in DEPTHS, C = A @ B on the same random operands, captured `inner` times into one CUDA graph (so the CPU's launch
cost, ~10 us per torch call, does not starve the GPU at small k) and timed with CUDA events over 7 replays, median
per GEMM. Shapes run in a seeded random order, twice (two passes, two rows), after 2 s of large GEMMs bring the
clocks up, so clock drift does not line up with k. Around each shape the same dtype's 8192^3 GEMM (its own graph) is
replayed 3 times before and after, and `ref_tflops` (their median) is written beside the shape's rate: on a GPU
whose clocks move with power and heat (seen here: the same shape 20 % apart between passes), tflops / ref_tflops
is the shape's efficiency with the drift divided out. fp8 runs torch._scaled_mm with an e4m3 A (row-major)
and B (column-major) and a bf16 output: `tensor` scaling passes scalar scales (cuBLAS), `row` passes one scale per
row of A and per column of B (CUTLASS in PyTorch). One CSV row per shape, with the GPU, torch and CUDA versions and
the date, so the file is the measurement record the fit cites. Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIDES = (4096, 8192)
DEPTHS = (128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384)
KINDS = (("bf16", "none"), ("fp8", "tensor"), ("fp8", "row"))
FIELDS = ("gpu", "torch", "cuda", "date", "pass", "dtype", "scaling", "m", "n", "k", "median_s", "p10_s", "p90_s",
          "repeats", "inner", "tflops", "ref_tflops")
REF_SIDE = 8192
REF_REPLAYS = 3
SAMPLE_S = 2e-3
"""Each timed replay holds at least this much GPU work."""
REPLAYS = 7
SEED = 20261204


def gpu_run_meta() -> dict[str, str] | None:
    """The GPU, torch and CUDA versions and the date every GPU bench records; None (after saying so) without a GPU."""
    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to measure (this bench is for a GPU machine)")
        return None
    return {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": dt.date.today().isoformat()}


def out_and_meta(doc: str) -> tuple[Path, dict[str, str]] | None:
    """The --out path of a one-output GPU bench and its gpu_run_meta; None without a GPU (after saying so)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    meta = gpu_run_meta()
    return None if meta is None else (out, meta)


def estimated_gemms(cluster_name: str, configs: tuple[tuple[str, str], ...]) -> list[tuple[str, str, object]]:
    """(model, layout, LayerGemm) for every weight GEMM `estimate --gemms` lists for each (model, layout) of configs
    on the cluster: the shapes the GEMM benches time."""
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.training.estimate import estimate
    from clusterplan.models.training.layer_gemms import layer_gemms
    from clusterplan.models.training.layout import Layout

    cluster = load_cluster(cluster_name)
    return [(model, layout, g) for model, layout in configs
            for g in layer_gemms(estimate(load_model(model), cluster,
                                          Layout.parse(layout, world=cluster.world_size))).gemms]


def gemm_closure(m: int, n: int, k: int, dtype: str, scaling: str, device: object):  # noqa: ANN201
    import torch

    from clusterplan.profiler.gemm import gemm_fn

    if scaling != "row":
        return gemm_fn(m, n, k, dtype, device)
    a = torch.randn(m, k, device=device).to(torch.float8_e4m3fn)
    b = torch.randn(n, k, device=device).to(torch.float8_e4m3fn).t()
    scale_a = torch.ones((m, 1), device=device, dtype=torch.float32)
    scale_b = torch.ones((1, n), device=device, dtype=torch.float32)
    return lambda: torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16)


def graph_of(fn, *, sample_s: float):  # noqa: ANN001, ANN201
    """A CUDA graph of `inner` back-to-back calls of fn (at least sample_s of GPU work), and inner."""
    import torch

    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        fn()
    end.record()
    end.synchronize()
    one_s = max(start.elapsed_time(end) / 1e3 / 10, 1e-7)
    inner = int(min(200, max(1, -(-sample_s // one_s))))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(inner):
            fn()
    graph.replay()
    return graph, inner


def replay_times(graph, inner: int, replays: int) -> list[float]:  # noqa: ANN001
    """Seconds per call in each of `replays` timed replays."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / inner)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    import random

    import numpy as np
    import torch

    meta = gpu_run_meta()
    if meta is None:
        return
    device = torch.device("cuda", 0)
    warm = gemm_closure(8192, 8192, 8192, "bf16", "none", device)
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end:
        for _ in range(20):
            warm()
        torch.cuda.synchronize()
    del warm
    refs = {}
    for dtype, scaling in KINDS:
        ref_fn = gemm_closure(REF_SIDE, REF_SIDE, REF_SIDE, dtype, scaling, device)
        refs[dtype, scaling] = (*graph_of(ref_fn, sample_s=SAMPLE_S), ref_fn)
    ref_flops = 2 * REF_SIDE ** 3
    cases = [(dtype, scaling, side, k) for dtype, scaling in KINDS for side in SIDES for k in DEPTHS]
    order = random.Random(SEED)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        count = 0
        for pass_no in range(1, args.passes + 1):
            order.shuffle(cases)
            for dtype, scaling, side, k in cases:
                try:
                    fn = gemm_closure(side, side, k, dtype, scaling, device)
                    graph, inner = graph_of(fn, sample_s=SAMPLE_S)
                    ref_graph, ref_inner, _ = refs[dtype, scaling]
                    ref_s = replay_times(ref_graph, ref_inner, REF_REPLAYS)
                    t = np.asarray(replay_times(graph, inner, REPLAYS))
                    ref_s += replay_times(ref_graph, ref_inner, REF_REPLAYS)
                    median_s, p10_s, p90_s = (float(np.median(t)), float(np.percentile(t, 10)),
                                              float(np.percentile(t, 90)))
                    del graph
                except (RuntimeError, TypeError, NotImplementedError) as exc:
                    print(f"{dtype}/{scaling} {side}x{side}x{k}: not run ({str(exc).splitlines()[0]})",
                          file=sys.stderr)
                    continue
                tflops = 2 * side * side * k / median_s / 1e12
                writer.writerow({**meta, "pass": pass_no, "dtype": dtype, "scaling": scaling, "m": side, "n": side,
                                 "k": k, "median_s": f"{median_s:.9g}", "p10_s": f"{p10_s:.9g}",
                                 "p90_s": f"{p90_s:.9g}", "repeats": REPLAYS, "inner": inner,
                                 "tflops": f"{tflops:.2f}",
                                 "ref_tflops": f"{ref_flops / float(np.median(ref_s)) / 1e12:.2f}"})
                f.flush()
                count += 1
                print(f"pass {pass_no} {dtype:>5} {scaling:>6} {side:>5}x{side:<5} k {k:>6}: {tflops:8.1f} TFLOP/s",
                      flush=True)
                del fn
    print(f"wrote {args.out} ({count} rows)")


if __name__ == "__main__":
    main()
