"""How a job fills NVL72 racks, and what a mesh group that crosses a rack costs, as worked examples.

A GB200 / GB300 NVL72 rack is one 72-GPU NVLink domain of 18 four-GPU trays. Megatron-Bridge launches such jobs with
Slurm `--segment` = the tray count when it fits in a rack, else its largest divisor up to 18
(scripts/performance/utils/executors.py slurm_executor): a 64-tray job runs as 4 segments of 16 trays, so its
NVLink domains are 64 GPUs and every power-of-two mesh group of up to 64 ranks stays on NVLink. A 36-tray job fills
two racks (segment 18): its 72-GPU domains do not tile 16- or 64-rank groups, and one group of each such axis
straddles two racks (ranks 64-79 of an ep16 axis: 8 in each).
"""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware import comm
from clusterplan.models.hardware.cluster import load_cluster, segment_nodes
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout


@pytest.mark.parametrize(("trays", "segment"), [(8, 8), (16, 16), (18, 18), (20, 10), (32, 16), (36, 18), (64, 16),
                                                (19, 1)])
def test_segment_is_the_largest_divisor_of_the_tray_count_that_fits_one_rack(trays: int, segment: int) -> None:
    # 19 trays (a prime above 18): Slurm's --segment=1 promises no two trays a rack; priced as such
    assert segment_nodes(18, trays) == segment


def test_job_domain_by_cluster() -> None:
    assert load_cluster("gb200-nvl72:64").primary.job_domain == 64  # 4 x 16 trays
    assert load_cluster("gb300-nvl72:36").primary.job_domain == 72  # two full racks
    assert load_cluster("gb200-nvl72:8").primary.job_domain == 32  # the whole job in one rack
    assert load_cluster("dgx-h100:64").primary.job_domain == 8  # a node is its own domain
    assert HardwareRates.of(load_cluster("gb200-nvl72:64")).domain == 64


@pytest.mark.parametrize(("size", "stride", "domain", "n_in", "n_out"), [
    (64, 1, 64, 64, 1),   # tiles: one domain
    (8, 1, 72, 8, 1),     # 72 = 9 x 8: tiles
    (64, 1, 72, 32, 2),   # ranks 64-127: 8 in rack 0, 56 in rack 1; priced evenly split, the worst case
    (16, 1, 72, 8, 2),    # ranks 64-79 straddle
    (128, 1, 72, 43, 3),  # ranks 128-255 touch racks 1, 2 and 3
    (4, 64, 72, 1, 4),    # stride beyond the domain: one rank per domain either way
    (8, 1, 8, 8, 1),      # a DGX's tp8
    (2, 8, 8, 1, 2),      # a DGX's dp2 across two nodes
])
def test_split_group_prices_the_worst_group(size: int, stride: int, domain: int, n_in: int, n_out: int) -> None:
    got = comm.split_group(size, stride, domain)
    assert (float(got[0]), float(got[1])) == (n_in, n_out)


def test_rack_crossing_expert_group_costs_scale_out() -> None:
    """Qwen3-235B, ep16, one pipeline stage, same tokens per GPU: on 32 trays (segments of 16, every ep16 group on
    NVLink) the all-to-all stays inside a rack; on 36 trays (two full racks) the ep group of ranks 64-79 has 8 GPUs in
    each rack, so its all-to-all crosses InfiniBand and the expert-parallel time is several times larger."""
    model = load_model("qwen3-235b-a22b")

    def ep_comm_per_microbatch(ref: str, gpus: int) -> float:
        layout = Layout(dp=gpus, ep=16, gbs=gpus, seq=4096, mbs=1, recompute="full")
        ev = estimate(model, load_cluster(ref), layout).evaluation
        assert ev is not None
        return float(ev.time.ep_comm_s[0])

    inside, crossing = ep_comm_per_microbatch("gb200-nvl72:32", 128), ep_comm_per_microbatch("gb200-nvl72:36", 144)
    assert crossing > 3.0 * inside


def test_placement_is_stated() -> None:
    layout = Layout(dp=256, ep=64, gbs=256, seq=4096, mbs=1, recompute="full")
    out = estimate(load_model("qwen3-235b-a22b"), load_cluster("gb200-nvl72:64"), layout).to_json()
    assert out["hardware"]["scale_up_placement"].startswith("4 scale-up domains of 64 GPUs (16 of each rack's 18")
    dgx = estimate(load_model("llama3.1-8b"), load_cluster("dgx-h100:2"), Layout(dp=16, gbs=16, seq=4096)).to_json()
    assert "scale_up_placement" not in dgx["hardware"]
    assert np.isfinite(out["step_time_s"])
