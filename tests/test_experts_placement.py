"""EPLB baseline against DeepSeek's published example, and placement metrics worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.errors import BadInputError, InfeasibleError
from clusterplan.models.hardware.comm import hierarchical_all_to_all_s
from clusterplan.models.moe.metrics import Fabric, Placement, evaluate, origin
from clusterplan.models.moe.routing import make_stats
from clusterplan.solver.experts import balanced_packing, eplb_placement, replicate_experts

# deepseek-ai/EPLB README.md (commit d52c72d): 2 layers x 12 experts, 4 groups, 2 nodes, 8 GPUs, 16 slots.
README_WEIGHT = np.array([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                          [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]])
README_PHY2LOG = [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                  [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]


def _fabric(n_gpus: int = 4, gpus_per_node: int = 2) -> Fabric:
    # Round numbers so the expected times can be worked by hand: 1 kB per token each way, zero latency.
    return Fabric(n_gpus=n_gpus, gpus_per_node=gpus_per_node, scale_up_busbw_bytes_per_s=1e10,
                  scale_out_busbw_bytes_per_s=1e9, scale_up_latency_s=0.0, scale_out_latency_s=0.0,
                  dispatch_bytes_per_token=1000.0, combine_bytes_per_token=1000.0, expert_s_per_token=1e-6)


def test_eplb_reproduces_readme_example_exactly():
    placement = eplb_placement(README_WEIGHT, slots_per_gpu=2, n_gpus=8, gpus_per_node=4, n_groups=4)
    assert placement.phy2log.tolist() == README_PHY2LOG


def test_eplb_readme_example_balance():
    # Summing replica loads per GPU (tokens split evenly over replicas): max/mean 1.21 and 1.24
    # (research/moe-placement.md section 4), against 1.28 and 1.79 for 12 experts laid out 3 per GPU on 4 GPUs.
    placement = eplb_placement(README_WEIGHT, slots_per_gpu=2, n_gpus=8, gpus_per_node=4, n_groups=4)
    stats = make_stats(README_WEIGHT)
    ratios = [m.max_over_mean for m in evaluate(placement, stats, _fabric(8, 4))]
    assert ratios == pytest.approx([1.21, 1.24], abs=0.005)


def test_balanced_packing_equal_counts_heaviest_first():
    # Heaviest first into the lightest pack with room: 9 -> A, 8 -> B, 7 -> B (8 < 9), 3 -> A (9 < 15),
    # 2 -> A (12 < 15), A is full so 1 -> B. Packs {9, 3, 2} = 14 and {8, 7, 1} = 16, ranks in arrival order.
    pack, rank = balanced_packing(np.array([[9.0, 1, 8, 2, 7, 3]]), 2)
    assert pack.tolist() == [[0, 1, 1, 0, 1, 0]]
    assert rank.tolist() == [[0, 2, 0, 2, 1, 1]]


def test_replicate_gives_spare_slots_to_highest_load_per_replica():
    _, _, count = replicate_experts(np.array([[100.0, 10, 40]]), 6)
    # 100 -> 2 replicas (50 each) -> 40 vs 50: 100 again (33) -> 40 -> 2 replicas (20): counts 3, 1, 2.
    assert count.tolist() == [[3, 1, 2]]


def test_eplb_shape_errors_are_infeasible():
    with pytest.raises(InfeasibleError, match="slots"):
        eplb_placement(np.ones((1, 12)), slots_per_gpu=1, n_gpus=8, gpus_per_node=4, n_groups=4)
    with pytest.raises(InfeasibleError, match="groups"):
        eplb_placement(np.ones((1, 12)), slots_per_gpu=2, n_gpus=8, gpus_per_node=4, n_groups=5)


def test_metrics_by_hand_uniform_origin():
    # 2 nodes x 2 GPUs, expert e on GPU e, loads 40/20/20/0, tokens start uniformly on the 4 GPUs.
    placement = Placement(phy2log=np.array([[0, 1, 2, 3]]), n_experts=4, slots_per_gpu=1, gpus_per_node=2)
    m = evaluate(placement, make_stats([[40, 20, 20, 0]]), _fabric())[0]
    assert m.max_load_tokens == 40 and m.mean_load_tokens == 20
    assert m.cross_gpu_tokens == pytest.approx(60)  # 3/4 of 80 leave their GPU
    assert m.cross_node_tokens == pytest.approx(40)  # 2/4 of 80 leave their node
    assert m.cross_node_bytes == pytest.approx(40 * 2000)  # dispatch + combine
    # GPU 0's NIC receives 40 x 2/4 = 20 tokens, its NVLink 40 x 1/4 = 10:
    # 2000 B x (20 / 1e9 + 10 / 1e10) = 42 us for dispatch + combine.
    assert m.max_nic_tokens == pytest.approx(20)
    assert m.all_to_all_s == pytest.approx(42e-6)


def test_uniform_traffic_reproduces_collective_model():
    # One expert per GPU with equal loads is a uniform all-to-all: same time as comm.hierarchical_all_to_all_s.
    fabric = Fabric(n_gpus=64, gpus_per_node=8, scale_up_busbw_bytes_per_s=369e9, scale_out_busbw_bytes_per_s=48e9,
                    scale_up_latency_s=2e-6, scale_out_latency_s=5e-6, dispatch_bytes_per_token=14336.0,
                    combine_bytes_per_token=14336.0, expert_s_per_token=1e-7)
    placement = Placement(phy2log=np.arange(64)[None, :], n_experts=64, slots_per_gpu=1, gpus_per_node=8)
    m = evaluate(placement, make_stats(np.full((1, 64), 1024.0)), fabric)[0]
    per_gpu_bytes = 1024 * 14336.0  # each GPU sends its 1024 token copies spread evenly over 64 GPUs
    one_way = hierarchical_all_to_all_s(per_gpu_bytes, 8, 8, 369e9, 48e9, 2e-6, 5e-6)
    assert m.all_to_all_s == pytest.approx(2 * float(one_way), rel=1e-12)


def test_affinity_origin_follows_previous_layer():
    # Tokens of expert i at layer 0 all go to expert i at layer 1. Keeping each expert on the same GPU in both
    # layers makes layer 1 free of traffic; swapping the two nodes' experts sends every token across nodes.
    loads = [[10, 20, 30, 40], [10, 20, 30, 40]]
    trans = [np.diag([10.0, 20, 30, 40])]
    stats = make_stats(loads, trans)
    same = Placement(phy2log=np.array([[0, 1, 2, 3], [0, 1, 2, 3]]), n_experts=4, slots_per_gpu=1, gpus_per_node=2)
    swapped = Placement(phy2log=np.array([[0, 1, 2, 3], [2, 3, 0, 1]]), n_experts=4, slots_per_gpu=1,
                        gpus_per_node=2)
    assert evaluate(same, stats, _fabric())[1].cross_gpu_tokens == 0
    assert evaluate(swapped, stats, _fabric())[1].cross_node_tokens == pytest.approx(100)


def test_origin_of_unvisited_expert_is_uniform():
    share = np.eye(2)
    org = origin(share, np.array([[3.0, 0.0], [1.0, 0.0]]))
    assert org[0].tolist() == [0.75, 0.25]  # 3 tokens from GPU 0, 1 from GPU 1
    assert org[1].tolist() == [0.5, 0.5]  # nothing recorded enters expert 1


def test_placement_must_hold_every_expert():
    with pytest.raises(BadInputError, match="no slot for expert 3"):
        Placement(phy2log=np.array([[0, 1, 2, 2]]), n_experts=4, slots_per_gpu=1, gpus_per_node=2)


def test_logical_to_physical_map_shape():
    placement = eplb_placement(README_WEIGHT, slots_per_gpu=2, n_gpus=8, gpus_per_node=4, n_groups=4)
    l2p = placement.logical_to_physical()
    count = placement.replica_count()
    assert l2p.shape == (2, 12, int(count.max()))
    for layer in range(2):
        for expert in range(12):
            slots = [s for s in l2p[layer, expert] if s >= 0]
            assert len(slots) == count[layer, expert]
            assert all(placement.phy2log[layer, s] == expert for s in slots)
