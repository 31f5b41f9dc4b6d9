"""MoE layer costs beside the expert GEMMs (models/training/moe_layer.py): router and token permute / sort /
unpermute traffic, and Transformer Engine's four-stream grouped GEMM. Worked examples derived by hand."""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import layer_time
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.moe_layer import (
    EXPERT_BIAS_BACKWARD_BYTES,
    EXPERT_BIAS_FORWARD_BYTES,
    GROUPED_GEMM_STREAMS,
    expert_bias_bytes,
    forced_balance_excess,
    fp8_padding_bytes,
    grouped_gemm_time_s,
    mtp_projection_s,
    permute_bytes,
    router_bytes,
    routing_times,
)

QWEN = ModelShapes.of(load_model("qwen3-30b-a3b"))  # hidden 2048, 128 experts, top-8, expert ffn 768


def _arrays(**kw) -> LayoutArrays:
    base = dict(dp=8, ep=8, mbs=1, seq=4096, gbs=512, precision="bf16", recompute="none")
    return LayoutArrays.from_layouts([Layout(**{**base, **kw})])


FORCED = 1.0 + float(forced_balance_excess(QWEN, _arrays())[0])
"""The busiest of the 8 ranks' received rows over the mean under forced balancing (1.0076445 at 4,096 tokens a rank,
derived by hand in tests/test_moe_forced_balance.py): what is done with the received rows carries it."""


def test_qwen3_shapes_the_examples_use():
    assert (QWEN.hidden, QWEN.n_experts, QWEN.top_k, QWEN.expert_ffn) == (2048, 128, 8, 768)


PERMUTE_FORWARD_BYTES = 2 * (16_777_216 + (1 + 2 * FORCED + 2 * FORCED + 1) * 67_108_864)


def test_permute_bytes_worked_example():
    # T = 4096 tokens, k = 8, h = 2048, 16 local experts at ep 8 (so both chunk sorts run), 2 B per element:
    # forward = 2 x (2 T h + (1 + 2 + 2 + 1) T k h) = 2 x (16,777,216 + 402,653,184) = 838,860,800 B balanced; the
    # two chunk sorts (2 + 2 T k h) regroup the busiest rank's received rows, FORCED x theirs;
    # backward adds the prob gradient's read of the experts' outputs, 2 x T k h = 134,217,728 B.
    fwd, bwd = permute_bytes(QWEN, _arrays())
    assert FORCED == pytest.approx(1.0076445, rel=1e-6)
    assert float(fwd[0]) == pytest.approx(PERMUTE_FORWARD_BYTES, rel=1e-12)
    assert float(bwd[0]) == pytest.approx(PERMUTE_FORWARD_BYTES + 134_217_728, rel=1e-12)


def test_permute_without_expert_parallelism_skips_the_chunk_sorts():
    # ep 1: no all-to-all, so no regrouping by source rank: 2 x (2 T h + 2 T k h) = 2 x (16,777,216 + 134,217,728).
    fwd, _ = permute_bytes(QWEN, _arrays(ep=1))
    assert float(fwd[0]) == 2 * (16_777_216 + 134_217_728)


def test_permute_tokens_are_split_over_tensor_parallel_ranks():
    # tp 2 (ETP 1): each rank dispatches half the micro-batch's tokens: exactly half the bytes (at one measured
    # imbalance: forced balancing's excess depends on ep and the tokens).
    full, _ = permute_bytes(QWEN, _arrays(moe_imbalance=1.25))
    half, _ = permute_bytes(QWEN, _arrays(tp=2, dp=4, ep=4, moe_imbalance=1.25))
    assert float(half[0]) == pytest.approx(float(full[0]) / 2, rel=1e-12)


def test_router_bytes_worked_example():
    # T E x (4 + 4 + 4 + 4 + 1) B = 4096 x 128 x 17 = 8,912,896 B.
    assert float(router_bytes(QWEN, _arrays())[0]) == 8_912_896


