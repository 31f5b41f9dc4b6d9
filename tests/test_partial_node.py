"""A job on part of each node: `--cluster PRESET:NODESxGPUS` (torchrun --nproc-per-node GPUS on PRESET's nodes).

Worked examples: NeMo's long-sequence page runs Llama 3 8B on 2 and 4 of one DGX B200's 8 GPUs; a bench user books
4 of a DGX H100's GPUs; a GB200 NVL72 job takes 2 GPUs of each of a rack's 18 trays. Each used GPU keeps its share of
the node's NICs and the NVLink domain spans the same nodes as before (models/hardware/cluster.py
partial_node_shares).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from clusterplan.cli.main import cli
from clusterplan.errors import BadInputError
from clusterplan.models.hardware.cluster import cluster_from_dict, load_cluster, partial_node_shares


def test_four_of_a_dgx_h100():
    # 8 NDR NICs for 8 GPUs: 4 GPUs keep 4 NICs, 50 GB/s each at line rate; the NVLink domain is the 4 GPUs.
    full, part = load_cluster("dgx-h100:1"), load_cluster("dgx-h100:1x4")
    g = part.primary
    assert (part.world_size, part.n_nodes, g.gpus_per_node, g.nics_per_node, g.scale_up_domain) == (4, 1, 4, 4, 4)
    assert g.scale_out_busbw_gb_per_s == pytest.approx(full.primary.scale_out_busbw_gb_per_s, rel=1e-12)
    assert g.scale_up_busbw_gb_per_s == full.primary.scale_up_busbw_gb_per_s
    assert part.describe() == "1 x dgx-h100 (4 of 8 x H100-SXM5-80GB) = 4 GPUs"


def test_two_nodes_of_four_cross_the_network():
    # dgx-h100:2x4: ranks 0-3 on node 0, 4-7 on node 1; a ring over all 8 crosses the NICs, not NVLink.
    c = load_cluster("dgx-h100:2x4")
    assert c.world_size == 8 and [c.node_of(r) for r in (0, 3, 4, 7)] == [0, 0, 1, 1]
    assert c.link_for(range(4)).level == "scale_up"
    assert c.link_for(range(8)).level == "scale_out"


def test_nvl72_trays_stay_one_domain():
    # 18 trays x 2 of 4 GPUs: the rack's NVLink domain holds the 36 used GPUs (72 x 2 / 4), 18 trays as before.
    c = load_cluster("gb200-nvl72:18x2")
    assert c.world_size == 36 and c.primary.scale_up_domain == 36 and c.primary.nics_per_node == 2
    assert c.link_for(range(36)).level == "scale_up"


def test_shares_by_hand():
    assert partial_node_shares(8, 8, 8, 4) == (4, 4)  # DGX: NIC per GPU, domain = the node
    assert partial_node_shares(8, 32, 8, 2) == (8, 2)  # AWS p5: 4 EFA per GPU
    assert partial_node_shares(8, 1, 8, 4) == (1, 4)  # one NIC for the node: the used GPUs share it (ceil)
    assert partial_node_shares(4, 4, 72, 3) == (3, 54)  # NVL72 tray: 18 trays per domain
    assert partial_node_shares(8, 8, 8, 8) == (8, 8)  # the whole node: unchanged
    assert partial_node_shares(8, 8, 8, 16) == (8, 8)  # a file's bigger machine keeps what it states


def test_a_cluster_file_with_fewer_gpus_per_node_is_a_partial_node():
    # Before stop 40 a file's gpus_per_node 4 on dgx-h100 kept the preset's 8-GPU domain, so pairs of nodes were
    # priced as one NVLink domain (Cluster._same_scale_up_domain: 8 // 4 = 2 nodes per domain).
    c = cluster_from_dict({"groups": [{"node": "dgx-h100", "count": 2, "gpus_per_node": 4}]})
    assert c.primary.scale_up_domain == 4 and c.link_for(range(8)).level == "scale_out"
    # What the file states explicitly is kept.
    c = cluster_from_dict({"groups": [{"node": "dgx-h100", "count": 2, "gpus_per_node": 4, "nics_per_node": 8}]})
    assert c.primary.nics_per_node == 8


@pytest.mark.parametrize(("ref", "message"), [
    ("dgx-h100:1x16", "dgx-h100 has 8 GPUs per node, so a job uses 1 to 8 of them"),
    ("dgx-h100:1x0", "dgx-h100 has 8 GPUs per node"),
    ("gb200-nvl72:18x5", "gb200-nvl72 has 4 GPUs per node"),
    ("dgx-h100:1x" + "9" * 40, "GPUs per node must be a positive integer up to 8, got a 40-digit number"),
])
def test_more_gpus_than_the_node_has_is_one_line(ref, message):
    with pytest.raises(BadInputError, match=message):
        load_cluster(ref)


def test_estimate_on_part_of_a_node_runs_with_its_world():
    out = CliRunner().invoke(cli, ["estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1x4",
                                   "--layout", "dp=4,zero=3,mbs=1,gbs=64,seq=8192", "--format", "json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["layout"]["dp"] == 4
