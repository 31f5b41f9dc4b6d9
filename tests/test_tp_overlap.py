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


def stub_gemm(m, n, k, fp8, batch=1.0, sm_margin=0, output_bytes=2.0):
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
    # the bf16 k-depth term (gemm.yaml bf16_k_overhead 128) at k = 8192 against the MAMF shape's k = 13312
    k_term = (8192 / (8192 + 128)) / (13312 / (13312 + 128))
    rate = 989.4e12 * 0.803 * TRAINING_GEMM_SHARE / best_eff * eff_116 * 116 / 132 * k_term
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
        # async TP: the column dgrad runs whole (its reduce-scatter sums the q/k/v or w1/w3 dgrads, which the
        # micro-pipeline pass does not fuse); the row dgrad is chunked under dY's all-gather; wgrad not rewritten.
        assert float(dx[0]) == pytest.approx(CALL_S + flops(8192, col_i, col_o))
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
            # megatron-core's recipes run the bulk overlaps without an SM margin (stacks.yaml
            # tp_overlap_bulk_sm_margin 0, NeMo's tuned userbuffers configs)
            parts = overlapped_times(H100.gemm_time_s, g.tp_role, "bulk", g.tokens, g.in_features, g.out_features,
                                     fp8, L.tp, bulk_sm_margin=get_stack("megatron-core").tp_overlap_bulk_sm_margin)
        else:
            parts = (H100.gemm_time_s(g.tokens, g.out_features, g.in_features, fp8),
                     H100.gemm_time_s(g.tokens, g.in_features, g.out_features, fp8),
                     H100.gemm_time_s(g.in_features, g.out_features, g.tokens, fp8))
        over += sum(float(x[0]) for x in parts)
    assert over > float(plain_f[0] + plain_b[0])
    assert float(mc.linear_s[0]) == pytest.approx(over, rel=1e-9)


def test_async_tp_exposed_worked_example():
    """Two blocks at tp 8 under full recompute (2 forward passes), all-gather 2 ms, reduce-scatter 5 ms, reduction
    1 ms, overlap 1; every pull hides under 7/8 of its own op's chunked matmuls.
    Attention block: column 2.0 ms -> 1.75 hidden, AG exposed 0.25; row 2.0 -> 1.75, RS exposed 3.25; + 1 reduction:
    4.5 per forward pass. Backward: dY's AG under 7/8 x 2.0 = 1.75 -> 0.25; the qkv dgrad's RS whole, 5.
    MLP block: column 16 and row 8 ms hide both (7 >= 5): 1 per forward pass (the reduction); backward 0 + 5.
    Total 2 x 4.5 + 5.25 + 2 x 1 + 5 = 21.25 ms; the layer issues 6 all-gathers and 6 reduce-scatters, all in the
    two blocks. A third all-gather + reduce-scatter pair outside the blocks (calls 7) adds 7 ms, exposed."""
    from clusterplan.models.training.tp_overlap import AsyncTpBlock, async_tp_exposed_s

    ms = 1e-3

    def one(x: float) -> np.ndarray:
        return np.array([x * ms])

    blocks = (AsyncTpBlock(column_forward_s=one(2.0), row_forward_s=one(2.0), row_dgrad_s=one(2.0)),
              AsyncTpBlock(column_forward_s=one(16.0), row_forward_s=one(8.0), row_dgrad_s=one(8.0)))
    args = dict(all_gather_s=one(2.0), reduce_scatter_s=one(5.0), reduction_s=one(1.0),
                forward_passes=np.array([2.0]), tp=np.array([8.0]), overlap=1.0)
    assert float(async_tp_exposed_s(blocks, calls=np.array([6.0]), **args)[0]) == pytest.approx(21.25 * ms)
    assert float(async_tp_exposed_s(blocks, calls=np.array([7.0]), **args)[0]) == pytest.approx(28.25 * ms)


