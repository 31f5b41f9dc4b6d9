"""`experts` under the engines' own dispatch (issue #17): both EPLB policies, the balancer, and a chosen placement
that is never worse than the best baseline; worked examples of the dispatch rules and the balancer."""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.models.moe.metrics import DISPATCH_RULES, Fabric, Placement, evaluate, summary
from clusterplan.models.moe.routing import RoutingStats, SynthConfig, save_stats, synth_stats
from clusterplan.solver.experts_balance import balance_layer, lower_bound
from clusterplan.solver.experts_plan import ExpertsRequest, launch_flags, plan_experts


def _fabric(n_gpus: int = 4, gpus_per_node: int = 2) -> Fabric:
    return Fabric(n_gpus=n_gpus, gpus_per_node=gpus_per_node, scale_up_busbw_bytes_per_s=400e9,
                  scale_out_busbw_bytes_per_s=50e9, scale_up_latency_s=0.0, scale_out_latency_s=0.0,
                  dispatch_bytes_per_token=1.0, combine_bytes_per_token=1.0, expert_s_per_token=1e-6)


def test_nearest_dispatch_keeps_tokens_on_the_node_worked_example():
    # 2 nodes x 2 GPUs, one slot each; expert 0 has replicas on GPU 0 (node 0) and GPU 2 (node 1), expert 1 on
    # GPU 1, expert 2 on GPU 3. 400 tokens of expert 0, 100 on each GPU at home.
    placement = Placement(phy2log=np.array([[0, 1, 0, 2]]), n_experts=3, slots_per_gpu=1, gpus_per_node=2)
    stats = RoutingStats(tokens_per_expert=np.array([[400.0, 0.0, 0.0]]), transitions=None, source="hand")
    # Nearest (SGLang static): GPU 0 and 2 keep their own 100; GPU 1 sends to GPU 0, GPU 3 to GPU 2: no token
    # crosses a node, 200 cross GPUs (one hop inside each node).
    near = evaluate(placement, stats, _fabric(), rule=DISPATCH_RULES["sglang-static"])[0]
    assert near.cross_node_tokens == pytest.approx(0.0) and near.cross_gpu_tokens == pytest.approx(200.0)
    assert near.max_load_tokens == pytest.approx(200.0)
    # Even split (vLLM): each GPU's 100 go half to GPU 0, half to GPU 2: 50 stay put on GPUs 0 and 2, so 300 cross
    # GPUs; of those, GPU 0 and 1 send 50 each to GPU 2 and GPUs 2, 3 send 50 each to GPU 0: 200 cross nodes.
    even = evaluate(placement, stats, _fabric(), rule=DISPATCH_RULES["vllm"])[0]
    assert even.cross_gpu_tokens == pytest.approx(300.0) and even.cross_node_tokens == pytest.approx(200.0)


def test_home_origin_even_split_makes_cross_node_bytes_placement_free():
    # Why balance is all that is left to win under vLLM / TensorRT-LLM dispatch: any two placements of the same
    # replicas send the same cross-node bytes.
    stats = synth_stats(SynthConfig(n_layers=2, n_experts=16, top_k=2, n_tokens=4000, seed=1))
    rng = np.random.default_rng(0)
    rows = [np.array([rng.permutation(16) for _ in range(2)]) for _ in range(3)]
    bytes_ = {float(summary(evaluate(Placement(phy2log=r, n_experts=16, slots_per_gpu=2, gpus_per_node=2),
                                     stats, _fabric(8, 2), rule=DISPATCH_RULES["trtllm"]))["cross_node_bytes"])
              for r in rows}
    assert len({round(b, 6) for b in bytes_}) == 1


def test_balancer_worked_example_reaches_its_bound():
    # Replica loads 5, 4, 3, 3, 3, 2 on 2 GPUs, 3 each, started as {5, 4, 3} | {3, 3, 2} = 12 | 8. Lower bound:
    # max(20 / 2, heaviest 5 + the 2 lightest 2 + 3) = 10, reached by {5, 3, 2} | {4, 3, 3}.
    weights = np.array([5.0, 4.0, 3.0, 3.0, 3.0, 2.0])
    done = balance_layer(weights, np.arange(6), np.array([0, 0, 0, 1, 1, 1]), n_gpus=2)
    assert lower_bound(weights, 2) == 10.0
    assert done.max_load == 10.0 and done.gap == 0.0 and done.swaps >= 1
    assert sorted(np.bincount(done.gpu_of_replica, weights=weights)) == [10.0, 10.0]


def test_balancer_never_puts_one_expert_twice_on_a_gpu():
    # Two replicas of expert 0 (load 6 each) and four light experts: the only legal optimum splits expert 0.
    weights, experts = np.array([6.0, 6.0, 1.0, 1.0, 1.0, 1.0]), np.array([0, 0, 1, 2, 3, 4])
    done = balance_layer(weights, experts, np.array([0, 1, 0, 0, 1, 1]), n_gpus=2)
    for g in range(2):
        on = experts[done.gpu_of_replica == g]
        assert len(on) == len(set(on.tolist()))


@pytest.fixture(scope="module")
def deepseek_stats(tmp_path_factory):
    path = tmp_path_factory.mktemp("ds") / "ds.npz"
    save_stats(synth_stats(SynthConfig(n_layers=4, n_experts=256, top_k=8, n_tokens=4096, seed=2)), path)
    return str(path)


