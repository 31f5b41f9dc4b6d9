"""Training memory terms of the PyTorch-native stacks (torchtitan, torchtitan-compile), each pinned by a worked example
derived by hand: torch loss_parallel's cross-entropy under TP, torch.distributed.pipelining's buffers, torch
context_parallel's all-gathered K/V.

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
    ends_activation_bytes,
    loss_peak_bytes_per_logit,
    memory_breakdown,
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
