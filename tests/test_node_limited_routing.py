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
