"""The shipped hardware data, checked against the published figures it was copied from.

Each test names the datasheet or research note the expected numbers come from (research notes:
research/hardware.md sections 1-4). These tests catch the classic database mistakes:
sparse figures mixed with dense ones, bidirectional bandwidth stored as per-direction, prices
without dates, and NIC counts that do not match the instance page.
"""

from __future__ import annotations

import json
import re

import pytest

from clusterplan.hardware_db import get_gpu, get_link, get_node, load_db
from clusterplan.hardware_db.prices import choose_prices, load_prices
from clusterplan.hardware_db.schema import DTYPES
from clusterplan.models.hardware.cluster import load_cluster

REQUIRED_GPUS = ("V100-SXM2-32GB", "A100-SXM4-40GB", "A100-SXM4-80GB", "A100-PCIe-80GB", "A10G", "L4", "L40S",
                 "H100-SXM5-80GB", "H100-PCIe", "H100-NVL", "H200-SXM-141GB", "H20", "B200", "GB200", "MI250X",
                 "MI300X", "MI325X", "Gaudi3", "B300", "GB300", "GH200", "GH200-96GB", "MI355X", "H100-SXM5-96GB",
                 "H800-SXM5-80GB")
REQUIRED_NODES = ("dgx-a100-40g", "dgx-a100-80g", "dgx-h100", "hgx-h200", "dgx-b200", "gb200-nvl72", "p4d", "p4de",
                  "p5", "p5e", "g5", "g6", "g6e", "a2-highgpu-8g", "a2-ultragpu-8g", "a3-high", "a3-mega",
                  "nd-h100-v5", "mi300x-8", "dgx-b300", "gb300-nvl72", "gh200-quad",
                  "grand-teton-h100-96gb", "grand-teton-h100-80gb", "hgx-h800", "p6-b200", "a3-ultra", "a4", "a4x",
                  "nd-h200-v5", "nd-gb200-v6", "nd-mi300x-v5")


def test_required_gpus_and_nodes_exist():
    db = load_db()
    assert set(REQUIRED_GPUS) <= set(db.gpus), sorted(set(REQUIRED_GPUS) - set(db.gpus))
    assert set(REQUIRED_NODES) <= set(db.nodes), sorted(set(REQUIRED_NODES) - set(db.nodes))


@pytest.mark.parametrize(("alias", "name"), [
    ("H100", "H100-SXM5-80GB"), ("H200", "H200-SXM-141GB"), ("A100-80GB", "A100-SXM4-80GB"),
    ("a100-40gb", "A100-SXM4-40GB"), ("l40s", "L40S"), ("V100", "V100-SXM2-32GB"), ("gaudi-3", "Gaudi3"),
])
def test_gpu_aliases(alias, name):
    assert get_gpu(alias).name == name


def test_aliases_are_unambiguous():
    # An alias that is also another record's name (or another record's alias) would shadow it silently.
    for table in (load_db().gpus, load_db().nodes):
        seen: dict[str, str] = {}
        norm = lambda s: "".join(c for c in s.lower() if c.isalnum())  # noqa: E731
        for name in table:
            seen[norm(name)] = name
        for name, rec in table.items():
            for alias in rec.aliases:
                assert seen.setdefault(norm(alias), name) == name, (alias, name, seen[norm(alias)])


@pytest.mark.parametrize(("gpu", "bf16", "fp8"), [
    # Dense peaks from the datasheets (research/hardware.md section 1); sparse figures are exactly 2x these.
    ("A100-SXM4-80GB", 312, None), ("L4", 121, 242.5), ("L40S", 362.05, 733), ("H100-SXM5-80GB", 989.4, 1978.9),
    ("H100-PCIe", 756, 1513), ("H100-NVL", 835, 1670), ("H200", 989.4, 1978.9), ("H20", 148, 296),
    ("B200", 2250, 4500), ("GB200", 2500, 5000), ("MI300X", 1307.4, 2614.9), ("MI325X", 1307.4, 2614.9),
    ("Gaudi3", 1677, 1677), ("B300", 2250, 4500), ("GB300", 2500, 5000), ("GH200", 989.4, 1978.9),
    ("MI355X", 2516.6, 5033.2), ("H800", 989.4, 1978.9),
])
def test_dense_peaks_match_datasheets(gpu, bf16, fp8):
    g = get_gpu(gpu)
    assert g.peak_tflops["bf16"] == bf16
    assert g.peak_tflops.get("fp8") == fp8


