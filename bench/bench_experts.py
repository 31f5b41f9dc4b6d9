"""Benchmark: expert placement under each engine's dispatch rule, on the three cases of issue #17.

DeepSeek-V3 on 64 H100 (8 nodes, 5 slots/GPU, all 58 MoE layers), Qwen3-30B-A3B on 16, Mixtral-8x7B on 64; seeded
synthetic statistics at the default (calibrated) skew. For each engine rule: worst max/mean, all-to-all and expert
time of EPLB hierarchical (where the model has expert groups), EPLB global, the optimiser (balance; the ILP under
the chained research model) and the chosen placement, with the wall time of the whole `plan_experts`.
Run: .venv/bin/python bench/bench_experts.py [--quick]   (--quick: 8 layers per model)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.moe.routing import SynthConfig, save_stats, synth_stats
from clusterplan.solver.experts_plan import ExpertsRequest, plan_experts

CASES = (("deepseek-v3", "dgx-h100:8"), ("qwen3-30b-a3b", "dgx-h100:2"), ("mixtral-8x7b", "dgx-h100:8"))
ENGINES = ("vllm", "trtllm", "sglang-static", "chained")


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    with tempfile.TemporaryDirectory() as tmp:
        for model_ref, cluster_ref in CASES:
            model = load_model(model_ref)
            layers = 8 if quick else model.n_moe_layers
            path = Path(tmp) / f"{model_ref}.npz"
            save_stats(synth_stats(SynthConfig(n_layers=layers, n_experts=model.n_experts, top_k=model.top_k,
                                               seed=0)), path)
            print(f"\n{model_ref} on {cluster_ref}, {layers} MoE layers")
            print(f"{'engine':<15}{'method':<19}{'max/mean':>10}{'a2a ms':>10}{'expert ms':>11}{'wall s':>8}")
            for engine in ENGINES:
                start = time.monotonic()
                result = plan_experts(ExpertsRequest(model_ref=model_ref, cluster_ref=cluster_ref,
                                                     stats_path=str(path), engine=engine))
                wall = time.monotonic() - start
                for name, data in result.report["methods"].items():
                    s = data["summary"]
                    print(f"{engine:<15}{name:<19}{s['max_over_mean_worst']:>10.3f}{s['all_to_all_s'] * 1e3:>10.2f}"
                          f"{s['expert_compute_s'] * 1e3:>11.3f}{wall if name == 'chosen' else float('nan'):>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
