"""Training activations that follow what the stack keeps: MLA per-head tensors and low-rank intermediates
(DeepSeek-V2/V3), Megatron's core_attn selective recompute with flash attention."""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.memory import layer_activation_bytes


def test_mla_training_activations_are_per_head_on_deepseek_v3_shapes():
    # DeepSeek-V3: 128 heads, qk 128 nope + 64 rope, v 128, q_lora 1536, kv_lora 512. Per token the attention keeps
    # q and per-head k (128 x 192 each), v (128 x 128), and q_a + its norm (2 x 1536), kv_a + rope key (512 + 64) and
    # its norm (512): at tp 8, 2 B x ((24576 + 24576 + 16384) / 8 + 4160), not the 24576 + 576 inference latent.
    shapes = ModelShapes.of(load_model("deepseek-v3"))
    assert (shapes.q_dim, shapes.v_dim, shapes.mla_latent) == (24576, 16384, 4160)
    base = LayoutArrays.from_layouts([Layout(tp=8, sp=True, seq=4096, mbs=1, gbs=64, dp=8)])
    mode = np.zeros(1)
    got = float(layer_activation_bytes(shapes, base, True, mode)[0])
    gqa_like = ModelShapes(**{**{f: getattr(shapes, f) for f in shapes.__slots__}, "mla_latent": 0})
    old = float(layer_activation_bytes(gqa_like, base, True, mode)[0])
    assert got - old == pytest.approx(4096 * 2 * ((24576 + 24576 + 16384) / 8 + 4160 - (24576 + 576) / 8))


def test_core_attn_selective_recompute_with_flash_frees_the_lse_and_reruns_the_core():
    # Megatron's selective recompute checkpoints core attention: with flash it frees only the fp32 log-sum-exp
    # (4 B x heads x tokens / tp) and pays the core's forward again in backward.
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.compute import layer_time

    shapes = ModelShapes.of(load_model("llama3.1-8b"))
    none, sel = (LayoutArrays.from_layouts([Layout(tp=2, sp=True, seq=8192, mbs=1, gbs=8, dp=4, recompute=r)])
                 for r in ("none", "selective"))
    saved = float(layer_activation_bytes(shapes, none, False, np.zeros(1))[0]
                  - layer_activation_bytes(shapes, sel, False, np.ones(1))[0])
    assert saved == pytest.approx(4 * 32 * 8192 / 2)
    hw = HardwareRates.of(load_cluster("dgx-h100:1"))
    t = layer_time(shapes, sel, hw, False)
    assert float(t.recompute_s[0]) == pytest.approx(float(t.core_forward_s[0]))
    assert float(t.recompute_s[0]) > 0


def test_torchtitan_op_sac_keeps_every_other_matmul_worked_example():
    # llama3.1-8b (h 4096, q 4096, k = v 1024, ffn 14336, 32 heads), tp 1, 8192 tokens, bf16. op-SAC keeps the layer
    # input, wq and wv outputs, SDPA's output and fp32 log-sum-exp, w1 and w2 outputs; reruns wk, wo, w3 and the
    # elementwise ops: 2 B x 8192 x (4096 + 4096 + 1024 + 4096 + 14336 + 4096) + 4 B x 32 x 8192.
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.compute import layer_time
    from clusterplan.models.training.memory import SELECTIVE_OP_SAC

    shapes = ModelShapes.of(load_model("llama3.1-8b"))
    L = LayoutArrays.from_layouts([Layout(seq=8192, mbs=1, gbs=8, dp=8, recompute="selective")])
    kept = float(layer_activation_bytes(shapes, L, False, np.ones(1), SELECTIVE_OP_SAC)[0])
    assert kept == pytest.approx(2 * 8192 * (4096 + 4096 + 1024 + 4096 + 14336 + 4096) + 4 * 32 * 8192)
    hw = HardwareRates.of(load_cluster("dgx-h100:1"))
    from clusterplan.hardware_db import get_stack

    sac, core = (layer_time(shapes, L, hw, False, get_stack(s)) for s in ("torchtitan", "megatron-core"))
    # Recompute FLOPs: 2 x 8192 x (4096 x 1024 + 4096 x 4096 + 4096 x 14336) instead of core_attn's core forward.
    from clusterplan.models.training.compute import layer_flops

    redo = 2 * 8192 * (4096 * 1024 + 4096 * 4096 + 4096 * 14336)
    core_exec = float(layer_flops(shapes, L, False)[1][0])
    assert float(sac.hardware_flops[0] - core.hardware_flops[0]) == pytest.approx(redo - core_exec)
    assert float(sac.recompute_s[0]) > float(core.recompute_s[0])


def test_dtensor_sequence_parallel_keeps_the_gathered_linear_inputs():
    # Llama-3.1-8B (h 4096), tp 4 with SP, mbs 1 x 8192 tokens, bf16. Megatron-Core keeps the qkv and MLP inputs
    # on sequence shards (re-gathered in backward, Korthikanti 2022 Sec. 4.2.2); torchtitan's DTensor plan keeps
    # the all-gathered inputs: 2 tensors x 2 B x 8192 x 4096 x (1 - 1/4) = 100,663,296 B more per layer.
    shapes = ModelShapes.of(load_model("llama3.1-8b"))
    L = LayoutArrays.from_layouts([Layout.parse("tp=4,sp=1,mbs=1,gbs=8,seq=8192,recompute=none", world=4)])
    mode = np.zeros(1)
    sharded = float(layer_activation_bytes(shapes, L, False, mode)[0])
    gathered = float(layer_activation_bytes(shapes, L, False, mode, sp_gathered=True)[0])
    assert gathered - sharded == 2 * 2 * 8192 * 4096 * 3 / 4
    no_sp = LayoutArrays.from_layouts([Layout.parse("tp=4,sp=0,mbs=1,gbs=8,seq=8192,recompute=none", world=4)])
    assert layer_activation_bytes(shapes, no_sp, False, mode)[0] == layer_activation_bytes(
        shapes, no_sp, False, mode, sp_gathered=True)[0]  # without SP both keep whole inputs