def test_routing_time_is_bytes_at_the_hbm_rate():
    hw = HardwareRates.of(load_cluster("dgx-b200:1"))
    f, b = routing_times(QWEN, _arrays(), hw)
    assert float(f[0]) == pytest.approx((PERMUTE_FORWARD_BYTES + 8_912_896) / hw.hbm_bytes_per_s, rel=1e-12)
    assert float(b[0]) == pytest.approx((PERMUTE_FORWARD_BYTES + 134_217_728 + 8_912_896) / hw.hbm_bytes_per_s,
                                        rel=1e-12)


class _CountingRates:
    """gemm_time_s = batch + 10 (a per-call cost of 10 and 1 per GEMM in the batch): exposes the turn structure."""

    gemm_shape = None  # no kernel fixed time (tests/test_expert_gemm_kernel_time.py prices it)

    def gemm_time_s(self, m, n, k, fp8=False, batch=1.0, output_bytes=2.0, m_sd=0.0):
        return np.asarray(batch, dtype=float) + 10.0


def test_grouped_gemm_runs_four_experts_at_a_time():
    assert GROUPED_GEMM_STREAMS == 4
    hw = _CountingRates()
    # 16 local experts: 4 turns of 4 -> 4 x (4 + 10) = 56; 6: one turn of 4 and one of 2 -> 14 + 12 = 26;
    # 3: one turn of 3 -> 13; 1: 11.
    got = grouped_gemm_time_s(hw, 1.0, 1.0, 1.0, False, np.array([16.0, 6.0, 3.0, 1.0]))
    assert list(got) == [56.0, 26.0, 13.0, 11.0]


def test_grouped_gemm_on_b200_is_four_turns_of_a_four_expert_batch():
    hw = HardwareRates.of(load_cluster("dgx-b200:1"))
    m, n, k = np.array([2048.0]), 1536.0, 2048.0
    four = hw.gemm_time_s(m, n, k, np.array([False]), 4)
    kernel_s = 5.8e-6  # B200's bf16 GEMM kernel fixed time (gemm.yaml bf16_kernel_us), once per turn
    assert float(grouped_gemm_time_s(hw, m, n, k, np.array([False]), 16.0)[0]) == pytest.approx(
        4 * (float(four[0]) + kernel_s))


def test_moe_layer_time_carries_the_routing_kernels(monkeypatch):
    # The MoE layer's forward grows by exactly the routing forward time, its backward by the routing backward.
    from clusterplan.models.training import compute

    hw = HardwareRates.of(load_cluster("dgx-b200:1"))
    L = _arrays()
    with_routing = layer_time(QWEN, L, hw, True)
    f, b = routing_times(QWEN, L, hw)
    monkeypatch.setattr(compute, "routing_times", lambda *a: (np.zeros(1), np.zeros(1)))
    without = layer_time(QWEN, L, hw, True)
    assert float(with_routing.forward_s[0] - without.forward_s[0]) == pytest.approx(float(f[0]), rel=1e-9)
    assert float(with_routing.backward_s[0] - without.backward_s[0]) == pytest.approx(float(b[0]), rel=1e-9)


def test_fp8_padding_bytes_worked_example():
    # H100 Qwen3-30B recipe shape: mbs 2 x s 4096 = 8192 tokens per rank, k = 8: 65,536 routed tokens, h = 2048.
    # Two copies (pad the input, unpad the output), each reading and writing 2 B per element:
    # 2 x 4 x 65,536 x 2048 = 1,073,741,824 B; the probs' pad, one 2 B element per routed token read and written:
    # 4 x 65,536 = 262,144 B; both on the busiest rank's received rows (forced balancing at 8,192 tokens a rank:
    # FORCED's excess / sqrt(2)).
    got = fp8_padding_bytes(QWEN, _arrays(mbs=2, precision="fp8"))
    assert float(got[0]) == pytest.approx((1_073_741_824 + 262_144) * (1 + (FORCED - 1) / np.sqrt(2)), rel=1e-12)


