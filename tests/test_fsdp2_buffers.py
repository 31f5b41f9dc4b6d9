"""What torch FSDP2 holds at pp 1 beyond the sharded states (memory.fsdp2_peak_buffers), pinned by worked examples
derived by hand for Llama-3.1-8B: the outer parameters' unsharded copy, the last block kept after forward, and the
all-gather stream's pool that the compute stream never gets back.

Llama-3.1-8B by hand: tok_embeddings 128256 x 4096 = 525,336,576; output 525,336,576 + final norm 4096 =
525,340,672; a block wq, wo 4096^2 + wk, wv 4096 x 1024 + w1, w2, w3 3 x 4096 x 14336 + 2 norms x 4096 = 218,112,000
(32 blocks + both ends = 8,030,261,248 parameters).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.estimate import stack_memory
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.memory import (
    FSDP_ROOT_OUTER,
    FSDP_ROOT_SPLIT,
    fsdp2_peak_buffers,
    memory_breakdown,
)

L8 = ModelShapes.of(load_model("llama3.1-8b"))
EMBED, HEAD, BLOCK = 525_336_576, 525_340_672, 218_112_000
FP32_GRAD_BYTES = np.array([4.0])


def _arrays(*layouts: Layout) -> LayoutArrays:
    return LayoutArrays.from_layouts(list(layouts))


def test_parameter_counts_by_hand():
    assert 32 * BLOCK + EMBED + HEAD == 8_030_261_248


def test_outer_root_fp8_gathers_fsdp32():
    # The H200 run (torchtitan e7c0cae, FSDP 32, float8 tensorwise with fp8 all-gather). At the loss: the root's
    # embedding + norm + output unsharded in bf16, 2 x 1,050,677,248 = 2,101,354,496; the last block, never
    # resharded, fp8: 218,112,000; the all-gather stream's pool: the root's gathered output 2,101,354,496 plus the
    # larger of its bf16 shard casts (/32: 65,667,328) and the first block's fp8 gather with its shard (218,112,000
    # x 33 / 32 = 224,928,000): 2,326,282,496. Total 4,645,748,992 B.
    L = _arrays(Layout(dp=32, zero=3, mbs=2, gbs=64, seq=8192, recompute="selective", precision="fp8"))
    at_loss, in_block = fsdp2_peak_buffers(L8, L, FSDP_ROOT_OUTER, True, FP32_GRAD_BYTES)
    assert float(at_loss[0]) == 2_101_354_496 + 218_112_000 + 2_326_282_496 == 4_645_748_992
    # Inside a block's backward: the running and the prefetched block (fp8, 1 B each) and one block's fp32 unsharded
    # gradients (4 B): 218,112,000 x 6 = 1,308,672,000 in place of the last block: 5,736,308,992 B.
    assert float(in_block[0]) == 2_101_354_496 + 1_308_672_000 + 2_326_282_496 == 5_736_308_992


def test_split_root_bf16_gathers_fsdp8():
    # torchtitan after #1094 (the Aug 2025 B200 / MI300X runs, FSDP 8, bf16 gathers): only [norm, output] stays
    # unsharded, 525,340,672 x 2 = 1,050,681,344; no block is kept after forward; the pool holds the larger outer
    # group's gather (the same 1,050,681,344) plus the larger of its shard casts (/8: 131,335,168) and a block's bf16
    # gather with its shard (436,224,000 x 9 / 8 = 490,752,000): 1,541,433,344. At the loss 2,592,114,688 B.
    L = _arrays(Layout(dp=8, zero=3, mbs=1, gbs=8, seq=8192, recompute="selective"))
    at_loss, in_block = fsdp2_peak_buffers(L8, L, FSDP_ROOT_SPLIT, False, FP32_GRAD_BYTES)
    assert float(at_loss[0]) == 1_050_681_344 + 1_541_433_344 == 2_592_114_688
    # In a block's backward: two bf16 blocks + fp32 gradients, 218,112,000 x 8 = 1,744,896,000.
    assert float(in_block[0]) == 1_050_681_344 + 1_744_896_000 + 1_541_433_344 == 4_337_010_688


def test_unknown_root_is_refused():
    L = _arrays(Layout(dp=8, zero=3))
    with pytest.raises(ValueError, match="fsdp_root"):
        fsdp2_peak_buffers(L8, L, "both", False, FP32_GRAD_BYTES)


def test_breakdown_prices_the_loss_moment_for_the_h200_row():
    # The H200 row peaks at the head's loss (its op-SAC layers keep no recompute working set): "other" carries the
    # loss-moment buffers, 4,645,748,992 B, where state_bytes' average layer put 8,030,261,248 / 32 x (2 x 1 + 4) =
    # 1,505,673,984 B.
    L = _arrays(Layout(dp=32, zero=3, mbs=2, gbs=64, seq=8192, recompute="selective", precision="fp8"))
    stack = get_stack("torchtitan-compile-loss")
    fsdp2 = stack_memory(L8, L, stack)
    average = stack_memory(L8, L, replace(stack, fsdp_impl="flat"))
    assert float(fsdp2.activations[0]) == float(average.activations[0])
    assert float(fsdp2.other[0] - average.other[0]) == pytest.approx(4_645_748_992 - 1_505_673_984, rel=1e-12)


def test_flat_stacks_and_pipelines_keep_state_bytes_buffers():
    # Megatron-Core (flat buffers) and pp > 1 (the whole FSDP2 stage unsharded, state_bytes) are unchanged.
    L = _arrays(Layout(dp=8, zero=3, mbs=1, gbs=8, seq=8192, recompute="selective"),
                Layout(dp=4, pp=2, zero=3, mbs=1, gbs=8, seq=8192, recompute="full"))
    kw = dict(selective="op_sac", fp8_copy_bytes=0.0, sp_gathered=True, loss_bytes_per_logit=4.0,
              param_remainders=False, compiled=True, fp32_params=True)
    base, outer = memory_breakdown(L8, L, **kw), memory_breakdown(L8, L, **kw, fsdp_root=FSDP_ROOT_OUTER)
    assert float(outer.peak[0]) > float(base.peak[0])
    assert np.array_equal(outer.by_position[:, :, 1], base.by_position[:, :, 1])
    assert get_stack("megatron-core").fsdp_impl == "flat"
    assert (get_stack("torchtitan").fsdp_root, get_stack("torchtitan-compile-loss").fsdp_root) == ("outer", "outer")
