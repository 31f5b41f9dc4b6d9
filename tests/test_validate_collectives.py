"""The collectives the cost model prices are the ones torch issues: per layer for TP, SP, FSDP, HSDP and EP, and per
pipeline boundary for PP, counted in validate's own runtime (validate/collectives.py: fake process group, or gloo
for pipelines) and compared call for call and byte for byte with models/training/collectives.py, which step.py
prices. A tiny model (hidden 64, 1-2 layers, 32 tokens) keeps each case to seconds of compute.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

pytest.importorskip("torch")

from clusterplan.models.architecture.shapes import ModelShapes  # noqa: E402
from clusterplan.models.architecture.spec import ModelSpec  # noqa: E402
from clusterplan.models.training.batch import LayoutArrays  # noqa: E402
from clusterplan.models.training.collectives import layer_collectives, pipeline_p2p  # noqa: E402
from clusterplan.models.training.layout import Layout  # noqa: E402
from clusterplan.models.training.moe_layer import imbalance  # noqa: E402
from clusterplan.validate.collectives import Issued, issued_per_layer, issued_per_step  # noqa: E402

DENSE = ModelSpec(name="tiny", n_layers=2, hidden=64, n_heads=4, n_kv_heads=2, ffn_hidden=128, vocab=128)
MOE = replace(DENSE, name="tiny-moe", n_experts=4, top_k=2, expert_ffn_hidden=64)
COMMON = "seq=32,precision=fp32,optimizer=adam"


def _group(axis: str, layout: Layout) -> int:
    return {"tp": layout.tp, "ep": layout.ep, "dp_shard": layout.dp_shard * layout.cp,
            "dp_replicate": layout.dp_replicate, "pp": 2}[axis]


def _model(collectives, layout: Layout, times: float = 1.0) -> Issued:
    calls, size = Counter(), Counter()
    for c in collectives:
        n = float(c.calls[0]) * times
        if n:
            key = (c.kind, _group(c.axis, layout))
            calls[key] += n
            size[key] += n * float(c.size_bytes[0])
    return Issued(calls=calls, size_bytes=size)


def _nonzero(issued: Issued) -> dict:
    return {k: (issued.calls[k], issued.size_bytes[k]) for k in sorted(issued.calls) if issued.calls[k]}


@pytest.mark.slow
@pytest.mark.parametrize("spec, text", [
    (DENSE, "tp=2,sp=0,mbs=2,gbs=2,recompute=none"),  # TP: 2 all-reduces forward, 2 backward
    (DENSE, "tp=2,sp=0,mbs=2,gbs=2,recompute=full"),  # + the forward's 2 again in the recompute
    (DENSE, "tp=2,sp=1,mbs=2,gbs=2,recompute=none"),  # SP: all-gather + reduce-scatter for each all-reduce
    (DENSE, "dp=2,zero=3,mbs=1,gbs=2,recompute=none"),  # FSDP: gather forward and backward, reduce-scatter
    (DENSE, "dp=4,dp_replicate=2,zero=3,mbs=1,gbs=4,recompute=none"),  # HSDP: + all-reduce of the shard
    (MOE, "dp=2,ep=2,zero=3,mbs=1,gbs=2,recompute=none"),  # EP: dispatch and combine, forward and backward
], ids=["tp", "tp-full-recompute", "sp", "fsdp", "hsdp", "ep"])
def test_layer_collectives_are_what_torch_issues(spec, text):
    layout = Layout.parse(f"{text},{COMMON}")
    model = _model(layer_collectives(ModelShapes.of(spec), LayoutArrays.from_layouts([layout])), layout)
    issued = issued_per_layer(spec, layout)
    if spec.is_moe:  # FSDP2 also shards the experts over the expert-data-parallel ranks: priced in dp_comm, not here
        issued = Issued(calls=Counter({k: v for k, v in issued.calls.items() if k[0] == "all_to_all"}),
                        size_bytes=Counter({k: v for k, v in issued.size_bytes.items() if k[0] == "all_to_all"}))
        # Each rank issues its own T x k copies; the model's size is what the busiest rank receives, which every
        # rank waits for (moe_layer.imbalance: forced balancing's statistical excess): compared at the mean.
        busiest = float(imbalance(ModelShapes.of(spec), LayoutArrays.from_layouts([layout]))[0])
        assert busiest > 1.0
        model = Issued(calls=Counter({k: v for k, v in model.calls.items() if k[0] == "all_to_all"}),
                       size_bytes=Counter({k: round(v / busiest) for k, v in model.size_bytes.items()
                                           if k[0] == "all_to_all"}))
    assert _nonzero(issued) == _nonzero(model)


@pytest.mark.slow
def test_pipeline_sends_are_what_torch_issues():
    # pp=2, 1F1B over 4 micro-batches: the first stage sends 4 activations and receives 4 gradients.
    layout = Layout.parse(f"pp=2,mbs=1,gbs=4,schedule=1f1b,recompute=none,{COMMON}")
    p2p = pipeline_p2p(ModelShapes.of(DENSE), LayoutArrays.from_layouts([layout]))
    model = _model([p2p], layout, times=layout.microbatches)
    issued = issued_per_step(DENSE, layout)
    assert _nonzero(issued) == _nonzero(model) == {("send_recv", 2): (8, 8 * 32 * 64 * 4)}
