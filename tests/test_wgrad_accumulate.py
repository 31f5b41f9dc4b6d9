"""Weight-gradient GEMMs that accumulate into the main gradients read and write them, as a worked example.

Megatron-Core's gradient_accumulation_fusion hands Transformer Engine `main_grad` as the weight-gradient GEMM's
output with accumulate=True; TE sets cuBLASLt's beta to 1, so the GEMM reads C and writes D = dW + C in the main
gradients' dtype: 8 B per weight element with fp32 gradients, 4 B with bf16 ones, against the 2 B of a fresh bf16
dW. A wgrad GEMM's depth k is the tokens, so only a local expert's few routed rows make it memory-bound: at 8 B its
intensity is about k / 4 FLOP/B, under H100's bf16 ridge (~ 800 TFLOP/s / 3.35 TB/s ~ 240 FLOP/B) below k ~ 1,000.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from clusterplan.hardware_db.stacks import ExecutionStack, get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import layer_time, wgrad_output_bytes
from clusterplan.models.training.layout import Layout

H100 = HardwareRates.of(load_cluster("dgx-h100:1"))


def _bytes(L: LayoutArrays, stack: ExecutionStack) -> float:
    """wgrad_output_bytes of a one-row layout, as a number (a stack without fusion returns a scalar)."""
    return float(np.broadcast_to(wgrad_output_bytes(L, stack), (1,))[0])


def test_an_accumulating_gemm_pays_its_output_read_and_write_at_the_roofline() -> None:
    """m = n = 4,096 weight elements, k = 256 rows: bf16 operands 2 x 4,096 x 256 x 2 B = 4.19 MB, the fp32 main
    gradient read + written 4,096^2 x 8 B = 134.2 MB, i.e. 138.4 MB at H100's achieved HBM rate (~ 49 us); compute
    (8.6 GFLOP at a short k's rate, ~ 19 us) takes less, so the roofline is the time. Writing a fresh bf16 dW
    (37.7 MB, ~ 13 us) the same GEMM is compute-bound."""
    m = n = np.array([4096.0])
    k = np.array([256.0])
    hbm = H100.hbm_bytes_per_s
    fresh = float(H100.gemm_time_s(m, n, k)[0])
    accumulated = float(H100.gemm_time_s(m, n, k, output_bytes=8.0)[0])
    assert accumulated == pytest.approx((2 * 4096 * 256 * 2 + 4096**2 * 8) / hbm, rel=1e-12)
    assert fresh > (2 * 4096 * 256 * 2 + 4096**2 * 2) / hbm
    assert accumulated > 2.5 * fresh
    # a long-k GEMM stays compute-bound: the output bytes change nothing
    deep = np.array([8192.0])
    assert float(H100.gemm_time_s(m, n, deep, output_bytes=8.0)[0]) == float(H100.gemm_time_s(m, n, deep)[0])


@pytest.mark.parametrize(("stack", "fp32_grads", "expected"), [
    ("megatron-core", True, 8.0),   # fp32 main_grad read + written
    ("megatron-core", False, 4.0),  # bf16 main_grad (grad_reduce_in_fp32=False, the Megatron-Bridge recipes)
    ("torchtitan", True, 2.0),      # autograd writes a fresh bf16 dW; FSDP2 accumulates the sharded grads apart
])
def test_wgrad_output_bytes_by_stack(stack: str, fp32_grads: bool, expected: float) -> None:
    L = LayoutArrays.from_layouts([Layout(dp=8, gbs=64, seq=4096, mbs=1, fp32_grads=fp32_grads)])
    assert _bytes(L, get_stack(stack)) == expected


@pytest.mark.parametrize(("zero", "expected"), [(0, 8.0), (1, 8.0), (2, 2.0), (3, 2.0)])
def test_megatron_fsdp_writes_a_fresh_dw(zero: int, expected: float) -> None:
    """ZeRO 2 / 3 on megatron-core is Megatron-FSDP, run (and exported, frameworks/megatron.py) with
    --no-gradient-accumulation-fusion."""
    L = LayoutArrays.from_layouts([Layout(dp=8, gbs=64, seq=4096, mbs=1, zero=zero)])
    assert _bytes(L, get_stack("megatron-core")) == expected


def test_only_short_expert_wgrads_move() -> None:
    """Qwen3-235B at tp4 ep8, mbs1 s4096 (the Megatron-MoE-ModelZoo H100 row): 4,096 / 4 tokens x 8 top-k x 8 ranks /
    128 experts = 512 rows per local expert, so each expert's wgrad GEMM (4,096 x 1,536, k = 512) is memory-bound at
    8 B and the MoE layer's backward grows; a dense Llama 3 8B layer (k = 8,192 tokens) does not move."""
    moe = ModelShapes.of(load_model("qwen3-235b-a22b"))
    L = LayoutArrays.from_layouts([Layout(tp=4, dp=8, ep=8, gbs=64, seq=4096, mbs=1, fp32_grads=True)])
    core = get_stack("megatron-core")
    unfused = replace(core, wgrad_accumulation_fusion=False)
    fused, fresh = layer_time(moe, L, H100, True, core), layer_time(moe, L, H100, True, unfused)
    assert float(fused.weight_grad_s[0]) > 1.2 * float(fresh.weight_grad_s[0])

    dense = ModelShapes.of(load_model("llama3.1-8b"))
    D = LayoutArrays.from_layouts([Layout(dp=8, gbs=64, seq=8192, mbs=1, fp32_grads=True)])
    assert float(layer_time(dense, D, H100, False, core).weight_grad_s[0]) == pytest.approx(
        float(layer_time(dense, D, H100, False, unfused).weight_grad_s[0]), rel=1e-12)
    assert _bytes(D, core) == 8.0
