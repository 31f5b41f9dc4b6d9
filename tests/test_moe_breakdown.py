"""Per-phase view of one MoE layer (models/training/step.py moe_layer_breakdown, reference/moe_breakdown.py): it
adds up to the terms step_time prices, and its shapes and host ops are the ones derived by hand."""

from __future__ import annotations

import pytest

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.step import MOE_PHASES, layer_cost, moe_layer_breakdown
from clusterplan.reference import moe_breakdown

H100_QWEN = "tp=1,pp=2,vpp=24,ep=8,mbs=2,gbs=512,seq=4096,precision=fp8,recompute=none,schedule=interleaved-1f1b"


def _h100_qwen():
    model, cluster = load_model("qwen3-30b-a3b"), load_cluster("dgx-h100:2")
    layout = Layout.parse(H100_QWEN, world=16)
    stack = get_stack("megatron-core")
    hw = estimate(model, cluster, layout, stack=stack).evaluation.hw
    return ModelShapes.of(model), LayoutArrays.from_layouts([layout]), hw, stack


def test_breakdown_adds_up_to_the_layer_cost():
    # Every Qwen3-30B layer is an MoE layer and this layout has no tp / cp traffic: the phases' GPU time plus the
    # exposed host time is the layer's whole per-micro-batch cost.
    shapes, L, hw, stack = _h100_qwen()
    b = moe_layer_breakdown(shapes, L, hw, stack)
    cost = layer_cost(shapes, L, hw, stack)
    assert [p.name for p in b.phases] == list(MOE_PHASES)
    assert float(b.total_s[0]) == pytest.approx(float(cost.total_s[0]), rel=1e-9)
    assert float(b.exposed_host_s[0]) == pytest.approx(float(cost.host_s[0]), rel=1e-9)
    a2a = [float(p.gpu_s[0]) for p in b.phases if "dispatch" in p.name or "combine" in p.name]
    assert sum(a2a) == pytest.approx(float(cost.ep_s[0]), rel=1e-9)


def test_breakdown_shapes_and_host_ops_by_hand():
    # mbs 2 x 4096 tokens x top-8 over 128 experts at ep 8: each of 16 local experts receives 8192 x 8 x 8 / 128
    # = 4096 tokens, the busiest rank's x 1.0054055 under forced balancing (4,096 tokens a rank: 1.0076445, by hand in
    # tests/test_moe_forced_balance.py; 8,192: its excess / sqrt(2)) = 4118.14; fc1 [2048 -> 2 x 768],
    # fc2 [768 -> 2048]. Host ops (fp8, TE module 2.69 x 2 = 5.38 ops):
    # experts forward 2 x 5.38 + 1 + 16 x 2 x 4 + 7 (padding) = 146.76, and per split the current-scaling quantize
    # (megatron-core's first recipe, tensorwise) costs 6 + 1 (the transpose: Hopper) ops in place of 3: + 16 x 2 x 4
    # = 274.76; at 13.48 us per op (x86) 3.704 ms.
    shapes, L, hw, stack = _h100_qwen()
    b = moe_layer_breakdown(shapes, L, hw, stack)
    (n1, m1, o1, i1), (n2, m2, o2, i2) = b.expert_gemms
    rows = 4096 * (1 + 0.0076445 / 2 ** 0.5)
    assert (n1, float(o1[0]), float(i1[0])) == ("fc1", 1536.0, 2048.0)
    assert (n2, float(o2[0]), float(i2[0])) == ("fc2", 2048.0, 768.0)
    assert float(m1[0]) == float(m2[0]) == pytest.approx(rows, rel=1e-6)
    assert float(b.local_experts[0]) == 16.0
    experts = next(p for p in b.phases if p.name == "experts_forward")
    assert float(experts.host_ops[0]) == pytest.approx(274.76)
    assert float(experts.host_s[0]) == pytest.approx(274.76 * 13.48e-6)


def test_reference_rows_imply_a_layer_time_and_the_cli_refuses_unknown_rows(capsys):
    rows = moe_breakdown.breakdowns(["DGX-H100 Qwen3_30B_a3B FP8-CS"])
    assert len(rows) == 1
    # 512 x 4096 tokens / (5275 tokens/s x 16 GPUs) = 24.85 s over 32 micro-batches x 24 layers: 32.35 ms.
    assert rows[0].published_layer_s == pytest.approx(512 * 4096 / (5275 * 16) / (32 * 24), rel=1e-9)
    assert moe_breakdown.main(["DGX-H100 no-such-model FP8-CS"]) == 2
    err = capsys.readouterr().err
    assert "no MoE row named" in err and len(err.strip().splitlines()) == 1
