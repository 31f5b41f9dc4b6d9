"""Training memory as Megatron-Core / Transformer Engine run it in NeMo / Megatron-Bridge performance recipes: each
term below is pinned by a worked example derived by hand (bytes per token and layer, then times tokens).

Sources: Megatron-Core fusions/fused_bias_swiglu.py (SwiGLUFunction saves its input only), moe/experts.py
(TEGroupedMLP: router probabilities applied in the fused activation; moe_act recompute via CheckpointWithoutOutput),
MLA qkv_up_checkpoint (mla_up_proj), DDP grad buffer dtype (grad_reduce_in_fp32), TE Float8Tensor
(is_non_tn_fp8_gemm_supported drops the transpose on Blackwell), TE MXFP8Tensor (row- and column-wise copies),
cpu_offloading_num_layers.
"""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.errors import BadInputError
from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.layout import Layout, stack_problems
from clusterplan.models.training.memory import (
    bytes_per_param,
    fp8_weight_copy_bytes,
    layer_activation_bytes,
    layers_activation_bytes,
)

NONE, SELECTIVE = np.zeros(1), np.ones(1)


def _arrays(**kw: object) -> LayoutArrays:
    return LayoutArrays.from_layouts([Layout(**kw)])


def test_fused_swiglu_keeps_gate_and_up_only():
    # Llama-3.1-8B dense layer (ffn 14336), tp 1, 8192 tokens, bf16: unfused SwiGLU keeps gate, up and silu(gate)
    # (plus the product as fc2's input); the fused kernel keeps gate and up: one 2 B x 8192 x 14336 tensor less.
    shapes = ModelShapes.of(load_model("llama3.1-8b"))
    L = _arrays(seq=8192, mbs=1, gbs=8, dp=8, recompute="none")
    fused = float(layer_activation_bytes(shapes, L, False, NONE, fused_glu=True)[0])
    unfused = float(layer_activation_bytes(shapes, L, False, NONE, fused_glu=False)[0])
    assert unfused - fused == 2 * 8192 * 14336


GPT_OSS_BUSIEST = 1 + 1.4236003 * (8 / 7) ** 0.5 * (4 * (1 / 8) * (7 / 8) * (124 / 127) / 32_768) ** 0.5 / 0.5
"""GPT-OSS at ep 8, 4,096 tokens a rank: the busiest of 8 ranks' routed rows over the mean under forced balancing (16
local experts, 4 picks of 128, 32,768 tokens over the EP group; tests/test_moe_forced_balance.py): 1.010990."""


def test_gpt_oss_moe_layer_worked_example_and_recompute_modules():
    # GPT-OSS-120B MoE layer: h 2880, q 64 x 64 = 4096, k + v 2 x 8 x 64 = 1024, 128 experts, top-4, expert ffn 2880,
    # gated; tp 1, 4096 tokens, bf16, flash, no recompute. Per token (bytes):
    #   norm inputs 2 x 2 x 2880, attention norm output 2 x 2880, pre-MLP norm output (router input) 2 x 2880,
    #   q, k, v 2 x (4096 + 1024), attention output 2 x 4096, log-sum-exp 4 x 64, router probabilities 4 x 128,
    #   per routed token (x 4): fc1 input 2 x 2880, fused activation input 2 x 2 x 2880, fc2 input 2 x 2880, and
    #   the eager swiglu_limit clamp's saved input (the fc1 output, 2 x 2 x 2880) next to the clamped copy the fused
    #   activation saves (Megatron-Core fused_bias_geglu.py weighted_bias_quick_geglu_impl).
    # The routed terms are the busiest expert-parallel rank's (GPT_OSS_BUSIEST: forced balancing's excess).
    shapes = ModelShapes.of(load_model("gpt-oss-120b"))
    T = 4096
    L = _arrays(seq=T, mbs=1, gbs=64, dp=64, ep=8, recompute="none")
    clamp = 4 * (2 * 2 * 2880)
    routed = GPT_OSS_BUSIEST * (4 * (2 * 2880 + 4 * 2880 + 2 * 2880) + clamp)
    per_token = (4 * 2880 + 2 * 2880 + 2 * 2880 + 2 * (4096 + 1024) + 2 * 4096 + 4 * 64 + 4 * 128) + routed
    assert float(layer_activation_bytes(shapes, L, True, NONE)[0]) == pytest.approx(T * per_token, rel=1e-9)
    # The recipes' selective recompute of ["layernorm", "moe_act"] (H100/B200/GB200): the pre-MLP norm output and the
    # experts' fc2 inputs are discarded; core attention is not recomputed (the log-sum-exp stays).
    sel = _arrays(seq=T, mbs=1, gbs=64, dp=64, ep=8, recompute="selective", recompute_modules="moe_act+layernorm")
    kept = float(layer_activation_bytes(shapes, sel, True, SELECTIVE)[0])
    # moe_act's checkpoint keeps only the fc1 output: the clamp's extra copy goes too.
    assert kept == pytest.approx(T * (per_token - 2 * 2880 - GPT_OSS_BUSIEST * (4 * 2 * 2880 + clamp)), rel=1e-9)
    # "moe" checkpoints the whole block from its input: the router, experts and their inputs all go.
    moe = _arrays(seq=T, mbs=1, gbs=64, dp=64, ep=8, recompute="selective", recompute_modules="moe")
    assert float(layer_activation_bytes(shapes, moe, True, SELECTIVE)[0]) == pytest.approx(
        T * (per_token - 4 * 128 - routed), rel=1e-9)


