"""torchtitan's step beyond the layers, as its train loop at 9dec370 runs it (hardware_db stacks.yaml torchtitan
`step` source): foreach AdamW and foreach gradient clipping, the eager fp32 cross-entropy, FSDP2's copy-out kernels
and root module. Each term is pinned by a worked example counted by hand; Megatron-Core keeps its pricing."""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.layout import Layout

L8B_PARAMS = 8_030_261_248
"""Llama-3.1-8B: 32 blocks of 218,112,000 (attention 4096 x (4096 + 1024 + 1024 + 4096) = 41,943,040, MLP
3 x 4096 x 14336 = 176,160,768, two norms 8,192) + embedding and head 2 x 128256 x 4096 + final norm 4,096."""
BLOCK_PARAMS = 218_112_000
ROOT_PARAMS = 2 * 128_256 * 4_096 + 4_096


@pytest.fixture(scope="module")
def shapes() -> ModelShapes:
    s = ModelShapes.of(load_model("llama3.1-8b"))
    assert s.n_layers * BLOCK_PARAMS + ROOT_PARAMS == L8B_PARAMS
    return s


@pytest.fixture(scope="module")
def hw() -> HardwareRates:
    return HardwareRates.of(load_cluster("dgx-h100:1"))


def fsdp8(mbs: int = 1) -> LayoutArrays:
    return LayoutArrays.from_layouts([Layout(dp=8, zero=3, mbs=mbs, gbs=8 * mbs, seq=8192, recompute="selective")])


def test_torchtitan_stacks_run_the_train_loop_terms():
    for name in ("torchtitan", "torchtitan-compile"):
        s = get_stack(name)
        assert (s.optimizer_impl, s.grad_clip, s.loss_impl, s.fsdp_impl) == ("foreach", "foreach", "eager_fp32",
                                                                             "fsdp2")
        assert "step" in s.sources
    m = get_stack("megatron-core")
    assert (m.optimizer_impl, m.grad_clip, m.loss_impl, m.fsdp_impl) == ("fused", "none", "fused", "flat")


def test_eager_fp32_loss_worked_example(shapes, hw):
    """One 8192-token sequence: 8192 x 128256 = 1,050,673,152 logits. Forward: cast 2 + 4, log_softmax 3 reads + 1
    write of fp32 = 22 B; backward: nll zero-fill 4, softmax backward 3 reads + 1 write 16, cast back 4 + 2 = 26 B.
    A fused loss streams 12 B each way, so the eager fp32 loss adds (10 + 14) B x 1,050,673,152 = 25,216,155,648 B."""
    from clusterplan.models.training.compute import (
        EAGER_FP32_LOSS_BACKWARD_BYTES,
        EAGER_FP32_LOSS_FORWARD_BYTES,
        head_time,
    )

    assert (EAGER_FP32_LOSS_FORWARD_BYTES, EAGER_FP32_LOSS_BACKWARD_BYTES) == (22.0, 26.0)
    L = fsdp8()
    ef, eb = head_time(shapes, L, hw, get_stack("torchtitan"))
    ff, fb = head_time(shapes, L, hw, get_stack("megatron-core"))
    logits = 8192 * 128_256
    assert logits == 1_050_673_152
    assert float(ef[0] - ff[0]) == pytest.approx(10 * logits / hw.hbm_bytes_per_s, rel=1e-12)
    assert float(eb[0] - fb[0]) == pytest.approx(14 * logits / hw.hbm_bytes_per_s, rel=1e-12)
    assert float(ef[0] + eb[0] - ff[0] - fb[0]) * hw.hbm_bytes_per_s == pytest.approx(25_216_155_648, rel=1e-12)
    # No stack given: the fused pricing (what every caller had before).
    nf, nb = head_time(shapes, L, hw)
    assert float(nf[0]) == float(ff[0]) and float(nb[0]) == float(fb[0])


def test_foreach_adamw_and_clip_worked_example(shapes, hw):
    """_multi_tensor_adamw's eight passes 8 + 12 + 8 + 16 + 8 + 8 + 8 + 16 = 84 B and foreach clipping 4 + 8 = 12 B per
    fp32 parameter: 96 B against fused Adam's 32. FSDP over 8 ranks: each updates 8,030,261,248 / 8 parameters."""
    from clusterplan.models.training.memory import stage_layers
    from clusterplan.models.training.step import (
        FOREACH_ADAMW_BYTES_PER_PARAM,
        FOREACH_CLIP_BYTES_PER_PARAM,
        _optimizer_s,
    )

    assert FOREACH_ADAMW_BYTES_PER_PARAM == 84.0 and FOREACH_CLIP_BYTES_PER_PARAM == 12.0
    L = fsdp8()
    titan = float(_optimizer_s(shapes, L, hw, stage_layers(shapes, L), get_stack("torchtitan"))[0])
    mcore = float(_optimizer_s(shapes, L, hw, stage_layers(shapes, L), get_stack("megatron-core"))[0])
    assert titan * hw.hbm_bytes_per_s == pytest.approx(L8B_PARAMS / 8 * 96, rel=1e-12)
    assert mcore * hw.hbm_bytes_per_s == pytest.approx(L8B_PARAMS / 8 * 32, rel=1e-12)