@pytest.mark.parametrize("engine", ["vllm", "trtllm", "sglang-static", "sglang-dynamic"])
def test_chosen_is_never_worse_than_the_best_baseline(deepseek_stats, engine):
    # DeepSeek-V3 (8 expert groups) on 64 GPUs: both EPLB policies reported; under each engine's own rule the chosen
    # placement is no worse than the better of them on worst max/mean, all-to-all time and expert time.
    result = plan_experts(ExpertsRequest(model_ref="deepseek-v3", cluster_ref="dgx-h100:8",
                                         stats_path=deepseek_stats, engine=engine))
    methods = result.report["methods"]
    assert {"eplb-global", "eplb-hierarchical", "balance", "chosen"} <= set(methods)
    best, chosen = methods[result.report["best_baseline"]]["summary"], methods["chosen"]["summary"]
    for key in ("max_over_mean_worst", "all_to_all_s", "expert_compute_s"):
        assert chosen[key] <= best[key] * (1 + 1e-9), key
    assert result.report["dispatch_rule"]["name"] == engine
    solver = result.report["solver"]
    assert solver["layers_won"] + len(solver["layers_kept_baseline"]) == 4


def test_balancer_wins_balance_under_even_dispatch(deepseek_stats):
    result = plan_experts(ExpertsRequest(model_ref="deepseek-v3", cluster_ref="dgx-h100:8",
                                         stats_path=deepseek_stats, engine="vllm"))
    methods = result.report["methods"]
    assert methods["chosen"]["summary"]["max_over_mean_worst"] < methods["eplb-global"]["summary"]["max_over_mean_worst"]
    assert result.report["solver"]["max_gap"] < 0.01  # within 1 % of a bound no placement beats


def test_sglang_launch_flags_and_refusal(deepseek_stats):
    result = plan_experts(ExpertsRequest(model_ref="deepseek-v3", cluster_ref="dgx-h100:8",
                                         stats_path=deepseek_stats, method="eplb", out_format="sglang"))
    flags = launch_flags(result.chosen, result.model, "sglang", "placement.json")
    # sglang/srt/server_args.py spells these flags; 320 slots - 256 experts = 64 redundant.
    assert flags == ["--ep-size", "64", "--ep-num-redundant-experts", "64", "--init-expert-location",
                     "placement.json", "--ep-dispatch-algorithm", "static"]
    assert result.report["dispatch_rule"]["name"] == "sglang-static"


def test_sglang_refuses_models_without_expert_location(tmp_path, run_cli):
    stats = tmp_path / "m.npz"
    assert run_cli("experts", "synth", "--model", "mixtral-8x7b", "--layers", "2", "--out", str(stats))[0] == 0
    code, out, err = run_cli("experts", "--model", "mixtral-8x7b", "--cluster", "dgx-h100:2", "--stats", str(stats),
                             "--out-format", "sglang", "--out", str(tmp_path / "p.json"))
    assert code == 2 and out == "" and "does not load expert locations" in err
    assert not (tmp_path / "p.json").exists()


def test_synth_default_matches_the_published_imbalance():
    # TensorRT-LLM measured an imbalance ratio (max - mean) / mean over ranks of 1.564 for DeepSeek-R1 on EP32
    # without load balancing, per iteration of 4,096 tokens (examples/ep_load_balancer README; 0.115 after EPLB,
    # which fixes the definition: max/mean would be >= 1). The default exponent 0.8 lands within 0.15 of it
    # (1.50 at seed 0; seeds 0-2 give 1.40-1.61). A max/mean reading of 1.56 (exponent 0.4) is the wrong one.
    stats = synth_stats(SynthConfig(n_layers=20, n_experts=256, top_k=8, n_tokens=4096, seed=0))
    per_gpu = stats.tokens_per_expert.reshape(20, 32, 8).sum(-1)
    assert abs(float((per_gpu.max(1) / per_gpu.mean(1) - 1).mean()) - 1.564) < 0.15


def test_placement_launches_under_the_rule_it_was_judged_by(tmp_path, run_cli):
    # A placement judged under SGLang's dynamic dispatch launches with --ep-dispatch-algorithm dynamic; one judged
    # under another engine's rule cannot be written for SGLang or TensorRT-LLM (it would launch under theirs).
    stats = tmp_path / "q.npz"
    assert run_cli("experts", "synth", "--model", "qwen3-30b-a3b", "--layers", "2", "--out", str(stats))[0] == 0
    common = ("experts", "--model", "qwen3-30b-a3b", "--cluster", "dgx-h100:2", "--stats", str(stats))
    code, _, err = run_cli(*common, "--out-format", "sglang", "--engine", "sglang-dynamic", "--out",
                           str(tmp_path / "s.json"))
    assert code == 0 and "--ep-dispatch-algorithm dynamic" in err
    for engine, fmt in (("vllm", "sglang"), ("sglang-static", "trtllm")):
        code, _, err = run_cli(*common, "--out-format", fmt, "--engine", engine, "--out", str(tmp_path / "x.json"))
        assert code == 2 and "matching --engine" in err and len(err.strip().splitlines()) == 1
