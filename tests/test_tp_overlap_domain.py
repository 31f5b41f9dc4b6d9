"""TP communication overlap runs only where its transport does: Transformer Engine userbuffers and PyTorch async TP map
their peers' buffers over NVLink (CUDA multicast / IPC handles), so a tensor-parallel group that spans scale-up domains
runs its all-gathers and reduce-scatters whole and exposed (NVIDIA/TransformerEngine#1071: "only possible with
single-node tensor-parallelism"; #1470 adds multi-node NVLink domains); nanotron's overlap issues plain NCCL
collectives and runs over any link (tp_overlap.NVLINK_DOMAIN_OVERLAPS)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.tp_overlap import tp_overlap_runs


def test_the_overlap_runs_inside_one_scale_up_domain_only():
    sp, tp = np.array([1, 1, 1, 0]), np.array([8, 16, 1, 8])
    assert tp_overlap_runs("bulk", sp, tp, 8).tolist() == [True, False, False, False]
    assert tp_overlap_runs("async_tp", sp, tp, 72).tolist() == [True, True, False, False]  # GB200 NVL72: one domain
    assert tp_overlap_runs("local_shard", sp, tp, 8).tolist() == [True, True, False, False]


@pytest.mark.parametrize(("tp", "nodes", "hidden"), [(16, 2, False), (8, 1, True)])
def test_megatron_core_overlaps_tp_within_a_node_not_across(tp, nodes, hidden):
    """Llama-3.1-70B, bf16, full recompute: at tp 16 over two DGX H100 nodes megatron-core's TP traffic is exposed as
    if the stack overlapped none (priced with tp_overlap none); at tp 8 inside a node the userbuffers hide part of it."""
    model, cluster = load_model("llama3.1-70b"), load_cluster(f"dgx-h100:{nodes}")
    layout = Layout.parse(f"tp={tp},pp=1,mbs=1,gbs=32,seq=8192,precision=bf16,recompute=full",
                          world=cluster.world_size)
    stack = get_stack("megatron-core")
    overlapped = estimate(model, cluster, layout, stack=stack).to_json()["time"]["tp_comm_s"]
    plain = estimate(model, cluster, layout, stack=replace(stack, tp_overlap="none", tp_overlap_share=0.0)
                     ).to_json()["time"]["tp_comm_s"]
    if hidden:
        assert overlapped < 0.5 * plain
    else:
        assert overlapped == pytest.approx(plain, rel=1e-9)
