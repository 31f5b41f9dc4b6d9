"""Training memory terms of the PyTorch-native stacks (torchtitan, torchtitan-compile), each pinned by a worked example
derived by hand: torch loss_parallel's cross-entropy under TP, torch.distributed.pipelining's buffers, torch
context_parallel's all-gathered K/V, FSDP2's fp32 sharded parameters (no separate master), torchao's fp8-gathered
unsharded weights, eager vs compiled op-level SAC, the eager loss's freed logits block, and the loss / recompute
working-set peaks that never coincide.

Sources: torch/distributed/tensor/parallel/loss.py (_nll_loss_and_log_softmax_backward), torch/distributed/pipelining/
stage.py (PipelineStage: per-micro-batch receive buffers, fwd_cache, output_chunks, the receive buffers' .grad),
torch/distributed/tensor/experimental/_attention.py (_AllGatherRotater). Megatron-Core keeps none of them.
"""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.estimate import stack_memory
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.memory import (
    ALLOCATOR_FRACTION,
    EAGER_LOSS_FREED_LOGITS_BYTES,
    SELECTIVE_OP_SAC,
    bytes_per_param,
    ends_activation_bytes,
    layer_activation_bytes,
    loss_peak_bytes_per_logit,
    memory_breakdown,
    op_sac_bytes,
    per_layer_activation_bytes,
    stage_params,
    state_bytes,
    torch_cp_gathered_kv_bytes,
    torch_pipeline_bytes,
)

L405 = ModelShapes.of(load_model("llama3.1-405b"))  # h 16384, vocab 128256
L70 = ModelShapes.of(load_model("llama3.1-70b"))  # h 8192, vocab 128256
L8 = ModelShapes.of(load_model("llama3.1-8b"))  # h 4096, q 4096, v 4096


def _arrays(*layouts: Layout) -> LayoutArrays:
    return LayoutArrays.from_layouts(list(layouts))


def test_loss_parallel_peaks_at_16_bytes_per_logit_under_tp():
    # loss_parallel's fused nll + log-softmax backward on the saved fp32 log-softmax output x: zeros_like(x),
    # exp(x), their sum (x live throughout), then the product: 4 fp32 tensors = 16 B per logit. Without TP (or on a
    # stack without loss_parallel) the eager F.cross_entropy's 12 B.
    L = _arrays(Layout(tp=1, dp=8), Layout(tp=8, dp=1))
    assert list(loss_peak_bytes_per_logit(L, 12.0, 16.0)) == [12.0, 16.0]
    assert list(loss_peak_bytes_per_logit(L, 12.0, None)) == [12.0, 12.0]
    assert get_stack("torchtitan").loss_parallel_bytes_per_logit == 16.0
    assert get_stack("torchtitan-compile").loss_parallel_bytes_per_logit == 16.0
    assert get_stack("megatron-core").loss_parallel_bytes_per_logit is None


def test_loss_parallel_logits_of_70b_tp8():
    # Llama-3.1-70B, tp 8, 16 x 8192 tokens (torchtitan's Table 4 layout), last stage = only stage: the vocabulary
    # shard is 128256 / 8 = 16032 columns, 131072 x 16032 = 2,101,346,304 logits per rank x 16 B = 33,621,540,864 B
    # (12 B, 25,216,155,648 B, before loss_parallel was priced), plus the head's all-gathered input under SP
    # 131072 x 8192 x 2 B x 7/8 = 1,879,048,192 B.
    L = _arrays(Layout(dp=32, tp=8, zero=3, mbs=16, gbs=512, seq=8192, recompute="full", precision="fp8"))
    stack = get_stack("torchtitan-compile")
    got = float(ends_activation_bytes(L70, L, False, True, True, stack.loss_bytes_per_logit,
                                      stack.loss_parallel_bytes_per_logit)[0])
    assert got == 33_621_540_864 + 1_879_048_192
    before = float(ends_activation_bytes(L70, L, False, True, True, stack.loss_bytes_per_logit)[0])
    assert got - before == 4 * 2_101_346_304


