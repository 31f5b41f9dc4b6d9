"""Load-balanced ring context parallelism priced call by call (models/training/compute.py cp_block_core_times):
torch context_parallel (torch/distributed/tensor/experimental/_attention.py) and Transformer Engine's p2p ring run
one causal diagonal call and cp - 1 unmasked calls per rank, each 1/cp of the rank's causal attention FLOPs."""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.attention import ATTN_BWD_FLOPS_OVER_FWD
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import cp_block_core_times, flash_core_times, layer_flops, layer_time
from clusterplan.models.training.layout import Layout

H100 = HardwareRates.of(load_cluster("dgx-h100:1"))
B200 = HardwareRates.of(load_cluster("dgx-b200:1"))


def test_blocks_by_hand_h100_fa2():
    """FA2, head dim 128, seq 131072 on cp 4: c = 16384, the diagonal call at 2c = 32768 and the off-diagonal ones at
    c both sit on the curves' last point (16k; attention_kernels.yaml FA3 paper Fig. 5(c)/(d), Fig. 6). 1e15 causal
    FLOPs: 2.5e14 per call. Forward: 2.5e14 / 335 TFLOP/s (causal) + 3 x 2.5e14 / 370 (no mask) = 0.746269 +
    2.027027 = 2.773296 s. Backward: 2.5 x (2.5e14 / (335 x 322 / 370) + 7.5e14 / 322) = 2.5 x (0.857513 +
    2.329193) = 7.966765 s."""
    att = H100.attention
    fwd, bwd = cp_block_core_times(att, "fa2", np.array([1e15]), np.array([131072.0]), np.array([4.0]), 128.0, 2.5)
    assert float(fwd[0]) == pytest.approx(2.773296, rel=1e-5)
    assert float(bwd[0]) == pytest.approx(7.966765, rel=1e-5)


def test_cp1_is_the_causal_call():
    """cp = 1: one call, the causal diagonal over the whole sequence (no off-diagonal term)."""
    att = H100.attention
    fwd, bwd = cp_block_core_times(att, "fa2", np.array([1e15]), np.array([8192.0]), np.array([1.0]), 128.0, 2.5)
    assert float(fwd[0]) == pytest.approx(1e15 / float(att.forward_flops_per_s("fa2", np.array([8192.0]), 128.0)[0]))
    assert float(bwd[0]) == pytest.approx(ATTN_BWD_FLOPS_OVER_FWD * 1e15
                                          / float(att.backward_flops_per_s("fa2", np.array([8192.0]), 128.0)[0]))


def test_short_blocks_take_the_short_curve_point():
    """s8192 on cp 2 (NeMo's Llama 3 8B cp2): c = 2048. FA2 head dim 128: diagonal causal at 4096 = 319 TFLOP/s,
    the off-diagonal call without mask at 2048 = 362 (FA3 paper Fig. 5(c)/(d)); 2e12 FLOPs, 1e12 per call:
    1e12 / 319e12 + 1e12 / 362e12 = 5.8972 ms."""
    att = H100.attention
    fwd, _ = cp_block_core_times(att, "fa2", np.array([2e12]), np.array([8192.0]), np.array([2.0]), 128.0, 2.5)
    assert float(fwd[0]) == pytest.approx(1 / 319 + 1 / 362, rel=1e-6)


def test_no_noncausal_curve_keeps_the_causal_pricing():
    """B200 publishes causal cuDNN curves only: every call runs the causal curve at seq / cp, as before blocks."""
    shapes = ModelShapes.of(load_model("llama3.1-8b"))
    L = LayoutArrays.from_layouts([Layout(dp=1, cp=4, mbs=1, gbs=1, seq=65536, flash_attn=True)])
    _, core = layer_flops(shapes, L, False)
    plain = flash_core_times(shapes, L, B200, core, "cudnn")
    blocks = flash_core_times(shapes, L, B200, core, "cudnn", np.array([True]))
    assert np.allclose(plain, blocks)


def test_which_stacks_run_blocks():
    """torch context_parallel runs the blocks with its all-gather rotation too (the all-gather only moves K/V; the
    SDPA calls are the ring's); Megatron-Core runs them for the p2p ring, not for all-gather or all-to-all CP."""
    shapes = ModelShapes.of(load_model("llama3.1-8b"))
    kinds = ("ring", "allgather", "a2a")
    L = LayoutArrays.from_layouts([Layout(dp=1, cp=4, cp_kind=k, mbs=1, gbs=1, seq=131072, flash_attn=True)
                                   for k in kinds])
    _, core = layer_flops(shapes, L, False)
    torch_stack, megatron = get_stack("torchtitan-compile"), get_stack("megatron-core")
    causal = flash_core_times(shapes, L, H100, core, torch_stack.attention_kernel)[0]
    ring = flash_core_times(shapes, L, H100, core, torch_stack.attention_kernel, np.array([True] * 3))[0]
    assert np.allclose(layer_time(shapes, L, H100, False, torch_stack).core_forward_s, ring)
    m_causal = flash_core_times(shapes, L, H100, core, megatron.attention_kernel)[0]
    m_ring = flash_core_times(shapes, L, H100, core, megatron.attention_kernel, np.array([True] * 3))[0]
    got = layer_time(shapes, L, H100, False, megatron).core_forward_s
    assert got[0] == pytest.approx(m_ring[0]) and got[1] == pytest.approx(m_causal[1])
    assert got[2] == pytest.approx(m_causal[2])
    assert ring[0] < causal[0]  # unmasked calls run faster than the causal curve at the same length