def test_async_tp_layer_worked_example():
    """Llama-3.1-70B, tp 8 with sp, one micro-batch of 16 x 8192 tokens, fp8 tensorwise, full recompute, on
    torchtitan-compile. Bytes: the all-gathers move fp8 (torchao casts before the gather): 131072 x 8192 x 1 B
    = 1,073,741,824; the reduce-scatters bf16, 2,147,483,648 B. With matmuls long enough to hide every fused pull,
    what stays exposed is per block (attention, MLP) 2 forward passes x one reduction (read 131072 x 8192 x 2 B,
    write 1/8 of it: 2,415,919,104 B at the HBM rate) and the backward's unfused reduce-scatter:
    2 x (2 x 2,415,919,104 B / hbm + RS)."""
    from clusterplan.models.training.collectives import tp_collectives
    from clusterplan.models.training.step import Axis, Group, _collective, tp_comm_s
    from clusterplan.models.training.tp_overlap import AsyncTpBlock

    shapes = ModelShapes.of(load_model("llama3.1-70b"))
    L = LayoutArrays.from_layouts([Layout(tp=8, sp=True, dp=1, mbs=16, gbs=16, seq=8192, precision="fp8",
                                          recompute="full")])
    _, ag, rs = tp_collectives(shapes, L, fp8_allgather=True)
    assert float(ag.size_bytes[0]) == 1_073_741_824 and float(rs.size_bytes[0]) == 2_147_483_648
    assert float(ag.calls[0]) == float(rs.calls[0]) == 6.0
    # megatron-core keeps its all-gathers in bf16 (the Bridge table does not move): no fp8 TP all-gather recipe.
    assert get_stack("megatron-core").fp8_tp_allgather_recipes == ()
    assert get_stack("torchtitan-compile").fp8_tp_allgather_recipes == ("tensorwise",)
    big = np.array([1e3])
    blocks = (AsyncTpBlock(column_forward_s=big, row_forward_s=big, row_dgrad_s=big),) * 2
    rs_s = float(_collective("reduce_scatter", rs.size_bytes, Group.of(L, Axis.TP), H100)[0])
    stack = get_stack("torchtitan-compile")
    got = float(tp_comm_s(shapes, L, H100, stack, big, blocks)[0])
    assert got == pytest.approx(2 * (2 * 2_415_919_104 / H100.hbm_bytes_per_s + rs_s), rel=1e-12)
    with pytest.raises(ValueError, match="async TP"):
        tp_comm_s(shapes, L, H100, stack, big)


def test_bulk_overlaps_take_the_sm_margin_the_stack_gives():
    """Transformer Engine's default userbuffers config takes 16 SMs from the qkv / fc1 dgrad and wgrad GEMMs beside
    their bulk all-gather / reduce-scatter (set_sm_margin); NVIDIA's tuned configs, which megatron-core's recipes
    pass, take none (BulkOverlapCfg set_sm_margin=False): those two GEMMs are then exactly the whole GEMMs, and the
    default's are slower. The forward (ring exchange: tp chunks) is the same either way."""
    t, i, o = np.array([8192.0]), 8192, 3584
    fp8 = np.zeros(1, dtype=bool)
    tuned = overlapped_times(H100.gemm_time_s, TpRole.COLUMN, "bulk", t, i, o, fp8, np.array([8.0]), bulk_sm_margin=0)
    default = overlapped_times(H100.gemm_time_s, TpRole.COLUMN, "bulk", t, i, o, fp8, np.array([8.0]))
    assert float(tuned[1][0]) == pytest.approx(float(H100.gemm_time_s(t, i, o, fp8)[0]), rel=1e-12)
    assert float(tuned[2][0]) == pytest.approx(float(H100.gemm_time_s(i, o, t, fp8)[0]), rel=1e-12)
    assert float(default[1][0]) > float(tuned[1][0]) and float(default[2][0]) > float(tuned[2][0])
    assert float(default[0][0]) == float(tuned[0][0])
    assert get_stack("megatron-core").tp_overlap_bulk_sm_margin == 0
    assert get_stack("megatron-lm-2021").tp_overlap_bulk_sm_margin == 16