def test_torch_pipeline_buffers_of_405b_1f1b():
    # Llama-3.1-405B, tp 8 (SP), pp 8, 8 micro-batches of 4 x 8192 tokens (torchtitan's Table 5 1F1B layout).
    # One stage input/output: 32768 tokens x 16384 x 2 B / 8 = io = 134,217,728 B.
    # First rank (8 micro-batches in flight): no activation receive buffers; 8 gradient receive buffers and the 8
    # in-flight stage outputs: 16 io = 2,147,483,648 B.
    # Last rank (1 in flight): 8 activation receive buffers less the in-flight one (its first layer's input) 7 io,
    # 7 receive buffers' .grad kept to the step's end 7 io, and 8 micro-batches' bf16 logits in output_chunks,
    # 8 x 32768 x 16032 x 2 B = 8,405,385,216 B: 14 io + that = 10,284,433,408 B.
    # Middle (second) rank (7 in flight): 1 act receive buffer, 8 gradient ones, 7 outputs: 16 io.
    io = 134_217_728
    L = _arrays(Layout(dp=8, tp=8, pp=8, zero=3, mbs=4, gbs=256, seq=8192, recompute="full", precision="fp8"),
                Layout(dp=64, tp=8, zero=3, mbs=4, gbs=256, seq=8192, recompute="full", precision="fp8"))
    assert float(L.microbatches[0]) == 8
    first, middle, last = (torch_pipeline_bytes(L405, L, p) for p in ("first", "middle", "last"))
    assert float(first[0]) == 16 * io == 2_147_483_648
    assert float(middle[0]) == 16 * io
    assert float(last[0]) == 14 * io + 8_405_385_216 == 10_284_433_408
    assert float(first[1]) == float(middle[1]) == float(last[1]) == 0.0  # pp 1: no pipeline
    with pytest.raises(ValueError):
        torch_pipeline_bytes(L405, L, "centre")


def test_torch_pipeline_buffers_interleaved():
    # Same 405B layout with 2 stages per rank (Interleaved1F1B, 8 micro-batches): the first rank holds
    # min(((8 - 1) x 2 + 8 + 1) / 2, 8) = 8 micro-batches of its layers; its second stage has an activation receive
    # buffer per micro-batch, none of them spare (8 - 8 = 0), both stages gradient ones (2 x 8), and the in-flight
    # chunks' outputs (8 x 2): 32 io.
    io = 134_217_728
    L = _arrays(Layout(dp=8, tp=8, pp=8, vpp=2, zero=3, mbs=4, gbs=256, seq=8192, recompute="full",
                       precision="fp8", schedule="interleaved-1f1b"))
    assert float(torch_pipeline_bytes(L405, L, "first")[0]) == 32 * io


def test_torch_cp_gathered_kv():
    # Llama-3.1-8B at cp 8, tp 1, one 262144-token sequence (Table 2): the all-gathered K and V after repeat_kv,
    # 262144 x (4096 + 4096) x 2 B = 4,294,967,296 B; cp 1 gathers nothing.
    L = _arrays(Layout(dp=1, cp=8, zero=3, mbs=1, gbs=1, seq=262144, recompute="full", cp_kind="allgather"),
                Layout(dp=8, zero=3, mbs=1, gbs=8, seq=32768, recompute="full"))
    got = torch_cp_gathered_kv_bytes(L8, L)
    assert float(got[0]) == 4_294_967_296
    assert float(got[1]) == 0.0


