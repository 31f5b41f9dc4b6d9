"""Estimates per second, scalar path (`estimate`) and vectorised path (what `plan` uses); and the wall time of an
out-of-memory `estimate`, whose nearest fitting changes (solver/feasible.py nearest_layout) price the rungs that fit."""

from __future__ import annotations

import time

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.estimate import estimate, evaluate
from clusterplan.models.training.layout import Layout
from clusterplan.solver.feasible import nearest_layout

if __name__ == "__main__":
    model, cluster = load_model("llama3.1-70b"), load_cluster("dgx-h100:8")
    layout = Layout.parse("tp=8,pp=4,gbs=512,seq=8192,sp=1", world=cluster.world_size)
    n = 200
    start = time.perf_counter()
    for _ in range(n):
        estimate(model, cluster, layout)
    scalar = (time.perf_counter() - start) / n
    arrays = LayoutArrays.from_layouts([layout] * 100_000)
    shapes, hw = ModelShapes.of(model), HardwareRates.of(cluster)
    start = time.perf_counter()
    evaluate(shapes, arrays, hw, cluster.world_size)
    vector = (time.perf_counter() - start) / len(arrays)
    print(f"scalar estimate: {scalar * 1e3:.3f} ms each ({1 / scalar:,.0f}/s)")
    print(f"vectorised:      {vector * 1e6:.3f} us each ({1 / vector:,.0f}/s over {len(arrays):,} layouts)")
    big, nodes = load_model("deepseek-v3"), load_cluster("dgx-h100:16")
    oom = estimate(big, nodes, Layout.parse("precision=fp8,tp=4,gbs=256,seq=8192,mbs=2", world=nodes.world_size))
    start = time.perf_counter()
    near = nearest_layout(big, nodes, oom, None, get_stack())
    took = time.perf_counter() - start
    print(f"out of memory:   DeepSeek-V3 tp4 on 128 H100, {len(near.options)} nearest options in {took:.2f} s")
