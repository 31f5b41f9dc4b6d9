"""Communication/computation interference: a collective overlapped with compute holds SMs (its NCCL CTAs) that the
compute then runs without (models/hardware/comm.py interference_s; CTA counts in hardware_db/data/links.yaml)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from clusterplan.hardware_db.stacks import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.comm import interference_s
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import Linear, comm_sm_slowdown
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.step import Group, comm_slowdown, step_time
from clusterplan.models.training.topology import Axis

MS = 1e-3


def test_interference_worked_examples():
    """H100 at the ideal slowdown f = 132 / (132 - 24): the compute does 1/f = 108/132 of its work per second beside
    the collective, losing 1 - 1/f = 24/132 = 0.1818 of it.
    10 ms of all-gather beside 100 ms of compute: it ends at 100 + 10 x 0.1818 = 101.818 ms: +1.818 ms.
    100 ms of collective beside 90 ms of compute: the compute needs 90 + 100 x 0.1818 = 108.18 ms > 100, so the phase
    ends at 108.18 ms instead of 100 ms: +8.18 ms.
    100 ms of collective beside 50 ms of compute: 50 + 18.18 < 100, the compute finishes under the collective: +0."""
    f = 132.0 / 108.0
    assert float(interference_s(10 * MS, 100 * MS, f)) == pytest.approx(10 * MS * 24.0 / 132.0)
    assert float(interference_s(10 * MS, 100 * MS, f)) == pytest.approx(1.8182 * MS, rel=1e-4)
    assert float(interference_s(100 * MS, 90 * MS, f)) == pytest.approx(8.1818 * MS, rel=1e-4)
    assert float(interference_s(100 * MS, 50 * MS, f)) == 0.0
    # No slowdown (unknown SMs or CTAs): nothing priced.
    assert float(interference_s(10 * MS, 100 * MS, 1.0)) == 0.0


def test_gemm_waves_over_the_sms_the_collective_leaves():
    """A 16384 x 4096 x 4096 bf16 GEMM on H100 (cuBLAS tile 128 x 256, gemm.yaml): 128 x 16 = 2,048 tiles fill
    ceil(2048 / 132) = 16 waves on all SMs and ceil(2048 / 108) = 19 on the 108 that 24 ring CTAs leave: 19/16 =
    1.1875 slower (the ideal share would say 132/108 = 1.222). Across nodes 16 CTAs leave 116: ceil(17.66) = 18
    waves, 18/16 = 1.125."""
    hw = HardwareRates.of(load_cluster("dgx-h100:2"))
    lin = [Linear(tokens=np.array([16384.0]), in_features=4096.0, out_features=4096.0)]
    bf16 = np.array([False])
    assert float(comm_sm_slowdown(lin, hw, bf16, hw.comm_ctas_in)[0]) == pytest.approx(19.0 / 16.0)
    assert float(comm_sm_slowdown(lin, hw, bf16, hw.comm_ctas_out)[0]) == pytest.approx(18.0 / 16.0)
    assert comm_sm_slowdown(lin, replace(hw, sm_count=0), bf16, hw.comm_ctas_in) == 1.0
    # A calibrated GEMM curve has no tiles: the ideal share.
    assert comm_sm_slowdown(lin, replace(hw, gemm_shape=None), bf16, 24) == pytest.approx(132.0 / 108.0)


def test_interference_share_matches_the_measured_average_slowdown():
    """Checked, not fitted: the ring CTA share on H100 (24 / 132 = 18.2 %) and A100 (24 / 108 = 22.2 %) against the
    18.9 % average compute slowdown under overlap of Lee et al. 2025 (arXiv 2507.03114; max 40 %)."""
    for cluster in ("dgx-h100:1", "dgx-a100-80g:1"):
        hw = HardwareRates.of(load_cluster(cluster))
        share = hw.comm_ctas_in / hw.sm_count
        assert 0.15 < share < 0.25
        assert share == pytest.approx(0.189, abs=0.04)


@pytest.mark.parametrize("cluster, sms, ctas_in, ctas_out", [
    ("dgx-h100:2", 132, 24, 16),     # NVLink4 ring: 6 x 60 GB/s -> 12 x 30 -> 24 CTAs; 8 NDR NICs -> 2 x 8
    ("dgx-a100-80g:2", 108, 24, 16),  # NVLink3: 6 x 40 -> 12 x 20 -> 24 (NVIDIA/nccl#1225); 8 HDR NICs
    ("dgx-b200:2", 148, 32, 16),     # NVLink5: 8 x 90 -> 16 x 45 -> 32
])
def test_rates_carry_the_nccl_cta_counts(cluster, sms, ctas_in, ctas_out):
    hw = HardwareRates.of(load_cluster(cluster))
    assert (hw.sm_count, hw.comm_ctas_in, hw.comm_ctas_out) == (sms, ctas_in, ctas_out)


def test_a_group_across_nodes_holds_the_nic_rails_ctas():
    hw = HardwareRates.of(load_cluster("dgx-h100:2"))
    inside = LayoutArrays.from_layouts([Layout(dp=8, gbs=8, mbs=1, seq=2048)])
    across = LayoutArrays.from_layouts([Layout(dp=16, gbs=16, mbs=1, seq=2048)])
    # comm_slowdown picks the (inside, across) value by where the group runs: handed the CTA counts, it gives the group's.
    ctas = (hw.comm_ctas_in, hw.comm_ctas_out)
    assert float(comm_slowdown(Group.of(inside, Axis.DP_SHARD), hw, ctas)[0]) == 24.0
    assert float(comm_slowdown(Group.of(across, Axis.DP_SHARD), hw, ctas)[0]) == 16.0


def test_fsdp_step_pays_interference_only_in_its_dp_term():
    """Llama 3.1 8B, FSDP (z3) on 8 H100: with the GPU's SM count the DP term grows by the interference, no other term
    moves; every FSDP block's gather is far shorter than the block's compute, so per layer and micro-batch the
    increase is at most (24 / 132) x the gathers and reduce-scatters that run beside compute."""
    shapes = ModelShapes.of(load_model("llama3.1-8b"))
    L = LayoutArrays.from_layouts([Layout(dp=8, zero=3, gbs=16, mbs=2, seq=8192, precision="bf16")])
    stack = get_stack("torchtitan")
    hw = HardwareRates.of(load_cluster("dgx-h100:1"))
    with_term = step_time(shapes, L, hw, stack)
    without = step_time(shapes, L, replace(hw, sm_count=0), stack)
    assert float(with_term.compute_s[0]) == float(without.compute_s[0])
    assert float(with_term.bubble_s[0]) == float(without.bubble_s[0])
    added = float(with_term.dp_comm_s[0] - without.dp_comm_s[0])
    assert added > 0.0
    assert float(with_term.step_s[0] - without.step_s[0]) == pytest.approx(added)
    # Upper bound by hand: at most 24/132 of all DP traffic of the step runs beside compute.
    assert added < 24.0 / 132.0 * float(without.step_s[0])
    assert np.isfinite(added)


def test_a_profiled_overlap_already_holds_the_interference():
    """`profile` measures the overlap with the collective and the GEMM running together (profiler/overlap.py), so a
    calibration with an overlap level prices no CTA term on top of it; one without keeps the datasheet CTAs."""
    from types import MappingProxyType

    from clusterplan.models.hardware.calibration import Calibration, CollectiveFit

    fits = MappingProxyType({("all_reduce", "scale_up"): CollectiveFit(latency_s=1e-5, busbw_bytes_per_s=1e11)})
    measured = Calibration(collectives=fits, overlap=MappingProxyType({"scale_up": 0.7}))
    unmeasured = Calibration(collectives=fits, overlap=MappingProxyType({}))
    cluster = load_cluster("dgx-h100:1")
    assert HardwareRates.of(cluster, measured).comm_ctas_in == 0.0
    assert HardwareRates.of(cluster, unmeasured).comm_ctas_in == 24.0