def test_megatron_core_memory_is_unchanged_by_the_torch_terms():
    # The torch terms are the torchtitan stacks' only: Megatron-Core's breakdown equals the plain memory_breakdown
    # (pp_impl / cp_impl megatron, no loss_parallel), while torchtitan's last stage carries the pipeline buffers.
    L = _arrays(Layout(dp=8, tp=8, pp=8, zero=3, mbs=4, gbs=256, seq=8192, recompute="full"))
    mcore = get_stack("megatron-core")
    assert (mcore.pp_impl, mcore.cp_impl) == ("megatron", "megatron")
    assert (get_stack("torchtitan").pp_impl, get_stack("torchtitan-compile").pp_impl) == ("torch", "torch")
    got = stack_memory(L405, L, mcore)
    plain = memory_breakdown(L405, L, mcore.selective_recompute, 0.0, mcore.sp_saves_gathered_inputs,
                             fused_glu=True, loss_bytes_per_logit=mcore.loss_bytes_per_logit,
                             param_remainders=mcore.optimizer_param_remainders)
    assert np.array_equal(got.by_position, plain.by_position)
    titan = get_stack("torchtitan")
    kw = dict(selective=titan.selective_recompute, fp8_copy_bytes=0.0, sp_gathered=True, fused_glu=False,
              loss_bytes_per_logit=titan.loss_bytes_per_logit, param_remainders=False)
    with_torch = memory_breakdown(L405, L, **kw, loss_parallel_bytes_per_logit=16.0, pp_impl="torch")
    without = memory_breakdown(L405, L, **kw)
    # Last stage: activations + 4 B more per logit of the micro-batch at the loss; "other" + the pipeline buffers (no
    # layer saves them for backward, so they are not activations as validate measures them) + the allocator reserve
    # (ALLOCATOR_FRACTION) on the larger activations.
    logits = 32768 * 128256 / 8
    acts = float(with_torch.by_position[2, 3, 0] - without.by_position[2, 3, 0])
    other = float(with_torch.by_position[2, 4, 0] - without.by_position[2, 4, 0])
    assert acts == pytest.approx(4 * logits, rel=1e-12)
    assert other == pytest.approx(10_284_433_408 + ALLOCATOR_FRACTION * 4 * logits, rel=1e-12)


def test_fsdp2_keeps_no_separate_fp32_master():
    # torchtitan builds the model in fp32 and FSDP2 shards those fp32 parameters (MixedPrecisionPolicy casts a bf16
    # copy at the all-gather); AdamW updates the sharded fp32 parameter itself: fp32 param 4 + fp32 grad 4 + m, v 8
    # = 16 B per parameter, not Megatron's bf16 2 + fp32 grad 4 + master, m, v 12 = 18. Under fp8 the same (the stack
    # caches no fp8 copy: fp8_copy_bytes 0).
    L = _arrays(Layout(dp=8, zero=3), Layout(dp=8, zero=3, precision="fp8"))
    assert [list(x) for x in bytes_per_param(L, 0.0, fp32_params=True)] == [[4.0, 4.0], [4.0, 4.0], [8.0, 8.0]]
    assert [list(x) for x in bytes_per_param(L, 0.0)] == [[2.0, 2.0], [4.0, 4.0], [12.0, 12.0]]
    # Llama-3.1-8B on 8 GPUs (Table 1): 8,030,261,248 parameters x 16 B / 8 = 16,060,522,496 B of states per rank.
    M = _arrays(Layout(dp=8, zero=3, mbs=2, gbs=16, seq=8192, recompute="selective"))
    titan = stack_memory(L8, M, get_stack("torchtitan"))
    states = float(titan.weights[0] + titan.grads[0] + titan.optimizer[0])
    assert states == pytest.approx(16 * 8_030_261_248 / 8, rel=1e-9)
    mcore = stack_memory(L8, M, get_stack("megatron-core"))
    assert float(mcore.weights[0]) == pytest.approx(2 * 8_030_261_248 / 8, rel=1e-9)  # Megatron unchanged


def test_fp8_allgather_keeps_one_byte_unsharded_weights_per_pp_stage():
    # Llama-3.1-405B, tp 8, pp 8 (Table 5): a middle rank holds 16 layers of (wq 16384^2 + wk, wv 16384 x 1024 each
    # + wo 16384^2 + w1, w2, w3 16384 x 53248 each) / 8 + 2 norms x 16384 = 398,491,648 parameters per layer,
    # 6,375,866,368 per stage. Under PP FSDP2 keeps the stage unsharded from its first forward to the last backward,
    # with fp32 accumulated gradients (FSDPParam.to_accumulated_grad_if_needed): 4 B; torchao's fp8 all-gather makes
    # the unsharded weight a Float8Tensor: 1 B (bf16 gathers: 2 B).
    L = _arrays(Layout(dp=8, tp=8, pp=8, zero=3, mbs=4, gbs=256, seq=8192, recompute="full", precision="fp8"))
    layers = np.array([16.0])
    params = stage_params(L405, L, layers, False, False)
    assert float(params.dense[0]) == 16 * 398_491_648 == 6_375_866_368
    fp8 = state_bytes(L405, L, params, layers, 0.0, False, True, True)
    bf16 = state_bytes(L405, L, params, layers, 0.0, False, True, False)
    assert float(fp8.fsdp_buffers[0]) == 5 * 6_375_866_368
    assert float(bf16.fsdp_buffers[0]) == 6 * 6_375_866_368
    assert get_stack("torchtitan-compile").fp8_allgather and not get_stack("megatron-core").fp8_allgather