def test_dtype_ratios_show_no_sparse_figure_slipped_in():
    # On NVIDIA and AMD tensor cores dense fp8 = 2 x dense bf16 and dense bf16 = 2 x dense tf32 (datasheets).
    # (L40S: 362.05 / 183 = 1.98 per its datasheet.) A sparse figure stored for one dtype would break it by 2x.
    for g in load_db().gpus.values():
        t = g.peak_tflops
        if g.vendor in ("nvidia", "amd") and "fp8" in t:
            assert 1.97 <= t["fp8"] / t["bf16"] <= 2.03, g.name
        if "tf32" in t:
            assert 1.97 <= t["bf16"] / t["tf32"] <= 2.03, g.name
        if "fp4" in t:  # 2 x dense fp8 on Blackwell; 3 x on Blackwell Ultra (NVIDIA's MLPerf v5.1 blog: "three times
            # FP8"; DGX B300 108 PF dense fp4 / 8 GPUs, GB300 NVL72 1,080 PF / 72)
            ultra = g.name in ("B300", "GB300")
            assert t["fp4"] == (3 if ultra else 2) * t["fp8"], g.name


def test_peaks_agree_with_clock_times_units():
    # research/hardware.md section 1: H100 1830 MHz x 528 tensor cores x 1024 FLOP/clk; MI300X 2100 MHz x 1216 x 512.
    assert abs(get_gpu("H100").peak_tflops["bf16"] - 1830e6 * 528 * 1024 / 1e12) < 0.1
    assert abs(get_gpu("MI300X").peak_tflops["bf16"] - 2100e6 * 1216 * 512 / 1e12) < 0.1
    # MI355X: 256 CDNA 4 CUs x 4,096 bf16 FLOP/clk x 2,400 MHz (AMD; half the 8,192 fp8 FLOP/clk per CU).
    assert abs(get_gpu("MI355X").peak_tflops["bf16"] - 2400e6 * 256 * 4096 / 1e12) < 0.1


def test_tflops_has_an_answer_for_every_dtype():
    for g in load_db().gpus.values():
        for dtype in DTYPES:
            assert g.tflops(dtype) > 0, (g.name, dtype)
    # V100 has no bf16 units: bf16 work runs at the fp16 tensor rate; no tf32: fp32 rate.
    assert get_gpu("V100").tflops("bf16") == 125 and get_gpu("V100").tflops("tf32") == 15.7


@pytest.mark.parametrize(("link", "per_direction_gb_per_s"), [
    # Marketing figures are bidirectional (600 / 900 / 1800 GB/s); the database stores one direction.
    ("nvlink2", 150), ("nvlink3", 300), ("nvlink4", 450), ("nvlink5", 900), ("pcie4", 31.5), ("pcie5", 63),
    ("nvlink4-h800", 200),
    ("ib-hdr", 25), ("ib-ndr", 50), ("ib-xdr", 100), ("roce-100g", 12.5), ("roce-200g", 25), ("roce-400g", 50),
    ("eth-25g", 3.125), ("eth-100g", 12.5),
])
def test_links_are_per_direction(link, per_direction_gb_per_s):
    assert get_link(link).gb_per_s == per_direction_gb_per_s


def test_gpu_scale_up_matches_its_link():
    for g in load_db().gpus.values():
        link = get_link(g.scale_up_link)
        assert link.kind == "scale_up", g.name
        assert g.scale_up_gb_per_s == link.gb_per_s, g.name


