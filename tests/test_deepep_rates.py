"""DeepEP's kernels reach less of the links than NCCL does, derived from DeepEP's own published figures.

DeepEP reports logical bandwidth: its tests count the tokens a rank keeps for itself (intranode: every received
token, tests/test_intranode.py nvl_recv_bytes; internode: every destination node incl. the own,
tests/test_internode.py num_rdma_token_sent). The physical rate is the remote share of it, which dedup_copies prices.
"""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.models.hardware.rates import LinkRates
from clusterplan.models.training.dispatch import (
    DEEPEP_NVLINK_OVER_BUSBW,
    DEEPEP_RDMA_OVER_BUSBW,
    dedup_all_to_all_s,
    dedup_copies,
    deepep_rates,
)

NCCL_H800_NVLINK_GB_S = 160.0  # links.yaml nvlink-h800: 200 GB/s per direction x 0.80
NCCL_NVLINK4_GB_S = 450.0 * 0.82  # links.yaml nvlink4 (H100 / H20)
NCCL_NDR_GB_S = 50.0 * 0.96  # links.yaml ib-ndr: ConnectX-7 400 Gb/s


def test_the_nvlink_share_from_two_intranode_measurements() -> None:
    """8 GPUs: 7 of 8 received tokens cross NVLink. H800 153 GB/s logical (DeepEP README legacy table) -> 133.9;
    H20 337 GB/s (deepseek-ai/DeepEP#16) -> 294.9; over NCCL's 160 / 369: 0.837, 0.799, mean 0.818."""
    h800 = 153.0 * 7 / 8 / NCCL_H800_NVLINK_GB_S
    h20 = 337.0 * 7 / 8 / NCCL_NVLINK4_GB_S
    assert (h800, h20) == pytest.approx((0.837, 0.799), abs=0.001)
    assert DEEPEP_NVLINK_OVER_BUSBW == pytest.approx((h800 + h20) / 2, abs=0.005)


def test_the_rdma_share_from_the_internode_table() -> None:
    """DeepSeek-V3 routing (256 experts, top-8, 4 of 8 groups): EP32 on 4 nodes hits 3.61 nodes, 2.71 remote, so
    58 GB/s logical is 43.5 physical; EP64 on 8 nodes hits its 4-node cap, 3.5 remote: 51 -> 44.6. Over NCCL's 48:
    0.906 and 0.930, mean 0.918."""
    remote32, _ = dedup_copies(256, 8, np.array([8.0]), np.array([4.0]))  # 4 nodes hold 2 groups each: no cap binds
    remote64, _ = dedup_copies(256, 8, np.array([8.0]), np.array([8.0]), max_nodes=4.0)
    hit32, hit64 = float(remote32[0]) * 4 / 3, float(remote64[0]) * 8 / 7
    assert (hit32, hit64) == pytest.approx((3.614, 4.0), abs=0.001)
    ep32 = 58.0 * float(remote32[0]) / hit32 / NCCL_NDR_GB_S
    ep64 = 51.0 * float(remote64[0]) / hit64 / NCCL_NDR_GB_S
    assert (ep32, ep64) == pytest.approx((0.906, 0.930), abs=0.002)
    assert DEEPEP_RDMA_OVER_BUSBW == pytest.approx((ep32 + ep64) / 2, abs=0.005)


def test_an_nvlink_bound_dispatch_takes_1_over_the_share_longer() -> None:
    r = LinkRates(bw_in=NCCL_NVLINK4_GB_S * 1e9, lat_in=0.0, bw_out=NCCL_NDR_GB_S * 1e9, lat_out=0.0)
    one_node = (np.array([4096 * 7168 * 2.0]), 256, 8, np.array([8.0]), np.array([1.0]))
    nccl = float(dedup_all_to_all_s(*one_node, r)[0])
    deepep = float(dedup_all_to_all_s(*one_node, deepep_rates(r))[0])
    assert deepep == pytest.approx(nccl / DEEPEP_NVLINK_OVER_BUSBW, rel=1e-12)
    four_nodes = (np.array([4096 * 7168 * 2.0]), 256, 8, np.array([8.0]), np.array([4.0]))  # RDMA-bound
    assert float(dedup_all_to_all_s(*four_nodes, deepep_rates(r))[0]) == pytest.approx(
        float(dedup_all_to_all_s(*four_nodes, r)[0]) / DEEPEP_RDMA_OVER_BUSBW, rel=1e-12)