def test_fp8_padding_is_priced_for_megatron_core_fp8_moe_layers_only():
    # The experts' forward and backward each grow by the padding bytes at the HBM rate under fp8 on megatron-core;
    # bf16 layers, dense layers and a stack that does not pad (torchtitan) carry none.
    from dataclasses import replace

    from clusterplan.hardware_db import get_stack

    hw = HardwareRates.of(load_cluster("dgx-h100:1"))
    mcore = get_stack("megatron-core")
    off = replace(mcore, fp8_expert_padding=False)
    assert mcore.fp8_expert_padding and not get_stack("torchtitan").fp8_expert_padding
    fp8 = _arrays(mbs=2, precision="fp8")
    pad_s = float(fp8_padding_bytes(QWEN, _arrays(mbs=2, precision="fp8"))[0]) / hw.for_fp8_recipe(
        mcore.fp8_recipes[0]).hbm_bytes_per_s
    on_t, off_t = layer_time(QWEN, fp8, hw, True, mcore), layer_time(QWEN, fp8, hw, True, off)
    assert float(on_t.forward_s[0] - off_t.forward_s[0]) == pytest.approx(pad_s, rel=1e-9)
    assert float(on_t.backward_s[0] - off_t.backward_s[0]) == pytest.approx(pad_s, rel=1e-9)
    assert float(on_t.experts_forward_s[0] - off_t.experts_forward_s[0]) == pytest.approx(pad_s, rel=1e-9)
    bf16 = _arrays(mbs=2)
    assert float(layer_time(QWEN, bf16, hw, True, mcore).forward_s[0]) == float(
        layer_time(QWEN, bf16, hw, True, off).forward_s[0])
    assert float(layer_time(QWEN, fp8, hw, False, mcore).forward_s[0]) == float(
        layer_time(QWEN, fp8, hw, False, off).forward_s[0])


GPT_OSS = ModelShapes.of(load_model("gpt-oss-120b"))  # hidden 2880, 128 experts, top-4, biased experts


def test_expert_bias_bytes_worked_example():
    # Megatron-Core TEGroupedMLP._apply_bias on the GB200 GPT-OSS row's micro-batch: 8192 tokens x top-4 = 32,768
    # routed tokens x h 2880 = 94,371,840 elements. Forward: b * p written (2), t + bp read 2 + 2 and written 2,
    # torch.cat read 2 and written 2 = 12 B per element: 1,132,462,080 B. Backward: bias grad g * p written, read
    # back by the token sum (6), prob grad g * b the same (6), split's backward cat of the gradient (4) = 16 B:
    # 1,509,949,440 B; both at the busiest of the 64 ranks' rows (forced balancing: 2 local experts, 4 picks of
    # 128, 524,288 tokens over the EP group: sd / mean = sqrt(4 (2/128)(126/128)(124/127) / 524,288) / (4 x 2/128)
    # = 0.0054154, the busiest 2.3437 x sqrt(64/63) of them up: x 1.0127936).
    assert (GPT_OSS.hidden, GPT_OSS.top_k, GPT_OSS.expert_bias) == (2880, 4, True)
    assert (EXPERT_BIAS_FORWARD_BYTES, EXPERT_BIAS_BACKWARD_BYTES) == (12.0, 16.0)
    fwd, bwd = expert_bias_bytes(GPT_OSS, _arrays(dp=64, ep=64, seq=8192, gbs=1280))
    busiest = 1 + 2.3437335 * np.sqrt(64 / 63) * np.sqrt(4 * (2 / 128) * (126 / 128) * (124 / 127) / 524_288) / (8 / 128)
    assert busiest == pytest.approx(1.0127936, rel=1e-6)
    assert float(fwd[0]) == pytest.approx(1_132_462_080 * busiest, rel=1e-7)
    assert float(bwd[0]) == pytest.approx(1_509_949_440 * busiest, rel=1e-7)
    # Experts without biases (Qwen3) move none.
    assert not QWEN.expert_bias
    assert [float(x[0]) for x in expert_bias_bytes(QWEN, _arrays())] == [0.0, 0.0]


