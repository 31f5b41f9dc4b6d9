"""What `clusterplan profile` plans to measure: link levels from the torchrun environment, model GEMM shapes,
message sizes, and the checks that keep --resume from mixing two different runs."""

from __future__ import annotations

import pytest

from clusterplan.errors import BadInputError
from clusterplan.hardware_db.stacks import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.training.layout import Layout
from clusterplan.profiler import store
from clusterplan.profiler.datasheet import compare, match_gpu
from clusterplan.profiler.shapes import layer_gemms, model_shapes, standard_shapes
from clusterplan.profiler.sweep import KIB, MIB, SweepConfig, build_plan, collective_sizes, level_groups


def test_levels_two_nodes_of_four():
    # torchrun numbers ranks node by node: node 0 has ranks 0-3, node 1 ranks 4-7.
    groups = level_groups(8, 4)
    assert groups["scale_up"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert groups["scale_out"] == [list(range(8))]  # the whole world, as nccl-tests runs across nodes


def test_levels_single_node_and_one_gpu_per_node():
    assert level_groups(2, 2) == {"scale_up": [[0, 1]]}
    assert level_groups(4, 1) == {"scale_out": [[0, 1, 2, 3]]}
    with pytest.raises(BadInputError, match="same --nproc-per-node"):
        level_groups(6, 4)


def test_message_sizes_span_nccl_tests_range():
    gpu = collective_sizes(cuda=True, quick=False)
    assert gpu[0] == KIB and gpu[-1] == 256 * MIB and len(gpu) == 19
    assert collective_sizes(cuda=True, quick=True)[-1] == 256 * MIB
    assert collective_sizes(cuda=False, quick=True) == [KIB, 8 * KIB, 64 * KIB, 512 * KIB, 4 * MIB, 32 * MIB]


def test_llama3_8b_gemms_at_tp2():
    # Llama 3.1 8B: hidden 4096, 32 query heads and 8 KV heads of 128, FFN 14336 (gated), vocab 128256.
    gemms = {g.name: (g.m, g.n, g.k) for g in layer_gemms(load_model("llama3.1-8b"), Layout.parse("tp=2,seq=8192"))}
    assert gemms["qkv"] == (8192, (4096 + 2 * 8 * 128) // 2, 4096)
    assert gemms["attn_out"] == (8192, 4096, 2048)
    assert gemms["ffn_up"] == (8192, 2 * 14336 // 2, 4096)
    assert gemms["ffn_down"] == (8192, 4096, 7168)
    assert gemms["lm_head"] == (8192, 128256 // 2, 4096)


def test_model_shapes_include_backward_and_respect_cpu_cap():
    model, layout = load_model("llama3.1-8b"), Layout()
    full = model_shapes(model, layout, quick=False, max_flops=None)
    assert (4096, 4096, 14336) in full  # ffn_down forward
    assert (4096, 14336, 4096) in full  # its dgrad (m, k, n)
    assert (14336, 4096, 4096) in full  # its wgrad (k, n, m)
    capped = model_shapes(model, layout, quick=True, max_flops=2e8)
    # m shrinks to fit 2e8 FLOPs unless one token alone is above the cap (the LM head: 2*128256*4096 = 1.05e9).
    assert all(2 * m * n * k <= 2e8 or m == 1 for m, n, k in capped)


def test_moe_expert_gemm_tokens():
    # Mixtral 8x7B: top-2 of 8 experts; at ep=1 each expert sees 4096 * 2 / 8 = 1024 tokens.
    gemms = {g.name: (g.m, g.n, g.k) for g in layer_gemms(load_model("mixtral-8x7b"), Layout())}
    assert gemms["expert_up"] == (1024, 2 * 14336, 4096)


def test_plan_keys_are_unique_and_ordered():
    cfg = SweepConfig(cuda=False, quick=True, dtypes=("fp32", "bf16"), gemm_shapes=tuple(standard_shapes(cuda=False, quick=True)),
                      attention_heads=4, attention_head_dim=64, levels=("scale_up",), layer_tps=(1, 2))
    plan = build_plan(cfg)
    # copy, GEMMs, attention, decode step, collectives, overlap, eager layers at tp 1 and 2
    assert len(plan) == 1 + 2 * 6 + 2 + 1 + 5 * 6 + 1 + 2
    assert len({m.key for m in plan}) == len(plan)
    assert [m.kind for m in plan][:2] == ["memory", "gemm"]
    assert plan[-4].key == f"collective/send_recv/scale_up/{32 * MIB}"
    assert plan[-3].key == f"overlap/scale_up/{64 * MIB}" and plan[-3].shape == (256,)
    assert [m.key for m in plan[-2:]] == ["layer/fp32/tp1", "layer/fp32/tp2"]


def _meta(**over):
    meta = {"device_name": "CPU X", "backend": "gloo", "world_size": 2, "local_world_size": 2, "quick": True,
            "model": None, "layout": None, "created_utc": "2026-01-01T00:00:00Z"}
    return {**meta, **over}


def test_resume_refuses_a_different_run(tmp_path):
    path = tmp_path / "c.json"
    doc = store.new_document(_meta())
    store.add_record(doc, "memory", {"key": "memory/copy/1", "buffer_bytes": 1, "bytes_per_s": 1e9})
    store.refit(doc)
    store.save(path, doc)
    assert store.done_keys(store.load_for_resume(path, _meta())) == {"memory/copy/1"}
    with pytest.raises(BadInputError, match="world_size=2, this run has 4"):
        store.load_for_resume(path, _meta(world_size=4))


def test_refit_fills_calibration_sections():
    doc = store.new_document(_meta())
    for size in (KIB, 64 * KIB, 4 * MIB):  # t = 100 us + (n-1)/n * S / (1 GB/s)
        store.add_record(doc, "collective", {"key": f"c/{size}", "op": "all_gather", "level": "scale_up",
                                             "n_ranks": 2, "size_bytes": size, "median_s": 100e-6 + 0.5 * size / 1e9})
    store.refit(doc)
    fit = doc["collectives"]["all_gather"]["scale_up"]
    assert fit["busbw_bytes_per_s"] == pytest.approx(1e9, rel=1e-3)
    assert fit["latency_s"] == pytest.approx(100e-6, rel=1e-3)  # one ring step at n = 2


def test_skinny_gemms_stay_out_of_the_curve():
    # Compute-bound squares on the curve 100 * F / (F + 1e9); a decode-like 16-row GEMM far below it.
    doc = store.new_document(_meta(gemm_fit_min_dim=256))
    for side in (256, 512, 1024, 2048, 4096):
        flops = 2 * side**3
        store.add_record(doc, "gemm", {"key": f"g/{side}", "dtype": "bf16", "m": side, "n": side, "k": side,
                                       "flops": flops, "tflops": 100 * flops / (flops + 1e9)})
    store.add_record(doc, "gemm", {"key": "g/skinny", "dtype": "bf16", "m": 16, "n": 8192, "k": 8192,
                                   "flops": 2 * 16 * 8192 * 8192, "tflops": 2.0})
    store.refit(doc)
    assert doc["gemm"]["bf16"]["points"] == 5
    assert doc["gemm"]["bf16"]["max_tflops"] == pytest.approx(100, rel=1e-3)
    assert doc["gemm"]["bf16"]["half_flops"] == pytest.approx(1e9, rel=1e-3)


@pytest.mark.parametrize(("torch_name", "gpu"), [
    ("NVIDIA H100 80GB HBM3", "H100-SXM5-80GB"),   # torch.cuda.get_device_name on a DGX H100
    ("NVIDIA H100 PCIe", "H100-PCIe"),
    ("NVIDIA A100 80GB PCIe", "A100-PCIe-80GB"),
    ("NVIDIA A100-SXM4-40GB", "A100-SXM4-40GB"),
    ("NVIDIA L40S", "L40S"),
    ("AMD Instinct MI300X", "MI300X"),
    ("CPU AMD EPYC", None),
])
def test_device_name_maps_to_hardware_db(torch_name, gpu):
    found = match_gpu(torch_name)
    assert (found.name if found else None) == gpu


def test_datasheet_fractions():
    # An H100 at MAMF's 794.5 TFLOP/s (research/hardware.md 3) reaches 80.3 % of the 989.4 dense bf16 peak.
    doc = {"gemm": {"bf16": {"max_tflops": 794.5, "half_flops": 3e9}}, "memory": {"copy_bytes_per_s": 2.9e12},
           "collectives": {"all_reduce": {"scale_up": {"busbw_bytes_per_s": 370e9, "latency_s": 1e-5}}}}
    rows = compare(doc, match_gpu("NVIDIA H100 80GB HBM3"))
    assert rows["gemm_bf16_tflops"]["fraction"] == pytest.approx(0.803, abs=0.001)
    assert rows["hbm_bytes_per_s"]["fraction"] == pytest.approx(2.9 / 3.35)
    assert rows["scale_up_busbw_bytes_per_s"]["fraction"] == pytest.approx(370 / 450)


def test_layer_fit_against_the_files_own_rates():
    # A CPU-like file: 100 GFLOP/s GEMMs (no size penalty to speak of), 20 GB/s copies, 1 GB/s all-reduce.
    # The tp-1 layer is measured 1.5x the model's compute; the tp-2 layer 4 ms over 1.5x its compute + all-reduces.
    from clusterplan.models.architecture.shapes import ModelShapes
    from clusterplan.models.hardware.calibration import calibration_from_dict
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.batch import LayoutArrays
    from clusterplan.models.training.layout import Layout
    from clusterplan.models.training.step import layer_cost
    from clusterplan.profiler.layer import reference_layer

    doc = store.new_document(_meta())
    doc.update(gemm={"fp32": {"max_tflops": 0.1, "half_flops": 1.0}}, memory={"copy_bytes_per_s": 2e10},
               collectives={"all_reduce": {"scale_up": {"latency_s": 1e-4, "busbw_bytes_per_s": 1e9}}})
    spec, seq = reference_layer(cuda=False)
    hw = HardwareRates.measured(calibration_from_dict(doc), dtype="fp32", domain=2)

    def model_s(tp):
        cost = layer_cost(ModelShapes.of(spec), LayoutArrays.from_layouts(
            [Layout(tp=tp, mbs=1, gbs=1, seq=seq, precision="fp32", recompute="none")]), hw, get_stack("torchtitan"))
        return float(cost.compute_s[0]), float(cost.tp_s[0])

    (c1, _), (c2, t2) = model_s(1), model_s(2)
    for tp, seconds in ((1, 1.5 * c1), (2, 1.5 * c2 + t2 + 0.004)):
        store.add_record(doc, "layer", {"key": f"layer/fp32/tp{tp}", "tp": tp, "dtype": "fp32", "hidden": spec.hidden,
                                        "n_heads": spec.n_heads, "n_kv_heads": spec.n_kv_heads,
                                        "ffn_hidden": spec.ffn_hidden, "seq": seq, "mbs": 1, "median_s": seconds})
    layer = store._layer_fit(doc)
    assert layer["time_factor"] == pytest.approx(1.5)
    assert layer["tp_overhead_s"] == pytest.approx(0.004)


def test_attention_fit_and_its_use_in_the_model():
    # Causal SDPA measured at 3 lengths on the curve 0.5 * F / (F + 1e7) TFLOP/s, backward 3x forward.
    doc = store.new_document(_meta())
    for seq in (128, 256, 512):
        flops = 2 * 1 * 8 * seq * seq * 64
        fwd_s = flops / (0.5e12 * flops / (flops + 1e7))
        store.add_record(doc, "attention", {"key": f"a/{seq}", "dtype": "fp32", "seq": seq, "fwd_flops": flops,
                                            "fwd_tflops": flops / fwd_s / 1e12, "fwd": {"median_s": fwd_s},
                                            "fwd_bwd": {"median_s": 4 * fwd_s}})
    store.refit(doc)
    fit = doc["attention"]["fp32"]
    assert fit["max_tflops"] == pytest.approx(0.5, rel=1e-3) and fit["half_flops"] == pytest.approx(1e7, rel=1e-3)
    assert fit["bwd_over_fwd"] == pytest.approx(3.0)

    from clusterplan.models.architecture.shapes import ModelShapes
    from clusterplan.models.architecture.spec import ModelSpec
    from clusterplan.models.hardware.calibration import calibration_from_dict
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.batch import LayoutArrays
    from clusterplan.models.training.compute import layer_time
    from clusterplan.models.training.layout import Layout

    spec = ModelSpec(name="m", n_layers=2, hidden=512, n_heads=8, n_kv_heads=8, ffn_hidden=1536, vocab=128)
    arrays = LayoutArrays.from_layouts([Layout(mbs=1, gbs=1, seq=512)])
    hw = HardwareRates.of(load_cluster("dgx-h100:1"), calibration_from_dict(doc))
    core_s = float(layer_time(ModelShapes.of(spec), arrays, hw, False).core_forward_s[0])
    flops = 2 * 8 * 512 * 512 * 64  # the layer's causal attention core: 2 b h s^2 d
    assert core_s == pytest.approx((flops + 1e7) / 0.5e12)
