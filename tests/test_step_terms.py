"""Worked examples, derived by hand, that pin each step-time term of models/training/step.py (issue #12: changing a
term must fail a test). Hardware below is synthetic so the arithmetic stays readable: inside one scale-up domain,
bus bandwidth 100 GB/s and 10 us per ring step (send/recv latency 10 us as well)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from clusterplan.hardware_db.stacks import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import CODES, ENUMS, LayoutArrays
from clusterplan.models.training.compute import LayerTime
from clusterplan.models.training.layout import CHOICES, Layout
from clusterplan.models.training.step import (
    EP_ALL_TO_ALLS_PER_LAYER,
    Group,
    _layer_comm,
    bubble_s,
    dp_overlap_exposed_s,
    ring_cp_s,
    ulysses_cp_s,
)
from clusterplan.models.training.topology import Axis

US = 1e-6
HW = HardwareRates(gpu_name="synthetic", memory_bytes=80e9, peak_flops=1e15, gemm_max_flops=5e14,
                   gemm_half_flops=0.0, gemm_max_flops_fp8=1e15, hbm_bytes_per_s=3e12, domain=8,
                   bw_in=100e9, lat_in=10 * US, bw_out=50e9, lat_out=20 * US, attn_bwd_over_fwd=2.5)


def arrays(**kw) -> LayoutArrays:
    return LayoutArrays.from_layouts([Layout(**kw)])


def test_layout_codes_are_the_enums():
    for field, enum in ENUMS.items():
        assert [m.value for m in enum] == [CODES[field][c] for c in CHOICES[field]]
        assert len(enum) == len(CHOICES[field])


def test_ring_cp_exposed_time_worked_example():
    """cp = 4 ranks in one NVLink domain; this rank's K,V block is 50 MB; its attention core forward takes 1.2 ms.

    Causal load balancing gives every ring step 1/cp of the core: 0.3 ms forward, 2.5 x 0.3 = 0.75 ms backward.
    Forward, 3 steps, each sending 50 MB: 10 us + 50e6 / 100e9 = 10 us + 0.5 ms, of which 0.3 ms hides under the
    block's attention: exposed 10 us + 0.2 ms = 0.21 ms per step, 0.63 ms for 3.
    Backward, 3 steps, each sending K,V onward and dK,dV back (100 MB): 10 us + 1.0 ms, 0.75 ms hidden:
    0.26 ms per step, 0.78 ms for 3. Total 1.41 ms; full recompute reruns the forward ring: 2.04 ms.
    """
    one = np.array([1.0])
    args = (np.array([50e6]), 4 * one, one, np.array([1.2e-3]))
    assert float(ring_cp_s(*args, 0 * one, HW)[0]) == pytest.approx(1.41e-3, rel=1e-9)
    assert float(ring_cp_s(*args, one, HW)[0]) == pytest.approx(2.04e-3, rel=1e-9)
    # A long block hides every transfer, but not the 10 us each of the 6 steps waits for its data: never zero.
    long_core = (np.array([50e6]), 4 * one, one, np.array([1.0]))
    assert float(ring_cp_s(*long_core, 0 * one, HW)[0]) == pytest.approx(6 * 10 * US, rel=1e-9)


def test_ring_cp_is_priced_in_a_real_layout_and_never_free():
    """llama3.1-70b at 8K on cp 2: the ring's per-step latency and any transfer beyond the block stay exposed."""
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.training.estimate import estimate

    est = estimate(load_model("llama3.1-70b"), load_cluster("dgx-h100:8"),
                   Layout(tp=4, cp=2, dp=8, sp=True, zero=3, gbs=512, seq=8192, recompute="none"))
    assert est.to_json()["time"]["cp_comm_s"] > 0


