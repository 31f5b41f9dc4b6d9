"""Megatron-Core selective recompute modules priced as what backward reruns (compute.module_recompute). Worked
examples: each module's forward, by hand from the same rates."""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import (
    activation_fn_bytes,
    layer_linears,
    layer_time,
    linear_times,
    norm_bytes,
)
from clusterplan.models.training.layout import Layout

H100 = HardwareRates.of(load_cluster("dgx-h100:1"))
MCORE = get_stack("megatron-core")


def _layer(model: str, modules: str, moe: bool, **kw):
    shapes = ModelShapes.of(load_model(model))
    L = LayoutArrays.from_layouts([Layout(mbs=1, gbs=8, dp=8, seq=4096, recompute="selective",
                                          recompute_modules=modules, **kw)])
    return shapes, L, layer_time(shapes, L, H100, moe, MCORE)


def test_moe_act_and_layernorm_rerun_their_elementwise_bytes():
    # Qwen3-30B-A3B MoE layer, 4096 tokens: the expert activation reads gate and up and writes their product over
    # top_k x expert_ffn = 8 x 768 (3 reads + 1 write at 2 B) on the busiest expert-parallel rank's rows (forced
    # balancing at ep 8, 4,096 tokens a rank: x 1.0076445, tests/test_moe_forced_balance.py); the two norms read and
    # write h = 2048 at 2 B.
    shapes, L, t = _layer("qwen3-30b-a3b", "moe_act+layernorm", True, ep=8)
    hbm = H100.hbm_bytes_per_s
    act = 4096 * 8 * 768 * 8 * 1.0076445
    assert float(activation_fn_bytes(shapes, L, True)[0]) == pytest.approx(act, rel=1e-7)
    assert float(norm_bytes(shapes, L)[0]) == 4096 * 2048 * 8
    assert float(t.recompute_s[0]) == pytest.approx((act + 4096 * 2048 * 8) / hbm, rel=1e-7)


def test_mla_up_proj_reruns_the_two_up_projection_gemms():
    # DeepSeek-V3: q_b 1536 -> 128 x (128 + 64), kv_b 512 -> 128 x (128 + 128); 4096 tokens, tp 1.
    shapes, L, t = _layer("deepseek-v3", "mla_up_proj", True, ep=8)
    assert shapes.mla_up_proj == ((1536, 128 * 192), (512, 128 * 256))
    fp8 = np.zeros(1, dtype=bool)
    want = sum(float(H100.gemm_time_s(np.array([4096.0]), n, k, fp8)[0]) for k, n in shapes.mla_up_proj)
    assert float(t.recompute_s[0]) == pytest.approx(want, rel=1e-12)
    assert float(t.hardware_flops[0]) == pytest.approx(
        float(_layer("deepseek-v3", "", True, ep=8, recompute_layers=0)[2].hardware_flops[0])
        - float(_core_flops("deepseek-v3", True)) + 2 * 4096 * (1536 * 128 * 192 + 512 * 128 * 256), rel=1e-9)


def _core_flops(model: str, moe: bool) -> float:
    # The default selective (core_attn) reruns the core: its FLOPs are the difference against no recompute.
    shapes = ModelShapes.of(load_model(model))
    sel = LayoutArrays.from_layouts([Layout(mbs=1, gbs=8, dp=8, seq=4096, recompute="selective", ep=8)])
    none = LayoutArrays.from_layouts([Layout(mbs=1, gbs=8, dp=8, seq=4096, recompute="none", ep=8)])
    return float(layer_time(shapes, sel, H100, moe, MCORE).hardware_flops[0]
                 - layer_time(shapes, none, H100, moe, MCORE).hardware_flops[0])


def test_mlp_reruns_a_dense_layers_mlp_and_core_attn_equals_the_default():
    shapes, L, t = _layer("llama3.1-8b", "mlp", False)
    fp8 = np.zeros(1, dtype=bool)
    mlp = linear_times(layer_linears(shapes, L, False)[2:4], H100, fp8)[0]
    act = activation_fn_bytes(shapes, L, False) / H100.hbm_bytes_per_s
    assert float(t.recompute_s[0]) == pytest.approx(float(mlp[0] + act[0]), rel=1e-12)
    # Naming core_attn prices exactly what the unnamed default (Megatron's selective = core_attn) prices.
    assert float(_layer("llama3.1-8b", "core_attn", False)[2].recompute_s[0]) == pytest.approx(
        float(_layer("llama3.1-8b", "", False)[2].recompute_s[0]), rel=1e-12)



def test_full_recompute_of_some_layers_reruns_that_share_of_the_forward():
    # Llama 3.1 8B, 32 layers on one pipeline rank: recompute_layers 8 / 16 reruns 8 / 16 of the 32 layers'
    # forwards, so the average layer's recompute_s is 1/4 / 1/2 of its forward_s (LayoutArrays.full_recompute_share)
    # and its executed FLOPs gain the same share of a forward's; 0 (every layer) and 32 rerun all of it. Memory keeps
    # the other layers' activations (memory.full_recompute_layers); before 2026-12-04 the time charged every layer.
    shapes = ModelShapes.of(load_model("llama3.1-8b"))

    def layer(recompute: str, n: int = 0):
        L = LayoutArrays.from_layouts([Layout(mbs=1, gbs=8, dp=8, seq=4096, recompute=recompute, recompute_layers=n)])
        return layer_time(shapes, L, H100, False, MCORE)

    none, whole = layer("none"), layer("full")
    np.testing.assert_allclose(whole.recompute_s, whole.forward_s, rtol=1e-12)  # bf16: no weight casts beside
    for n, share in ((8, 0.25), (16, 0.5), (32, 1.0)):
        part = layer("full", n)
        np.testing.assert_allclose(part.recompute_s, share * whole.forward_s, rtol=1e-12)
        np.testing.assert_allclose(part.hardware_flops,
                                   none.hardware_flops + share * (whole.hardware_flops - none.hardware_flops),
                                   rtol=1e-12)