def test_op_sac_eager_keeps_every_must_save_output_compiled_only_what_backward_reads():
    # Llama-3.1-8B, 8192 tokens, tp 1: both keep the block input, wq's and wv's outputs, SDPA's output and fp32
    # log-sum-exp, w1's output; eager also w2's output (cached by _CachingTorchDispatchMode for the replay, though no
    # backward formula reads it): 2 B x 8192 x (4096 + 4096 + 1024 + 4096 + 14336 + 4096) + 4 B x 32 x 8192
    # = 521,142,272 B; compiled 2 x 8192 x 4096 = 67,108,864 B less: 454,033,408 B.
    L = _arrays(Layout(seq=8192, mbs=1, gbs=8, dp=8, recompute="selective"))
    assert float(op_sac_bytes(L8, L, False)[0]) == 521_142_272
    assert float(op_sac_bytes(L8, L, False, compiled=True)[0]) == 454_033_408
    # tp 8 with SP: the block input 8192 x 512 x 2 = 8,388,608; wq, wv, SDPA out 2 x 8192 x (4096 + 1024 + 4096) / 8
    # = 18,874,368; lse 4 x 4 x 8192 = 131,072; w1 2 x 8192 x 14336 / 8 = 29,360,128; the attention reduce-scatter's
    # output 8,388,608 (compiled: 65,142,784); eager also the MLP's reduce-scatter output 8,388,608 and w2's local
    # output, the full-width partial sum 2 x 8192 x 4096 = 67,108,864: 140,640,256.
    T = _arrays(Layout(seq=8192, mbs=1, gbs=1, dp=1, tp=8, sp=True, recompute="selective"))
    assert float(op_sac_bytes(L8, T, False)[0]) == 140_640_256
    assert float(op_sac_bytes(L8, T, False, compiled=True)[0]) == 65_142_784
    kept = float(layer_activation_bytes(L8, L, False, np.ones(1), SELECTIVE_OP_SAC, compiled=True)[0])
    assert kept == 454_033_408
    assert float(per_layer_activation_bytes(L8, L, SELECTIVE_OP_SAC, compiled=True)[0][0]) == 454_033_408


def test_eager_loss_freed_logits_block_stays_reserved_at_pp_1():
    # Llama-3.1-8B, 2 x 8192 tokens, pp 1: the loss peaks at 12 B per logit live, plus the freed bf16 logits block
    # (2 B) no fp32 request fits: 14 x 16384 x 128256 = 29,418,848,256 B (+ the embedding output 16384 x 4096 x 2 =
    # 134,217,728 B on the one stage). Under PP the last stage keeps its logits in output_chunks instead: no block
    # is freed, 12 B.
    L = _arrays(Layout(dp=8, zero=3, mbs=2, gbs=16, seq=8192, recompute="selective"))
    got = float(ends_activation_bytes(L8, L, True, True, False, 12.0, 16.0, EAGER_LOSS_FREED_LOGITS_BYTES)[0])
    assert got == 29_418_848_256 + 134_217_728
    P = _arrays(Layout(dp=8, tp=8, pp=8, zero=3, mbs=4, gbs=256, seq=8192, recompute="full"))
    with_freed = ends_activation_bytes(L405, P, False, True, True, 12.0, 16.0, EAGER_LOSS_FREED_LOGITS_BYTES)
    assert float(with_freed[0]) == float(ends_activation_bytes(L405, P, False, True, True, 12.0, 16.0)[0])


