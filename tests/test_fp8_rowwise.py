"""torchao's float8 rowwise recipe as torchtitan runs it: the forward GEMM on torch._scaled_mm's CUTLASS rowwise kernel
(gemm.yaml rowwise_gemm_time_ratio), the gradient GEMMs on the per-tensor cuBLAS kernel plus a rescale kernel each
(torchao float8_ops.addmm_float8_unwrapped), and async TP leaving its bf16 all-gathers unfused (tp_overlap.py).
Worked examples by hand."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import (
    FP8_GRAD_RESCALE_BYTES_PER_ELEMENT,
    Linear,
    fp8_cast_times,
    layer_linears,
    layer_time,
    linear_times,
)
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.tp_overlap import (
    AsyncTpBlock,
    TpRole,
    async_tp_exposed_s,
    async_tp_gathers_fused,
    overlapped_times,
)

H100 = HardwareRates.of(load_cluster("dgx-h100:1"))
B200 = HardwareRates.of(load_cluster("dgx-b200:1"))
MI300X = HardwareRates.of(load_cluster("mi300x-8:1"))
RATIO = 1 / 0.95  # pytorch/pytorch#147971: rowwise at 90-100 % of tensorwise efficiency, middle 95 %


def test_rowwise_ratio_per_gpu():
    # Hopper carries the published ratio (rounded to 1.053); Blackwell's sm100 rowwise kernel and ROCm's have none.
    assert H100.rowwise_gemm_time_ratio == 1.053 == pytest.approx(RATIO, abs=5e-4)
    assert HardwareRates.of(load_cluster("hgx-h200:1")).rowwise_gemm_time_ratio == 1.053
    assert B200.rowwise_gemm_time_ratio == MI300X.rowwise_gemm_time_ratio == 1.0
    assert B200.for_fp8_recipe("rowwise", forward=True) is B200


def test_rowwise_runs_only_the_forward_gemm_slower():
    # A compute-bound 8192^3 fp8 GEMM takes 1.053x as long in the forward (CUTLASS rowwise, fast accumulation); the
    # gradient GEMMs run cuBLAS per-tensor with unit scales: the tensorwise rate. bf16 GEMMs are untouched.
    fwd = H100.for_fp8_recipe("rowwise", forward=True)
    assert H100.for_fp8_recipe("rowwise") is H100
    assert H100.for_fp8_recipe("tensorwise", forward=True) is H100
    n = np.array([8192.0])
    for fp8, ratio in ((True, 1.053), (False, 1.0)):
        base = float(H100.gemm_time_s(n, n, n, fp8)[0])
        assert float(fwd.gemm_time_s(n, n, n, fp8)[0]) == pytest.approx(base * ratio, rel=1e-12)
    # MXFP8's block-scaled GEMMs are slower in both directions (the `forward` flag does not change that).
    assert B200.for_fp8_recipe("mxfp8", forward=True).gemm_max_flops_fp8 == B200.for_fp8_recipe("mxfp8").gemm_max_flops_fp8


def test_rowwise_rescale_kernels_worked_example():
    # One 4096 -> 4096 linear on 8192 tokens, H100 HBM 3.35 TB/s x 0.85. Rowwise casts 2 x (2 + 2 + 1) = 10 B per
    # element (X and W forward, dY backward); backward adds the rescale of dX (8192 x 4096) and dW (4096 x 4096),
    # read 2 B + write 2 B each: (33,554,432 + 16,777,216) x 4 = 201,326,592 B.
    assert FP8_GRAD_RESCALE_BYTES_PER_ELEMENT == {"rowwise": 4.0}
    L = LayoutArrays.from_layouts([Layout(mbs=1, gbs=8, dp=8, seq=8192)])
    g = [Linear(np.array([8192.0]), 4096, 4096)]
    hbm = 3.35e12 * 0.85
    fwd, bwd = fp8_cast_times(g, L, H100, "rowwise", False)
    assert float(fwd[0]) == pytest.approx((8192 * 4096 + 4096 * 4096) * 10 / hbm)
    assert float(bwd[0]) == pytest.approx((8192 * 4096 * 10 + 201_326_592) / hbm)
    # tensorwise has no rescale: its gradient GEMMs apply their scales themselves.
    assert float(fp8_cast_times(g, L, H100, "tensorwise", False)[1][0]) == pytest.approx(8192 * 4096 * 6 / hbm)


def test_rowwise_layer_worked_example():
    """One Llama-3.1-8B layer on H100 (tp 1, mbs 1, seq 8192, torchtitan-compile): rowwise minus tensorwise is, forward,
    the weight GEMMs' forward x (1.053 - 1) (compute-bound shapes) plus the two recipes' cast difference; backward
    the cast difference (dY 10 vs 6 B) plus the rescale of dX and dW, 4 B per element of tokens x the in_features of
    the layer's four GEMMs (qkv, o, w1|w3, w2: the model runs q/k/v and w1/w3 as one GEMM each, one dX each) and of
    its 218,103,808 weights. No recompute (recompute none)."""
    shapes = ModelShapes.of(load_model("llama3.1-8b"))
    L = LayoutArrays.from_layouts([Layout(mbs=1, gbs=8, dp=8, seq=8192, precision="fp8", recompute="none")])
    stack = get_stack("torchtitan-compile")
    tw = layer_time(shapes, L, H100, False, replace(stack, fp8_recipes=("tensorwise",)))
    rw = layer_time(shapes, L, H100, False, replace(stack, fp8_recipes=("rowwise",)))
    lin = layer_linears(shapes, L, False)
    fp8 = np.array([True])
    gemm_fwd = float(linear_times(lin, H100, fp8)[0][0])
    gemm_fwd_rw = float(linear_times(lin, H100, fp8, forward_hw=H100.for_fp8_recipe("rowwise", forward=True))[0][0])
    assert gemm_fwd_rw == pytest.approx(gemm_fwd * 1.053, rel=2e-3)  # the shapes are compute-bound on H100
    casts = {r: fp8_cast_times(lin, L, H100, r, stack.fp8_weight_copy) for r in ("tensorwise", "rowwise")}
    assert float(rw.forward_s[0] - tw.forward_s[0]) == pytest.approx(
        gemm_fwd_rw - gemm_fwd + float(casts["rowwise"][0][0] - casts["tensorwise"][0][0]), rel=1e-9)
    hbm = H100.hbm_bytes_per_s
    # in_features of qkv, o, w1|w3, w2: 4096 + 4096 + 4096 + 14336 = 26,624; out_features 6144, 4096, 28672, 4096.
    weights = 4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336
    assert weights == 218_103_808
    rescale = (8192 * (4096 + 4096 + 4096 + 14336) + weights) * 4.0 / hbm
    dy = 8192 * (4096 + 1024 * 2 + 4096 + 2 * 14336 + 4096)
    assert float(rw.backward_s[0] - tw.backward_s[0]) == pytest.approx(dy * (10 - 6) / hbm + rescale, rel=1e-9)


def test_async_tp_leaves_bf16_gathers_unfused():
    # torchtitan gathers rowwise's inputs in bf16 and casts after (no fp8 TP all-gather for it): the cast sits between
    # the all-gather and the matmul, so inductor fuses neither all-gather (pytorch/pytorch#149990). bf16 layouts and
    # tensorwise (fp8 gather feeding _scaled_mm) fuse.
    stack = get_stack("torchtitan-compile")
    assert stack.fp8_tp_allgather_recipes == ("tensorwise",)
    fp8 = np.array([True, False])
    assert list(async_tp_gathers_fused(replace(stack, fp8_recipes=("rowwise",)), fp8)) == [False, True]
    assert list(async_tp_gathers_fused(replace(stack, fp8_recipes=("tensorwise",)), fp8)) == [True, True]


def test_async_tp_unfused_gathers_worked_example():
    """test_tp_overlap's two blocks (tp 8, 2 forward passes, AG 2 ms, RS 5 ms, reduction 1 ms) with the all-gathers
    unfused: every all-gather is whole, 2 ms. Attention block: forward 2 + (RS 5 - 1.75) + 1 = 6.25 per pass,
    backward 2 + 5; MLP block: forward 2 + 0 + 1 = 3 per pass, backward 2 + 5. 2 x 6.25 + 7 + 2 x 3 + 7 = 32.5 ms
    (fused: 21.25)."""
    ms = 1e-3

    def one(x: float) -> np.ndarray:
        return np.array([x * ms])

    blocks = (AsyncTpBlock(column_forward_s=one(2.0), row_forward_s=one(2.0), row_dgrad_s=one(2.0)),
              AsyncTpBlock(column_forward_s=one(16.0), row_forward_s=one(8.0), row_dgrad_s=one(8.0)))
    args = dict(all_gather_s=one(2.0), reduce_scatter_s=one(5.0), reduction_s=one(1.0), calls=np.array([6.0]),
                forward_passes=np.array([2.0]), tp=np.array([8.0]), overlap=1.0)
    got = async_tp_exposed_s(blocks, **args, gather_fused=np.array([False]))
    assert float(got[0]) == pytest.approx(32.5 * ms)
    assert float(async_tp_exposed_s(blocks, **args)[0]) == pytest.approx(21.25 * ms)


def test_async_tp_unfused_gathers_run_their_matmuls_whole():
    # Column forward and row dgrad run whole where the all-gather is not fused; the row forward stays chunked (its
    # matmul-reduce-scatter is fused, pytorch/pytorch#149247). Stub GEMM: 10 us launch + FLOPs at 1 PFLOP/s.
    def gemm(m, n, k, fp8, batch=1.0, sm_margin=0, output_bytes=2.0):
        return 1e-5 + 2.0 * np.asarray(m) * n * k / 1e15

    t, i, o, tp = np.array([8192.0]), 4096.0, 4096.0, np.array([8.0])
    fp8 = np.array([True])
    whole = float(gemm(t, o, i, fp8)[0])
    chunked = float(8 * gemm(t / 8, o, i, fp8)[0])
    assert chunked - whole == pytest.approx(7e-5)
    col = overlapped_times(gemm, TpRole.COLUMN, "async_tp", t, i, o, fp8, tp, np.array([False]))
    row = overlapped_times(gemm, TpRole.ROW, "async_tp", t, i, o, fp8, tp, np.array([False]))
    assert float(col[0][0]) == pytest.approx(whole) and float(row[1][0]) == pytest.approx(whole)
    assert float(row[0][0]) == pytest.approx(chunked)
    fused = overlapped_times(gemm, TpRole.COLUMN, "async_tp", t, i, o, fp8, tp)
    assert float(fused[0][0]) == pytest.approx(chunked)


def test_rowwise_forward_rate_reaches_recompute_and_async_tp_blocks():
    """The forward GEMMs rowwise runs at 1.053x reach every place a forward matmul is priced: torchtitan's op-level
    SAC reruns every other matmul in backward (their forward, so 0.053 x their tensorwise time more), and async TP
    hides its reduce-scatters under the chunked row forward (1.053x) but dY's all-gather under the row dgrad, a
    gradient GEMM at the per-tensor rate (unchanged). Llama 3.1 8B on H100, torchtitan-compile, tp 8, seq 8192."""
    from clusterplan.models.training.compute import op_sac_recomputed_linears

    shapes = ModelShapes.of(load_model("llama3.1-8b"))
    stack = get_stack("torchtitan-compile")
    L = LayoutArrays.from_layouts([Layout(tp=8, sp=True, mbs=1, gbs=1, dp=1, seq=8192, precision="fp8",
                                          recompute="selective")])
    tw = layer_time(shapes, L, H100, False, replace(stack, fp8_recipes=("tensorwise",)))
    rw = layer_time(shapes, L, H100, False, replace(stack, fp8_recipes=("rowwise",)))
    redo = float(linear_times(op_sac_recomputed_linears(shapes, L, False), H100, np.array([True]))[0][0])
    assert float(rw.recompute_s[0] - tw.recompute_s[0]) == pytest.approx(0.053 * redo, rel=5e-3)
    assert len(rw.async_tp_blocks) == len(tw.async_tp_blocks) == 2  # attention (qkv, o) and MLP (w1|w3, w2)
    for r, t in zip(rw.async_tp_blocks, tw.async_tp_blocks, strict=True):
        assert float(r.column_forward_s[0] / t.column_forward_s[0]) == pytest.approx(1.053, rel=5e-3)
        assert float(r.row_dgrad_s[0]) == float(t.row_dgrad_s[0])
    # Row forward chunks: w2's (1,024 x 1,792 -> 4,096) and o's (1,024 x 512 -> 4,096) are compute-bound, 1.053x (o's
    # was bound by its HBM traffic until the fp8 k-depth term, gemm.yaml fp8_k_overhead: at k = 512 it runs at
    # 512 / 1,232 of the long-k rate, now slower than its traffic).
    attention, mlp = zip(rw.async_tp_blocks, tw.async_tp_blocks, strict=True)
    assert float(mlp[0].row_forward_s[0] / mlp[1].row_forward_s[0]) == pytest.approx(1.053, rel=5e-3)
    assert float(attention[0].row_forward_s[0] / attention[1].row_forward_s[0]) == pytest.approx(1.053, rel=5e-3)
