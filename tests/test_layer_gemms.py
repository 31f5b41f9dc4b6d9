"""`estimate --gemms` (models/training/layer_gemms.py): one layer's weight GEMMs with the shape model's factors, as
worked examples."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import TRAINING_GEMM_SHARE
from clusterplan.models.training.batch import PREC_FP8, LayoutArrays
from clusterplan.models.training.compute import layer_linears, linear_times
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layer_gemms import _factors, layer_gemms
from clusterplan.models.training.layout import Layout

LLAMA_8B_FP8 = "tp=1,pp=1,dp=8,mbs=2,gbs=16,seq=8192,precision=fp8"


def _est(model: str, cluster: str, layout: str):
    c = load_cluster(cluster)
    return estimate(load_model(model), c, Layout.parse(layout, world=c.world_size))


def test_attention_input_projection_worked_example():
    # Llama 3.1 8B, fp8 on H100, mbs 2 x 8192 tokens: q/k/v in one GEMM, 16,384 x 6,144 reduced over 4,096.
    # 3,072 tiles of 128 x 256 on 132 SMs: 24 waves, 3,072 / (24 x 132) = 0.9697 useful (the MAMF shape's too, so the
    # wave factors cancel). k-depth 4096 / (4096 + 566) = 0.8786 against the MAMF shape's 13312 / 13878 = 0.9592.
    g = layer_gemms(_est("llama3.1-8b", "dgx-h100:1", LLAMA_8B_FP8))
    row = next(r for r in g.gemms if r.matrix == "attention in" and r.gemm_pass == "forward")
    assert (row.m, row.n, row.k, row.count, row.precision) == (16384, 6144, 4096, 1, "fp8")
    assert row.wave_efficiency == pytest.approx(3072 / (24 * 132), rel=1e-12)
    assert row.k_depth == pytest.approx(4096 / 4662, rel=1e-12)
    rate = 1978.9e12 * 0.709 * TRAINING_GEMM_SHARE * (4096 / 4662) / (13312 / 13878)
    assert row.time_s == pytest.approx(2 * 16384 * 6144 * 4096 / rate, rel=1e-9)
    # the weight gradient reduces over the 16,384 tokens: k-depth 16384 / 16950
    wgrad = next(r for r in g.gemms if r.matrix == "attention in" and r.gemm_pass == "wgrad")
    assert (wgrad.m, wgrad.n, wgrad.k) == (4096, 6144, 16384) and wgrad.k_depth == pytest.approx(16384 / 16950)


def test_dense_rows_add_up_to_the_layer_gemm_time_the_step_prices():
    # Without TP overlap (tp 1) the rows are exactly compute.linear_times' forward + backward of the same linears.
    est = _est("llama3.1-8b", "dgx-h100:1", LLAMA_8B_FP8)
    g = layer_gemms(est)
    shapes, arrays = ModelShapes.of(est.model), LayoutArrays.from_layouts([est.layout])
    fwd, bwd, _ = linear_times(layer_linears(shapes, arrays, False), est.evaluation.hw, arrays.precision == PREC_FP8)
    assert len(g.gemms) == 12 and {r.layer for r in g.gemms} == {"dense"}
    assert g.layer_time_s("dense") == pytest.approx(float(fwd[0] + bwd[0]), rel=1e-12)


def test_moe_layers_list_local_experts_and_skip_missing_shared_experts():
    # Qwen3-30B-A3B at ep 8: 128 / 8 = 16 local experts in one row each; no shared experts, so the MoE layer's dense
    # part is the router alone (2,048 -> 128) and there is no 'shared out'. DeepSeek-V3 has dense and MoE layers.
    g = layer_gemms(_est("qwen3-30b-a3b", "dgx-h100:1", "ep=8,dp=8,mbs=2,gbs=512,seq=4096"))
    experts = [r for r in g.gemms if r.matrix.startswith("experts")]
    assert len(experts) == 6 and {r.count for r in experts} == {16.0}
    assert {r.matrix for r in g.gemms} == {"attention in", "attention out", "experts in", "experts out",
                                           "router + shared in"}
    router = next(r for r in g.gemms if r.matrix == "router + shared in" and r.gemm_pass == "forward")
    assert router.n == 128 and router.k == 2048
    ds = layer_gemms(_est("deepseek-v3", "dgx-h100:32", "tp=1,pp=16,ep=8,dp=16,mbs=1,gbs=2048,seq=4096"))
    assert {r.layer for r in ds.gemms} == {"dense", "moe"} and any(r.matrix == "shared out" for r in ds.gemms)


def test_a_calibrated_gemm_curve_has_no_shape_factors():
    hw = _est("llama3.1-8b", "dgx-h100:1", LLAMA_8B_FP8).evaluation.hw
    assert _factors(dataclasses.replace(hw, gemm_shape=None), 4096.0, 4096.0, 4096.0, 1.0, False) == (None, None)
    wave, k_depth = _factors(hw, 4096.0, 4096.0, 4096.0, 1.0, False)
    assert k_depth == pytest.approx(4096 / (4096 + 128)) and 0 < wave <= 1


def test_cli_prints_the_gemms_and_json_carries_them(run_cli):
    layout = "tp=2,pp=1,dp=4,mbs=1,gbs=8,seq=8192,precision=fp8"  # one that fits, so the command exits 0
    args = ("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--layout", layout, "--gemms")
    code, out, _ = run_cli(*args)
    assert code == 0 and "weight GEMMs of one layer and micro-batch on one rank of H100-SXM5-80GB" in out
    assert "k-depth" in out and "dense layer:" in out and "ms of weight GEMMs per micro-batch" in out
    code, first, _ = run_cli(*args, "--format", "json")
    code2, second, _ = run_cli(*args, "--format", "json")
    assert code == code2 == 0 and first == second  # deterministic
    rows = json.loads(first)["layer_gemms"]["gemms"]
    assert len(rows) == 12 and rows[0]["k_depth"] == round(4096 / 4662, 4)
    first_row = rows[0]
    flops = 2 * first_row["m"] * first_row["n"] * first_row["k"] * first_row["count"]
    assert np.isclose(first_row["tflops_per_s"], flops / first_row["time_s"] / 1e12, rtol=1e-5)
    code, out, _ = run_cli(*args[:-1], "--format", "json")
    assert code == 0 and "layer_gemms" not in json.loads(out)  # opt-in