def test_foreach_adamw_over_plain_adam_fp32_parameters():
    """Plain Adam (no separate master copy: the fp32 parameters are it, as validate runs them) pays the same eight
    foreach passes, 84 B, not fused plain Adam's 24; the unclipped validate stack adds no clip bytes. Checked on our own
    H200 profile: 35.1 ms of AdamW kernels for GPT 1.7B's 1.65 B parameters, 34.0 ms modelled
    (reference/step_profile.py)."""
    from clusterplan.models.training.batch import LayoutArrays
    from clusterplan.models.training.layout import Layout
    from clusterplan.models.training.step import optimizer_bytes_per_param
    from clusterplan.validate.predict import runtime_stack

    plain = LayoutArrays.from_layouts([Layout(mbs=1, gbs=1, seq=2048, optimizer="adam", precision="fp32")])
    assert float(optimizer_bytes_per_param(plain, get_stack("torchtitan"))[0]) == 84.0 + 12.0
    assert float(optimizer_bytes_per_param(plain, runtime_stack())[0]) == 84.0
    assert float(optimizer_bytes_per_param(plain, get_stack("megatron-core"))[0]) == 24.0


def test_fsdp2_copy_out_and_root_worked_example(shapes, hw):
    """FSDP2 at dp 8 in one node, one micro-batch, 32 blocks: 2 x 32 - 1 = 63 block gathers, each copied out
    (read + write 2 B x 218,112,000), and the root's 1,050,677,248 parameters copied out once:
    63 x 872,448,000 + 4 x 1,050,677,248 = 59,166,932,992 B at the HBM rate. The root all-gathers 2 B and
    reduce-scatters 4 B (fp32 gradients) per parameter over the 8 ranks: ring (7/8) S / busbw + 7 alpha each."""
    from clusterplan.models.training.step import Group, fsdp2_extra_s
    from clusterplan.models.training.topology import Axis

    L = fsdp8()
    shard = Group.of(L, Axis.DP_SHARD)
    got = float(fsdp2_extra_s(shapes, L, hw, shard, np.array([32.0]))[0])
    copy_out = (63 * 2 * 2 * BLOCK_PARAMS + 2 * 2 * ROOT_PARAMS) / hw.hbm_bytes_per_s
    assert 63 * 2 * 2 * BLOCK_PARAMS + 2 * 2 * ROOT_PARAMS == 59_166_932_992
    ag = 7 / 8 * 2 * ROOT_PARAMS / hw.bw_in + 7 * hw.lat_in
    rs = 7 / 8 * 4 * ROOT_PARAMS / hw.bw_in + 7 * hw.lat_in
    assert got == pytest.approx(copy_out + ag + rs, rel=1e-9)


def test_fsdp2_terms_reach_the_step(shapes, hw):
    """The torchtitan stack's exposed FSDP time carries the block edges, the root and the copy-outs; Megatron-Core's
    flat ZeRO-3 does not (its dp_comm_s is smaller), and the optimizer term differs by 96 / 32."""
    from clusterplan.models.training.step import step_time

    L = fsdp8(mbs=2)
    titan = step_time(shapes, L, hw, get_stack("torchtitan"))
    mcore = step_time(shapes, L, hw, get_stack("megatron-core"))
    assert float(titan.dp_comm_s[0]) > float(mcore.dp_comm_s[0]) > 0.0
    assert float(titan.optimizer_s[0]) == pytest.approx(3.0 * float(mcore.optimizer_s[0]), rel=1e-12)


def test_sdpa_fa2_forward_ratio_worked_example(hw):
    """PyTorch SDPA's FA2 backend (pytorch/pytorch#142132, H100, seq 4608, head dim 128, no causal mask): 329.483
    TFLOP/s beside FA3's 631.827 -> 0.521476. The FA3 paper's curves at 4608 (log-interpolated, w = ln(4608 / 4096) /
    ln 2 = 0.169925): FA2 368 + 2 w = 368.3399, FA3 638 + 8 w = 639.3594 -> 0.576107. Ratio 0.521476 / 0.576107 =
    0.90517: on a GPU without its own measured SDPA rows, SDPA's forward runs at the fa2 curve x 0.90517; its
    backward keeps the fa2 curve (the ratio cancels in the causal forward x non-causal backward / forward rule); the
    upstream fa2 kernel is unchanged. The GH100 GPUs have our own sdpa_fa2 rows (tests/test_attention_kernels.py),
    which replace this rule there: the rows' curves are dropped here to show it."""
    import dataclasses

    from clusterplan.hardware_db import get_sdpa_fa2_measurement

    w = np.log(4608 / 4096) / np.log(2)
    expected = (329.483 / 631.827) / ((368 + 2 * w) / (638 + 8 * w))
    att = dataclasses.replace(hw.attention,
                              curves=tuple(c for c in hw.attention.curves if c.kernel != "sdpa_fa2"))
    assert att.sdpa_fa2_forward_ratio() == pytest.approx(expected, rel=1e-12)
    assert att.sdpa_fa2_forward_ratio() == pytest.approx(0.90517, abs=5e-6)
    seq = np.array([8192.0])
    assert float(att.forward_flops_per_s("sdpa", seq, 128)[0]) == pytest.approx(
        expected * float(att.forward_flops_per_s("fa2", seq, 128)[0]), rel=1e-12)
    assert float(att.backward_flops_per_s("sdpa", seq, 128)[0]) == pytest.approx(
        float(att.backward_flops_per_s("fa2", seq, 128)[0]), rel=1e-12)
    # The H100 curves' `also` GPUs carry the measurement; Blackwell (SDPA on cuDNN, own FA2 rows) does not.
    assert get_sdpa_fa2_measurement("H200-SXM-141GB") is not None
    assert get_sdpa_fa2_measurement("H100-SXM5-96GB") is not None
    assert get_sdpa_fa2_measurement("B200") is None and get_sdpa_fa2_measurement("GB200") is None
