"""Pricing of the DeepEP / HybridEP token dispatchers and the 1F1B all-to-all overlap (models/training/dispatch.py),
each term pinned by a worked example derived by hand, and a held-out check on DeepEP's published kernel bandwidths.

Nothing is fitted: the copy counts follow from top-k routing over evenly spread experts, the link rates are
hardware_db's (or the README's stated link maxima), the SM counts Megatron-Core's defaults.
"""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates, LinkRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.dispatch import (
    a2a_overlap_exposed_s,
    combined_1f1b_unmerged_share,
    dedup_all_to_all_s,
    dedup_copies,
    deepep_rates,
    dispatcher_slowdown,
    merged_layer_exposed_s,
    p_no_expert_in,
)
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.moe_layer import imbalance
from clusterplan.models.training.step import moe_layer_breakdown, step_time

H100_LINKS = LinkRates(bw_in=369e9, lat_in=2e-6, bw_out=48e9, lat_out=5e-6)
"""hardware_db dgx-h100 all-to-all rates (NVLink busbw, one 400 Gb/s NIC per GPU), as tests/test_ep_all_to_all.py."""
DSV3_TOKEN_BYTES = 4096 * 7168 * 2
"""4096 tokens x hidden 7168 x 2 B: one copy of every token of a rank (DeepSeek-V3's MoE layer, bf16)."""


def test_probability_a_rank_gets_none_of_a_tokens_experts_is_hypergeometric():
    # 8 distinct experts of 256; a node holding 32 of them is missed with C(224, 8) / C(256, 8)
    assert float(p_no_expert_in(32, 256, 8)) == pytest.approx(comb(224, 8) / comb(256, 8), rel=1e-12)
    assert float(p_no_expert_in(256, 256, 8)) == 0.0


def test_dedup_copies_worked_example_ep16_over_two_nodes():
    # DeepSeek-V3 (256 experts, top-8) on EP16 = 2 nodes x 8 GPUs, no node limit:
    # a node holds 128 experts: P(miss) = prod_{i<8} (128-i)/(256-i) = 0.0034899; nodes hit = 2 (1 - P) = 1.99302,
    #   of which the remote one: RDMA copies = 1.99302 / 2 = 0.99651
    # a GPU holds 16 experts: P(miss) = prod_{i<8} (240-i)/(256-i) = 0.59230; GPUs hit = 16 x 0.40770 = 6.5232,
    #   NVLink copies = 7/8 of them (not the GPU the token lands on in its node) = 5.7078
    rdma, nvlink = dedup_copies(256, 8, np.array([8.0]), np.array([2.0]))
    assert float(rdma[0]) == pytest.approx(0.99651, abs=1e-5)
    assert float(nvlink[0]) == pytest.approx(5.7078, abs=2e-4)
    # The NCCL all-to-all sends top_k = 8 copies, 4 of them across nodes: DeepEP sends 1 over RDMA.


def test_dedup_all_to_all_worked_example_ep16_on_h100():
    # RDMA 0.99651 x 58,720,256 B / 48e9 = 1.21908 ms; NVLink 5.7078 x 58,720,256 B / 369e9 = 0.90829 ms; pipelined:
    # the slower, 1.21908 ms, + 1 peer node x 5 us + 7 peer GPUs x 2 us = 1.23808 ms (NCCL: 5.504 ms,
    # tests/test_ep_all_to_all.py)
    t = dedup_all_to_all_s(np.array([float(DSV3_TOKEN_BYTES)]), 256, 8, np.array([8.0]), np.array([2.0]), H100_LINKS)
    assert float(t[0]) == pytest.approx(1.23808e-3, rel=2e-4)


def test_dedup_all_to_all_inside_one_node_is_nvlink_only():
    # EP8 in one node: GPUs hit 8 (1 - C(224, 8) / C(256, 8)), 7/8 of them over NVLink, + 7 x 2 us
    gpus_hit = 8 * (1 - comb(224, 8) / comb(256, 8))
    t = dedup_all_to_all_s(np.array([float(DSV3_TOKEN_BYTES)]), 256, 8, np.array([8.0]), np.array([1.0]), H100_LINKS)
    assert float(t[0]) == pytest.approx(gpus_hit * 7 / 8 * DSV3_TOKEN_BYTES / 369e9 + 7 * 2e-6, rel=1e-9)


