"""Mixed precision by torch.autocast over fp32 parameters, as validate's one-GPU runs train (validate/run.py
Trainer.step): what autograd saves, counted by torch itself on CPU, against the memory model's autocast terms.

Worked example (Llama 3.1 8B scaled down 8x: hidden 512, 8 KV heads, FFN 1,792; one sequence of 512 tokens, bf16
autocast, no recompute). Per layer, measured as the saved bytes of a 4-layer model less a 2-layer one, over 2:
- the two norms' inputs, fp32 (the residual stream is not cast): 2 x 4 B x 512 x 512      = 2,097,152
- q, k and v each save their own bf16 cast of the fp32 norm output: 3 x 2 B x 512 x 512  = 1,572,864
- w1 and w3 likewise: 2 x 2 B x 512 x 512                                                  = 1,048,576
- q, k, v, the attention output, its fp32 log-sum-exp, wo's input (the attention output)   as bf16 training
- w1, w3 outputs, silu's output, w2's input (4 x 2 B x 512 x 1,792)                        as bf16 training
- the layer's bf16 weight copies, cached by autocast: 2 B x 3,407,872 matmul parameters    = 6,815,744
The model: 20,250,624 B (bf16 training without autocast: 10,813,440; autocast adds 1,048,576 + 1,048,576 + 524,288 of
casts and fp32 norm inputs, and the 6,815,744 of weight copies). torch saves 20,254,720: 4,096 B more, the two norms'
per-token fp32 1/rms (2 x 4 B x 512), which the model does not count in any precision.
"""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.hardware_db.stacks import MIXED_PRECISION_AUTOCAST
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.memory import autocast_weight_copy_bytes, per_layer_activation_bytes
from clusterplan.validate.predict import runtime_stack
from clusterplan.validate.scale import scale_model

SEQ = 512
LAYOUT = Layout(tp=1, pp=1, dp=1, mbs=1, gbs=1, seq=SEQ, precision="bf16", recompute="none")
SPEC = scale_model(load_model("llama3.1-8b"), LAYOUT, 8)


def _predicted_per_layer(autocast: bool) -> float:
    stack = runtime_stack()
    arrays = LayoutArrays.from_layouts([LAYOUT])
    shapes = ModelShapes.of(SPEC)
    kept, _ = per_layer_activation_bytes(shapes, arrays, stack.selective_recompute, stack.sp_saves_gathered_inputs,
                                         "swiglu" in stack.fused_kernels, stack.compiled, autocast=autocast)
    copies = autocast_weight_copy_bytes(shapes, arrays, np.ones(1), False, autocast)
    return float(kept[0] + copies[0])


def test_validate_runs_one_gpu_plans_under_autocast_and_fsdp_plans_in_the_parameters_copy():
    assert runtime_stack().mixed_precision == MIXED_PRECISION_AUTOCAST
    assert runtime_stack(fsdp=True).mixed_precision != MIXED_PRECISION_AUTOCAST


def test_autocast_per_layer_bytes_by_hand():
    assert _predicted_per_layer(autocast=True) == 20_250_624
    assert _predicted_per_layer(autocast=False) == 10_813_440


def test_autocast_changes_nothing_in_fp32():
    fp32 = LayoutArrays.from_layouts([LAYOUT.with_(precision="fp32")])
    shapes = ModelShapes.of(SPEC)
    assert float(autocast_weight_copy_bytes(shapes, fp32, np.ones(1), True, True)[0]) == 0.0
    with_flag = per_layer_activation_bytes(shapes, fp32, autocast=True)[0]
    assert float(with_flag[0]) == float(per_layer_activation_bytes(shapes, fp32)[0][0])


def test_autocast_per_layer_bytes_match_what_torch_saves():
    torch = pytest.importorskip("torch")
    from clusterplan.runtime.model import Decoder, materialize
    from clusterplan.validate.measure import ActivationTracker

    saved = {}
    for n_layers in (2, 4):
        spec = SPEC.scaled(n_layers=n_layers)
        model = Decoder(spec, SEQ)
        materialize(model, torch.device("cpu"), spec, SEQ, 0)
        tracker = ActivationTracker()
        with torch.autocast("cpu", dtype=torch.bfloat16), tracker.active():
            model(torch.randint(0, spec.vocab, (1, SEQ)))
        saved[n_layers] = tracker.peak_bytes
    measured = (saved[4] - saved[2]) / 2
    norms_rstd = 2 * 4 * SEQ  # each RMSNorm's saved fp32 1/rms per token, not in the model
    assert measured - _predicted_per_layer(autocast=True) == norms_rstd