@pytest.mark.parametrize(("node", "gpus", "node_nic_gb_per_s"), [
    # research/hardware.md section 2, scale-out per node (line rate, one direction).
    ("dgx-a100-80g", 8, 200), ("dgx-a100-40g", 8, 200), ("dgx-h100", 8, 400), ("hgx-h200", 8, 400),
    ("dgx-b200", 8, 400), ("gb200-nvl72", 4, 200), ("p4d", 8, 50), ("p5", 8, 400), ("p5en", 8, 400),
    ("a3-high", 8, 100), ("a3-mega", 8, 200), ("nd-h100-v5", 8, 400), ("mi300x-8", 8, 400),
    # Blackwell Ultra systems carry one ConnectX-8 800 Gb/s (100 GB/s) per GPU; quad GH200: 4 x Slingshot 200 Gb/s.
    ("dgx-b300", 8, 800), ("gb300-nvl72", 4, 400), ("gh200-quad", 4, 100),
    # DeepSeek's H800 node: one CX7 400 Gb/s InfiniBand NIC per GPU (DeepEP README; arXiv 2505.09343).
    ("hgx-h800", 8, 400),
    # Cloud nodes (stop 37; each preset's source): AWS p6-b200 3,200 Gb/s over 8 network cards; GCP A3 Ultra / A4
    # 8 x CX-7 400 Gb/s RDMA, A4X 4; Azure ND H200 v5 / ND MI300X v5 8 x 400 Gb/s NDR, ND GB200 v6 4 (GB/s here).
    ("p6-b200", 8, 400), ("a3-ultra", 8, 400), ("a4", 8, 400), ("a4x", 4, 200), ("nd-h200-v5", 8, 400),
    ("nd-gb200-v6", 4, 200), ("nd-mi300x-v5", 8, 400),
])
def test_node_nics(node, gpus, node_nic_gb_per_s):
    n = get_node(node)
    assert n.gpus_per_node == gpus
    assert n.nics_per_node * get_link(n.nic_link).gb_per_s == node_nic_gb_per_s


def test_every_node_preset_is_a_cluster_and_matches_its_gpu():
    db = load_db()
    for node in db.nodes.values():
        cluster = load_cluster(f"{node.name}:2")
        assert cluster.world_size == 2 * node.gpus_per_node
        assert get_link(node.scale_up_link).kind == "scale_up" and get_link(node.nic_link).kind == "scale_out"
        assert node.scale_up_domain == db.gpus[node.gpu].scale_up_domain, node.name


def test_gb200_nvl72_domain_spans_18_trays():
    # A GB200 NVL72 rack is 18 compute trays of 4 GPUs in one 72-GPU NVLink domain: traffic between trays of
    # one rack stays on NVLink 5 (900 GB/s x 0.76 achieved, NVIDIA slide via stas00/ml-engineering); between
    # racks it crosses the tray's 4 CX-7 NICs (4 x 50 GB/s x 0.96 / 4 GPUs = 48 GB/s per GPU).
    cluster = load_cluster("gb200-nvl72:36")
    assert cluster.world_size == 144 and cluster.n_nodes == 36
    rack = cluster.link_for(range(72))
    assert rack.level == "scale_up" and abs(rack.busbw_bytes_per_s - 684e9) < 1e6
    assert cluster.link_for([0, 4, 68]).level == "scale_up"
    across = cluster.link_for([0, 72])
    assert across.level == "scale_out" and abs(across.busbw_bytes_per_s - 48e9) < 1e6


def test_prices_are_dated_and_keep_the_melange_example():
    table = load_prices()  # the one price table (gpus.yaml holds none)
    for r in table.rows:
        assert re.fullmatch(r"\d{4}(-\d{2}){0,2}", r.date), (r.gpu, r.provider, r.date)
        assert 0.1 < r.usd_per_gpu_hour < 20, (r.gpu, r.provider)
    # Griggs et al. 2024 (Melange) example catalog: A10G $1.01/h, A100-80GB $3.67/h (reference/data use these), kept
    # as a dated catalog that --provider melange-example reproduces.
    melange = choose_prices(("A10G", "A100-80GB"), provider="melange-example").rows
    assert melange["A10G"].usd_per_gpu_hour == 1.01 and melange["A100-SXM4-80GB"].usd_per_gpu_hour == 3.67
    assert "melange-example" in table.dated_catalogs


def test_memory_is_gib_visible_not_marketing_gb():
    # nvidia-smi shows 81,559 MiB on an "80 GB" H100 and 143,771 MiB on a "141 GB" H200.
    assert get_gpu("H100").memory_gib == pytest.approx(81559 / 1024, abs=0.05)
    assert get_gpu("H200").memory_gib == pytest.approx(143771 / 1024, abs=0.05)
    assert get_gpu("GB200").memory_gib == pytest.approx(189471 / 1024, abs=0.05)
    # ai-dynamo/aiconfigurator: B300 275,040 MiB, GB300 284,208 MiB per nvidia-smi.
    assert get_gpu("B300").memory_gib == pytest.approx(275040 / 1024, abs=0.05)
    assert get_gpu("GB300").memory_gib == pytest.approx(284208 / 1024, abs=0.05)