def test_moe_under_fp8_keeps_the_expert_inputs_in_fp8():
    # Same layer under fp8: fc1 and fc2 keep their quantised inputs (1 B), the activation its bf16 input, the router
    # its bf16 input; the attention norm output is fp8 and the out-projection adds a 1-B copy of the attention output.
    shapes = ModelShapes.of(load_model("gpt-oss-120b"))
    T = 4096
    L = _arrays(seq=T, mbs=1, gbs=64, dp=64, ep=8, recompute="none", precision="fp8")
    per_token = (4 * 2880 + 1 * 2880 + 2 * 2880 + 2 * (4096 + 1024) + 3 * 4096 + 4 * 64 + 4 * 128
                 + GPT_OSS_BUSIEST * (4 * (1 * 2880 + 4 * 2880 + 1 * 2880) + 4 * (2 * 2 * 2880)))  # + the bf16 clamp copy
    assert float(layer_activation_bytes(shapes, L, True, NONE)[0]) == pytest.approx(T * per_token, rel=1e-9)


def test_mla_up_proj_recompute_keeps_the_latents_only():
    # DeepSeek-V3 at tp 8, 4096 tokens, bf16: mla_up_proj discards the per-head q (128 x 192), k (128 x 192) and
    # v (128 x 128) after the core attention: 2 B x 4096 x (24576 + 24576 + 16384) / 8 less than core_attn selective,
    # which keeps them but drops the fp32 log-sum-exp (4 B x 128 heads / 8) instead.
    shapes = ModelShapes.of(load_model("deepseek-v3"))
    core = _arrays(tp=8, seq=4096, mbs=1, gbs=64, dp=8, recompute="selective")
    up = _arrays(tp=8, seq=4096, mbs=1, gbs=64, dp=8, recompute="selective", recompute_modules="mla_up_proj")
    diff = float(layer_activation_bytes(shapes, core, True, SELECTIVE)[0]
                 - layer_activation_bytes(shapes, up, True, SELECTIVE)[0])
    assert diff == 4096 * (2 * (24576 + 24576 + 16384) / 8 - 4 * 128 / 8)


def test_dense_mlp_recompute_keeps_only_the_residual_input():
    # Llama-3.1-70B dense layer at tp 4 with SP, 8192 tokens, bf16: "mlp" drops the fused norm-fc1 input
    # (2 B x 8192 x 8192 / 4) and the MLP's own tensors (2 x 2 + 2) B x 8192 x 28672 / 4.
    shapes = ModelShapes.of(load_model("llama3.1-70b"))
    none = _arrays(tp=4, seq=8192, mbs=1, gbs=8, dp=2, recompute="none")
    mlp = _arrays(tp=4, seq=8192, mbs=1, gbs=8, dp=2, recompute="selective", recompute_modules="mlp")
    diff = float(layer_activation_bytes(shapes, none, False, NONE)[0]
                 - layer_activation_bytes(shapes, mlp, False, SELECTIVE)[0])
    # "mlp" alone does not recompute core attention, so the log-sum-exp stays on both sides.
    assert diff == 8192 * (2 * 8192 / 4 + 6 * 28672 / 4)


def test_bf16_main_gradients_halve_the_gradient_bytes():
    # adam-master: 2 B weights + 4 B fp32 main grads + 12 B optimizer; with grad_reduce_in_fp32=False (every
    # Megatron-Bridge performance recipe) the grad buffer is bf16: 2 + 2 + 12.
    both = LayoutArrays.from_layouts([Layout(), Layout(fp32_grads=False)])
    w, g, o = bytes_per_param(both)
    assert list(w) == [2.0, 2.0] and list(g) == [4.0, 2.0] and list(o) == [12.0, 12.0]


