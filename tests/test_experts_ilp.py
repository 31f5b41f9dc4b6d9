"""The placement ILP against the EPLB baseline: never worse on load balance and cross-node bytes, and by how
much it is better, on synthetic skewed statistics and on the DeepSeek-V3 shape (a few layers; the full
58-layer case is bench/bench_experts.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.moe.metrics import Fabric, evaluate, fabric_for, summary
from clusterplan.models.moe.routing import SynthConfig, load_stats, make_stats, synth_stats
from clusterplan.solver.experts import eplb_placement
from clusterplan.solver.experts_ilp import IlpOptions, ilp_placement

FIXTURES = Path(__file__).parent / "fixtures"

# Generous wall-clock limit: these cases need a few seconds at most, so CBC stops on its node limit
# (deterministic) and never on time, even on 2 busy CI cores.
OPTIONS = IlpOptions(time_limit_s=120.0)
SKEW = 0.8
"""Zipf exponent of the statistics these margins were measured on (the synth default, pinned here so a change of
the default cannot silently move these margins)."""


def _compare(model_name: str, cluster_ref: str, n_layers: int, slots_per_gpu: int, transitions: bool = True):
    model = load_model(model_name)
    fabric = fabric_for(load_cluster(cluster_ref), model)
    stats = synth_stats(SynthConfig(n_layers=n_layers, n_experts=model.n_experts, top_k=model.top_k,
                                    zipf_exponent=SKEW, seed=0))
    if not transitions:
        stats = make_stats(stats.tokens_per_expert)
    base = eplb_placement(stats.tokens_per_expert, slots_per_gpu=slots_per_gpu, n_gpus=fabric.n_gpus,
                          gpus_per_node=fabric.gpus_per_node, n_groups=fabric.n_nodes)
    result = ilp_placement(stats, fabric, base, OPTIONS)
    assert result.log.hit_time_limit == 0 and not result.unsolved_layers
    eplb, ilp = summary(evaluate(base, stats, fabric)), summary(evaluate(result.placement, stats, fabric))
    return eplb, ilp, result


def _drop(eplb: dict, ilp: dict, key: str) -> float:
    return 1 - ilp[key] / eplb[key]


@pytest.mark.slow
def test_deepseek_v3_shape_ilp_beats_eplb():
    # DeepSeek-V3: 256 routed experts, top-8, on 64 H100s in 8 nodes, 5 slots per GPU (64 redundant), first
    # 4 MoE layers of synthetic skewed statistics. EPLB's hierarchical policy keeps each 32-expert group and its
    # replicas on one node, so a node with hot experts stays hot (worst max/mean 1.57); the ILP spreads
    # replicas and co-locates likely successors. Measured: max/mean 1.57 -> 1.05 (-33 %), cross-node bytes
    # -2.5 %, predicted dispatch+combine -24 %. Asserted with margin: at least 25 %, 1.5 % and 15 %.
    eplb, ilp, result = _compare("deepseek-v3", "dgx-h100:8", 4, 5)
    assert _drop(eplb, ilp, "max_over_mean_worst") >= 0.25
    assert _drop(eplb, ilp, "cross_node_bytes") >= 0.015
    assert _drop(eplb, ilp, "all_to_all_s") >= 0.15
    assert 0 <= result.gap < 0.10  # CBC's bound over all subproblems
    assert not result.node_locked


def test_mixtral_skewed_ilp_beats_eplb():
    # Mixtral-8x7B (8 experts, top-2) on 32 GPUs in 4 nodes, one slot per GPU (4 replicas per expert on
    # average). Measured: worst max/mean 1.83 -> 1.14 (-38 %), cross-node bytes -1.0 %, all-to-all -12 %.
    eplb, ilp, _ = _compare("mixtral-8x7b", "dgx-h100:4", 4, 1)
    assert _drop(eplb, ilp, "max_over_mean_worst") >= 0.30
    assert _drop(eplb, ilp, "cross_node_bytes") >= 0.005
    assert _drop(eplb, ilp, "all_to_all_s") >= 0.08


def test_without_transitions_cross_node_bytes_cannot_move():
    # Without transitions every token starts on a uniformly random GPU, so each expert's tokens cross nodes
    # with probability (nodes-1)/nodes wherever it sits: cross-node bytes are equal, only balance improves.
    eplb, ilp, _ = _compare("mixtral-8x7b", "dgx-h100:2", 3, 1, transitions=False)
    assert ilp["cross_node_bytes"] == pytest.approx(eplb["cross_node_bytes"], rel=1e-9)
    assert _drop(eplb, ilp, "max_over_mean_worst") >= 0.10


def test_ilp_is_deterministic():
    model = load_model("mixtral-8x7b")
    fabric = fabric_for(load_cluster("dgx-h100:2"), model)
    stats = synth_stats(SynthConfig(n_layers=3, n_experts=8, top_k=2, zipf_exponent=SKEW, seed=5))
    base = eplb_placement(stats.tokens_per_expert, slots_per_gpu=1, n_gpus=16, gpus_per_node=8, n_groups=2)
    first = ilp_placement(stats, fabric, base, OPTIONS)
    second = ilp_placement(stats, fabric, base, OPTIONS)
    np.testing.assert_array_equal(first.placement.phy2log, second.placement.phy2log)
    assert first.gap == second.gap


def test_out_of_time_packs_without_solving_and_stays_never_worse():
    # A limit too short for any solve: layers are packed like EPLB (no CBC run) and the result is still
    # never worse than the baseline, because of the per-layer and whole-placement fallbacks.
    model = load_model("mixtral-8x7b")
    fabric = fabric_for(load_cluster("dgx-h100:2"), model)
    stats = synth_stats(SynthConfig(n_layers=3, n_experts=8, top_k=2, zipf_exponent=SKEW, seed=1))
    base = eplb_placement(stats.tokens_per_expert, slots_per_gpu=1, n_gpus=16, gpus_per_node=8, n_groups=2)
    result = ilp_placement(stats, fabric, base, IlpOptions(time_limit_s=1e-3))
    assert result.unsolved_layers == (0, 1, 2) and result.log.subproblems == 0
    eplb, ilp = summary(evaluate(base, stats, fabric)), summary(evaluate(result.placement, stats, fabric))
    assert ilp["max_over_mean_worst"] <= eplb["max_over_mean_worst"] * (1 + 1e-9)
    assert ilp["cross_node_bytes"] <= eplb["cross_node_bytes"] * (1 + 1e-9)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), zipf=st.floats(0.0, 1.5), affinity=st.floats(0.0, 4.0),
       slots_per_gpu=st.integers(2, 3))
def test_never_worse_than_eplb_on_random_statistics(seed, zipf, affinity, slots_per_gpu):
    # Property: whatever the skew and affinity, the ILP's worst-layer max/mean and total cross-node bytes
    # are at most EPLB's (4 GPUs in 2 nodes, 6 experts, top-2, 3 layers, 8 or 12 slots).
    fabric = Fabric(n_gpus=4, gpus_per_node=2, scale_up_busbw_bytes_per_s=369e9, scale_out_busbw_bytes_per_s=48e9,
                    scale_up_latency_s=2e-6, scale_out_latency_s=5e-6, dispatch_bytes_per_token=8192.0,
                    combine_bytes_per_token=8192.0, expert_s_per_token=1e-7)
    stats = synth_stats(SynthConfig(n_layers=3, n_experts=6, top_k=2, n_tokens=600, zipf_exponent=zipf,
                                    affinity_logit=affinity, seed=seed))
    base = eplb_placement(stats.tokens_per_expert, slots_per_gpu=slots_per_gpu, n_gpus=4, gpus_per_node=2,
                          n_groups=2)
    result = ilp_placement(stats, fabric, base, OPTIONS)
    eplb, ilp = summary(evaluate(base, stats, fabric)), summary(evaluate(result.placement, stats, fabric))
    assert ilp["max_over_mean_worst"] <= eplb["max_over_mean_worst"] * (1 + 1e-9)
    assert ilp["cross_node_bytes"] <= eplb["cross_node_bytes"] * (1 + 1e-9)


def test_node_locked_when_free_ilp_sends_more_across_nodes():
    # Mixtral-8x7B on 64 GPUs, one slot each: EPLB (one expert group per node) gives each node a single expert
    # with 8 replicas, so node load follows expert popularity (worst max/mean about 3). Balancing needs hot
    # experts on two nodes, which costs cross-node bytes; the guarded ILP then keeps EPLB's experts per node
    # (cross-node bytes exactly EPLB's) and reports the free result, which balances load far better.
    # The statistics are a fixture: 4 layers of 8 experts, top-2, Zipf 0.8, 16,384 tokens with cross-layer
    # successors, as `experts synth` drew them at seed 0 before its sampler moved to float32 noise. Only some draws
    # (1 in 8 seeds then) make the free ILP cross nodes more than EPLB; this one is kept as the worked example.
    model = load_model("mixtral-8x7b")
    fabric = fabric_for(load_cluster("dgx-h100:8"), model)
    stats = load_stats(FIXTURES / "routing" / "mixtral_zipf08_seed0.npz")
    base = eplb_placement(stats.tokens_per_expert, slots_per_gpu=1, n_gpus=64, gpus_per_node=8, n_groups=8)
    result = ilp_placement(stats, fabric, base, OPTIONS)
    assert result.node_locked and result.free_placement is not None
    eplb = summary(evaluate(base, stats, fabric))
    ilp = summary(evaluate(result.placement, stats, fabric))
    free = summary(evaluate(result.free_placement, stats, fabric))
    assert ilp["cross_node_bytes"] == pytest.approx(eplb["cross_node_bytes"], rel=1e-9)
    assert ilp["max_over_mean_worst"] <= eplb["max_over_mean_worst"] * (1 + 1e-9)
    assert eplb["max_over_mean_worst"] > 2.5 and free["max_over_mean_worst"] < 1.2
    assert free["cross_node_bytes"] > eplb["cross_node_bytes"]
