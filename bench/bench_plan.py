"""Speed of `plan`'s exhaustive search (issue targets: 405B on 16,384 H100 < 1 s; DeepSeek-V3 on 2,048 H100 < 5 s)."""

from __future__ import annotations

import time

from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.solver.search import search

CASES = (("llama3.1-405b", "dgx-h100:2048", 2048, 8192), ("deepseek-v3", "dgx-h100:256", 4096, 4096),
         ("llama3.1-70b", "dgx-h100:8", 512, 8192))

if __name__ == "__main__":
    for model, cluster, gbs, seq in CASES:
        start, start_cpu = time.perf_counter(), time.process_time()
        result = search(load_model(model), load_cluster(cluster), gbs, seq)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        best = result.plans[0].to_json()
        print(f"{model:14} {cluster:14} candidates {result.candidates:8,}  fit {result.feasible:6,}  "
              f"{seconds:6.3f} s wall {cpu_seconds:6.3f} s CPU  best {result.plans[0].layout.short()}  step {best['step_time_s']:.3f} s  "
              f"MFU {best['mfu']:.1%}")