def test_node_limit_caps_the_rdma_copies():
    # EP64 over 8 nodes: 8 (1 - C(224, 8) / C(256, 8)) = 5.30 nodes hit uncapped; with DeepSeek-V3's 4 nodes
    # at most, 4 x 7/8 = 3.5 RDMA copies
    free, _ = dedup_copies(256, 8, np.array([8.0]), np.array([8.0]))
    capped, _ = dedup_copies(256, 8, np.array([8.0]), np.array([8.0]), max_nodes=4)
    assert float(free[0]) == pytest.approx(8 * (1 - comb(224, 8) / comb(256, 8)) * 7 / 8, rel=1e-9)
    assert float(capped[0]) == pytest.approx(3.5, rel=1e-12)


# DeepEP README (docs/legacy.md, V1 normal kernels): H800 with ~160 GB/s NVLink and one CX7 400 Gb/s NIC (~50 GB/s)
# per GPU, DeepSeek-V3 pre-training setting (4096 tokens, hidden 7168, top-4 groups, top-8 experts, fp8 dispatch):
# RDMA "bottleneck bandwidth" of dispatch / combine at EP 32 and 64 (4 and 8 nodes).
DEEPEP_README_RDMA_GB_S = {32: (58, 57), 64: (51, 50)}
H800_README_LINKS = LinkRates(bw_in=160e9, lat_in=2e-6, bw_out=50e9, lat_out=5e-6)


@pytest.mark.parametrize("ep", sorted(DEEPEP_README_RDMA_GB_S))
def test_deepep_readme_internode_bandwidth_held_out(ep):
    """Predicted RDMA bandwidth (the RDMA copies' bytes over the predicted time) within 20 % of DeepEP's measured
    one: at EP 32 / 64 the model is RDMA-bound and the kernels run near the NIC rate (49.1 / 49.3 GB/s predicted).
    Tolerance 20 %: the EP32 measurement, 58 GB/s, is above the ~50 GB/s NIC maximum the README states (it counts
    bytes the model does not send over the NIC), so no NIC-bound price comes within 15 % of it. Not a fit (the rates are the
    README's stated link maxima). At EP16 (2 nodes) the model is NVLink-bound (5.7 NVLink copies per RDMA copy at a
    3.2x faster link) and predicts 28 GB/s against the measured 43: the one known miss, on the slow side."""
    token_bytes = np.array([4096 * 7168 * 1.0])
    n_in, n_out = np.array([8.0]), np.array([ep / 8.0])
    rdma, _ = dedup_copies(256, 8, n_in, n_out, max_nodes=4)
    t = dedup_all_to_all_s(token_bytes, 256, 8, n_in, n_out, H800_README_LINKS, max_nodes=4)
    predicted_gb_s = float(rdma[0] * token_bytes[0] / t[0]) / 1e9
    for measured in DEEPEP_README_RDMA_GB_S[ep]:
        assert predicted_gb_s == pytest.approx(measured, rel=0.20)


def test_combined_1f1b_unmerged_share_worked_examples():
    # pp8 vpp4, 128 micro-batches: (8-1) x 2 + (4-1) x 8 + 1 = 39 warm-up passes of 128 x 4 = 512
    L = LayoutArrays.from_layouts([Layout(pp=8, vpp=4, dp=16, gbs=2048, schedule="interleaved-1f1b"),
                                   Layout(pp=1, dp=8, gbs=32)])
    share = combined_1f1b_unmerged_share(L)
    assert float(share[0]) == pytest.approx(39 / 512, rel=1e-12)
    # pp 1: the first forward and the last backward of 4 micro-batches run alone
    assert float(share[1]) == pytest.approx(1 / 4, rel=1e-12)


