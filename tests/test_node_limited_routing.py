"""Node-limited routing (DeepSeek-V3, arXiv 2412.19437 section 2.1.2: each token sent to at most M = 4 nodes, through
group-limited routing: 4 of 8 expert groups) as a cap on the destination nodes of a dispatcher that sends a token
once per node. Hand-derived worked examples."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.training.moe_layer import max_destination_nodes


@pytest.fixture(scope="module")
def dsv3() -> ModelShapes:
    return ModelShapes.of(load_model("deepseek-v3"))


def test_deepseek_v3_carries_its_group_limit(dsv3):
    # config.json: n_group 8, topk_group 4.
    assert (dsv3.expert_groups, dsv3.expert_groups_per_token) == (8, 4)


def test_cap_by_nodes(dsv3):
    """EP over 8 nodes (EP 64, DeepSeek's layout): one group of 32 experts per node, 4 groups = at most 4 nodes.
    2 or 4 nodes hold 4 or 2 groups each: 4 groups reach at most all 2 or 4 nodes. 16 nodes: a group spans 2 nodes,
    4 groups at most 8. 1 node: 1. 3 or 12 nodes: groups straddle nodes, no cap."""
    got = max_destination_nodes(dsv3, np.array([1.0, 2.0, 4.0, 8.0, 16.0, 3.0, 12.0]))
    np.testing.assert_array_equal(got, [1.0, 2.0, 4.0, 4.0, 8.0, np.inf, np.inf])


def test_no_group_limit_no_cap(dsv3):
    assert np.all(np.isinf(max_destination_nodes(replace(dsv3, expert_groups_per_token=0), np.array([8.0]))))
    assert np.all(np.isinf(max_destination_nodes(ModelShapes.of(load_model("mixtral-8x7b")), np.array([8.0]))))


def test_deepep_sends_at_most_4_rdma_copies(dsv3):
    """EP 64 over 8 nodes, top-8 of 256 experts: uniform routing reaches 8 (1 - C(224, 8) / C(256, 8)) = 5.29 nodes,
    7/8 of them remote = 4.63 RDMA copies per token; the cap of 4 nodes leaves 4 x 7/8 = 3.5. The NVLink copies (one
    per destination GPU but the receiver) do not change."""
    from clusterplan.models.training.dispatch import dedup_copies

    p_miss = 1.0
    for i in range(8):
        p_miss *= (224 - i) / (256 - i)
    n = np.array([8.0])
    free_rdma, free_nvl = dedup_copies(256, 8, n, n)
    assert float(free_rdma[0]) == pytest.approx(8 * (1 - p_miss) * 7 / 8, rel=1e-12)
    rdma, nvl = dedup_copies(256, 8, n, n, max_destination_nodes(dsv3, n))
    assert float(rdma[0]) == pytest.approx(3.5) and float(nvl[0]) == float(free_nvl[0])


def test_step_prices_deepep_with_the_cap(dsv3):
    """step.flex_dispatch_s hands the cap to the dedup pricing: one dispatch of 4096 tokens x 7168 x 2 B over EP 64
    (8 nodes of 8) is max(3.5 copies / IB, NVLink copies / NVLink) + latencies, as dedup_all_to_all_s with max 4."""
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.batch import LayoutArrays
    from clusterplan.models.training.dispatch import dedup_all_to_all_s, deepep_rates
    from clusterplan.models.training.layout import Layout
    from clusterplan.models.training.moe_layer import imbalance
    from clusterplan.models.training.step import Group, flex_dispatch_s
    from clusterplan.models.training.topology import Axis

    hw = HardwareRates.of(load_cluster("hgx-h800:8"))
    L = LayoutArrays.from_layouts([Layout(dp=64, ep=64, mbs=1, gbs=64, seq=4096, moe_dispatcher="deepep")])
    g = Group.of(L, Axis.EP)
    # the busiest rank's rows under forced balancing (tests/test_moe_forced_balance.py)
    token_bytes = np.array([4096 * 7168 * 2.0]) * imbalance(dsv3, L)
    n_in, n_out = np.array([8.0]), np.array([8.0])
    r = deepep_rates(hw.link("all_to_all", Axis.EP))  # the share of the links DeepEP reaches
    expected = dedup_all_to_all_s(token_bytes, 256, 8, n_in, n_out, r, 4.0)
    assert float(flex_dispatch_s(dsv3, L, g, hw)[0]) == pytest.approx(float(expected[0]), rel=1e-12)
    uncapped = dedup_all_to_all_s(token_bytes, 256, 8, n_in, n_out, r)
    assert float(expected[0]) < float(uncapped[0])