@pytest.mark.parametrize(("system", "node"), [
    # The `system` column of the NeMo 25.11 Megatron-Bridge table (tests/reference megatron_bridge_2511.csv).
    ("DGX-GB300", "gb300-nvl72"), ("DGX-GB200", "gb200-nvl72"), ("DGX-B200", "dgx-b200"), ("DGX-H100", "dgx-h100"),
])
def test_reference_system_names_resolve(system, node):
    assert get_node(system).name == node


def test_gpu_yaml_stores_no_link_bandwidth():
    # One source of each link bandwidth: a GPU names its scale-up link; the rate is read from links.yaml.
    import yaml

    from clusterplan.hardware_db.catalog import DATA_DIR

    raw = yaml.safe_load((DATA_DIR / "gpus.yaml").read_text())["gpus"]
    assert all(set(r["scale_up"]) == {"link", "domain"} for r in raw.values())


def test_hw_show_node_by_alias_json(run_cli):
    code, out, _ = run_cli("hw", "show", "p5en.48xlarge", "--format", "json")
    assert code == 0
    data = json.loads(out)
    # AWS p5en: 8x H200, 16 x 200 Gb/s EFA v3; $63.296/h on-demand (dstack PR #4110, 2026-08-06).
    assert (data["name"], data["gpu"], data["nics_per_node"], data["nic_link"]) == ("p5en", "H200-SXM-141GB", 16, "efa-200g")
    assert data["usd_per_node_hour"] == 63.296


def test_h800_is_an_h100_die_with_8_nvlinks():
    # arXiv 2505.09343: H800 SXM = Hopper as H100 with NVLink cut from 900 to 400 GB/s bidirectional; DeepSeek-V3
    # report section 3.2.2: NVLink 160 GB/s achieved, 3.2x IB's 50 GB/s. Per GPU: 200 x 0.80 = 160 GB/s inside a
    # node, 50 x 0.96 = 48 GB/s across nodes (one 400 Gb/s NIC per GPU).
    h800, h100 = get_gpu("H800"), get_gpu("H100")
    assert h800.peak_tflops == h100.peak_tflops and h800.memory_gib == h100.memory_gib
    assert h800.scale_up_gb_per_s == 200 and h800.scale_up_domain == 8
    assert get_node("dgx-h800").name == "hgx-h800"
    cluster = load_cluster("hgx-h800:2")
    inside = cluster.link_for(range(8))
    assert inside.level == "scale_up" and abs(inside.busbw_bytes_per_s - 160e9) < 1e6
    across = cluster.link_for([0, 8])
    assert across.level == "scale_out" and abs(across.busbw_bytes_per_s - 48e9) < 1e6
    # 8 NVLinks x 20.6 GB/s = 164.8: NCCL's ring search settles on 4 channels at 40 GB/s, doubled into 8 CTAs
    # (links.yaml header), a third of H100's 24.
    assert get_link("nvlink4-h800").nccl_ctas == 8


def test_shipped_yaml_refuses_a_key_written_twice(tmp_path):
    """yaml.safe_load keeps the later of two equal keys silently (how stacks.yaml once lost a source); the loader of
    the package's own data refuses it, while a merge key's values may still be overridden by the mapping's own."""
    from clusterplan.fileio import load_shipped_yaml

    twice = tmp_path / "twice.yaml"
    twice.write_text("stack:\n  sources:\n    kernels: a\n    kernels: b\n")
    with pytest.raises(ValueError, match=r"line 4: key 'kernels' appears twice"):
        load_shipped_yaml(twice)
    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &base\n  a: 1\n  b: 2\nchild:\n  <<: *base\n  b: 3\n")
    assert load_shipped_yaml(merged)["child"] == {"a": 1, "b": 3}


def test_every_shipped_yaml_file_has_no_key_twice():
    from clusterplan.fileio import load_shipped_yaml
    from clusterplan.hardware_db.catalog import DATA_DIR
    from clusterplan.models.architecture.catalog import PRESET_DIR

    files = sorted(DATA_DIR.glob("*.yaml")) + sorted(PRESET_DIR.glob("*.yaml"))
    assert len(files) >= 14
    for path in files:
        assert load_shipped_yaml(path) is not None, path
