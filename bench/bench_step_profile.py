"""On an NVIDIA GPU: where a validate training step's GPU time goes, by kernel category, to set beside the model's
terms (GEMMs, attention core, elementwise, optimizer) and find the one that misses.

    python bench/bench_step_profile.py --out step_profile.json [--budget-gib 60] [PLAN.yaml ...]

Each plan (default: bench/gpu_plans/*.yaml) runs on one GPU exactly as `validate` runs it (validate/run.py Trainer:
eager PyTorch layers, AdamW, bf16 autocast, the model scaled to --budget-gib), 2 warm-up steps, then 2 steps under
torch.profiler. Kernel time is summed by category from the kernels' names (CATEGORIES, first match wins); the step's
wall time (CUDA events) beside the GPU's busy time shows how much of the step the GPU idled, waiting on the CPU.
Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_gemm_k import gpu_run_meta  # noqa: E402

PLANS = sorted((ROOT / "bench" / "gpu_plans").glob("*.yaml"))
CATEGORIES = (
    ("attention", re.compile(r"flash|fmha|attention|sdpa", re.IGNORECASE)),
    ("gemm", re.compile(r"gemm|nvjet|cutlass|xmma|s16816|s1688|cublas|matmul|sm90_|sm80_", re.IGNORECASE)),
    ("optimizer", re.compile(r"multi_tensor|adam|foreach", re.IGNORECASE)),
    ("loss", re.compile(r"log_softmax|nll_loss|cross_entropy|softmax", re.IGNORECASE)),
    ("copy", re.compile(r"memcpy|memset|copy|cat_|fill", re.IGNORECASE)),
    ("elementwise", re.compile(r".")),
)
PROFILED_STEPS = 2
OPERATOR = re.compile(r"^(aten|c10d|autograd|torch|cuda|nccl:|record_param)::|^Optimizer\.|#|^ProfilerStep")
"""Profiler keys that are operators or ranges, not kernels."""


def category(name: str) -> str:
    return next(cat for cat, pattern in CATEGORIES if pattern.search(name))


def profile_plan(path: Path, budget_gib: float, device: object) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from clusterplan.models.training.planfile import read_plan
    from clusterplan.validate.rules import executed_layout
    from clusterplan.validate.run import RunSpec, Trainer
    from clusterplan.validate.scale import auto_factor, scale_model

    plan = read_plan(path)
    layout = executed_layout(plan.layout)
    factor = auto_factor(plan.model, layout, budget_gib * 2**30)
    model = scale_model(plan.model, layout, factor)
    trainer = Trainer(RunSpec(model=model, layout=layout, warmup_steps=2, steps=PROFILED_STEPS), device)
    for _ in range(2):
        trainer.step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start.record()
        for _ in range(PROFILED_STEPS):
            trainer.step()
        end.record()
        torch.cuda.synchronize()
    wall_ms = start.elapsed_time(end) / PROFILED_STEPS
    kernels: dict[str, list[float]] = {}
    for avg in prof.key_averages():
        self_us = float(getattr(avg, "self_device_time_total", 0.0) or getattr(avg, "self_cuda_time_total", 0.0))
        # kernels and copies only: an operator (aten::mm) or a record_function range (Optimizer.step#AdamW.step)
        # reports its kernels' time as its own too
        if self_us > 0 and not OPERATOR.match(avg.key):
            entry = kernels.setdefault(avg.key, [0.0, 0])
            entry[0] += self_us / 1e3 / PROFILED_STEPS
            entry[1] += int(avg.count) // PROFILED_STEPS
    by_category: dict[str, float] = {}
    for name, (ms, _) in kernels.items():
        by_category[category(name)] = by_category.get(category(name), 0.0) + ms
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:40]
    del trainer
    torch.cuda.empty_cache()
    return {"plan": path.name, "model": model.name, "scale": factor, "layout": layout.to_dict(),
            "step_wall_ms": round(wall_ms, 3), "gpu_busy_ms": round(sum(v[0] for v in kernels.values()), 3),
            "by_category_ms": {k: round(v, 3) for k, v in sorted(by_category.items())},
            "top_kernels": [{"name": n[:160], "ms_per_step": round(v[0], 3), "calls_per_step": v[1],
                             "category": category(n)} for n, v in top]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plans", nargs="*", type=Path, default=PLANS)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-gib", type=float, default=60.0)
    args = parser.parse_args()
    meta = gpu_run_meta()
    if meta is None:
        return
    import torch
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    results = []
    try:
        for path in args.plans:
            r = profile_plan(path, args.budget_gib, device)
            results.append(r)
            cats = ", ".join(f"{k} {v:.1f}" for k, v in r["by_category_ms"].items())
            print(f"{r['plan']}: step {r['step_wall_ms']:.1f} ms, GPU busy {r['gpu_busy_ms']:.1f} ms ({cats})",
                  flush=True)
    finally:
        dist.destroy_process_group()
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
