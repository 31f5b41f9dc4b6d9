"""fp8 precision: the GEMM rate from the measured fp8 MAMF (tests/test_gemm_shape.py), the quantisation kernels as
HBM traffic per recipe, cached fp8 weight copies and fp8-saved linear inputs in memory, and the GPUs that may run it."""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import FP8_QUANT_BYTES_PER_ELEMENT, Linear, fp8_cast_times
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.memory import bytes_per_param, layer_activation_bytes

H100 = HardwareRates.of(load_cluster("dgx-h100:1"))


def test_cast_kernels_worked_example():
    # One 4096 -> 4096 linear on 8192 tokens, 8 micro-batches, H100 HBM 3.35 TB/s x 0.85:
    # tensorwise = amax read 2 B + cast-transpose read 2 B, write 2 x 1 B = 6 B per element;
    # forward X (8192 x 4096) + W (4096^2) / 8 micro-batches (cached weight copy), backward dY (8192 x 4096).
    L = LayoutArrays.from_layouts([Layout(mbs=1, gbs=64, dp=8, seq=8192)])
    assert float(L.microbatches[0]) == 8
    g = [Linear(np.array([8192.0]), 4096, 4096)]
    fwd, bwd = fp8_cast_times(g, L, H100, "tensorwise", True)
    hbm = 3.35e12 * 0.85
    assert float(fwd[0]) == pytest.approx((8192 * 4096 + 4096 * 4096 / 8) * 6 / hbm)
    assert float(bwd[0]) == pytest.approx(8192 * 4096 * 6 / hbm)
    # Without a cached copy the weight is quantised in every micro-batch; delayed scaling skips the amax pass.
    fwd_nc, _ = fp8_cast_times(g, L, H100, "tensorwise", False)
    assert float(fwd_nc[0]) == pytest.approx((8192 * 4096 + 4096 * 4096) * 6 / hbm)
    assert FP8_QUANT_BYTES_PER_ELEMENT["delayed"] == 4.0 and FP8_QUANT_BYTES_PER_ELEMENT["mxfp8"] == 4.0625


def test_fp8_is_refused_where_the_tensor_cores_lack_it():
    model = load_model("llama3.1-8b")
    a100 = estimate(model, load_cluster("dgx-a100-80g:1"), Layout.parse("tp=1,mbs=1,gbs=8,seq=2048,precision=fp8", world=8))
    assert not a100.feasible and any("no fp8 tensor cores" in str(r) for r in a100.reasons)
    layout = Layout.parse("tp=1,mbs=1,gbs=8,seq=2048,precision=fp8", world=8)
    h100_mx = estimate(model, load_cluster("dgx-h100:1"), layout, fp8_recipe="mxfp8")
    assert any("no MXFP8 tensor cores" in str(r) for r in h100_mx.reasons)
    b200_mx = estimate(model, load_cluster("dgx-b200:1"), layout, fp8_recipe="mxfp8")
    assert not any("MXFP8" in str(r) for r in b200_mx.reasons)


def test_fp8_memory_weight_copies_and_fp8_saved_inputs():
    # bf16 weight + row- and column-wise fp8 copies = 4 B per parameter.
    L8 = LayoutArrays.from_layouts([Layout(precision="fp8", seq=4096, mbs=1, gbs=8, dp=8)])
    L16 = LayoutArrays.from_layouts([Layout(precision="bf16", seq=4096, mbs=1, gbs=8, dp=8)])
    assert float(bytes_per_param(L8)[0][0]) == 4.0
    # Activations of one llama3.1-8b layer (h 4096, ffn 14336, v_dim 4096, no tp/sp): the qkv and MLP inputs and the
    # FFN product drop from 2 B to 1 B, the out-projection adds its 1 B fp8 copy: 4096 x (-4096 - 14336 + 4096) B.
    shapes = ModelShapes.of(load_model("llama3.1-8b"))
    mode = np.zeros(1)
    diff = float(layer_activation_bytes(shapes, L16, False, mode)[0] - layer_activation_bytes(shapes, L8, False, mode)[0])
    assert diff == pytest.approx(4096 * (4096 + 4096 + 14336 - 4096))



