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