def test_loss_peak_and_recompute_working_set_are_not_summed():
    # Llama-3.1-8B, one 32768-token sequence, full recompute, pp 1 (Table 2 s32k): the loss's logits peak before the
    # last layer's backward re-runs it, so the one-layer working set and the logits count as the larger of the two:
    # here the logits, 12 B x 32768 x 128256 = 50,432,311,296 B. Activations = 32 layers' inputs 32 x 32768 x 4096
    # x 2 B = 8,589,934,592 + the embedding output 268,435,456 + the logits = 59,290,681,344 B.
    L = _arrays(Layout(dp=8, zero=3, mbs=1, gbs=8, seq=32768, recompute="full", precision="fp8"))
    got = memory_breakdown(L8, L, SELECTIVE_OP_SAC, 0.0, True, fused_glu=True, loss_bytes_per_logit=12.0,
                           param_remainders=False, loss_parallel_bytes_per_logit=16.0, compiled=True)
    assert float(got.activations[0]) == 8_589_934_592 + 268_435_456 + 50_432_311_296
    # Table 2 CP8: 262144 tokens over cp 8 = 32768 per rank, the same logits; torch context_parallel's gathered K/V
    # (4,294,967,296 B, test_torch_cp_gathered_kv) live only inside a running layer, so the logits peak leaves them
    # out of "other" too; a stage without the head (pp 2, first) keeps them.
    C = _arrays(Layout(dp=1, cp=8, zero=3, mbs=1, gbs=1, seq=262144, recompute="full", precision="fp8",
                       cp_kind="allgather"))
    kw = dict(selective=SELECTIVE_OP_SAC, fp8_copy_bytes=0.0, sp_gathered=True, fused_glu=True,
              loss_bytes_per_logit=12.0, param_remainders=False, loss_parallel_bytes_per_logit=16.0, compiled=True)
    with_cp, without = (memory_breakdown(L8, C, **kw, cp_impl=impl) for impl in ("torch", "megatron"))
    assert float(with_cp.by_position[0, 3, 0]) == 8_589_934_592 + 268_435_456 + 50_432_311_296
    assert np.array_equal(with_cp.by_position[0], without.by_position[0])
    P = _arrays(Layout(dp=1, cp=4, pp=2, zero=3, mbs=1, gbs=2, seq=131072, recompute="full", precision="fp8",
                       cp_kind="allgather"))
    with_cp, without = (memory_breakdown(L8, P, **kw, cp_impl=impl) for impl in ("torch", "megatron"))
    gathered = 131072 * (4096 + 4096) * 2  # 2,147,483,648 B
    assert float(with_cp.by_position[0, 4, 0] - without.by_position[0, 4, 0]) == gathered


def test_fp8_allgather_needs_dp_shard_above_one():
    # torchtitan/float8.py Float8Handler (Dec 2024): enable_fsdp_float8_all_gather = parallel_dims.dp_shard_enabled
    # and the config flag. Llama-3.1-405B tp 8 pp 8 cp 8 with dp_shard 1 (Table 6's 256K row): FSDP2 still shards
    # over the 8 cp ranks, but gathers bf16 weights: a middle rank's 6,375,866,368 unsharded parameters take 2 B each
    # beside the 4-B fp32 accumulated gradients, 6 x 6,375,866,368 B; with dp_shard 2, cp 4 the fp8 gather: 5 x.
    cp8 = _arrays(Layout(dp=1, cp=8, cp_kind="allgather", tp=8, pp=8, zero=3, mbs=1, gbs=8, seq=262144,
                         recompute="full", precision="fp8"))
    cp4 = _arrays(Layout(dp=2, cp=4, cp_kind="allgather", tp=8, pp=8, zero=3, mbs=1, gbs=16, seq=131072,
                         recompute="full", precision="fp8"))
    layers = np.array([16.0])
    for L, per_param in ((cp8, 6), (cp4, 5)):
        params = stage_params(L405, L, layers, False, False)
        assert float(params.dense[0]) == 6_375_866_368
        got = state_bytes(L405, L, params, layers, 0.0, False, True, True)
        assert float(got.fsdp_buffers[0]) == per_param * 6_375_866_368
