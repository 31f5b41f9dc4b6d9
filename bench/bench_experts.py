"""Benchmark: DeepSeek-V3 expert placement on 64 H100s in 8 nodes, EPLB vs ILP (60 s limit).

256 routed experts, top-8, all 58 MoE layers, 5 slots per GPU (64 redundant experts), synthetic skewed
statistics with cross-layer transitions (seed 0, 16384 tokens per layer). Prints the metrics of both
placements, the ILP's optimality gap and its wall-clock time. Run: .venv/bin/python bench/bench_experts.py
"""

from __future__ import annotations

import sys
import time

from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.moe.metrics import evaluate, fabric_for, summary
from clusterplan.models.moe.routing import SynthConfig, synth_stats
from clusterplan.solver.experts import eplb_placement
from clusterplan.solver.experts_ilp import IlpOptions, ilp_placement

TIME_LIMIT_S = 60.0


def main() -> int:
    model, cluster = load_model("deepseek-v3"), load_cluster("dgx-h100:8")
    fabric = fabric_for(cluster, model, "bf16")
    stats = synth_stats(SynthConfig(n_layers=model.n_moe_layers, n_experts=model.n_experts, top_k=model.top_k,
                                    n_tokens=16384, seed=0))
    start = time.monotonic()
    base = eplb_placement(stats.tokens_per_expert, slots_per_gpu=5, n_gpus=fabric.n_gpus,
                          gpus_per_node=fabric.gpus_per_node, n_groups=8)
    eplb_s = time.monotonic() - start
    result = ilp_placement(stats, fabric, base, IlpOptions(time_limit_s=TIME_LIMIT_S))
    eplb, ilp = summary(evaluate(base, stats, fabric)), summary(evaluate(result.placement, stats, fabric))
    print(f"DeepSeek-V3 on {cluster.describe()}, {stats.n_layers} MoE layers, {base.n_slots} slots per layer")
    print(f"{'metric':<22}{'EPLB':>14}{'ILP':>14}{'ILP lower by':>14}")
    for key, unit, factor in (("max_over_mean_worst", "", 1), ("max_over_mean_avg", "", 1),
                              ("cross_node_bytes", " GB", 1e-9), ("cross_gpu_bytes", " GB", 1e-9),
                              ("all_to_all_s", " ms", 1e3), ("expert_compute_s", " ms", 1e3)):
        drop = 1 - ilp[key] / eplb[key] if eplb[key] else 0.0
        print(f"{key + unit:<22}{eplb[key] * factor:>14.4f}{ilp[key] * factor:>14.4f}{drop:>14.2%}")
    log = result.log
    print(f"EPLB time {eplb_s:.2f} s; ILP time {result.solve_s:.1f} s (limit {TIME_LIMIT_S:.0f} s)")
    gap = "none (no layer solved)" if result.gap is None else f"{result.gap:.2%}"
    print(f"ILP gap {gap} (objective {log.objective_us:.0f} us, bound {log.bound_us:.0f} us over "
          f"{log.subproblems} subproblems, {log.proven_optimal} proven optimal, {log.hit_time_limit} stopped on time)")
    print(f"layers kept from EPLB: {list(result.fallback_layers) or 'none'}; packed without a solve: "
          f"{list(result.unsolved_layers) or 'none'}; EPLB's experts per node kept: {result.node_locked}")
    within = result.solve_s <= TIME_LIMIT_S
    never_worse = all(ilp[k] <= eplb[k] * (1 + 1e-9) for k in ("max_over_mean_worst", "cross_node_bytes"))
    print(f"within limit: {within}; never worse than EPLB on max/mean and cross-node bytes: {never_worse}")
    return 0 if within and never_worse else 1


if __name__ == "__main__":
    sys.exit(main())
