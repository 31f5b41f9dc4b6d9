"""NVFP4 training (Transformer Engine NVFP4BlockScaling: 4-bit E2M1 GEMM operands, one E4M3 scale per 16 elements)
and the fp8 recipe as part of the plan (Layout.fp8_recipe), as worked examples.

Sources: research/nvfp4-training.md. The GEMM ratio of each Blackwell GPU is gemm.yaml nvfp4_gemm_time_ratio (B300:
TE's GEMM Profiling Tutorial, NVFP4 3.764 ms vs per-tensor FP8 6.812 ms per layer pre-quantised = 0.553; B200:
stas00/ml-engineering's all-GPU MAMF run, fp8 3,350 / nvfp4 6,746 = 0.497); the quantisation kernels' bytes are
derived from TE's NVFP4Quantizer (compute.FP8_QUANT_BYTES_PER_ELEMENT["nvfp4"]); the weight cache and saved inputs
from TE's NVFP4Tensor layout (memory.NVFP4_WEIGHT_COPY_BYTES, NVFP4_SAVED_INPUT_BYTES). Nothing is fitted to a
training row.
"""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.errors import BadInputError
from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import Linear, fp8_cast_times
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.memory import (
    NVFP4_SAVED_INPUT_BYTES,
    Fp8Saved,
    bytes_per_param,
    fp8_weight_copy_bytes,
    layer_activation_bytes,
)

B200 = HardwareRates.of(load_cluster("dgx-b200:1"))
B300 = HardwareRates.of(load_cluster("dgx-b300:1"))
H100 = HardwareRates.of(load_cluster("dgx-h100:1"))


def test_te_profiling_table_nvfp4_layer_on_b300():
    """TE's GEMM Profiling Tutorial, B300, pre-quantised, per layer (hidden 4096, intermediate 16384 non-gated, M =
    15,872; fprop + dgrad + wgrad of QKV, out, up, down): NVFP4 3.764 ms. Its ratio to FP8 CurrentScaling is the
    data, so with fp8 within 3 % of 6.812 (test_fp8) NVFP4 is within 3 % of 3.764; B300 has no k-depth term."""
    m = np.array([15872.0])
    fp4 = B300.for_fp8_recipe("nvfp4")
    t = 0.0
    for k, n in ((4096, 12288), (4096, 4096), (4096, 16384), (16384, 4096)):
        k_, n_ = np.array([float(k)]), np.array([float(n)])
        t += float(fp4.gemm_time_s(m, n_, k_, True)[0] + fp4.gemm_time_s(m, k_, n_, True)[0]
                   + fp4.gemm_time_s(k_, n_, m, True)[0])
    assert t * 1e3 == pytest.approx(3.764, rel=0.03)
    assert B300.nvfp4_gemm_time_ratio == 0.553 and B200.nvfp4_gemm_time_ratio == 0.497
    assert H100.nvfp4_gemm_time_ratio == 0.0 and H100.for_fp8_recipe("nvfp4") is H100


def test_nvfp4_k_depth_grows_with_the_k_loop_speed_on_b200():
    """B200's fp8 GEMMs pay k_0 = 577 (OpenXLA's sm_100 table). An NVFP4 k-loop runs 1 / 0.497 times faster per
    element of k while each tile's prologue and epilogue keep their time, so its k_0 is 577 / 0.497 = 1,161. A
    compute-bound 8192 x 8192 GEMM at k = 4096: time ratio 0.497 x (4096 + 1161) / (4096 + 577) = 0.559; at a long
    k = 65,536 it tends to 0.497 (0.502)."""
    fp4 = B200.for_fp8_recipe("nvfp4")
    assert fp4.gemm_shape.fp8_k_overhead == pytest.approx(577 / 0.497)
    n = np.array([8192.0])
    for k, expected in ((4096.0, 0.497 * (4096 + 577 / 0.497) / (4096 + 577)), (65536.0, 0.502)):
        kk = np.array([k])
        ratio = float(fp4.gemm_time_s(n, n, kk, True)[0] / B200.gemm_time_s(n, n, kk, True)[0])
        assert ratio == pytest.approx(expected, rel=2e-3)
    bf16 = float(fp4.gemm_time_s(n, n, n, False)[0])
    assert bf16 == float(B200.gemm_time_s(n, n, n, False)[0])  # bf16 GEMMs untouched


