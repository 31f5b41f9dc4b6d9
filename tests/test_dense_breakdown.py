"""Per-part view of one dense layer (reference/dense_breakdown.py): its parts add up to what compute.layer_time
prices for every dense Megatron-Bridge row, and the published per-layer time is the quotient derived by hand."""

from __future__ import annotations

import json

import pytest

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import layer_time
from clusterplan.models.training.estimate import estimate
from clusterplan.reference import bridge, dense_breakdown
from clusterplan.reference.report import read_rows


def test_parts_add_up_to_layer_time_on_every_dense_row():
    checked = 0
    for r in read_rows(bridge.BRIDGE_CSV):
        model, _ = bridge.row_model(r)
        if model.is_moe:
            continue
        layout, _ = bridge.bridge_layout(r, model)
        _, cluster, _ = bridge.bridge_cluster(r["system"], int(r["gpus"]))
        est = estimate(model, cluster, layout, stack=get_stack(bridge.STACK),
                       fp8_recipe=bridge.fp8_recipe(r["precision"], cluster))
        shapes, arrays = ModelShapes.of(model), LayoutArrays.from_layouts([layout])
        hw, stack = est.evaluation.hw, est.evaluation.stack
        parts = dense_breakdown.dense_layer_parts(shapes, arrays, hw, stack)
        lt = layer_time(shapes, arrays, hw, False, stack)
        assert sum(parts.forward_s.values()) == pytest.approx(float(lt.forward_s[0]), rel=1e-9), r
        assert sum(parts.backward_s.values()) == pytest.approx(float(lt.backward_s[0]), rel=1e-9), r
        assert all(v >= 0 for v in (*parts.forward_s.values(), *parts.backward_s.values()))
        checked += 1
    assert checked == 15  # Llama 3 8B / 70B / 405B on GB300, GB200, B200, H100


def test_published_layer_time_and_the_cli(capsys):
    rows = dense_breakdown.breakdowns(["DGX-B200 LLAMA3_8B FP8-CS"])
    assert len(rows) == 1
    # 128 x 8192 tokens / (30624 tokens/s x 8 GPUs) = 4.280 s over 8 micro-batches x 32 layers: 16.72 ms.
    assert rows[0].published_layer_s == pytest.approx(128 * 8192 / (30624 * 8) / (8 * 32), rel=1e-9)
    assert rows[0].parts.forward_s["fp8_cast"] > 0 and set(rows[0].parts.forward_s) == set(dense_breakdown.PARTS) - {"autocast_cast", "autocast_weight"}
    assert dense_breakdown.main(["DGX-B200 LLAMA3_8B FP8-CS"]) == 0
    assert "attention" in capsys.readouterr().out
    assert dense_breakdown.main(["DGX-B200 no-such-model FP8-CS"]) == 2
    err = capsys.readouterr().err
    assert "no dense row named" in err and len(err.strip().splitlines()) == 1



def test_parts_gemm_against_whole_gemms_names_the_tp_overlap_chunking(run_cli):
    # estimate --parts' gemm part is the GEMMs as the stack's TP overlap chunks them; --gemms lists them whole. The
    # two differ by design; the parts view says so and gives the whole figure (a fuzz run read them as a
    # contradiction). Without TP (tp 1) they are the same GEMMs.
    base = ("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--parts", "--layout")
    code, out, _ = run_cli(*base, "tp=8,gbs=8,seq=4096", "--format", "json")
    parts = json.loads(out)["layer_parts"]
    assert code == 0 and parts["tp_overlap"] != "none"
    assert parts["forward_s"]["gemm"] + parts["backward_s"]["gemm"] > parts["whole_gemm_s"]
    code, out, _ = run_cli(*base, "tp=8,gbs=8,seq=4096")
    assert code == 0 and "as whole GEMMs (estimate --gemms)" in out
    code, out, _ = run_cli(*base, "tp=1,gbs=8,seq=4096", "--format", "json")
    parts = json.loads(out)["layer_parts"]
    assert parts["forward_s"]["gemm"] + parts["backward_s"]["gemm"] == pytest.approx(parts["whole_gemm_s"], rel=1e-5)