def test_expert_bias_is_priced_in_the_experts_phase_on_megatron_core_only():
    # The MoE layer's forward and its experts' forward grow by the forward bytes at the HBM rate, the backward by
    # the backward bytes; a stack without the eager bias ops (torchtitan) and a model without expert biases carry
    # none. moe_act recompute does not rerun it (outside the checkpoint); the moe module does.
    from dataclasses import replace

    from clusterplan.hardware_db import get_stack

    hw = HardwareRates.of(load_cluster("dgx-b200:1"))
    mcore = get_stack("megatron-core")
    off = replace(mcore, eager_expert_bias=False)
    assert mcore.eager_expert_bias and not get_stack("torchtitan").eager_expert_bias
    L = _arrays(dp=64, ep=64, seq=8192, gbs=1280)
    on_t, off_t = layer_time(GPT_OSS, L, hw, True, mcore), layer_time(GPT_OSS, L, hw, True, off)
    f_s, b_s = (float(x[0]) / hw.hbm_bytes_per_s for x in expert_bias_bytes(GPT_OSS, L))
    assert float(on_t.forward_s[0] - off_t.forward_s[0]) == pytest.approx(f_s, rel=1e-9)
    assert float(on_t.experts_forward_s[0] - off_t.experts_forward_s[0]) == pytest.approx(f_s, rel=1e-9)
    assert float(on_t.backward_s[0] - off_t.backward_s[0]) == pytest.approx(b_s, rel=1e-9)
    assert float(on_t.experts_backward_s[0] - off_t.experts_backward_s[0]) == pytest.approx(b_s, rel=1e-9)
    act = _arrays(dp=64, ep=64, seq=8192, gbs=1280, recompute="selective", recompute_modules="moe_act")
    assert float(layer_time(GPT_OSS, act, hw, True, mcore).recompute_s[0]) == pytest.approx(
        float(layer_time(GPT_OSS, act, hw, True, off).recompute_s[0]), rel=1e-12)
    moe = _arrays(dp=64, ep=64, seq=8192, gbs=1280, recompute="selective", recompute_modules="moe")
    assert float(layer_time(GPT_OSS, moe, hw, True, mcore).recompute_s[0]
                 - layer_time(GPT_OSS, moe, hw, True, off).recompute_s[0]) == pytest.approx(f_s, rel=1e-9)
    assert float(layer_time(QWEN, _arrays(), hw, True, mcore).forward_s[0]) == float(
        layer_time(QWEN, _arrays(), hw, True, off).forward_s[0])


def test_mtp_projection_is_three_gemms_of_the_2h_by_h_matrix():
    # DeepSeek-V3 MTP projection M [h, 2h]: forward tokens x h/tp x 2h, backward dX (tokens x 2h x h/tp) and
    # dW (2h x h/tp over tokens), in bf16.
    hw = HardwareRates.of(load_cluster("dgx-b200:1"))
    dsv3 = ModelShapes.of(load_model("deepseek-v3"))
    assert (dsv3.hidden, dsv3.mtp_layers) == (7168, 1)
    L = _arrays(tp=2, dp=4, ep=4)
    t, h = np.array([4096.0]), 7168.0
    no = np.array([False])
    want = (hw.gemm_time_s(t, h / 2, 2 * h, no) + hw.gemm_time_s(t, 2 * h, h / 2, no)
            + hw.gemm_time_s(np.array([2 * h]), h / 2, t, no))
    assert float(mtp_projection_s(dsv3, L, hw)[0]) == pytest.approx(float(want[0]), rel=1e-12)


def test_mtp_module_is_one_more_layer_head_and_projection_on_the_last_stage():
    # One stage (pp 1): the MTP module adds, per micro-batch, one average layer's compute, one LM head pass and the
    # projection; its all-to-alls, TP traffic and host time ride with the layer: (compute + tp + ep + host)(mtp=1)
    # - (mtp=0) = m x that
    # (the data-parallel exposure follows its own rules).
    from dataclasses import replace

    from clusterplan.hardware_db.stacks import get_stack
    from clusterplan.models.training.step import layer_cost, step_time

    hw = HardwareRates.of(load_cluster("dgx-b200:1"))
    stack = get_stack()
    with_mtp = replace(QWEN, mtp_layers=1)
    L = _arrays()
    cost = layer_cost(QWEN, L, hw, stack)
    extra = float(L.microbatches[0]) * float((cost.total_s + cost.head_s + cost.head_tp_s
                                              + mtp_projection_s(QWEN, L, hw))[0])
    base, more = (step_time(s, L, hw, stack) for s in (QWEN, with_mtp))
    def busy(t):
        return float((t.compute_s + t.tp_comm_s + t.ep_comm_s + t.host_s)[0])  # host: the layer's MoE host time

    assert busy(more) - busy(base) == pytest.approx(extra, rel=1e-9)
