"""The nanotron execution stack (hardware_db/data/stacks.yaml `nanotron`, the Ultra-Scale Playbook's runs): its
asynchronous tensor parallelism (tp_overlap "local_shard") and its ZeRO-1 weight all-gather after the optimizer step
(param_gather_overlap false), as worked examples."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.tp_overlap import (
    LocalShardBlock,
    TpRole,
    local_shard_exposed_s,
    overlapped_times,
)


def test_local_shard_exposure_by_hand():
    # One block: the all-gather (2 s) hides under the local shard's forward matmul (1 s) -> 1 s exposed; the forward
    # reduce-scatter (2 s) is exposed whole; dY's all-gather (2 s) under the local input-gradient matmul (0.5 s)
    # -> 1.5 s; the input gradient's reduce-scatter (2 s) under the weight gradient (3 s) -> 0. 4.5 s per block.
    block = LocalShardBlock(column_local_s=np.array([1.0]), row_dgrad_local_s=np.array([0.5]),
                            column_wgrad_s=np.array([3.0]))
    ag, rs = np.array([2.0]), np.array([2.0])
    one_pass = local_shard_exposed_s((block, block), ag, rs, calls=np.array([4.0]), forward_passes=np.array([1.0]),
                                     overlap=1.0)
    assert float(one_pass[0]) == pytest.approx(9.0)
    # Full recompute runs the forward collectives again (3 s more per block); collectives outside the blocks (a 5th
    # and 6th call pair) stay exposed: 2 x (2 + 2).
    recomputed = local_shard_exposed_s((block, block), ag, rs, calls=np.array([6.0]), forward_passes=np.array([2.0]),
                                       overlap=1.0)
    assert float(recomputed[0]) == pytest.approx(2 * (3.0 + 4.5))


def test_local_shard_matmuls_slow_beside_the_hidden_collectives():
    # The same block with the matmuls 1.25 x slower beside NCCL (1 - 1/1.25 = 20 % of their SMs held):
    # all-gather 2 s over the 1 s local matmul: 1 s hidden, the matmul ends at max(1, 1 + 0.2 x 1) = 1.2 s, inside
    # the 2 s collective, so nothing more shows; dY's all-gather over 0.5 s: the same; the reduce-scatter (2 s) under
    # the 3 s weight gradient: all hidden, the matmul ends at 3 + 0.2 x 2 = 3.4 s, 0.4 s more per block.
    block = LocalShardBlock(column_local_s=np.array([1.0]), row_dgrad_local_s=np.array([0.5]),
                            column_wgrad_s=np.array([3.0]))
    ag, rs = np.array([2.0]), np.array([2.0])
    slowed = local_shard_exposed_s((block,), ag, rs, calls=np.array([2.0]), forward_passes=np.array([1.0]),
                                   overlap=1.0, slowdown=1.25)
    assert float(slowed[0]) == pytest.approx(4.5 + 0.4)


def test_local_shard_gemms_split_at_the_local_shard():
    calls = []

    def gemm(m, n, k, fp8, sm_margin=0, output_bytes=2.0):
        calls.append((float(np.asarray(m).ravel()[0]), n, k))
        return np.asarray(m, dtype=float) * n * k * 1e-12

    tokens, tp = np.array([8192.0]), np.array([4.0])
    forward, dgrad, wgrad = overlapped_times(gemm, TpRole.COLUMN, "local_shard", tokens, 4096, 3072, False, tp)
    assert calls[:2] == [(2048.0, 3072, 4096), (6144.0, 3072, 4096)]  # the local shard's rows, then the rest
    assert float(forward[0]) == pytest.approx(8192 * 3072 * 4096 * 1e-12)  # the same work in two GEMMs


def _step(stack_name: str, layout: Layout, **stack_changes):
    stack = replace(get_stack(stack_name), **stack_changes)
    return estimate(load_model("llama3.1-8b"), load_cluster("dgx-h100:2"), layout, stack=stack).to_json()["time"]


def test_async_tp_hides_part_of_the_tp_traffic():
    layout = Layout(tp=8, dp=2, zero=0, mbs=1, gbs=64, seq=4096, recompute="none")
    nanotron = _step("nanotron", layout)["tp_comm_s"]
    exposed = _step("nanotron", layout, tp_overlap="none")["tp_comm_s"]
    assert 0.0 < nanotron < exposed
    # Without sequence parallelism (tp_mode ALL_REDUCE) nothing is overlapped: the all-reduces are exposed whole.
    no_sp = layout.with_(sp=False)
    assert _step("nanotron", no_sp)["tp_comm_s"] == _step("nanotron", no_sp, tp_overlap="none")["tp_comm_s"]


def test_zero1_weight_gather_after_the_step_is_exposed():
    layout = Layout(tp=1, dp=16, zero=1, mbs=1, gbs=64, seq=4096, recompute="none")
    after_step = _step("nanotron", layout)["dp_comm_s"]
    overlapped = _step("nanotron", layout, param_gather_overlap=True)["dp_comm_s"]
    assert after_step > overlapped
    # ZeRO-0 gathers nothing: the switch changes nothing there.
    plain = layout.with_(zero=0)
    assert _step("nanotron", plain)["dp_comm_s"] == _step("nanotron", plain, param_gather_overlap=True)["dp_comm_s"]


def test_nanotron_runs_only_what_it_has(run_cli):
    code, _, err = run_cli("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:2", "--gbs", "64", "--seq",
                           "4096", "--stack", "nanotron", "--fix", "zero=3")
    assert code == 2 and "nanotron" in err


def test_fp32_gradient_accumulation_pass_by_hand():
    # Llama 3.1 8B, dp 16 (tp 1, pp 1): every micro-batch adds each layer's bf16 gradients into the fp32 buffer,
    # 10 B per parameter (2 + 4 read, 4 written) at the HBM rate: m x 32 layers x 218.1M parameters x 10 B / rate.
    from clusterplan.hardware_db import get_gpu
    from clusterplan.models.architecture.shapes import ModelShapes

    layout = Layout(dp=16, zero=1, mbs=1, gbs=64, seq=4096, recompute="none")
    with_pass = _step("nanotron", layout)["compute_s"]
    without = _step("nanotron", layout, grad_accum_bytes_per_param=0.0)["compute_s"]
    gpu = get_gpu("H100-SXM5-80GB")
    shapes = ModelShapes.of(load_model("llama3.1-8b"))
    layer_params = shapes.attn_params + shapes.dense_mlp_params + shapes.norm_params
    expected = layout.microbatches * 32 * layer_params * 10.0 / (gpu.hbm_bytes_per_s * gpu.hbm_fraction)
    assert with_pass - without == pytest.approx(expected, rel=1e-3)


def test_sharded_fp32_cross_entropy_bytes_by_hand():
    # nanotron's _ShardedCrossEntropy over fp32 logits, per logit: forward cast 2 + 4, max 4, subtract 4 + 4, exp in
    # place 4 + 4, sum 4, div_ 4 + 4 = 38 B; backward mul_ 4 + 4 and the cast back 4 + 2 = 14 B, against the fused
    # loss's 12 + 12. Llama 3.1 8B at mbs 1, seq 4096, tp 1: 4,096 x 128,256 logits per micro-batch, m of them.
    from clusterplan.hardware_db import get_gpu
    from clusterplan.models.training.compute import loss_bytes_per_logit

    assert loss_bytes_per_logit(get_stack("nanotron")) == (38.0, 14.0)
    layout = Layout(dp=8, zero=1, mbs=1, gbs=64, seq=4096, recompute="none")
    sharded = _step("nanotron", layout)["compute_s"]
    fused = _step("nanotron", layout, loss_impl="fused")["compute_s"]
    gpu = get_gpu("H100-SXM5-80GB")
    logits = 4096 * 128256
    expected = layout.microbatches * logits * (38.0 + 14.0 - 24.0) / (gpu.hbm_bytes_per_s * gpu.hbm_fraction)
    assert sharded - fused == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("mbs", [1, 2])
def test_qkv_layout_copies_by_hand(mbs):
    # nanotron's attention around flash-attn, per token and layer (Llama 3.1 8B: q and v 4,096 wide, K and V 1,024
    # each, 2,048 together; tp 1): forward the packed q, k, v copy (4 x 6,144 B), K and V concatenated and permuted
    # (2 x 4 x 2,048 B) and, with two or more sequences per micro-batch, the output copied for o_proj (4 x 4,096 B);
    # backward (grouped K/V heads: nanotron's GQA branch) one cat of the q, k, v gradients (4 x 6,144), the KV
    # split's cat (4 x 2,048) and, with two or more sequences, the output gradient's reshape and o_proj's contiguous()
    # of its saved input (2 x 4 x 4,096).
    from clusterplan.hardware_db import get_gpu

    layout = Layout(dp=8, zero=1, mbs=mbs, gbs=64, seq=4096, recompute="none")
    with_copies = _step("nanotron", layout)["compute_s"]
    without = _step("nanotron", layout, qkv_layout_copies=False)["compute_s"]
    output = 4 * 4096 if mbs > 1 else 0
    forward = 4 * 6144 + 2 * 4 * 2048 + output
    backward = 4 * 6144 + 4 * 2048 + 2 * output
    gpu = get_gpu("H100-SXM5-80GB")
    expected = layout.microbatches * 32 * mbs * 4096 * (forward + backward) / (gpu.hbm_bytes_per_s * gpu.hbm_fraction)
    assert with_copies - without == pytest.approx(expected, rel=1e-3)


def test_mha_unpacking_copies_its_gradient_twice():
    # With every head its own K and V (the Ultra-Scale models) backward undoes the unbind with a stack and reshapes
    # the permuted gradient for the projection: 2 x 4 (q + kv) B per token against GQA's one cat.
    from clusterplan.models.architecture.shapes import ModelShapes
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.batch import LayoutArrays
    from clusterplan.models.training.compute import qkv_layout_copy_times
    from clusterplan.reference.ultrascale import ultrascale_model

    shapes = ModelShapes.of(ultrascale_model("1B"))  # 32 heads, 32 K/V heads, hidden 2,048: q 2,048, kv 4,096
    layout = LayoutArrays.from_layouts([Layout(dp=8, zero=0, mbs=1, gbs=64, seq=4096, recompute="none")])
    hw = HardwareRates.of(load_cluster("dgx-h100:1"))
    forward, backward = qkv_layout_copy_times(shapes, layout, hw, get_stack("nanotron"))
    per_token = 4096 / hw.hbm_bytes_per_s
    assert float(forward[0]) == pytest.approx(per_token * (4 * 6144 + 8 * 4096), rel=1e-12)
    assert float(backward[0]) == pytest.approx(per_token * (8 * 6144 + 4 * 4096), rel=1e-12)


def test_merged_glu_split_backward_by_hand():
    # nanotron's gate_up_proj is one linear split in halves; backward concatenates the two gradients: read + write 2 B
    # of 2 x 14,336 FFN elements per token and layer (Llama 3.1 8B, tp 1), 32 layers, m micro-batches of 4,096 tokens.
    from clusterplan.hardware_db import get_gpu

    layout = Layout(dp=8, zero=1, mbs=1, gbs=64, seq=4096, recompute="none")
    with_cat = _step("nanotron", layout)["compute_s"]
    without = _step("nanotron", layout, glu_split_cat=False)["compute_s"]
    gpu = get_gpu("H100-SXM5-80GB")
    expected = layout.microbatches * 32 * 4096 * 8 * 14336 / (gpu.hbm_bytes_per_s * gpu.hbm_fraction)
    assert with_cat - without == pytest.approx(expected, rel=1e-3)
