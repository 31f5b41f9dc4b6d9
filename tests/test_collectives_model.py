"""Worked examples, by hand, of the collectives step.py prices (models/training/collectives.py) on Llama-3.1-8B
(hidden 4096, 32 heads, 8 kv heads of 128, FFN 14336) and Mixtral-8x7B, bf16 with fp32 gradients (adam-master).
Changing a count or a size fails here; tests/test_validate_collectives.py checks the same lists against torch."""

from __future__ import annotations

import pytest

from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.collectives import layer_collectives, pipeline_p2p
from clusterplan.models.training.layout import Layout

LLAMA = ModelShapes.of(load_model("llama3.1-8b"))
# One layer: q, o 4096 x 4096; k, v 4096 x 1024; gate, up, down 4096 x 14336; two RMSNorm scales of 4096.
LAYER_PARAMS = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096


def _table(shapes: ModelShapes, text: str) -> dict[tuple[str, str], tuple[float, float]]:
    arrays = LayoutArrays.from_layouts([Layout.parse(text)])
    return {(c.axis, c.kind): (float(c.calls[0]), float(c.size_bytes[0]))
            for c in layer_collectives(shapes, arrays) if float(c.calls[0])}


def test_tensor_parallel_all_reduces():
    # b*s*h = 1 x 8192 x 4096 bf16 = 64 MiB per all-reduce; 2 forward + 2 backward, +2 when full recompute reruns
    # the forward.
    size = 2 * 8192 * 4096
    assert _table(LLAMA, "tp=8,sp=0,mbs=1,gbs=8,seq=8192,recompute=selective") == {("tp", "all_reduce"): (4, size)}
    assert _table(LLAMA, "tp=8,sp=0,mbs=1,gbs=8,seq=8192,recompute=full") == {("tp", "all_reduce"): (6, size)}


def test_sequence_parallel_splits_each_all_reduce():
    size = 2 * 8192 * 4096  # the full gathered size, nccl-tests' convention
    assert _table(LLAMA, "tp=8,sp=1,mbs=1,gbs=8,seq=8192,recompute=selective") == {
        ("tp", "all_gather"): (4, size), ("tp", "reduce_scatter"): (4, size)}


def test_fsdp_and_hsdp_per_layer():
    # ZeRO-3 over 8: gather the layer's bf16 weights twice (forward, backward), reduce-scatter fp32 gradients once;
    # HSDP 2 x 4: the gradient shard (1/4 of the layer) is all-reduced across the 2 replicas.
    assert _table(LLAMA, "dp=8,zero=3,mbs=1,gbs=8,seq=4096") == {
        ("dp_shard", "all_gather"): (2, 2 * LAYER_PARAMS), ("dp_shard", "reduce_scatter"): (1, 4 * LAYER_PARAMS)}
    assert _table(LLAMA, "dp=8,dp_replicate=2,zero=3,mbs=1,gbs=8,seq=4096") == {
        ("dp_shard", "all_gather"): (2, 2 * LAYER_PARAMS), ("dp_shard", "reduce_scatter"): (1, 4 * LAYER_PARAMS),
        ("dp_replicate", "all_reduce"): (1, 4 * LAYER_PARAMS / 4)}
    # With tp=2 each rank gathers its tensor-parallel half of the matrices; the norms stay whole.
    tp_half = (LAYER_PARAMS - 2 * 4096) / 2 + 2 * 4096
    assert _table(LLAMA, "tp=2,dp=4,zero=3,mbs=1,gbs=8,seq=4096")[("dp_shard", "all_gather")] == (2, 2 * tp_half)


def test_expert_parallel_all_to_alls():
    # Mixtral: top 2 of 8 experts, hidden 4096; 4096 tokens x 2 copies x 4096 x 2 bytes per all-to-all; dispatch and
    # combine, forward and backward: 4 per MoE layer. The collective ends when the busiest rank has its rows: forced
    # balancing, one expert a rank, 2 picks of 8 (variance 2 (1/8)(7/8)(6/7) = 0.1875 on a mean of 0.25) over the
    # 32,768 tokens of the EP group, the busiest of 8 at 1.4236 x sqrt(8/7) deviations: x 1.014562.
    mixtral = ModelShapes.of(load_model("mixtral-8x7b"))
    table = _table(mixtral, "dp=8,ep=8,zero=1,mbs=1,gbs=8,seq=4096,recompute=selective")
    busiest = 1 + 1.4236003 * (8 / 7) ** 0.5 * (0.1875 / 32_768) ** 0.5 / 0.25
    assert busiest == pytest.approx(1.014562, rel=1e-6)
    assert list(table) == [("ep", "all_to_all")] and table["ep", "all_to_all"][0] == 4
    assert table["ep", "all_to_all"][1] == pytest.approx(4096 * 2 * 4096 * 2 * busiest, rel=1e-7)


def test_pipeline_boundary():
    # 2 tensors per boundary and micro-batch: the activation forward, its gradient backward; b*s*h / tp each.
    arrays = LayoutArrays.from_layouts([Layout.parse("pp=4,tp=2,sp=1,mbs=2,gbs=64,seq=4096")])
    p2p = pipeline_p2p(LLAMA, arrays)
    assert (float(p2p.calls[0]), float(p2p.size_bytes[0])) == pytest.approx((2, 2 * 2 * 4096 * 4096 / 2))
