"""The compiled cross-entropy of torchtitan since pytorch/torchtitan#1033 (April 2025): stack torchtitan-compile-loss,
loss_impl "compiled". Each term pinned by a worked example counted by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import head_time, loss_bytes_per_logit
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.memory import (
    ALLOCATOR_FRACTION,
    EAGER_LOSS_FREED_LOGITS_BYTES,
    GIB,
    ends_activation_bytes,
)

L8 = ModelShapes.of(load_model("llama3.1-8b"))  # h 4096, vocab 128256
LAYOUT = Layout(dp=32, zero=3, mbs=2, gbs=64, seq=8192, recompute="selective", precision="fp8")
LOGITS = 2 * 8192 * 128256  # 2,101,346,304 per rank (tp 1)


def test_the_compiled_stack_differs_from_torchtitan_compile_only_in_its_loss():
    compiled, blocks_only = get_stack("torchtitan-compile-loss"), get_stack("torchtitan-compile")
    assert (compiled.loss_impl, compiled.loss_bytes_per_logit) == ("compiled", 4.0)
    assert (blocks_only.loss_impl, blocks_only.loss_bytes_per_logit) == ("eager_fp32", 12.0)
    same = replace(compiled, name=blocks_only.name, description=blocks_only.description, sources=blocks_only.sources,
                   loss_impl=blocks_only.loss_impl, loss_bytes_per_logit=blocks_only.loss_bytes_per_logit,
                   loss_frees_logits=blocks_only.loss_frees_logits)
    assert same == blocks_only
    # Under loss_parallel (tp > 1) the DTensor loss keeps its own backward: 16 B as the other torchtitan stacks.
    assert compiled.loss_parallel_bytes_per_logit == 16.0


def test_compiled_loss_memory_worked_example():
    """At the head's backward the compiled graph holds its saved bf16 logits (2 B) and writes the bf16 input
    gradient (2 B): 4 B per logit, 2,101,346,304 x 4 = 8,405,385,216 B on the last stage (tp 1, no SP); the eager
    fp32 loss holds 12 B (fp32 log-softmax output, its incoming gradient, the input gradient): 25,216,155,648 B."""
    L = LayoutArrays.from_layouts([LAYOUT])
    compiled, eager = (float(ends_activation_bytes(L8, L, False, True, True, s.loss_bytes_per_logit,
                                                   s.loss_parallel_bytes_per_logit)[0])
                       for s in (get_stack("torchtitan-compile-loss"), get_stack("torchtitan-compile")))
    assert compiled == LOGITS * 4 == 8_405_385_216
    assert eager == LOGITS * 12 == 25_216_155_648
    # In the estimate's peak the difference is that, plus the freed bf16 logits block the eager loss leaves reserved at
    # pp 1 (memory.EAGER_LOSS_FREED_LOGITS_BYTES = 2 B: 8 + 2 = 10 B per logit), plus the allocator's share of it
    # (memory.other_bytes): 10 x 2,101,346,304 x 1.05 B = 20.5488 GiB.
    cluster = load_cluster("hgx-h200:4")
    peaks = [estimate(load_model("llama3.1-8b"), cluster, LAYOUT, stack=get_stack(s)).to_json()["memory"]["peak_gib"]
             for s in ("torchtitan-compile", "torchtitan-compile-loss")]
    assert EAGER_LOSS_FREED_LOGITS_BYTES == 2.0
    assert peaks[0] - peaks[1] == pytest.approx((8 + 2) * LOGITS * (1 + ALLOCATOR_FRACTION) / GIB, abs=1e-4)
    assert peaks[0] - peaks[1] == pytest.approx(20.5488, abs=1e-4)


def test_compiled_loss_traffic_worked_example():
    """HBM bytes per logit: compiled, one read of the bf16 logits forward (online softmax: max and sum of
    exponentials in one pass) = 2 B, one read and one bf16 gradient write backward = 4 B; eager fp32: 6 + 16 = 22 B
    forward, 4 + 16 + 6 = 26 B backward. The head's time differs by exactly those bytes at the HBM rate."""
    assert loss_bytes_per_logit(get_stack("torchtitan-compile-loss")) == (2.0, 4.0)
    assert loss_bytes_per_logit(get_stack("torchtitan-compile")) == (22.0, 26.0)
    L = LayoutArrays.from_layouts([LAYOUT])
    hw = HardwareRates.of(load_cluster("hgx-h200:4"))
    (fc, bc), (fe, be) = (head_time(L8, L, hw, get_stack(s))
                          for s in ("torchtitan-compile-loss", "torchtitan-compile"))
    assert float(fe[0] - fc[0]) == pytest.approx(20.0 * LOGITS / hw.hbm_bytes_per_s, rel=1e-9)
    assert float(be[0] - bc[0]) == pytest.approx(22.0 * LOGITS / hw.hbm_bytes_per_s, rel=1e-9)


