"""The hardware database is data with sources: every record loads and names where its numbers come from."""

from __future__ import annotations

from clusterplan.hardware_db import get_gpu, load_db
from clusterplan.models.hardware.cluster import load_cluster


def test_every_gpu_number_has_a_source():
    for gpu in load_db().gpus.values():
        for key in ("tflops", "memory", "scale_up", "tdp", "achieved"):
            assert gpu.sources[key].strip(), (gpu.name, key)


def test_dense_not_sparse_peaks():
    # NVIDIA datasheet: 1,979 TFLOP/s bf16 is the with-sparsity figure; dense is half.
    assert get_gpu("H100").peak_tflops["bf16"] < 1000
    assert get_gpu("A100").peak_tflops["bf16"] == 312


def test_cluster_links_per_level():
    cluster = load_cluster("dgx-h100:4")
    assert cluster.world_size == 32
    inside = cluster.link_for(range(8))
    across = cluster.link_for([0, 8, 16, 24])
    assert inside.level == "scale_up" and across.level == "scale_out"
    # NVLink4 ring: 450 GB/s x 0.82 (nccl-tests#212); NDR: 8 NICs x 50 GB/s x 0.96 / 8 GPUs.
    assert abs(inside.busbw_bytes_per_s - 369e9) < 1e6
    assert abs(across.busbw_bytes_per_s - 48e9) < 1e6
