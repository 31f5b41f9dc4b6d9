"""Pipeline sends of an interleaved schedule's warm-up and cool-down (stacks.yaml pp_warmup_exposed;
models/training/step.py pp_comm_s), worked by hand.

Megatron-Core overlaps the steady-state sends of its interleaved 1F1B schedule with the next chunk's compute, but
"The PP send/recv in warmup and flush are exposed by default" (Megatron-Bridge docs/performance-guide.md). Rank 0
warms up with 2 (pp - 1) + (vpp - 1) pp forward chunk passes (schedules.py get_pp_rank_microbatches) and cools down
with as many backward passes alone, each sending and receiving on the critical path."""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.hardware_db.stacks import get_stack
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.step import pp_comm_s

P2P_S = np.array([1e-3])
"""One activation (or gradient) transfer between stages: 1 ms."""
STAGE_S = np.array([1.0])
"""A stage's forward + backward per micro-batch: 1 s, so a steady-state transfer hides under any chunk."""


class _FullOverlap:
    """The HardwareRates field pp_comm_s reads: a transfer shorter than the compute it runs under hides entirely."""

    comm_overlap: float = 1.0


def arrays(schedule: str = "interleaved-1f1b", **kw: int) -> LayoutArrays:
    return LayoutArrays.from_layouts([Layout(schedule=schedule, mbs=1, seq=4096, **kw)])


def exposed_ms(L: LayoutArrays, stack: str) -> float:
    return float(pp_comm_s(P2P_S, L.microbatches, L, get_stack(stack), STAGE_S, _FullOverlap())[0]) * 1e3


def test_megatron_core_exposes_every_warm_up_and_cool_down_pass():
    """pp 4, vpp 2, 8 micro-batches: the fill and drain hops, 2 (pp - 1) = 6 transfers, and rank 0's warm-up of
    2 x 3 + 1 x 4 = 10 of its 16 forward passes and as many cool-down backward passes, one 1-ms transfer each:
    6 + 20 = 26 ms; the 6 steady passes each way hide. Without the rule (torchtitan's stack) only the 6 ms of fill and
    drain are exposed; with no overlap at all every transfer is, 2 (m vpp + pp - 1) = 38 ms, more than either."""
    L = arrays(pp=4, vpp=2, dp=1, gbs=8)
    assert float(L.interleaved_warmup_passes()[0]) == 10.0
    assert get_stack("megatron-core").pp_warmup_exposed and not get_stack("torchtitan").pp_warmup_exposed
    assert exposed_ms(L, "megatron-core") == pytest.approx(26.0)
    assert exposed_ms(L, "torchtitan") == pytest.approx(6.0)
    assert exposed_ms(L, "megatron-lm-2021") == pytest.approx(38.0)  # pp_overlap false: the serial count


def test_a_batch_all_warm_up_exposes_every_transfer():
    """MLPerf GPT-3 175B on 10,752 H100 ran pp 6 with 8 virtual stages and 6 micro-batches: the warm-up would be
    2 x 5 + 7 x 6 = 52 passes, more than the 48 a rank runs, so every pass is warm-up or cool-down: the serial count,
    2 (pp - 1) + 2 x 48 = 106 transfers."""
    L = arrays(pp=6, vpp=8, dp=1, gbs=6)
    assert float(L.interleaved_warmup_passes()[0]) == 48.0
    assert exposed_ms(L, "megatron-core") == pytest.approx(106.0)


def test_the_cost_grows_with_the_virtual_stages():
    """NeMo's docs: the PP traffic that grows with the virtual-pipeline size 'cancels off the reduced pipeline
    bubbles'. pp 8 with 32 micro-batches: vpp 2 exposes 2 x 7 + 2 (14 + 8) = 58 ms, vpp 7 2 x 7 + 2 (14 + 48) =
    138 ms. Without virtual stages Megatron-Core overlaps nothing: plain 1F1B and a one-chunk interleaved layout both
    pay every transfer, 2 (32 + 7) = 78 ms."""
    assert exposed_ms(arrays(pp=8, vpp=2, dp=1, gbs=32), "megatron-core") == pytest.approx(58.0)
    assert exposed_ms(arrays(pp=8, vpp=7, dp=1, gbs=32), "megatron-core") == pytest.approx(138.0)
    assert exposed_ms(arrays(pp=8, vpp=1, dp=1, gbs=32), "megatron-core") == pytest.approx(78.0)
    assert exposed_ms(arrays("1f1b", pp=8, vpp=1, dp=1, gbs=32), "megatron-core") == pytest.approx(78.0)