def test_ulysses_four_all_to_alls_each_way_worked_example():
    """Ulysses over cp = 4 (inside the domain, tp = 1), 1,000 tokens per rank, bf16, q 4096 wide, k and v 512 each
    (kv_dim 1024), output 4096. Forward: 4 all-to-alls of 8.192, 1.024, 1.024, 8.192 MB; each costs
    (4-1) x 10 us + 3/4 x S / 100 GB/s, so together 12 x 10 us + 0.75 x 18.432e6 / 1e11 = 120 + 138.24 us.
    Backward mirrors them: 2 x 258.24 = 516.48 us. (The old `2 x one all-to-all of all bytes x 4/3` gave 448.6 us.)
    """
    shapes = replace(ModelShapes.of(load_model("llama3.1-8b")), q_dim=4096, kv_dim=1024, v_dim=4096)
    L = arrays(cp=4, cp_kind="a2a", seq=4000, mbs=1, gbs=1, recompute="none")
    got = ulysses_cp_s(shapes, L, L.seq / L.cp, Group.of(L, Axis.CP), HW)
    assert float(got[0]) == pytest.approx(516.48 * US, rel=1e-9)
    L_full = arrays(cp=4, cp_kind="a2a", seq=4000, mbs=1, gbs=1, recompute="full")
    assert float(ulysses_cp_s(shapes, L_full, L.seq / L.cp, Group.of(L, Axis.CP), HW)[0]) == pytest.approx(
        3 * 258.24 * US, rel=1e-9)


def test_ep_four_all_to_alls_per_layer_worked_example():
    """A MoE layer on ep = 4 (tp = 1): 2,048 tokens, top-2, hidden 4096, bf16: each all-to-all moves
    2 x 2048 x 2 x 4096 = 33.554432 MB: 3 x 10 us + 0.75 x 33.554432e6 / 1e11 = 30 + 251.65824 us. Dispatch and
    combine forward and backward: 4 of them, 1,126.63296 us (full recompute adds the forward 2)."""
    assert EP_ALL_TO_ALLS_PER_LAYER == 4
    shapes = replace(ModelShapes.of(load_model("llama3.1-8b")), hidden=4096, top_k=2)
    L = arrays(ep=4, dp=4, seq=2048, mbs=1, gbs=4, recompute="none")
    z = np.zeros(1)
    lt = LayerTime(forward_s=z, backward_s=z, recompute_s=z, core_forward_s=z, core_backward_s=z, linear_s=z,
                       weight_grad_s=z,
                   hardware_flops=z)
    _, _, ep = _layer_comm(shapes, L, HW, get_stack(), True, lt)
    assert float(ep[0]) == pytest.approx(4 * 281.65824 * US, rel=1e-9)


@pytest.mark.parametrize(("schedule", "vpp", "expected_s"), [
    ("1f1b", 1, 9.0), ("gpipe", 1, 9.0), ("interleaved-1f1b", 2, 4.5), ("zb", 1, 3.0), ("zbv", 2, 0.0)])
def test_bubble_worked_example(schedule, vpp, expected_s):
    """pp = 4, a stage's micro-batch takes F = B = W = 1 s (stage 3 s, W its weight-gradient GEMMs).
    1F1B / GPipe: (pp-1)(F+B+W) = 9 s. Interleaved over 2 chunks: 9 / 2 = 4.5 s. ZB-H1: (pp-1)(F+B-W) = 3 s, a
    third of 1F1B (Qi et al. 2023 section 2.1; the old factor 2/3 gave 6 s). ZB-V: zero when F = B = W."""
    L = arrays(pp=4, vpp=vpp, schedule=schedule, gbs=8, mbs=1)
    got = bubble_s(np.array([3.0]), np.array([1.0]), L.microbatches, L, 1.0)
    assert float(got[0]) == pytest.approx(expected_s, abs=1e-12)


def test_zero_bubble_uses_the_weight_gradient_share():
    """F = 1, B = 1.5, W = 0.5 (stage 3 s): ZB-H1 (pp-1)(F+B-W) = 3 x 2 = 6 s, ZB-V (pp-1)(F+B-2W)/2 = 3 x 1.5/2."""
    L = arrays(pp=4, schedule="zb", gbs=8, mbs=1)
    assert float(bubble_s(np.array([3.0]), np.array([0.5]), L.microbatches, L, 1.0)[0]) == pytest.approx(6.0)
    L = arrays(pp=4, vpp=2, schedule="zbv", gbs=8, mbs=1)
    assert float(bubble_s(np.array([3.0]), np.array([0.5]), L.microbatches, L, 1.0)[0]) == pytest.approx(2.25)