def test_merged_layer_schedule_worked_examples():
    # TransformerLayerSchedulePlan.run, one all-to-all c = 1, f.attn 2, b.attn 4, f.mlp 3, b.mlp 6 (dgrad 3 + wgrad 3):
    # f.dispatch [2, 3] (after f.attn), b.mlp dgrad [2, 5] (after b.combine_bwd [0, 1]), b.dispatch_bwd [5, 6],
    # wgrad [5, 8], f.mlp [8, 11], f.combine [11, 12], b.attn [11, 15]: 15 = the compute 2 + 6 + 3 + 4, nothing exposed
    one = merged_layer_exposed_s(np.array([1.0]), np.array([2.0]), np.array([4.0]), np.array([3.0]), np.array([6.0]))
    assert float(one[0]) == pytest.approx(0.0, abs=1e-12)
    # c = 4, f.attn 1, b.attn 2, f.mlp 2, b.mlp 4: b.combine_bwd [0, 4], f.dispatch [4, 8], dgrad [4, 6],
    # b.dispatch_bwd [8, 12], wgrad [6, 8], f.mlp [8, 10], f.combine [12, 16], b.attn [12, 14]: 16 - 9 = 7 exposed
    two = merged_layer_exposed_s(np.array([4.0]), np.array([1.0]), np.array([2.0]), np.array([2.0]), np.array([4.0]))
    assert float(two[0]) == pytest.approx(7.0, rel=1e-12)


def test_a2a_overlap_exposed_worked_example():
    # the second layer above (4 all-to-alls of 4 = 16): 7 exposed, 9 hidden beside 9 of compute at slowdown 1.25:
    # max(9, 9 + 0.2 x 9) - 9 = 1.8 more; merged 8.8; 10 % of passes unmerged expose all 16:
    # 0.1 x 16 + 0.9 x 8.8 = 9.52
    t = a2a_overlap_exposed_s(np.array([16.0]), np.array([1.0]), np.array([2.0]), np.array([2.0]), np.array([4.0]),
                              np.array([0.1]), 1.0, 1.25)
    assert float(t[0]) == pytest.approx(9.52, rel=1e-12)


def test_dispatcher_slowdown_is_the_sms_its_kernels_hold():
    L = LayoutArrays.from_layouts([Layout(moe_dispatcher=d) for d in ("alltoall", "deepep", "hybridep")])
    f = dispatcher_slowdown(L, 132, 1.1)
    assert list(f) == pytest.approx([1.1, 132 / 112, 132 / 116])  # NCCL's own; 20 and 16 SMs of the H100's 132


def _dsv3(ep: int, **kw) -> tuple:
    model, stack = load_model("deepseek-v3"), get_stack("megatron-core")
    cluster = load_cluster(f"dgx-h100:{ep // 8}")
    L = Layout(**{"dp": ep, "ep": ep, "mbs": 1, "gbs": ep, "seq": 4096, "recompute": "none", "fp32_grads": False,
                  **kw})
    return ModelShapes.of(model), LayoutArrays.from_layouts([L]), HardwareRates.of(cluster), stack


def test_step_prices_the_deepep_dispatch_with_dedup_all_to_all():
    shapes, L, hw, stack = _dsv3(16, moe_dispatcher="deepep")
    phases = {p.name: float(p.gpu_s[0]) for p in moe_layer_breakdown(shapes, L, hw, stack).phases}
    r = deepep_rates(hw.link("all_to_all", "ep"))  # at the share of the links DeepEP's kernels reach
    busiest = float(imbalance(shapes, L)[0])  # forced balancing's busiest rank (tests/test_moe_forced_balance.py)
    expected = dedup_all_to_all_s(np.array([DSV3_TOKEN_BYTES * busiest]), 256, 8, np.array([8.0]), np.array([2.0]), r)
    assert phases["dispatch"] == pytest.approx(float(expected[0]), rel=1e-12)
    nccl = {p.name: float(p.gpu_s[0]) for p in moe_layer_breakdown(*_dsv3(16)).phases}
    assert phases["dispatch"] < 0.3 * nccl["dispatch"]  # 1 RDMA copy per token instead of 4


def test_the_overlap_lowers_only_the_exposed_all_to_all_and_needs_two_micro_batches():
    base = step_time(*_dsv3(16, gbs=128))
    overlap = step_time(*_dsv3(16, gbs=128, moe_a2a_overlap=True))
    assert float(overlap.ep_comm_s[0]) < 0.5 * float(base.ep_comm_s[0])  # 8 micro-batches, 1 of 8 passes alone
    assert float(overlap.compute_s[0]) == float(base.compute_s[0])
    # one micro-batch per step: nothing to merge with, the all-to-alls stay exposed
    single = step_time(*_dsv3(16, moe_a2a_overlap=True))
    assert float(single.ep_comm_s[0]) == float(step_time(*_dsv3(16)).ep_comm_s[0])
