"""The training cost model against published A100 measurements (reference/data/, headers give sources).

No constant is fitted per row: GEMM and link efficiencies come from hardware_db and hold across all rows.
`python -m clusterplan.reference.report` prints the same comparison.
"""

from __future__ import annotations

import statistics

import pytest

from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.memory import (
    GIB,
    layers_activation_bytes,
    stage_layers,
    stage_params,
    state_bytes,
)
from clusterplan.reference import report as reference


@pytest.mark.parametrize("row", reference.read_rows("korthikanti2022.csv"), ids=lambda r: r["model"])
def test_korthikanti_memory_within_8_percent(row):
    """Figure 1: params+optimizer (18 B/param of the transformer layers) and activations, both recompute settings."""
    model = reference.gpt(int(row["hidden"]), int(row["heads"]), int(row["layers"]))
    shapes = ModelShapes.of(model)
    for seqsel, key in ((False, "mem_activations_none_gib"), (True, "mem_activations_seqsel_gib")):
        layout = reference.korthikanti_layouts(row, seqsel)
        if not seqsel:
            layout = layout.with_(recompute="none")
        arrays = LayoutArrays.from_layouts([layout])
        layers = stage_layers(shapes, arrays).first
        # The published figure counts the transformer layers only (the first stage's embedding adds ~2 GiB on 1T).
        states = state_bytes(shapes, arrays, stage_params(shapes, arrays, layers, False, False), layers)
        params_opt = float((states.weights + states.grads + states.optimizer)[0]) / GIB
        acts = float(layers_activation_bytes(shapes, arrays, layers, "first")[0]) / GIB
        assert params_opt == pytest.approx(float(row["mem_params_optimizer_gib"]), rel=0.08)
        assert acts == pytest.approx(float(row[key]), rel=0.08)


def test_korthikanti_iteration_times_within_8_percent():
    """Table 5: full recompute and sequence parallel + selective recompute, 22B to 1T. We reach max 7.0%."""
    rows = reference.korthikanti_times()
    assert len(rows) == 8
    for c in rows:
        assert abs(c.error) < 0.08, (c.label, c.measured, c.predicted)
    # Selective + sequence parallel beats full recompute on every model, as measured (29-32% faster).
    full, seqsel = rows[0::2], rows[1::2]
    for f, s in zip(full, seqsel, strict=True):
        assert s.predicted < f.predicted * 0.85


def test_megatron_table1_iteration_times_within_10_percent():
    """Table 1, 1.7B to 1T on up to 3072 A100s: every row within 10%, median within 6% (we reach 7.0% / 4.0%).

    Micro-batch and interleaving are not published; reference.table1() takes the fastest feasible choice, as our
    planner would. Every published layout must fit in our memory model (a row with no feasible choice is inf).
    """
    rows = reference.table1()
    assert len(rows) == 10
    errors = [c.error for c in rows]
    assert all(abs(e) < 0.10 for e in errors), [f"{c.label} {c.error:+.1%}" for c in rows]
    assert statistics.median(abs(e) for e in errors) < 0.06


def test_korthikanti_layer_times():
    """Table 4, one 22B layer at tp=8: forward within 5%, backward within 20%. Not a held-out check: an earlier
    fit of TRAINING_GEMM_SHARE (models/hardware/rates.py) used these rows.

    The backward is our weakest term: we price it at 2x the forward GEMMs plus 2x elementwise and unhidden tp
    all-reduces; the measured backward/forward ratio is 1.55.
    """
    from clusterplan.hardware_db.stacks import get_stack
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.compute import layer_time
    from clusterplan.models.training.layout import Layout
    from clusterplan.models.training.step import tp_comm_s

    shapes = ModelShapes.of(reference.gpt(6144, 64, 48))
    hw = HardwareRates.of(reference.selene(8))
    cases = {"baseline_no_recompute": ("none", False), "sequence_parallel_only": ("none", True),
             "full_recompute": ("full", False), "selective_recompute": ("selective", False),
             "selective_plus_sequence_parallel": ("selective", True)}
    for row in reference.read_rows("korthikanti2022_layer22b.csv"):
        recompute, sp = cases[row["experiment"]]
        arrays = LayoutArrays.from_layouts([Layout(tp=8, mbs=4, gbs=4, seq=2048, flash_attn=False, precision="fp16",
                                                   recompute=recompute, sp=sp)])
        t = layer_time(shapes, arrays, hw, False, get_stack(reference.STACK))  # Megatron-LM 2022: no TP overlap
        tp = tp_comm_s(shapes, arrays, hw, get_stack(reference.STACK), t.linear_s)
        tp_fwd = float(tp[0]) / (6 if recompute == "full" else 4) * 2
        forward_ms = (float(t.forward_s[0]) + tp_fwd) * 1e3
        backward_ms = (float(t.backward_s[0] + t.recompute_s[0] + tp[0]) - tp_fwd) * 1e3
        assert abs(forward_ms / float(row["forward_ms"]) - 1) < 0.05, (row["experiment"], forward_ms)
        assert abs(backward_ms / float(row["backward_ms"]) - 1) < 0.20, (row["experiment"], backward_ms)


def test_megatron_table2_zero3_falls_behind_ptdp_as_dp_grows():
    """Table 2: PTD-P stays near-flat while ZeRO-3 collapses as data parallelism grows at fixed batch."""
    rows = {c.label: c for c in reference.table2()}
    for size, gpus in (("174.6", (384, 768, 1536)), ("529.6", (640, 1120, 2240))):
        zero3 = [rows[f"zero3 {size}B {g} GPUs"].predicted for g in gpus]
        assert zero3[0] > zero3[1] > zero3[2]
        assert zero3[2] < 0.5 * zero3[0]  # measured: 44/144 and 48/138
    for size, gpus in (("174.6", (384, 768, 1536)), ("529.6", (560, 1120, 2240))):
        ptdp = [rows[f"ptdp {size}B {g} GPUs"] for g in gpus]
        for c in ptdp:
            assert abs(c.error) < 0.11, (c.label, c.measured, c.predicted)
    # At the largest scale PTD-P beats ZeRO-3 by a wide margin, as measured (141 vs 44, 159 vs 48 TFLOP/s).
    assert rows["ptdp 174.6B 1536 GPUs"].predicted > 2 * rows["zero3 174.6B 1536 GPUs"].predicted
    assert rows["ptdp 529.6B 2240 GPUs"].predicted > 1.5 * rows["zero3 529.6B 2240 GPUs"].predicted