def test_dp_overlap_share_worked_example():
    """1 s of gradient reduce under 1 s of backward. Megatron-LM 2021 (share 0.8, no chunk floor): 0.8 s hides,
    0.2 s exposed. Megatron-Core (share 1, the last of 10 layer chunks always exposed): max(0, 1/10) = 0.1 s.
    DeepSpeed with 4 buckets: 0.25 s. No overlap at all (overlap 0): the whole second."""
    one = np.array([1.0])
    assert float(dp_overlap_exposed_s(one, one, get_stack("megatron-lm-2021"), 1.0, 10 * one)[0]) == \
        pytest.approx(0.2)
    assert float(dp_overlap_exposed_s(one, one, get_stack("megatron-core"), 1.0, 10 * one)[0]) == pytest.approx(0.1)
    assert float(dp_overlap_exposed_s(one, one, get_stack("deepspeed"), 1.0, 4 * one)[0]) == pytest.approx(0.25)
    assert float(dp_overlap_exposed_s(one, one, get_stack("megatron-core"), 0.0, 10 * one)[0]) == pytest.approx(1.0)


def test_tp_overlap_hides_its_share_only_with_sequence_parallel():
    """Megatron-Core hides 15/16 of TP traffic under the weight GEMMs (TE userbuffers need SP); the 2021 stack none.
    tp = 8, 1,000 tokens, hidden 4096, bf16: one all-reduce of 8.192 MB costs 2 x 7 x 10 us + 2 x 7/8 x 8.192e6 /
    1e11 = 140 + 143.36 us; 4 of them per layer = 1,133.44 us. Under 10 ms of GEMMs, megatron-core leaves 1/16:
    70.84 us; without SP all of it."""
    from clusterplan.models.training.step import tp_comm_s

    shapes = replace(ModelShapes.of(load_model("llama3.1-8b")), hidden=4096)
    gemm = np.array([10e-3])
    L_sp = arrays(tp=8, sp=True, seq=1000, mbs=1, gbs=1, recompute="none")
    L_no = arrays(tp=8, sp=False, seq=1000, mbs=1, gbs=1, recompute="none")
    assert float(tp_comm_s(shapes, L_sp, HW, get_stack("megatron-core"), gemm)[0]) == pytest.approx(70.84 * US)
    assert float(tp_comm_s(shapes, L_no, HW, get_stack("megatron-core"), gemm)[0]) == pytest.approx(1133.44 * US)
    assert float(tp_comm_s(shapes, L_sp, HW, get_stack("megatron-lm-2021"), gemm)[0]) == pytest.approx(1133.44 * US)


def test_optimizer_step_shards_experts_over_the_expert_data_parallel_group():
    """Qwen3-30B-A3B (48 MoE layers, 128 experts of 3 x 2048 x 768 = 4,718,592 parameters) on tp 2, dp 8, ep 8, etp 1,
    ZeRO-1, Adam with master weights (32 B per parameter through HBM at 3 TB/s).

    This rank holds 48 x 128 / 8 = 768 experts' weights: E = 768 x 4,718,592 = 3,623,878,656 parameters. Dense
    parameters (D) shard over dp_shard = 8, but each expert is held by dp x tp / (ep x etp) = 8 x 2 / 8 = 2 ranks (the
    expert-data-parallel group, memory.zero_shards), so ZeRO-1 updates E / 2 of them here, not E / 8.
    ZeRO-0 streams (D + E) x 32 / 3e12; ZeRO-1 (D / 8 + E / 2) x 32 / 3e12. Hence
    8 x t(ZeRO-1) - t(ZeRO-0) = (4 E - E) x 32 / 3e12 = 3 x 3,623,878,656 x 32 / 3e12 = 0.115964116992 s
    (0 s if experts were sharded over dp_shard like the dense parameters)."""
    from clusterplan.models.training.memory import stage_layers
    from clusterplan.models.training.step import _optimizer_s

    shapes = ModelShapes.of(load_model("qwen3-30b-a3b"))
    assert (shapes.n_layers, shapes.n_experts, shapes.expert_params, shapes.moe_fraction) == (48, 128, 4_718_592, 1.0)

    def t(zero: int) -> float:
        L = arrays(tp=2, dp=8, ep=8, etp=1, mbs=1, gbs=8, seq=4096, zero=zero, sp=True)
        return float(_optimizer_s(shapes, L, HW, stage_layers(shapes, L))[0])

    assert 8 * t(1) - t(0) == pytest.approx(3 * 3_623_878_656 * 32 / 3e12, rel=1e-9)
    assert 8 * t(1) - t(0) == pytest.approx(0.115964116992, rel=1e-9)
