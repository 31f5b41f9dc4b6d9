"""The GEMM side of overlapped tensor-parallel communication (models/training/tp_overlap.py): Transformer Engine
userbuffers chunk the GEMMs and take SMs from them; PyTorch async TP chunks them. Worked examples by hand."""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import TRAINING_GEMM_SHARE, HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import layer_linears, layer_time, linear_times
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.tp_overlap import UB_COMM_SMS, UB_PIPELINE_SPLITS, TpRole, overlapped_times

H100 = HardwareRates.of(load_cluster("dgx-h100:1"))
RATE = 1e15
CALL_S = 1e-5


def stub_gemm(m, n, k, fp8, batch=1.0, sm_margin=0):
    """A GEMM that costs a fixed launch plus its FLOPs at RATE on the SMs it gets (132 on H100)."""
    return CALL_S + 2.0 * np.asarray(m) * n * k / (RATE * (132 - sm_margin) / 132)


def test_sm_margin_worked_example():
    # H100: 132 SMs, 128x256 tiles. The MAMF shape 2048x2048 is 128 tiles: one wave on 132 SMs (128/132 useful).
    # With TE's 16-SM margin the GEMM gets 116 SMs: 2 waves, 2048^2 / (2 x 116 x 128 x 256) useful, at 116/132 of
    # the full-GPU rate.
    m = n = 2048
    k = 8192
    best_eff = 128 / 132
    eff_116 = m * n / (2 * 116 * 128 * 256)
    rate = 989.4e12 * 0.803 * TRAINING_GEMM_SHARE / best_eff * eff_116 * 116 / 132
    got = float(H100.gemm_time_s(np.array([m]), np.array([n]), np.array([k]), np.array([False]),
                                 sm_margin=UB_COMM_SMS)[0])
    assert got == pytest.approx(2 * m * n * k / rate, rel=1e-9)
    assert UB_COMM_SMS == 16 and UB_PIPELINE_SPLITS == 4  # TE initialize_ub defaults


@pytest.mark.parametrize("kind", ["bulk", "async_tp"])
def test_overlapped_gemms_worked_example(kind):
    # One column-parallel GEMM (qkv/fc1) and one row-parallel (proj/fc2): t = 8192 tokens, tp 8.
    t, tp = np.array([8192.0]), np.array([8.0])
    fp8 = np.array([False])
    col_i, col_o, row_i, row_o = 8192.0, 3584.0, 3584.0, 8192.0
    flops = lambda m, n, k, margin=0: 2 * m * n * k / (RATE * (132 - margin) / 132)  # noqa: E731
    f, dx, dw = overlapped_times(stub_gemm, TpRole.COLUMN, kind, t, col_i, col_o, fp8, tp)
    rf, rdx, rdw = overlapped_times(stub_gemm, TpRole.ROW, kind, t, row_i, row_o, fp8, tp)
    # Column forward: the all-gather's tp ring steps, one GEMM chunk of t/tp rows under each (both kinds).
    assert float(f[0]) == pytest.approx(8 * CALL_S + flops(8192, col_o, col_i))
    if kind == "bulk":
        # Column dgrad / wgrad: TE bulk overlap, 16 SMs given to the all-gather / reduce-scatter kernels.
        assert float(dx[0]) == pytest.approx(CALL_S + flops(8192, col_i, col_o, 16))
        assert float(dw[0]) == pytest.approx(CALL_S + flops(col_i, col_o, 8192, 16))
        # Row forward: TE pipeline, 4 chunks on 116 SMs; row dgrad: ring exchange of dY, tp chunks; wgrad whole.
        assert float(rf[0]) == pytest.approx(4 * CALL_S + flops(8192, row_o, row_i, 16))
    else:
        # async TP: the backward's dgrad matmuls are chunked too (no SMs taken); the wgrad matmuls are not rewritten.
        assert float(dx[0]) == pytest.approx(8 * CALL_S + flops(8192, col_i, col_o))
        assert float(dw[0]) == pytest.approx(CALL_S + flops(col_i, col_o, 8192))
        assert float(rf[0]) == pytest.approx(8 * CALL_S + flops(8192, row_o, row_i))
    assert float(rdx[0]) == pytest.approx(8 * CALL_S + flops(8192, row_i, row_o))
    assert float(rdw[0]) == pytest.approx(CALL_S + flops(row_i, row_o, 8192))


def test_a_layer_pays_the_overlap_only_where_it_runs():
    """Megatron-Core with sp and tp 8: the attention and MLP GEMMs are priced as userbuffers issue them, which is
    slower than whole GEMMs; without sp (no overlap) or on a stack without TP overlap they are priced whole."""
    shapes = ModelShapes.of(load_model("llama3.1-70b"))
    L = LayoutArrays.from_layouts([Layout(tp=8, sp=sp, mbs=1, gbs=8, seq=8192) for sp in (True, False)])
    fp8 = np.zeros(2, dtype=bool)
    mc = layer_time(shapes, L, H100, False, get_stack("megatron-core"))
    eager = layer_time(shapes, L, H100, False, get_stack("torchtitan"))  # tp_overlap none
    plain_f, plain_b, _ = linear_times(layer_linears(shapes, L, False), H100, fp8)
    # No fp8, no full recompute: linear_s is the weight GEMMs forward + backward.
    assert float(eager.linear_s[0]) == pytest.approx(float(plain_f[0] + plain_b[0]), rel=1e-12)
    assert float(mc.linear_s[1]) == pytest.approx(float(eager.linear_s[1]), rel=1e-12)
    # The overlapped layer is slower by exactly the chunked/SM-margin GEMMs' extra time over whole GEMMs.
    over = 0.0
    for g in layer_linears(shapes, L, False):
        if g.tp_role != TpRole.NONE:
            parts = overlapped_times(H100.gemm_time_s, g.tp_role, "bulk", g.tokens, g.in_features, g.out_features,
                                     fp8, L.tp)
        else:
            parts = (H100.gemm_time_s(g.tokens, g.out_features, g.in_features, fp8),
                     H100.gemm_time_s(g.tokens, g.in_features, g.out_features, fp8),
                     H100.gemm_time_s(g.in_features, g.out_features, g.tokens, fp8))
        over += sum(float(x[0]) for x in parts)
    assert over > float(plain_f[0] + plain_b[0])
    assert float(mc.linear_s[0]) == pytest.approx(over, rel=1e-9)
