"""`experts rebalance` (issue #17 item 4): what a rebalance moves, over which links, against what it saves."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clusterplan.models.moe.metrics import DISPATCH_RULES, Fabric, Placement
from clusterplan.models.moe.windows import RoutingWindows, synth_windows
from clusterplan.solver.experts import eplb_policy
from clusterplan.solver.experts_rebalance import compare_intervals, move_cost


def _fabric(n_gpus: int, gpus_per_node: int) -> Fabric:
    return Fabric(n_gpus=n_gpus, gpus_per_node=gpus_per_node, scale_up_busbw_bytes_per_s=400e9,
                  scale_out_busbw_bytes_per_s=50e9, scale_up_latency_s=0.0, scale_out_latency_s=0.0,
                  dispatch_bytes_per_token=1.0, combine_bytes_per_token=1.0, expert_s_per_token=1e-6)


@pytest.mark.parametrize("gpus_per_node, link", [(2, "nvlink"), (1, "nic")])
def test_swapping_two_experts_moves_one_replica_each_way(gpus_per_node, link):
    # GPU 0 holds expert 0 and GPU 1 expert 1; afterwards the other way round. Each GPU receives one expert of
    # 100 MB: over NVLink when both GPUs share a node (the expert was on the node), else over the NIC.
    old = Placement(phy2log=np.array([[0, 1]]), n_experts=2, slots_per_gpu=1, gpus_per_node=gpus_per_node)
    new = Placement(phy2log=np.array([[1, 0]]), n_experts=2, slots_per_gpu=1, gpus_per_node=gpus_per_node)
    move = move_cost(old, new, 100e6, _fabric(2, gpus_per_node))
    assert move.replicas_moved == 2
    if link == "nvlink":
        assert (move.nvlink_bytes, move.nic_bytes) == (200e6, 0.0)
        assert move.time_s == pytest.approx(100e6 / 400e9)
    else:
        assert (move.nvlink_bytes, move.nic_bytes) == (0.0, 200e6)
        assert move.time_s == pytest.approx(100e6 / 50e9)


def _place(windows: RoutingWindows, fabric: Fabric):
    def place(i: int) -> Placement:
        return eplb_policy(windows.tokens_per_expert[i], slots_per_gpu=5, n_gpus=fabric.n_gpus,
                           gpus_per_node=fabric.gpus_per_node, n_groups=1, n_nodes=1)
    return place


def test_no_drift_means_rebalances_move_nothing():
    one = synth_windows(n_windows=1, n_layers=2, n_experts=16, top_k=2, n_tokens=2000, zipf_exponent=0.4,
                        drift=0.0, seed=3)
    same = RoutingWindows(tokens_per_expert=np.repeat(one.tokens_per_expert, 4, axis=0), source="same")
    fabric = _fabric(8, 4)
    rows = compare_intervals(same, _place(same, fabric), [1, 2], fabric, DISPATCH_RULES["vllm"], 1e6, 100.0)
    by = {r.interval: r for r in rows}
    assert by["1"].rebalances == 3 and by["1"].moved_bytes_per_rebalance == 0.0
    assert by["1"].moe_s_per_step == pytest.approx(by["static"].moe_s_per_step)


def test_oracle_bounds_every_online_interval_and_drift_costs():
    wins = synth_windows(n_windows=6, n_layers=3, n_experts=32, top_k=4, n_tokens=4000, zipf_exponent=0.8,
                         drift=0.3, seed=5)
    fabric = _fabric(8, 4)
    rows = compare_intervals(wins, _place(wins, fabric), [1, 2, 4], fabric, DISPATCH_RULES["vllm"], 1e6, 100.0)
    by = {r.interval: r for r in rows}
    for name in ("1", "2", "4", "static"):
        assert by["oracle"].moe_s_per_step <= by[name].moe_s_per_step * (1 + 1e-9)
    assert by["1"].moved_bytes_per_rebalance > 0 and by["static"].rebalances == 0


def test_cli_rebalance_json(tmp_path, run_cli):
    path = tmp_path / "w.npz"
    assert run_cli("experts", "synth", "--model", "mixtral-8x7b", "--layers", "2", "--tokens", "2000", "--windows",
                   "4", "--out", str(path))[0] == 0
    code, out, err = run_cli("experts", "rebalance", "--model", "mixtral-8x7b", "--cluster", "dgx-h100:1",
                             "--stats", str(path), "--intervals", "1,2", "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert [r["interval"] for r in data["intervals"]] == ["1", "2", "static", "oracle"]
    assert data["best_interval"] in {"1", "2", "static"}
    # Mixtral expert: w1, w3 (4096 x 14336) and w2, bf16.
    assert data["expert_bytes"] == 3 * 4096 * 14336 * 2
    code, _, err = run_cli("experts", "rebalance", "--model", "mixtral-8x7b", "--cluster", "dgx-h100:1",
                           "--stats", str(path), "--intervals", "x")
    assert code == 2 and "--intervals" in err