def test_plan_searches_fp8_where_every_gpu_and_the_stack_run_it(run_cli):
    """Precision is a search axis: bf16 everywhere, fp8 too on fp8 tensor cores with a stack that has an fp8 recipe.
    The same structures are searched once per precision, so the H100 space is exactly twice the A100 one."""
    from clusterplan.hardware_db import get_stack
    from clusterplan.solver.search import precision_options, search

    model = load_model("llama3.1-8b")
    h100, a100 = load_cluster("dgx-h100:1"), load_cluster("dgx-a100-80g:1")
    assert precision_options(h100, get_stack("megatron-core"), {}) == ("bf16", "fp8")
    assert precision_options(a100, get_stack("megatron-core"), {}) == ("bf16",)
    assert precision_options(h100, get_stack("deepspeed"), {}) == ("bf16",)  # no fp8 recipe in the stack
    assert precision_options(h100, get_stack("megatron-core"), {"precision": "bf16"}) == ("bf16",)
    on_h100 = search(model, h100, 64, 8192, top=1000)
    on_a100 = search(model, a100, 64, 8192, top=1000)
    assert on_h100.candidates == 2 * on_a100.candidates
    assert {p.layout.precision for p in on_h100.plans} == {"bf16", "fp8"}
    assert {p.layout.precision for p in on_a100.plans} == {"bf16"}
    # The same layout is faster in fp8 on H100 (GEMMs at the fp8 MAMF rate, casts priced), and fp8 ranks first.
    assert on_h100.plans[0].layout.precision == "fp8"
    # Pinning fp8 where the GPUs lack it is bad input: one line, exit 2.
    code, out, err = run_cli("plan", "--model", "llama3.1-8b", "--cluster", "dgx-a100-80g:1", "--gbs", "64",
                             "--seq", "8192", "--fix", "precision=fp8")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "no fp8 tensor cores" in err


B200 = HardwareRates.of(load_cluster("dgx-b200:1"))


def test_blackwell_cast_kernels_worked_example():
    # Blackwell runs fp8 GEMMs in every layout, so current scaling writes one fp8 copy: amax read 2 B + cast read 2 B +
    # write 1 B = 5 B per element (Hopper: 6 B, the cast-transpose writes two). MXFP8 still writes a row- and a
    # column-wise copy with one E8M0 byte per 32 each: 2 + 2 x (1 + 1/32) = 4.0625 B. Same linear as on H100 above:
    # 4096 -> 4096 on 8192 tokens, 8 micro-batches, cached weight; B200 HBM 7.672 TB/s (7,680-bit bus at 3,996 MHz
    # DDR, gpus.yaml) x 0.85.
    L = LayoutArrays.from_layouts([Layout(mbs=1, gbs=64, dp=8, seq=8192)])
    g = [Linear(np.array([8192.0]), 4096, 4096)]
    hbm = 7.672e12 * 0.85
    assert B200.fp8_all_layouts and not H100.fp8_all_layouts
    fwd_cs, bwd_cs = fp8_cast_times(g, L, B200, "tensorwise", True)
    assert float(fwd_cs[0]) == pytest.approx((8192 * 4096 + 4096 * 4096 / 8) * 5 / hbm)
    assert float(bwd_cs[0]) == pytest.approx(8192 * 4096 * 5 / hbm)
    fwd_mx, bwd_mx = fp8_cast_times(g, L, B200, "mxfp8", True)
    assert float(fwd_mx[0]) == pytest.approx((8192 * 4096 + 4096 * 4096 / 8) * 4.0625 / hbm)
    assert float(bwd_mx[0]) == pytest.approx(8192 * 4096 * 4.0625 / hbm)
    fwd_dl, _ = fp8_cast_times(g, L, B200, "delayed", True)  # amax fused into the cast: read 2 B + write 1 B
    assert float(fwd_dl[0]) == pytest.approx((8192 * 4096 + 4096 * 4096 / 8) * 3 / hbm)


def test_mxfp8_gemms_run_the_measured_ratio_slower():
    # TE GEMM Profiling Tutorial (B300, pre-quantised, per layer): MXFP8 7.161 ms vs per-tensor FP8 6.812 ms = 1.051.
    # A compute-bound 8192 x 8192 x 8192 fp8 GEMM takes exactly 1.051x as long under MXFP8; bf16 is untouched, and
    # GPUs without a published ratio (H100 has no MXFP8) keep their rates.
    assert B200.mxfp8_gemm_time_ratio == 1.051
    mx = B200.for_fp8_recipe("mxfp8")
    n = np.array([8192.0])
    for fp8 in (True, False):
        base = float(B200.gemm_time_s(n, n, n, fp8)[0])
        ratio = 1.051 if fp8 else 1.0
        assert float(mx.gemm_time_s(n, n, n, fp8)[0]) == pytest.approx(base * ratio)
    assert B200.for_fp8_recipe("tensorwise") is B200
    assert H100.for_fp8_recipe("mxfp8") is H100