def test_deepspeed_prices_the_eager_fp32_loss_time_without_torchtitans_freed_logits_block():
    """DeepSpeed trains a Hugging Face model whose loss upcasts the logits and runs F.cross_entropy eagerly: its time
    streams the eager loss's bytes (22 B forward, 26 B backward per logit: compute.EAGER_FP32_LOSS_*), as torchtitan's;
    its memory holds the 12 B at the head's backward but not the 2 B freed-logits block, which comes from torchtitan's
    `del pred` (stacks.yaml loss_frees_logits). At tp 1, 16,384 tokens: 2,101,346,304 logits, the peak's loss term
    12 x 2,101,346,304 x 1.05 B = 24.6586 GiB against torchtitan's 14 x ... = 28.7683 GiB."""
    deepspeed, titan = get_stack("deepspeed"), get_stack("torchtitan")
    assert loss_bytes_per_logit(deepspeed) == loss_bytes_per_logit(titan) == (22.0, 26.0)
    assert (deepspeed.loss_frees_logits, titan.loss_frees_logits) == (False, True)
    layout = Layout(dp=8, zero=1, mbs=2, gbs=64, seq=8192, recompute="full")
    cluster = load_cluster("dgx-h100:1")
    fused = replace(deepspeed, loss_impl="fused")
    L = LayoutArrays.from_layouts([layout])
    hw = HardwareRates.of(cluster)
    (fwd, bwd), (fwd_fused, bwd_fused) = (head_time(L8, L, hw, s) for s in (deepspeed, fused))
    # eager - fused, per micro-batch: (22 - 12) B forward and (26 - 12) B backward per logit at the HBM rate.
    assert float(fwd[0] - fwd_fused[0]) == pytest.approx(10 * LOGITS / hw.hbm_bytes_per_s, rel=1e-9)
    assert float(bwd[0] - bwd_fused[0]) == pytest.approx(14 * LOGITS / hw.hbm_bytes_per_s, rel=1e-9)
    # The step carries it once per micro-batch (4 of 2 sequences; step_time_s is rounded to 1e-4 s in the JSON).
    times = [estimate(load_model("llama3.1-8b"), cluster, layout, stack=s).to_json()["step_time_s"]
             for s in (deepspeed, fused)]
    assert times[0] - times[1] == pytest.approx(4 * 24 * LOGITS / hw.hbm_bytes_per_s, abs=1e-4)
    loss_term = [float(ends_activation_bytes(L8, L, False, True, False, s.loss_bytes_per_logit,
                                             s.loss_parallel_bytes_per_logit,
                                             EAGER_LOSS_FREED_LOGITS_BYTES if s.loss_frees_logits else 0.0)[0])
                 for s in (deepspeed, titan)]
    assert [b * (1 + ALLOCATOR_FRACTION) / GIB for b in loss_term] == pytest.approx([24.6586, 28.7683], abs=1e-4)
