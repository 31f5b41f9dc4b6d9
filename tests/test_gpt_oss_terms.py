"""GPT-OSS terms as Megatron-Core runs them (NeMo 25.11 / Megatron-Bridge GPT-OSS recipes), each pinned by a worked
example derived by hand.

Sources: Megatron-Core megatron/core/fusions/fused_bias_geglu.py weighted_bias_quick_geglu_impl (the clamp_value
branch chunks the fc1 output, clamps both halves and concatenates them in eager PyTorch before the jit-fused GLU);
Megatron-Bridge src/megatron/bridge/models/gpt_oss/gpt_oss_provider.py (activation_func_clamp_value 7.0, quick_gelu,
glu_linear_offset 1.0, bias_activation_fusion True); transformers GptOssExperts (swiglu_limit 7.0).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import clamp_bytes, layer_time
from clusterplan.models.training.layout import Layout

T = 2 * 8192  # GB300 recipe: mbs 2 x seq 8192 tokens per micro-batch, tp 1, cp 1
CLAMP_FORWARD_BYTES = T * 4 * 2880 * 2 * 8
"""Per layer forward, by hand: 4 routed copies of each token, F = 2880 wide; x_glu.clamp and x_linear.clamp read and
write F each (4F), torch.cat reads and writes 2F (4F): 8F elements of 2 B = 3,019,898,880 B."""
CLAMP_BACKWARD_BYTES = T * 4 * 2880 * 2 * 10
"""Backward: two ClampBackward (read grad + saved input, write: 3F each) and the chunk's cat of the halves' grads
(read + write 2F): 10F elements."""


def _layout(**kw: object) -> LayoutArrays:
    base = dict(seq=8192, mbs=2, gbs=1280, dp=64, ep=64, recompute="none")
    return LayoutArrays.from_layouts([Layout(**(base | kw))])


BUSIEST = 1 + 2.3437335 * (64 / 63) ** 0.5 * (4 * (2 / 128) * (126 / 128) * (124 / 127) / (64 * T)) ** 0.5 / (8 / 128)
"""The clamp runs on the busiest expert-parallel rank's rows: forced balancing at ep 64 (2 local experts, 4 picks of
128, 64 x 16,384 tokens over the EP group), the busiest 2.3437 x sqrt(64/63) deviations up (tests/
test_moe_forced_balance.py): x 1.0090464."""


def test_preset_and_config_carry_the_swiglu_limit():
    assert load_model("gpt-oss-120b").activation_clamp == 7.0
    assert load_model("llama3.1-8b").activation_clamp == 0.0
    assert "activation_clamp" not in load_model("llama3.1-8b").to_dict()  # omitted at its default: JSON unchanged


def test_clamp_bytes_worked_example():
    shapes = ModelShapes.of(load_model("gpt-oss-120b"))
    fwd, ratio = clamp_bytes(shapes, _layout(), True, compiled=False)
    assert CLAMP_FORWARD_BYTES == 3_019_898_880 and BUSIEST == pytest.approx(1.0090464, rel=1e-6)
    assert float(fwd[0]) == pytest.approx(CLAMP_FORWARD_BYTES * BUSIEST, rel=1e-7)
    assert ratio * CLAMP_FORWARD_BYTES == CLAMP_BACKWARD_BYTES
    # torch.compile fuses the clamp into the activation kernel; a model without a clamp moves nothing.
    assert float(clamp_bytes(shapes, _layout(), True, compiled=True)[0][0]) == 0.0
    plain = ModelShapes.of(dataclasses.replace(load_model("gpt-oss-120b"), activation_clamp=0.0))
    assert float(clamp_bytes(plain, _layout(), True, compiled=False)[0][0]) == 0.0


@pytest.mark.parametrize("modules", ["", "moe_act+layernorm"])
def test_layer_time_adds_the_clamp_at_the_hbm_rate(modules):
    """The MoE layer's forward grows by the clamp's bytes at the achieved HBM rate, its backward by the backward
    bytes; moe_act recompute (GB200 / B200 / H100 recipes) reruns the clamp with the activation."""
    model = load_model("gpt-oss-120b")
    hw = HardwareRates.of(load_cluster("gb300-nvl72:16"))
    stack = get_stack("megatron-core")
    L = _layout(recompute="selective" if modules else "none", recompute_modules=modules)
    with_clamp = layer_time(ModelShapes.of(model), L, hw, True, stack)
    without = layer_time(ModelShapes.of(dataclasses.replace(model, activation_clamp=0.0)), L, hw, True, stack)
    rate = hw.hbm_bytes_per_s
    forward, backward = CLAMP_FORWARD_BYTES * BUSIEST / rate, CLAMP_BACKWARD_BYTES * BUSIEST / rate
    assert float(with_clamp.forward_s[0] - without.forward_s[0]) == pytest.approx(forward, rel=1e-6)
    assert float(with_clamp.backward_s[0] - without.backward_s[0]) == pytest.approx(backward, rel=1e-6)
    rerun = forward if modules else 0.0
    assert float(with_clamp.recompute_s[0] - without.recompute_s[0]) == pytest.approx(rerun, abs=1e-12)
    assert np.all(with_clamp.hardware_flops == without.hardware_flops)  # bytes, not FLOPs


def test_megatron_bridge_flop_count_worked_example():
    """Megatron-Bridge flop_utils.py for GPT-OSS-120B at seq 4096, tp 1, by hand: attention 12 L q (h + h g/n + s/2)
    = 12 x 36 x 4096 x (2880 + 360 + 2048); experts 12 h x F x top-4 x L with NO 3/2 (gated_linear_multiplier needs
    activation_func F.silu; GPT-OSS runs quick_gelu); logits 6 h V (201088 = 1571 x 128, no padding)."""
    from clusterplan.reference.bridge import bridge_flops_per_token

    attention = 12 * 36 * 4096 * (2880 + 360 + 2048)
    experts = 12 * 2880 * 2880 * 4 * 36
    logits = 6 * 2880 * 201088
    assert attention == 9_356_967_936 and experts == 14_332_723_200 and logits == 3_474_800_640
    assert bridge_flops_per_token(load_model("gpt-oss-120b"), 4096, 1) == attention + experts + logits
    # B200 row: 8213 tokens/s/GPU x 27.16 GFLOP/token = 223.1 TFLOP/s, the published 223.
    assert 8213 * (attention + experts + logits) / 1e12 == pytest.approx(223, rel=0.001)


def test_megatron_bridge_flop_count_reproduces_every_published_row():
    """Published TFLOP/s = published tokens/s x bridge_flops_per_token of the model the row ran (bridge.row_model)
    within 1 % on every row. The four GB200/GB300 DeepSeek-V3 rows ran without the MTP layer (bridge.MTP_LAYERS):
    with the preset's MTP layer their count is 4.1-4.4 % above the published one, while the B200 row needs it."""
    from clusterplan.reference.bridge import BRIDGE_CSV, bridge_flops_per_token, row_model
    from clusterplan.reference.report import read_rows

    without_mtp = 0
    for r in read_rows(BRIDGE_CSV):
        model, _ = row_model(r)
        implied = float(r["tokens_per_s_per_gpu"]) * bridge_flops_per_token(model, int(r["seq"]), int(r["tp"])) / 1e12
        assert implied == pytest.approx(float(r["model_tflops_per_gpu"]), rel=0.01), (r["system"], r["model"])
        if r["model"] == "DeepSeekV3":
            with_preset = bridge_flops_per_token(load_model("deepseek-v3"), int(r["seq"]), int(r["tp"]))
            preset_implied = float(r["tokens_per_s_per_gpu"]) * with_preset / 1e12
            matches_preset = preset_implied == pytest.approx(float(r["model_tflops_per_gpu"]), rel=0.01)
            assert matches_preset == (model.mtp_layers == 1), r["system"]
            without_mtp += model.mtp_layers == 0
    assert without_mtp == 4