# Time: what the casts cost (models/training/autocast.py), on a machine whose HBM moves 4e12 B/s.
def _hw_4tb():
    from dataclasses import replace

    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.hardware.rates import HardwareRates

    return replace(HardwareRates.of(load_cluster("hgx-h200:1")), hbm_bytes_per_s=4e12)


def test_activation_cast_times_by_hand():
    from clusterplan.models.training.autocast import activation_cast_times

    # Llama-8B / 8 (hidden 512, gated) at 512 tokens: N = 262,144 elements per norm output.
    # forward: 5 readers x 6 B x N = 7,864,320 B; backward: their upcasts 7,864,320 B at half the rate, 3 sums of
    # 12 B x N (q+k+v: 2, w1+w3: 1) = 9,437,184 B and the 2 branch downcasts 3,145,728 B.
    n = 512 * 512
    fwd, bwd = activation_cast_times(ModelShapes.of(SPEC), LayoutArrays.from_layouts([LAYOUT]), _hw_4tb(), False)
    assert float(fwd[0]) == pytest.approx(5 * 6 * n / 4e12)
    assert float(bwd[0]) == pytest.approx(5 * 6 * n / 2e12 + (3 * 12 + 2 * 6) * n / 4e12)


def test_weight_cast_times_by_hand():
    from clusterplan.models.training.autocast import weight_cast_times

    # 4 micro-batches, 1e9 matmul parameters: the cast once per step (6e9 B / 4 per micro-batch), every micro-batch
    # the gradient's upcast (6e9 B at half the rate) and three of four accumulate (12e9 B x 3/4).
    four = LayoutArrays.from_layouts([LAYOUT.with_(gbs=4)])
    fwd, bwd = weight_cast_times(1e9, four, _hw_4tb())
    assert float(fwd[0]) == pytest.approx(6e9 / 4 / 4e12)
    assert float(bwd[0]) == pytest.approx(6e9 / 2e12 + 12e9 * 0.75 / 4e12)


def test_casts_only_under_autocast():
    from dataclasses import replace

    from clusterplan.models.training.compute import layer_time

    hw, shapes = _hw_4tb(), ModelShapes.of(SPEC)
    stack = runtime_stack()
    params = replace(stack, mixed_precision="params")
    bf16 = LayoutArrays.from_layouts([LAYOUT])
    fp32 = LayoutArrays.from_layouts([LAYOUT.with_(precision="fp32")])
    assert float(layer_time(shapes, bf16, hw, False, stack).backward_s[0]) > float(
        layer_time(shapes, bf16, hw, False, params).backward_s[0])
    assert float(layer_time(shapes, fp32, hw, False, stack).backward_s[0]) == float(
        layer_time(shapes, fp32, hw, False, params).backward_s[0])


def test_upcast_rate_against_our_profiled_step():
    """Held out: the bf16 -> fp32 copy kernels of validate's Llama 3.1 8B / 2 step on our H200 (step profile:
    780 calls, 22.572 ms per step; 16 layers of hidden 2048, 4 micro-batches of 4,096 tokens, vocabulary 64,128).
    Upcast per step: 5 input casts per layer and micro-batch, the 54.5 M matmul weights of each layer and the head's
    131.3 M every micro-batch, the head's input, and the logits' .float() for the loss (priced in the loss's bytes):
    at UPCAST_RATE_SHARE x the H200's achieved HBM rate, within 10 % of the kernels' time."""
    import json
    from pathlib import Path

    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.autocast import CAST_BYTES, UPCAST_RATE_SHARE

    root = Path(__file__).resolve().parent.parent
    profile = json.loads((root / "hardware_db" / "data" / "calibration" /
                          "nvidia-h200-x1-2026-12-04-step-profile.json").read_text())
    (run,) = [r for r in profile["results"] if r["plan"] == "llama8b_tp1_seq4096.yaml"]
    (upcasts,) = [k for k in run["top_kernels"] if k["category"] == "copy" and "direct_copy" in k["name"]
                  and "unrolled" in k["name"]]
    assert upcasts["calls_per_step"] == 16 * 4 * (5 + 7) + 4 * 3
    tokens, h, m = 4096, 2048, 4
    layer_params = 2048 * 2048 * 2 + 2048 * 512 * 2 + 3 * 2048 * 7168
    elements = (16 * m * 5 * tokens * h + m * (16 * layer_params + 64128 * h) + m * tokens * h
                + m * tokens * 64128)
    hbm = HardwareRates.of(load_cluster("hgx-h200:1")).hbm_bytes_per_s
    modelled_ms = CAST_BYTES * elements / (UPCAST_RATE_SHARE * hbm) * 1e3
    assert modelled_ms == pytest.approx(upcasts["ms_per_step"], rel=0.10)
