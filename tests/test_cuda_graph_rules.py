"""Layouts Megatron-Core 0.16 refuses at start-up (TransformerConfig.__post_init__): CUDA graphs beside activation
offloading ("CUDA graphs not supported with CPU offloading.") and attention graphs with full recompute ("full
recompute is only supported with full iteration CUDA graph."); RuleCode.CUDA_GRAPHS says which and how to fix it."""

from __future__ import annotations

import pytest

from clusterplan.errors import BadInputError
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.layout import Layout, layout_problems
from clusterplan.models.training.rules import RuleCode
from clusterplan.solver.search import search

MODEL = load_model("llama3.1-8b")


@pytest.mark.parametrize(("kw", "broken"), [
    (dict(cuda_graphs="attn", offload_layers=4), True),
    (dict(cuda_graphs="full", offload_layers=4), True),
    (dict(cuda_graphs="attn", recompute="full"), True),
    (dict(cuda_graphs="full", recompute="full"), False),
    (dict(cuda_graphs="attn", recompute="selective"), False),
    (dict(cuda_graphs="none", offload_layers=4), False),
])
def test_the_two_combinations(kw, broken):
    L = Layout(dp=8, zero=1, mbs=1, gbs=64, seq=8192, **kw)
    codes = [p.code for p in layout_problems(MODEL, L, 8)]
    assert (RuleCode.CUDA_GRAPHS in codes) is broken


def test_plan_leaves_them_out():
    plans = search(MODEL, load_cluster("dgx-h100:1"), 64, 8192, fixed={"cuda_graphs": "attn"}, top=50).plans
    assert plans and all(p.layout.recompute != "full" for p in plans)
    with pytest.raises(BadInputError, match="cuda_graphs=attn with offload_layers"):
        search(MODEL, load_cluster("dgx-h100:1"), 64, 8192, fixed={"cuda_graphs": "attn", "offload_layers": 4}, top=5)