def test_mxfp8_layer_prices_its_gemms_and_casts():
    """One Llama-3.1-8B layer on B200 (tp 1, mbs 2, seq 8192, cached weights): MXFP8 minus current scaling forward is
    the weight GEMMs' forward x (1.051 - 1) plus the difference of the two recipes' cast kernels."""
    from dataclasses import replace

    from clusterplan.hardware_db import get_stack
    from clusterplan.models.training.compute import layer_linears, layer_time, linear_times

    shapes = ModelShapes.of(load_model("llama3.1-8b"))
    L = LayoutArrays.from_layouts([Layout(mbs=2, gbs=128, dp=8, seq=8192, precision="fp8")])
    stack = get_stack("megatron-core")
    cs = layer_time(shapes, L, B200, False, replace(stack, fp8_recipes=("tensorwise",)))
    mx = layer_time(shapes, L, B200, False, replace(stack, fp8_recipes=("mxfp8",)))
    lin = layer_linears(shapes, L, False)
    gemm_fwd = float(linear_times(lin, B200, np.array([True]))[0][0])
    cast = {r: float(fp8_cast_times(lin, L, B200, r, True)[0][0]) for r in ("tensorwise", "mxfp8")}
    expected = gemm_fwd * 0.051 + cast["mxfp8"] - cast["tensorwise"]
    assert float(mx.forward_s[0] - cs.forward_s[0]) == pytest.approx(expected, rel=1e-9)
    # tokens 16,384 x (4096 x 6144 + 4096 x 4096 + 4096 x 28672 + 14336 x 4096) inputs and the 4096 x 53,248 + 14,336
    # x 4096 weights / 8 micro-batches, at 5 vs 4.0625 B: MXFP8's casts are cheaper, its GEMMs dearer.
    elements = 16384 * (4096 * 3 + 14336) + (4096 * 6144 + 4096 * 4096 + 4096 * 28672 + 14336 * 4096) / 8
    assert cast["tensorwise"] == pytest.approx(elements * 5 / (7.672e12 * 0.85))
    assert cast["mxfp8"] < cast["tensorwise"] and expected > 0


def test_gemm_model_against_te_profiling_table_on_b300():
    """Checked, not fitted: TE's GEMM Profiling Tutorial pre-quantised per-layer GEMM times on B300 (hidden 4096,
    intermediate 16384 non-gated, 32 heads without GQA, M = 15,872): BF16 13.102 ms, FP8 CurrentScaling 6.812 ms,
    MXFP8 7.161 ms (fprop + dgrad + wgrad of QKV 4096 -> 12288, out 4096 -> 4096, up 4096 -> 16384, down
    16384 -> 4096). The MAMF-anchored shape model reproduces bf16 and per-tensor fp8 within 3 %; MXFP8 takes its
    ratio from the same table, so it is within 3 % by construction."""
    b300 = HardwareRates.of(load_cluster("dgx-b300:1"))
    m = np.array([15872.0])

    def layer_ms(hw: HardwareRates, fp8: bool) -> float:
        t = 0.0
        for k, n in ((4096, 12288), (4096, 4096), (4096, 16384), (16384, 4096)):
            k_, n_ = np.array([float(k)]), np.array([float(n)])
            t += float(hw.gemm_time_s(m, n_, k_, fp8)[0] + hw.gemm_time_s(m, k_, n_, fp8)[0]
                       + hw.gemm_time_s(k_, n_, m, fp8)[0])
        return t * 1e3

    assert layer_ms(b300, False) == pytest.approx(13.102, rel=0.03)
    assert layer_ms(b300, True) == pytest.approx(6.812, rel=0.03)
    assert layer_ms(b300.for_fp8_recipe("mxfp8"), True) == pytest.approx(7.161, rel=0.03)


@pytest.mark.parametrize(("key", "source", "other"), [("mxfp8_gemm_time_ratio", "mxfp8", "rowwise_gemm_time_ratio"),
                                                      ("rowwise_gemm_time_ratio", "rowwise", "mxfp8_gemm_time_ratio")])
def test_gemm_yaml_time_ratio_needs_a_source_and_at_least_one(key, source, other):
    from clusterplan.errors import BadInputError
    from clusterplan.hardware_db.catalog import _parse_gemm

    base = {"sm_count": 148, "tile": [128, 256], "sources": {"sm_count": "s", "tile": "t", "mamf": "m"}}
    assert getattr(_parse_gemm("X", base), key) == 1.0
    with pytest.raises(BadInputError, match=f"without a source: {source}$"):
        _parse_gemm("X", {**base, key: 1.05})
    sourced = {**base["sources"], source: "src"}
    with pytest.raises(BadInputError, match=f"{key} must be >= 1"):
        _parse_gemm("X", {**base, key: 0.9, "sources": sourced})
    ok = _parse_gemm("X", {**base, key: 1.05, "sources": sourced})
    assert getattr(ok, key) == 1.05 and getattr(ok, other) == 1.0