def test_fp8_weight_cache_bytes_by_recipe_and_gpu():
    # Hopper: per-tensor fp8 weights row-wise + transposed (2 B); Blackwell runs fp8 GEMMs in every layout (1 B);
    # MXFP8 row- and column-wise with one E8M0 scale per 32 elements each: 2 x (1 + 1/32) B.
    assert fp8_weight_copy_bytes("tensorwise", all_layouts=False) == 2.0
    assert fp8_weight_copy_bytes("tensorwise", all_layouts=True) == 1.0
    assert fp8_weight_copy_bytes("delayed", all_layouts=True) == 1.0
    assert fp8_weight_copy_bytes("mxfp8", all_layouts=True) == 2.0625
    assert fp8_weight_copy_bytes("blockwise", all_layouts=False) == 2.0
    assert fp8_weight_copy_bytes("tensorwise", all_layouts=False, cached=False) == 0.0


def test_activation_offloading_keeps_the_rest_and_one_staged_layer():
    # Llama-3.1-70B, pp 1, 80 layers, 40 offloaded to host: 80 - 40 layers stay plus the one being copied: 41 layers.
    shapes = ModelShapes.of(load_model("llama3.1-70b"))
    base = _arrays(seq=8192, mbs=1, gbs=64, dp=64, recompute="none", zero=3)
    off = _arrays(seq=8192, mbs=1, gbs=64, dp=64, recompute="none", zero=3, offload_layers=40)
    layers = np.array([80.0])
    per_layer = float(layer_activation_bytes(shapes, base, False, NONE)[0])
    assert float(layers_activation_bytes(shapes, off, layers, "first")[0]) == pytest.approx(41 * per_layer)
    assert float(layers_activation_bytes(shapes, base, layers, "first")[0]) == pytest.approx(80 * per_layer)


def test_recompute_modules_parse_and_round_trip():
    L = Layout.parse("recompute=selective,recompute_modules=moe_act+mla_up_proj,fp32_grads=0", world=1)
    assert L.recompute_modules == "moe_act+mla_up_proj" and L.fp32_grads is False
    assert LayoutArrays.from_layouts([L]).layout(0) == L
    with pytest.raises(BadInputError, match="not a module"):
        Layout(recompute="selective", recompute_modules="attn")
    with pytest.raises(BadInputError, match="needs recompute=selective"):
        Layout(recompute="full", recompute_modules="moe_act")
    with pytest.raises(BadInputError, match="pp = 1"):
        Layout(pp=2, offload_layers=4)
    assert stack_problems(L, get_stack("torchtitan"))
    assert not stack_problems(L, get_stack("megatron-core"))


def test_loss_logits_as_each_stack_computes_the_cross_entropy():
    # Llama-3.1-8B head (vocab 128256) at tp 2, 8192 tokens, bf16, 1F1B last stage: Megatron-Core with TE's fused
    # cross-entropy keeps the bf16 logits (2 B); Megatron's unfused one the bf16 logits and an fp32 copy (6 B);
    # torchtitan's eager F.cross_entropy(logits.float()) peaks at 3 fp32 tensors in the head's backward (12 B), also
    # when it compiles the blocks (the loss stays eager).
    from clusterplan.models.training.memory import ends_activation_bytes

    shapes = ModelShapes.of(load_model("llama3.1-8b"))
    L = _arrays(tp=2, pp=2, seq=8192, mbs=1, gbs=8, dp=2, recompute="none")
    logits = 8192 * 128256 / 2
    for stack, per_logit in (("megatron-core", 2), ("megatron-lm-2021", 6), ("torchtitan", 12),
                             ("torchtitan-compile", 12)):
        got = float(ends_activation_bytes(shapes, L, False, True,
                                          loss_bytes_per_logit=get_stack(stack).loss_bytes_per_logit)[0])
        assert got == per_logit * logits, stack


def test_distributed_optimizer_keeps_master_weight_remainders():
    # Megatron-Core store_param_remainders: the distributed optimizer (ZeRO 1) under the precision-aware optimizer
    # keeps the fp32 master weight's low 16 bits (2 B) and Adam m, v (8 B): 10 B instead of 12; DDP (zero 0),
    # Megatron-FSDP (zero 2 / 3: its own fp32 main parameters) and a run without the precision-aware optimizer
    # (Megatron-LM's default) keep 12.
    arrays = LayoutArrays.from_layouts([Layout(zero=0), Layout(zero=1), Layout(zero=2), Layout(zero=3),
                                        Layout(zero=1, optimizer="adam"), Layout(zero=1, precision_aware=False)])
    _, _, opt = bytes_per_param(arrays, param_remainders=True)
    assert list(opt) == [12.0, 10.0, 12.0, 12.0, 8.0, 12.0]
    _, _, plain = bytes_per_param(arrays)
    assert list(plain) == [12.0, 12.0, 12.0, 12.0, 8.0, 12.0]