def test_nvfp4_cast_kernels_worked_example():
    """Per element quantised: an amax pass reads the bf16 tensor (2 B: the row-wise amax and the post-Hadamard
    column-wise one together), the fused cast reads it again (2 B) and writes both 4-bit copies (2 x (0.5 + 1/16) B):
    5.125 B, on every GPU (NVFP4 GEMMs take only the TN layout). A 4096 -> 4096 linear on 8,192 tokens, 8
    micro-batches, cached weight, B200 HBM 7.672 TB/s x 0.85."""
    L = LayoutArrays.from_layouts([Layout(mbs=1, gbs=64, dp=8, seq=8192)])
    g = [Linear(np.array([8192.0]), 4096, 4096)]
    hbm = 7.672e12 * 0.85
    fwd, bwd = fp8_cast_times(g, L, B200, "nvfp4", True)
    assert float(fwd[0]) == pytest.approx((8192 * 4096 + 4096 * 4096 / 8) * 5.125 / hbm)
    assert float(bwd[0]) == pytest.approx(8192 * 4096 * 5.125 / hbm)


def test_nvfp4_memory_weight_cache_and_saved_inputs():
    # The weight cache row- and column-wise, each 0.5 B + an E4M3 scale per 16: 1.125 B beside the bf16 weight.
    assert fp8_weight_copy_bytes("nvfp4", True) == fp8_weight_copy_bytes("nvfp4", False) == 1.125
    L = LayoutArrays.from_layouts([Layout(precision="fp8", seq=4096, mbs=1, gbs=8, dp=8)])
    assert float(bytes_per_param(L, fp8_weight_copy_bytes("nvfp4", True))[0][0]) == 2.0 + 1.125
    # One llama3.1-8b layer (h 4096, ffn 14336, v_dim 4096, no tp): the qkv and MLP inputs, the FFN product and the
    # out-projection's quantised copy are saved at 0.5625 B instead of fp8's 1 B.
    shapes = ModelShapes.of(load_model("llama3.1-8b"))
    mode = np.zeros(1)
    fp8 = float(layer_activation_bytes(shapes, L, False, mode)[0])
    fp4 = float(layer_activation_bytes(shapes, L, False, mode, fp8_saved=Fp8Saved(NVFP4_SAVED_INPUT_BYTES))[0])
    assert fp8 - fp4 == pytest.approx(4096 * (4096 + 4096 + 14336 + 4096) * (1.0 - 0.5625))


def test_nvfp4_runs_on_blackwell_only_and_keeps_bf16_parameters():
    model = load_model("llama3.1-8b")
    layout = Layout.parse("mbs=1,gbs=64,seq=8192,fp8_recipe=nvfp4", world=8)
    assert layout.precision == "fp8"
    h100 = estimate(model, load_cluster("dgx-h100:1"), layout)
    assert any("no NVFP4 tensor cores" in str(r) for r in h100.reasons)
    b200 = estimate(model, load_cluster("dgx-b200:1"), layout)
    assert b200.feasible
    fp8_params = estimate(model, load_cluster("dgx-b200:1"), layout.with_(fp8_params=True))
    assert any("keeps bf16 parameters" in str(r) for r in fp8_params.reasons)


