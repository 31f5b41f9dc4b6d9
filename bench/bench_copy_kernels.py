"""On an NVIDIA GPU: the HBM rate of the PyTorch elementwise kernels an fp32-parameter, bf16-autocast training step
runs per micro-batch (validate's runtime): fp32 -> bf16 weight casts, bf16 -> fp32 gradient casts, fp32 gradient
accumulation, beside a same-dtype copy.

    python bench/bench_copy_kernels.py --out copy_kernels.csv

Each op on tensors of 2^26 elements (256 MiB in fp32) and on a Llama-8B MLP weight (14336 x 4096), captured into a
CUDA graph (>= 2 ms per replay), median of 7 replays; bytes/s counts each element's read and write bytes (an add
reads two). Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gemm_k import REPLAYS, SAMPLE_S, graph_of, out_and_meta, replay_times  # noqa: E402

SHAPES = ((1 << 26,), (14336, 4096))
OPS = ("copy_fp32", "cast_fp32_to_bf16", "cast_bf16_to_fp32", "add_fp32")
"""(name): bytes per element read + written: copy 4 + 4, fp32 -> bf16 4 + 2, bf16 -> fp32 2 + 4, a += b 4 + 4 + 4."""
BYTES_PER_ELEMENT = {"copy_fp32": 8, "cast_fp32_to_bf16": 6, "cast_bf16_to_fp32": 6, "add_fp32": 12}
FIELDS = ("gpu", "torch", "cuda", "date", "op", "shape", "elements", "median_s", "inner", "bytes_per_s")


def op_closure(op: str, shape: tuple[int, ...]):  # noqa: ANN201
    import torch

    f32 = torch.randn(shape, device="cuda")
    if op == "copy_fp32":
        out = torch.empty_like(f32)
        return lambda: out.copy_(f32)
    if op == "cast_fp32_to_bf16":
        return lambda: f32.to(torch.bfloat16)
    if op == "cast_bf16_to_fp32":
        b16 = f32.to(torch.bfloat16)
        return lambda: b16.to(torch.float32)
    other = torch.randn(shape, device="cuda")
    return lambda: f32.add_(other)


def main() -> None:
    started = out_and_meta(__doc__)
    if started is None:
        return
    out, meta = started
    import numpy as np

    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for shape in SHAPES:
            elements = int(np.prod(shape))
            for op in OPS:
                fn = op_closure(op, shape)  # holds the graph's input tensors while it replays
                graph, inner = graph_of(fn, sample_s=SAMPLE_S)
                median_s = float(np.median(replay_times(graph, inner, REPLAYS)))
                rate = BYTES_PER_ELEMENT[op] * elements / median_s
                writer.writerow({**meta, "op": op, "shape": "x".join(map(str, shape)), "elements": elements,
                                 "median_s": f"{median_s:.9g}", "inner": inner, "bytes_per_s": f"{rate:.4g}"})
                print(f"{op:>18} {'x'.join(map(str, shape)):>12}: {rate / 1e12:6.2f} TB/s", flush=True)
                del graph, fn


if __name__ == "__main__":
    main()
