"""Placing ranks on real links: torchtitan's mesh order by default, an ILP node order on uneven measured links."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.topology import bottleneck, communicating_node_pairs
from clusterplan.solver.links import optimize_node_order
from clusterplan.solver.placement import coordinates

SLOW = str(Path(__file__).parent / "fixtures" / "clusters" / "slow_link.yaml")


def test_mesh_order_puts_tp_innermost():
    layout = Layout(tp=8, pp=2, dp=4, gbs=64)
    assert coordinates(layout, 0) == {"pp": 0, "dp_replicate": 0, "dp_shard": 0, "cp": 0, "tp": 0}
    assert coordinates(layout, 7)["tp"] == 7 and coordinates(layout, 8)["dp_shard"] == 1
    assert coordinates(layout, 32)["pp"] == 1


def test_communicating_pairs_of_a_small_mesh():
    # 4 nodes of 8: tp fills a node; dp pairs nodes (0,1) and (2,3); the pipeline hops (0,2) and (1,3).
    pairs = communicating_node_pairs(Layout(tp=8, pp=2, dp=2, gbs=64), load_cluster(SLOW))
    assert pairs == {"pp": {(0, 2), (1, 3)}, "dp_shard": {(0, 1), (2, 3)}}


def test_ilp_moves_traffic_off_the_slow_link_and_is_optimal():
    cluster = load_cluster(SLOW)
    layout = Layout(tp=8, pp=2, dp=2, gbs=64, seq=4096)
    order = optimize_node_order(layout, cluster)
    assert order.method == "ilp" and sorted(order.physical) == [0, 1, 2, 3]
    assert order.default_bottleneck_gb_per_s == 5 and order.bottleneck_gb_per_s == 380
    # Proof by enumeration on this small case: no node order uses a faster slowest link.
    matrix = np.asarray(cluster.node_bandwidth_gb_per_s)
    pairs = set().union(*communicating_node_pairs(layout, cluster).values())
    assert order.bottleneck_gb_per_s == max(bottleneck(pairs, matrix, p) for p in itertools.permutations(range(4)))
    # And the cost model prices the difference: the data-parallel all-reduce left the 5 GB/s link.
    model = load_model("llama3.1-8b")
    default = estimate(model, cluster, layout).to_json()
    placed = estimate(model, cluster, layout, node_order=order.physical).to_json()
    assert placed["time"]["dp_comm_s"] < default["time"]["dp_comm_s"] / 10
    assert placed["step_time_s"] < default["step_time_s"]


def test_plan_reports_placement_gain(run_cli):
    code, out, _ = run_cli("plan", "--model", "llama3.1-8b", "--cluster", SLOW, "--gbs", "64", "--seq", "4096",
                           "--fix", "tp=8,pp=2,zero=1", "--format", "json")
    assert code == 0
    best = json.loads(out)["plans"][0]
    pl = best["placement"]
    assert pl["method"] == "ilp" and pl["step_time_placed_s"] < pl["step_time_default_order_s"]
    assert best["step_time_s"] == pl["step_time_placed_s"]
    assert {n["node"] for n in pl["nodes"]} == {0, 1, 2, 3}