def test_nvfp4_is_faster_than_current_scaling_on_b200_and_says_which_recipe_ran():
    model, cluster = load_model("llama3.1-70b"), load_cluster("dgx-b200:8")
    base = Layout.parse("tp=2,pp=4,vpp=5,mbs=1,gbs=256,seq=8192,precision=fp8,recompute=none", world=64)
    cs = estimate(model, cluster, base).to_json()
    fp4 = estimate(model, cluster, base.with_(fp8_recipe="nvfp4")).to_json()
    assert fp4["layout"]["fp8_recipe"] == "nvfp4" and "fp8_recipe" not in cs["layout"]
    assert (fp4["fp8_recipe"], cs["fp8_recipe"]) == ("nvfp4", "tensorwise")  # named though the layout leaves it out
    assert fp4["step_time_s"] < 0.85 * cs["step_time_s"]
    assert fp4["memory"]["peak_gib"] < cs["memory"]["peak_gib"] + 4  # bf16 weights + 1.125 B cache vs + 1 B
    # the output names the 4-bit GEMMs' best-shape rate beside bf16 and fp8: fp8's over B200's ratio 0.497
    rates = fp4["hardware"]["gemm_best_shape_tflops"]
    assert rates["nvfp4"] == pytest.approx(rates["fp8"] / 0.497, rel=1e-4) and "nvfp4" not in \
        cs["hardware"]["gemm_best_shape_tflops"]


def test_plan_pins_a_recipe_and_never_turns_fp8_params_on_under_nvfp4(run_cli, tmp_path):
    from clusterplan.solver.search import search

    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-b200:1")
    result = search(model, cluster, 64, 8192, fixed={"fp8_recipe": "nvfp4"}, top=20)
    assert {p.layout.fp8_recipe for p in result.plans} == {"nvfp4"}
    assert not any(p.layout.fp8_params for p in result.plans)
    mx = search(model, cluster, 64, 8192, fixed={"fp8_recipe": "mxfp8"}, top=5)
    assert {p.layout.fp8_recipe for p in mx.plans} == {"mxfp8"} and all(p.layout.fp8_params for p in mx.plans)
    # Pinned where the GPUs lack it, or beside a precision it contradicts: one line, exit 2.
    for fix, says in (("fp8_recipe=nvfp4", "no NVFP4 tensor cores"), ("fp8_recipe=mxfp8", "no MXFP8 tensor cores"),
                      ("fp8_recipe=nvfp4,precision=bf16", "needs precision=fp8"),
                      ("fp8_recipe=fp4", "choose one of")):
        code, out, err = run_cli("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--gbs", "64", "--seq",
                                 "8192", "--fix", fix)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and says in err, (fix, err)
    code, _, err = run_cli("plan", "--model", "llama3.1-8b", "--cluster", "dgx-b200:1", "--gbs", "64", "--seq", "8192",
                           "--fix", "fp8_recipe=nvfp4,fp8_params=1")
    assert code == 2 and "NVFP4 keeps bf16 parameters" in err


def test_layout_fp8_recipe_field():
    assert Layout.parse("fp8_recipe=mxfp8").precision == "fp8"
    assert Layout(precision="fp8", fp8_recipe="mxfp8").short().endswith("fp8:mxfp8")
    assert "fp8_recipe" not in Layout(precision="fp8").to_dict()
    assert Layout(precision="fp8", fp8_recipe="nvfp4").to_dict()["fp8_recipe"] == "nvfp4"
    with pytest.raises(BadInputError, match="needs precision=fp8"):
        Layout(precision="bf16", fp8_recipe="delayed")
    with pytest.raises(BadInputError, match="choose one of"):
        Layout(precision="fp8", fp8_recipe="int4")


def _flags(text: str) -> dict[str, str]:
    words = " ".join(line.strip().rstrip("\\") for line in text.splitlines() if not line.startswith("#")).split()
    return {w: (words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else "")
            for i, w in enumerate(words) if w.startswith("--")}


