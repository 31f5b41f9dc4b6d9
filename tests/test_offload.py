"""Activation offloading's host copies (models/training/step.py offload_exposed_s) and the host link they run on
(hardware_db GPU.host_link_gb_per_s): worked examples by hand, and the Megatron-Bridge 70B rows that offload."""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.errors import BadInputError
from clusterplan.hardware_db import get_gpu, get_stack
from clusterplan.hardware_db.catalog import _parse_gpu, load_db
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.memory import per_layer_activation_bytes
from clusterplan.models.training.step import layer_cost, offload_exposed_s


def _one(x: float) -> np.ndarray:
    return np.array([x])


def test_offload_exposed_time_worked_example():
    # 40 of 80 layers, 4 GB each over 100 GB/s: T = 0.04 s a copy, k T = 1.6 s of copies per micro-batch.
    # Forward, layers of 10 ms: the last copy is due 79 layers after the first could start: 1.6 - 0.79 = 0.81 s.
    # Backward, layers of 20 ms: 1.6 - 1.58 = 0.02 s.  Total 0.83 s.
    got = offload_exposed_s(_one(4e9), _one(40), _one(80), _one(0.010), _one(0.020), 100e9)
    assert float(got[0]) == pytest.approx(0.83)
    # A faster link hides both (1.6 s -> 0.4 s of copies under 0.79 s / 1.58 s of layers).
    assert float(offload_exposed_s(_one(4e9), _one(40), _one(80), _one(0.010), _one(0.020), 400e9)[0]) == 0.0
    # Nothing offloaded, nothing exposed, whatever the link.
    assert float(offload_exposed_s(_one(4e9), _one(0), _one(80), _one(0.010), _one(0.020), 1e9)[0]) == 0.0


def test_host_link_per_gpu_from_its_source():
    # Superchips: their gpus.yaml host_link (GB200 / GB300: one 900 GB/s bidirectional C2C for two GPUs = 225 per
    # GPU per direction; GH200: 450); x86 hosts: the PCIe x16 line rate of their generation (links.yaml).
    assert get_gpu("GB200").host_link_gb_per_s == 225
    assert get_gpu("GB300").host_link_gb_per_s == 225
    assert get_gpu("GH200").host_link_gb_per_s == 450
    assert get_gpu("B200").host_link_gb_per_s == 63  # pcie5
    assert get_gpu("H100-SXM5-80GB").host_link_gb_per_s == 63
    assert get_gpu("B300").host_link_gb_per_s == 121  # pcie6
    assert get_gpu("A100-SXM4-80GB").host_link_gb_per_s == 31.5  # pcie4
    assert load_cluster("gb200-nvl72:2").groups[0].gpu.host_link_gb_per_s == 225


def test_host_link_needs_a_source_and_superchips_need_one():
    links = load_db().links
    base = {"vendor": "nvidia", "tflops_dense": {"bf16": 1000}, "memory_gib": 80, "memory_tb_per_s": 3,
            "scale_up": {"link": "nvlink4", "domain": 8}, "pcie_gen": 5, "tdp_w": 700,
            "achieved": {"gemm_peak_fraction": 0.8, "hbm_fraction": 0.85},
            "sources": {k: "s" for k in ("tflops", "memory", "scale_up", "tdp", "achieved")}}
    assert _parse_gpu("X", base, links).host_link_gb_per_s == 63
    with pytest.raises(BadInputError, match="host_link without a source"):
        _parse_gpu("X", {**base, "host_link": {"gb_per_s": 400}}, links)
    with pytest.raises(BadInputError, match="NVLink-C2C, not PCIe"):
        _parse_gpu("X", {**base, "host_cpu": "grace"}, links)
    given = {**base, "host_cpu": "grace", "host_link": {"gb_per_s": 400},
             "sources": {**base["sources"], "host_link": "src"}}
    assert _parse_gpu("X", given, links).host_link_gb_per_s == 400
    with pytest.raises(BadInputError, match="pcie9"):
        _parse_gpu("X", {**base, "pcie_gen": 9}, links)


def _llama70b_offload(cluster_ref: str) -> tuple[Layout, object]:
    """The Megatron-Bridge GB200 70B recipe's layout (Megatron FSDP dp64, mbs 2, 40 layers offloaded)."""
    layout = Layout(tp=1, pp=1, cp=1, dp=64, zero=3, mbs=2, gbs=256, seq=8192, precision="fp8", flash_attn=True,
                    offload_layers=40)
    return layout, estimate(load_model("llama3.1-70b"), load_cluster(cluster_ref), layout,
                            stack=get_stack("megatron-core"), fp8_recipe="tensorwise")


def test_offload_hides_on_grace_and_not_over_pcie():
    """GB200: 40 copies of one layer's activations (about 3.9 GB) at 225 GB/s take less than the 79 layers of
    forward (and backward) they can hide under; DGX-B200 over PCIe Gen5 (63 GB/s) cannot: offload_s is the
    worked formula times the 2 micro-batches (gbs 256 / dp 64 / mbs 2)."""
    layout, gb = _llama70b_offload("gb200-nvl72:16")
    assert gb.to_json()["time"]["offload_s"] == 0.0
    layout, b = _llama70b_offload("dgx-b200:8")
    shapes, stack = ModelShapes.of(load_model("llama3.1-70b")), get_stack("megatron-core")
    arrays = LayoutArrays.from_layouts([layout])
    kept, _ = per_layer_activation_bytes(shapes, arrays, stack.selective_recompute, stack.sp_saves_gathered_inputs,
                                         True)
    hw = b.evaluation.hw
    cost = layer_cost(shapes, arrays, hw, stack)
    copy_s = float(kept[0]) / 63e9
    by_hand = 2 * (max(0.0, 40 * copy_s - 79 * float(cost.forward_s[0]))
                   + max(0.0, 40 * copy_s - 79 * float(cost.backward_s[0])))
    assert by_hand > 1.0
    assert b.to_json()["time"]["offload_s"] == pytest.approx(by_hand, rel=1e-5)
    data = b.to_json()
    assert sum(data["time"].values()) == pytest.approx(data["step_time_s"], rel=1e-4)


def test_offload_term_only_in_the_json_of_offloading_layouts():
    layout = Layout(tp=1, pp=1, cp=1, dp=8, mbs=1, gbs=64, seq=8192)
    plain = estimate(load_model("llama3.1-8b"), load_cluster("dgx-b200:1"), layout).to_json()
    assert "offload_s" not in plain["time"]
