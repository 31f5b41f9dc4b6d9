"""What torch.autocast over fp32 parameters adds to a training step: the casts (ExecutionStack.mixed_precision
"autocast", as plain PyTorch AMP and validate's one-GPU runs train).

Autocast keeps the parameters and the residual stream in fp32 and casts each matmul operand to bf16 where it is used
(aten/src/ATen/autocast_mode.h cached_cast; linear and matmul are on autocast's lower-precision list):
- a non-leaf input (a norm output) is cast anew by every linear that reads it, and in backward each cast's gradient
  comes back bf16 -> fp32 (ToCopyBackward0) and the fp32 gradients of the readers are summed;
- a parameter (a leaf that requires grad) is cast once and cached until the outermost autocast region exits
  (torch.autocast.__exit__ clears the cache): once per step when the region spans the step's micro-batches; its
  bf16 gradient is cast to fp32 in every micro-batch's backward and accumulated into .grad (AccumulateGrad adds from
  the second micro-batch on; the first one's is taken as it is);
- each branch output (attention, MLP: bf16) joins the fp32 residual stream, so backward casts the fp32 residual
  gradient to bf16 for each branch.
Checked on our H200 step profile of validate's Llama 3.1 8B / 2 run (16 layers, 4 micro-batches of 4,096 tokens;
hardware_db/data/calibration/nvidia-h200-x1-2026-12-04-step-profile.json): the bf16 -> fp32 copy kernels number 780
per step = 16 x 4 x (5 input casts + 7 weights) + 4 x (head weight + head input + logits), the fp32 -> bf16 ones 1,081.
The memory side: models/training/memory.py (half_autocast, autocast_weight_copy_bytes).
"""

from __future__ import annotations

import numpy as np

from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import PREC_FP32, LayoutArrays

AUTOCAST_ATTN_INPUT_CASTS = 3
"""Linears reading the attention's norm output, each casting it: q, k and v as three projections (torchtitan's llama3
Attention wq / wk / wv; runtime/model.py)."""
CAST_BYTES = 4.0 + 2.0
"""An fp32 <-> bf16 cast: read one, write the other."""
ACCUMULATE_BYTES = 4.0 + 4.0 + 4.0
"""An fp32 gradient added to another (read both, write one)."""
UPCAST_RATE_SHARE = 0.50
"""bf16 -> fp32 casts over the achieved HBM rate: PyTorch runs them on its unvectorised direct_copy kernel. Measured
(bench/bench_copy_kernels.py, our H200, PyTorch 2.11, 2026-12-04; tests/reference/h200_copy_kernels.csv): 2.121 TB/s
against the same-size fp32 copy's 4.224 (0.502) on 2^26 elements, 2.125 / 4.18 (0.508) on a 14,336 x 4,096 weight;
fp32 -> bf16 casts and fp32 adds run at the copy's rate. Checked (not fitted): the step profile above, 22.6 ms of
direct_copy kernels for about 46.7 GB of upcasts, 2.07 TB/s."""


def half_autocast(L: LayoutArrays, autocast: bool) -> np.ndarray:
    """Per candidate: does the run compute in bf16 under torch.autocast over fp32 parameters (the stack's
    mixed_precision is autocast and the layout is not fp32)?"""
    return np.asarray(autocast & (L.precision != PREC_FP32))


def mlp_input_casts(shapes: ModelShapes, moe: bool) -> float:
    """Linears reading the MLP's norm output: gate and up (w1, w3) of a gated MLP, w1 alone otherwise; an MoE
    layer's router (its experts read the dispatched tokens, not priced here)."""
    if moe:
        return 1.0
    return 2.0 if shapes.gated else 1.0


def cast_times(elements: np.ndarray | float, hw: HardwareRates) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) seconds of casting `elements` fp32 values to bf16 and, in backward, their gradients back
    to fp32 (at UPCAST_RATE_SHARE of the HBM rate)."""
    forward = np.asarray(CAST_BYTES * elements / hw.hbm_bytes_per_s)
    return forward, forward / UPCAST_RATE_SHARE


def activation_cast_times(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates, moe: bool
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) seconds of one layer's activation casts per micro-batch on one rank: each reader's cast of
    a norm output (fp32 -> bf16), in backward its gradient's upcast (at UPCAST_RATE_SHARE of the HBM rate), the sum
    of the readers' fp32 gradients, and the two branch outputs' gradient downcasts."""
    n = L.seq * L.mbs / L.cp * shapes.hidden / L.sp_div
    readers = AUTOCAST_ATTN_INPUT_CASTS + mlp_input_casts(shapes, moe)
    # a norm output read by r linears: r - 1 additions, for each of the two norms (one norm read by every linear in
    # a parallel layer that shares it: ModelShapes.shared_norm)
    sums = readers - (1.0 if shapes.shared_norm else 2.0)
    forward, upcast = cast_times(readers * n, hw)
    return forward, upcast + (sums * ACCUMULATE_BYTES + 2.0 * CAST_BYTES) * n / hw.hbm_bytes_per_s


def weight_cast_times(params: np.ndarray | float, L: LayoutArrays, hw: HardwareRates
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) seconds per micro-batch of the casts of `params` matmul weights on one rank: the cached
    cast once per step (1/m of it per micro-batch), every micro-batch's gradient upcast and, from the second
    micro-batch on, its accumulation into .grad ((m - 1)/m per micro-batch)."""
    m = np.maximum(L.microbatches, 1.0)
    cast, upcast = cast_times(params, hw)
    return cast / m, upcast + accumulate_s(params, hw) * (m - 1.0) / m


def accumulate_s(params: np.ndarray | float, hw: HardwareRates) -> np.ndarray:
    """One accumulation of `params` fp32 gradients into .grad (AccumulateGrad's add)."""
    return np.asarray(ACCUMULATE_BYTES * params / hw.hbm_bytes_per_s)


def layer_matmul_params(shapes: ModelShapes, L: LayoutArrays, moe: bool) -> np.ndarray:
    """Matmul parameters of one layer on one rank (what autocast casts): attention and MLP (dense, or the local
    experts and the rest of an MoE layer)."""
    if moe:
        return (shapes.attn_params + shapes.moe_dense_part_params) / L.tp + \
            shapes.n_experts * shapes.expert_params / (L.ep * L.etp)
    return (shapes.attn_params + shapes.dense_mlp_params) / L.tp