def test_megatron_export_runs_nvfp4_and_check_reads_it_back(tmp_path):
    from clusterplan.frameworks import export_plan
    from clusterplan.frameworks.read import read_config

    model, cluster = load_model("llama3.1-70b"), load_cluster("gb300-nvl72:16")
    layout = Layout.parse("tp=1,pp=4,vpp=5,mbs=1,gbs=256,seq=8192,fp8_recipe=nvfp4,recompute=none", world=64)
    text = export_plan("megatron", model, cluster, layout).text
    f = _flags(text)
    assert f["--fp4-format"] == "e2m1" and f["--fp4-recipe"] == "nvfp4" and "--bf16" in f
    assert not {"--fp8-format", "--fp8-recipe", "--fp8-param-gather"} & set(f)
    path = tmp_path / "train.sh"
    path.write_text(text)
    read = read_config(path, model, cluster.world_size)
    assert read.layout.precision == "fp8" and read.layout.fp8_recipe == "nvfp4" and read.fp8_recipe == "nvfp4"
    # an MXFP8 plan writes its recipe; the stack's first is written out as Megatron-LM's default would be delayed
    mx = _flags(export_plan("megatron", model, cluster, layout.with_(fp8_recipe="mxfp8")).text)
    assert mx["--fp8-recipe"] == "mxfp8" and mx["--fp8-format"] == "hybrid"
    assert _flags(export_plan("megatron", model, cluster, layout.with_(fp8_recipe="")).text)["--fp8-recipe"] == \
        get_stack("megatron-core").fp8_recipes[0]
    both = tmp_path / "both.sh"
    both.write_text(text.replace("--fp4-format e2m1", "--fp4-format e2m1 --fp8-format hybrid"))
    with pytest.raises(BadInputError, match="exclude each other"):
        read_config(both, model, cluster.world_size)


def test_torchtitan_exports_its_own_recipes_and_refuses_nvfp4():
    import tomllib

    from clusterplan.errors import InfeasibleError
    from clusterplan.frameworks import export_plan

    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-b200:2")
    layout = Layout.parse("mbs=1,gbs=64,seq=8192,fp8_recipe=mxfp8", world=16)
    cfg = tomllib.loads(export_plan("torchtitan", model, cluster, layout).text)
    assert cfg["model"]["converters"] == ["quantize.linear.mx"]
    assert cfg["quantize"]["linear"]["mx"]["recipe_name"] == "mxfp8_cublas"
    rowwise = tomllib.loads(export_plan("torchtitan", model, cluster, layout.with_(fp8_recipe="rowwise")).text)
    table = rowwise["quantize"]["linear"]["float8"]
    assert table["recipe_name"] == "rowwise" and table["enable_fsdp_float8_all_gather"] is False
    with pytest.raises(InfeasibleError, match="not fp8_recipe=nvfp4"):
        export_plan("torchtitan", model, cluster, layout.with_(fp8_recipe="nvfp4"))


def test_nvfp4_interval_does_not_borrow_the_fp8_rows_alone():
    """NVFP4 is its own precision in an interval's regime: an NVFP4 prediction draws on the published NVFP4 rows
    (Megatron-Bridge's NVFP4 summaries and MLPerf v5.1, precision=fp4), never on the fp8 rows' spread."""
    from clusterplan.reference.intervals import regime

    assert regime("B200", False, "fp8", 8192, 64, "nvfp4")["precision"] == "fp4"
    assert regime("B200", False, "fp8", 8192, 64, "mxfp8")["precision"] == "fp8"
    model, cluster = load_model("llama3.1-70b"), load_cluster("dgx-b200:8")
    base = Layout.parse("tp=2,pp=4,vpp=5,mbs=1,gbs=256,seq=8192,precision=fp8,recompute=none", world=64)
    from clusterplan.reference.intervals import attach

    fp4, fp8 = (estimate(model, cluster, base.with_(fp8_recipe=r)).to_json() for r in ("nvfp4", ""))
    for js in (fp4, fp8):
        attach(js, "B200", False)
    assert "precision=fp4" in fp4["step_time_interval"]["source"]
    assert "precision=fp8" in fp8["step_time_interval"]["source"]
