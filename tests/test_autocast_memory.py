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
