"""Megatron-Core's selective `moe` recompute module re-runs the MoE block's token all-to-alls, as a worked example.

With --recompute-granularity selective and "moe" in --recompute-modules, MoELayer.forward runs its whole
custom_forward (router, token dispatch with its device-to-host sync, experts, combine) under
tensor_parallel.checkpoint (megatron/core/transformer/moe/moe_layer.py, moe_layer_recompute): backward re-runs the
forward's dispatch and combine all-to-alls before their two gradients, 6 per layer and micro-batch instead of 4, as
under full recompute. moe_act (the experts' activation only) or core_attn re-run none.
"""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.collectives import ep_collectives
from clusterplan.models.training.layout import Layout

SHAPES = ModelShapes.of(load_model("qwen3-30b-a3b"))


def calls(**kw: object) -> float:
    layout = Layout(dp=8, ep=8, gbs=64, seq=4096, mbs=1, **kw)
    return float(ep_collectives(SHAPES, LayoutArrays.from_layouts([layout])).calls[0])


@pytest.mark.parametrize(("recompute", "modules", "expected"), [
    ("none", "", 4.0),
    ("selective", "core_attn", 4.0),
    ("selective", "moe_act+layernorm", 4.0),
    ("selective", "moe", 6.0),
    ("selective", "layernorm+moe", 6.0),
    ("full", "", 6.0),
])
def test_all_to_alls_per_moe_layer(recompute: str, modules: str, expected: float) -> None:
    assert calls(recompute=recompute, recompute_modules=modules) == expected


def test_the_moe_module_adds_half_the_ep_time() -> None:
    """Same bytes per call, so the layer's expert-parallel time grows by 6 / 4."""
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.training.estimate import estimate

    model, cluster = load_model("qwen3-30b-a3b"), load_cluster("dgx-h100:2")

    def ep_s(modules: str) -> float:
        layout = Layout(dp=16, ep=16, gbs=64, seq=4096, mbs=1, recompute="selective", recompute_modules=modules)
        ev = estimate(model, cluster, layout).evaluation
        assert ev is not None
        return float(ev.time.ep_comm_s[0])

    assert ep_s("moe_act+moe") == pytest.approx(1.5 * ep_s("moe_act"), rel=1e-9)
    assert np.isfinite(ep_s("moe"))
