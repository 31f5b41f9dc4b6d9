"""The flash-attention core priced from published kernel curves (hardware_db/data/attention_kernels.yaml,
models/hardware/attention.py): every transcribed causal forward point is reproduced within 10 % by the layer model,
the backward follows the measured backward/forward ratio, sliding windows price their window."""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.hardware_db import get_attention_curves
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.attention import ATTN_BWD_FLOPS_OVER_FWD
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import causal_share, flash_core_times, layer_flops
from clusterplan.models.training.layout import Layout

H100 = HardwareRates.of(load_cluster("dgx-h100:1"))
CAUSAL_FORWARD = [c for c in get_attention_curves("H100-SXM5-80GB") if c.direction == "forward" and c.causal
                  and c.kernel not in ("fa1", "sdpa_fa2")]
"""The measured FA3-paper curves; the derived fa1 rows are checked apart (test_fa1_rows_are_fa2_halved), our own
H200 SDPA rows too (test_own_sdpa_curves_...)."""
SDPA_ROWS = [c for c in get_attention_curves("H200-SXM-141GB") if c.kernel == "sdpa_fa2"]
"""PyTorch SDPA's FA2 backend measured by us on one H200 (bench/bench_attention.py, tests/reference/
h200_sdpa_attention.csv): forward and backward, with and without the causal mask, head dim 64 and 128."""
FA1 = [c for c in get_attention_curves("H100-SXM5-80GB") if c.kernel == "fa1"]
FA1_OVER_FA2 = 0.5
"""FA2 paper (Dao 2023, arXiv 2307.08691) Sec. 4.1: FlashAttention-2 is around 2x faster than FlashAttention."""


def _bench_model(head_dim: int, window: int | None = None) -> ModelShapes:
    # The FA3 paper's benchmark: hidden 2048 = heads x head_dim, batch x seq = 16k tokens.
    return ModelShapes.of(ModelSpec(name=f"bench-d{head_dim}", n_layers=1, hidden=2048, n_heads=2048 // head_dim,
                                    head_dim=head_dim, ffn_hidden=8192, vocab=32000, sliding_window=window))


def _core(shapes: ModelShapes, seq: int, kernel: str, hw: HardwareRates = H100):
    L = LayoutArrays.from_layouts([Layout(mbs=16384 // seq, gbs=16384 // seq, seq=seq, flash_attn=True)])
    _, core_exec = layer_flops(shapes, L, False)
    fwd, bwd = flash_core_times(shapes, L, hw, core_exec, kernel)
    return float(core_exec[0]), float(fwd[0]), float(bwd[0])


def test_every_curve_has_a_source_and_six_lengths():
    assert len(CAUSAL_FORWARD) == 9  # fa2, cudnn, fa3 x head dim 64, 128, 256
    assert all("FA3 paper Fig. 5" in c.source and len(c.seq) == 6 for c in CAUSAL_FORWARD)


@pytest.mark.parametrize("curve", CAUSAL_FORWARD + [c for c in FA1 if c.direction == "forward" and c.causal],
                         ids=lambda c: f"{c.kernel}-d{c.head_dim}")
def test_published_causal_forward_points_within_10_percent(curve):
    shapes = _bench_model(curve.head_dim)
    for seq, published in zip(curve.seq, curve.tflops, strict=True):
        flops, fwd, _ = _core(shapes, seq, curve.kernel)
        assert flops / fwd / 1e12 == pytest.approx(published, rel=0.10), (curve.kernel, curve.head_dim, seq)


def test_fa1_rows_are_fa2_halved():
    """Every derived fa1 row is the FA3 paper's FlashAttention-2 row of the same direction, mask and head dim x 0.5, at
    the same lengths, and names both sources; nothing else is derived (8 rows: 3 + 3 forward, 2 backward)."""
    fa2 = {(c.direction, c.causal, c.head_dim): c for c in get_attention_curves("H100-SXM5-80GB") if c.kernel == "fa2"}
    assert len(FA1) == len(fa2) == 8
    for c in FA1:
        ref = fa2[(c.direction, c.causal, c.head_dim)]
        assert c.seq == ref.seq
        assert c.tflops == pytest.approx([FA1_OVER_FA2 * v for v in ref.tflops], abs=1e-9)
        assert c.source.startswith("derived: " + ref.source) and "FA2 paper Sec. 4.1" in c.source


def test_triton_runs_the_fa1_rate_on_h100():
    """llm-foundry's attn_impl triton (flash_attn_triton.py) is priced at the FlashAttention-1 rate: head dim 128, 16k
    (the curves' last point): causal forward 335 / 2 = 167.5 TFLOP/s; backward at 2.5x the FLOPs and the causal
    forward rate x the non-causal backward / forward ratio, (322 / 2) / (370 / 2), i.e. 167.5 x 161 / 185 = 145.8;
    exactly twice the fa2 time in both directions."""
    flops, fwd, bwd = _core(_bench_model(128), 16384, "triton")
    assert flops / fwd == pytest.approx(167.5e12)
    assert bwd == pytest.approx(ATTN_BWD_FLOPS_OVER_FWD * flops / (167.5e12 * 161 / 185))
    _, fa2_f, fa2_b = _core(_bench_model(128), 16384, "fa2")
    assert (fwd, bwd) == pytest.approx((2 * fa2_f, 2 * fa2_b))


A100_FA1_TFLOPS = 0.325 * 312.0
"""FA2 paper abstract: FlashAttention reaches 25-40 % of the A100's theoretical maximum; the band's midpoint x the
A100's 312 TFLOP/s dense bf16 = 101.4 TFLOP/s (attention_kernels.yaml A100 fa1 rows)."""


def test_triton_runs_the_fa1_band_midpoint_on_a100():
    """A100 has one flat FlashAttention-1 row (no per-length curve is published in text): llm-foundry's triton kernel
    runs 101.4 TFLOP/s forward at every length and head dim, and, with no backward curve, the same rate backward on
    2.5x the FLOPs. fa2 has no A100 row: its core stays on the GEMM shape model, faster than FA1's band."""
    a100 = HardwareRates.of(load_cluster("dgx-a100-80g:1"))
    assert a100.attention.has("triton") and not a100.attention.has("fa2")
    for seq, head_dim in ((512, 64), (8192, 128), (16384, 128)):
        flops, fwd, bwd = _core(_bench_model(head_dim), seq, "triton", a100)
        assert flops / fwd == pytest.approx(A100_FA1_TFLOPS * 1e12)
        assert bwd == pytest.approx(ATTN_BWD_FLOPS_OVER_FWD * flops / (A100_FA1_TFLOPS * 1e12))
    _, fa2_f, fa2_b = _core(_bench_model(128), 8192, "fa2", a100)
    _, fa1_f, fa1_b = _core(_bench_model(128), 8192, "triton", a100)
    assert fa2_f < fa1_f and fa2_b < fa1_b


def test_backward_follows_the_measured_backward_forward_ratio():
    # cuDNN, head dim 128, 8k: causal forward 529 TFLOP/s; non-causal backward 518 over non-causal forward 600, so
    # the causal backward runs at 529 x 518 / 600 = 456.7 TFLOP/s on 2.5x the forward FLOPs.
    flops, fwd, bwd = _core(_bench_model(128), 8192, "cudnn")
    assert flops / fwd == pytest.approx(529e12)
    assert bwd == pytest.approx(ATTN_BWD_FLOPS_OVER_FWD * flops / (529e12 * 518 / 600))


def test_sdpa_runs_its_own_measured_fa2_backend_curves():
    """PyTorch SDPA runs its vendored FA2 on H100: our measured sdpa_fa2 rows (carried from the H200 we measured them
    on), forward and the causal backward as measured, head dim 128 at 4k: 296.8 and 234.2 TFLOP/s."""
    assert H100.attention.family("sdpa") == "sdpa_fa2"
    flops, sdpa_f, sdpa_b = _core(_bench_model(128), 4096, "sdpa")
    assert flops / sdpa_f == pytest.approx(296.8e12, rel=1e-12)
    assert ATTN_BWD_FLOPS_OVER_FWD * flops / sdpa_b == pytest.approx(234.2e12, rel=1e-12)


def test_sdpa_without_its_own_rows_runs_the_fa2_curve_at_the_sdpa_fa2_ratio():
    """A GPU with the FA2 / FA3 curves but no sdpa_fa2 rows prices SDPA's forward at the fa2 curve x the measured
    sdpa_fa2 ratio (pytorch/pytorch#142132: 0.905) and its backward as the curve's."""
    import dataclasses

    att = dataclasses.replace(H100.attention, curves=tuple(c for c in H100.attention.curves if c.kernel != "sdpa_fa2"))
    hw = dataclasses.replace(H100, attention=att)
    assert att.family("sdpa") == "fa2" and att.sdpa_fa2_forward_ratio() == pytest.approx(0.905, abs=0.001)
    _, sdpa_f, sdpa_b = _core(_bench_model(128), 4096, "sdpa", hw)
    _, fa2_f, fa2_b = _core(_bench_model(128), 4096, "fa2", hw)
    assert sdpa_f == pytest.approx(fa2_f / att.sdpa_fa2_forward_ratio(), rel=1e-12)
    assert sdpa_b == pytest.approx(fa2_b, rel=1e-12)


def test_own_sdpa_rows_are_the_measurement():
    """The 8 sdpa_fa2 rows are the CSV's flash-backend rows as measured (6 lengths each), and name it."""
    from clusterplan.reference.report import read_rows

    assert len(SDPA_ROWS) == 8
    rows = [r for r in read_rows("h200_sdpa_attention.csv") if r["backend"] == "flash"]
    for c in SDPA_ROWS:
        mine = sorted((r for r in rows if (r["direction"], r["causal"] == "true", int(r["head_dim"]))
                       == (c.direction, c.causal, c.head_dim)), key=lambda r: int(r["seq"]))
        assert c.seq == tuple(int(r["seq"]) for r in mine)
        assert c.tflops == pytest.approx([float(r["tflops"]) for r in mine], abs=0.05)
        assert "h200_sdpa_attention.csv" in c.source


@pytest.mark.parametrize("curve", [c for c in SDPA_ROWS if c.causal], ids=lambda c: f"{c.direction}-d{c.head_dim}")
def test_own_sdpa_curves_are_reproduced_by_the_layer_model(curve):
    # The layer model's causal core on H200 with torchtitan's `sdpa` kernel, at every measured length.
    hw = HardwareRates.of(load_cluster("hgx-h200:1"))
    for seq, measured in zip(curve.seq, curve.tflops, strict=True):
        flops, fwd, bwd = _core(_bench_model(curve.head_dim), seq, "sdpa", hw)
        rate = flops / fwd if curve.direction == "forward" else ATTN_BWD_FLOPS_OVER_FWD * flops / bwd
        assert rate / 1e12 == pytest.approx(measured, rel=0.10), (curve.direction, curve.head_dim, seq)


def test_own_sdpa_forward_agrees_with_the_published_sdpa_ratio():
    # Check, not fitted: at the shape pytorch/pytorch#142132 measured (no mask, head dim 128, 4608; ours at 4096 and
    # 8192, interpolated in log seq), our SDPA forward over the FA3 paper's FA2 curve is 0.941 against that
    # measurement's 0.905 (sdpa over flash_v3 in one run, over the curves' FA2 / FA3): within 5 %.
    att = H100.attention
    seq = np.array([4608.0])
    ours = att.rate("sdpa", seq, 128, causal=False)[0] / att.rate("fa2", seq, 128, causal=False)[0]
    assert ours == pytest.approx(0.941, abs=0.005)
    assert ours == pytest.approx(att.sdpa_fa2_forward_ratio(), rel=0.05)


def test_kernel_choice_changes_the_time():
    # FA3 at head dim 128, 16k: 616 TFLOP/s; FlashAttention-2: 335 -> FA2 takes 616/335 x as long.
    _, fa3, _ = _core(_bench_model(128), 16384, "fa3")
    _, fa2, _ = _core(_bench_model(128), 16384, "fa2")
    assert fa2 / fa3 == pytest.approx(616 / 335)


def test_interpolates_in_log_seq_and_log_head_dim():
    # 3k lies at log2(3k/2k) = 0.585 between 2k (484) and 4k (518) on cuDNN d128: 484 + 0.585 x 34 = 503.9.
    rate = H100.attention.forward_flops_per_s("cudnn", np.array([3072.0]), 128.0)[0] / 1e12
    assert rate == pytest.approx(484 + np.log2(1.5) * 34)
    # head dim 181 = sqrt(128 x 256) sits half way in log(head dim): (539 + 509) / 2 at 16k.
    rate = H100.attention.forward_flops_per_s("cudnn", np.array([16384.0]), float(np.sqrt(128 * 256)))[0] / 1e12
    assert rate == pytest.approx((539 + 509) / 2)


def test_sliding_window_share_worked_example():
    # Window 128 at 4k: sum_i min(i, 128) / 4096^2 = 128/4096 - 128^2 / (2 x 4096^2) = 0.030762 of the blocks.
    shapes = _bench_model(128, window=128)
    share = causal_share(shapes, np.array([4096.0]))[0]
    assert share == pytest.approx(128 / 4096 - 128**2 / (2 * 4096**2))
    # Priced at the 512-key end of the curve (the window is shorter than any published length): 315 TFLOP/s.
    flops, fwd, _ = _core(shapes, 4096, "cudnn")
    assert flops / fwd == pytest.approx(315e12)


def test_gpu_without_curves_prices_the_causal_half_of_the_core_gemms():
    mi300x = HardwareRates.of(load_cluster("mi300x-8:1"))
    assert not mi300x.attention.has("cudnn")
    shapes = _bench_model(128)
    L = LayoutArrays.from_layouts([Layout(mbs=2, gbs=2, seq=8192, flash_attn=True)])
    from clusterplan.models.training.compute import core_gemm_times

    full, _ = core_gemm_times(shapes, L, mi300x)
    _, core_exec = layer_flops(shapes, L, False)
    fwd, bwd = flash_core_times(shapes, L, mi300x, core_exec, "cudnn")
    assert float(fwd[0]) == pytest.approx(0.5 * float(full[0]))
    assert float(bwd[0]) == pytest.approx(ATTN_BWD_FLOPS_OVER_FWD * float(fwd[0]))


# Blackwell: NVIDIA cudnn-frontend benchmark/sdpa_benchmark_training artifacts (causal forward AND backward measured),
# Llama-3.1-405B attention: batch 1, 128 query heads, 8 KV heads, head dim 128.
BLACKWELL = {"B200": "dgx-b200:1", "GB200": "gb200-nvl72:1", "GB300": "gb300-nvl72:1"}
BLACKWELL_CURVES = [c for gpu in BLACKWELL for c in get_attention_curves(gpu)
                    if c.window is None and "measured on" not in c.source and not c.source.startswith("derived")]
"""The full-causal rows as measured on each GPU (GB200's cuDNN curve is B200's at its clock: see below; B200's
head-dim-64 rows are derived: test_head_dim_64_rows_are_b200s_curve_times_the_gb200_919_ratio)."""
WINDOW_CURVES = [c for gpu in BLACKWELL for c in get_attention_curves(gpu)
                 if c.window is not None and "measured on" not in c.source]


def _llama405_attention() -> ModelShapes:
    return ModelShapes.of(ModelSpec(name="sdpa-bench-405b", n_layers=1, hidden=16384, n_heads=128, n_kv_heads=8,
                                    head_dim=128, ffn_hidden=53248, vocab=128256))


def test_blackwell_rows_are_the_published_cudnn_frontend_artifacts():
    # cuDNN and FlashAttention-2, forward and backward, full causal, on each of the three GPUs (GB200: FA2 only, its
    # cuDNN 9.17 curve is not priced): 10 curves of 9 lengths.
    assert len(BLACKWELL_CURVES) == 10
    assert all(c.causal and c.head_dim == 128 and c.seq == tuple(512 * 2**i for i in range(9)) for c in BLACKWELL_CURVES)
    assert all("sdpa_benchmark_training/artifacts/sdpa_bf16_benchmark_results_NVIDIA_" + c.gpu in c.source
               for c in BLACKWELL_CURVES)
    assert {(c.gpu, c.kernel, c.direction) for c in BLACKWELL_CURVES} == {
        (g, k, d) for g in BLACKWELL for k in ("cudnn", "fa2") for d in ("forward", "backward")
        if (g, k) != ("GB200", "cudnn")}


def test_gb200_runs_b200s_cudnn_curve_at_its_clock():
    """GB200's own artifact ran cuDNN 9.17.0, B200's and GB300's 9.13.1: GB200 prices B200's cuDNN curve x 2,500 /
    2,250 (same sm_100 die, dense BF16 peak ratio). Cross-check at 8k from the other side: GB300's cuDNN 9.13.1 curve
    x GB200 / GB300 both measured at cuDNN 9.22.0 (results/llama3.1/*/llama3.1_20260424_*.csv: forward 1,574 vs
    1,856, backward 1,332 vs 1,435)."""
    gb200 = HardwareRates.of(load_cluster("gb200-nvl72:1")).attention
    seq = np.array([8192.0])
    fwd = gb200.forward_flops_per_s("cudnn", seq, 128.0)[0] / 1e12
    bwd = gb200.backward_flops_per_s("cudnn", seq, 128.0)[0] / 1e12
    assert fwd == pytest.approx(1171.278 * 2500 / 2250) and bwd == pytest.approx(942.509 * 2500 / 2250)
    assert fwd == pytest.approx(1495.674 * 1574 / 1856, rel=0.03)
    assert bwd == pytest.approx(1130.076 * 1332 / 1435, rel=0.01)
    assert all("measured on B200" in c.source for c in get_attention_curves("GB200")
               if c.kernel == "cudnn" and c.window is None)


@pytest.mark.parametrize("curve", BLACKWELL_CURVES, ids=lambda c: f"{c.gpu}-{c.kernel}-{c.direction}")
def test_published_blackwell_points_within_10_percent(curve):
    # The check: the layer model's flash core reproduces every published point within 10 % (forward
    # FLOPs 4 b h s^2 d / 2, backward 2.5x, over the 128 query heads, as the benchmark counts them).
    hw = HardwareRates.of(load_cluster(BLACKWELL[curve.gpu]))
    shapes = _llama405_attention()
    for seq, published in zip(curve.seq, curve.tflops, strict=True):
        L = LayoutArrays.from_layouts([Layout(mbs=1, gbs=1, seq=seq, flash_attn=True)])
        _, core_exec = layer_flops(shapes, L, False)
        assert float(core_exec[0]) == pytest.approx(4 * 128 * seq**2 * 128 / 2)
        fwd, bwd = flash_core_times(shapes, L, hw, core_exec, curve.kernel)
        flops, t = ((float(core_exec[0]), float(fwd[0])) if curve.direction == "forward"
                    else (ATTN_BWD_FLOPS_OVER_FWD * float(core_exec[0]), float(bwd[0])))
        assert flops / t / 1e12 == pytest.approx(published, rel=0.10), (curve.gpu, curve.kernel, seq)


def test_measured_causal_backward_is_used_as_published():
    # B200 cuDNN at 8k: causal backward measured at 942.509 TFLOP/s (forward 1171.278): no forward x ratio.
    b200 = HardwareRates.of(load_cluster("dgx-b200:1"))
    rate = b200.attention.backward_flops_per_s("cudnn", np.array([8192.0]), 128.0)[0]
    assert rate == pytest.approx(942.509e12)
    # 6k sits at log2(6k/4k) = 0.585 between 4k (701.265) and 8k (942.509).
    rate = b200.attention.backward_flops_per_s("cudnn", np.array([6144.0]), 128.0)[0] / 1e12
    assert rate == pytest.approx(701.265 + np.log2(1.5) * (942.509 - 701.265))


def test_b300_runs_the_gb300_curve_at_its_clock():
    # Same Blackwell Ultra die; dense BF16 2,250 (HGX B300) vs 2,500 (GB300) TFLOP/s: the GB300 curve x 0.9.
    b300 = HardwareRates.of(load_cluster("dgx-b300:1")).attention
    gb300 = HardwareRates.of(load_cluster("gb300-nvl72:1")).attention
    seq = np.array([1024.0, 8192.0, 65536.0])
    for direction in ("forward", "backward"):
        assert np.allclose(b300.rate("cudnn", seq, 128.0, direction), 0.9 * gb300.rate("cudnn", seq, 128.0, direction))
    assert b300.forward_flops_per_s("cudnn", np.array([8192.0]), 128.0)[0] == pytest.approx(0.9 * 1495.674e12)
    assert all("measured on GB300" in c.source for c in get_attention_curves("B300"))


@pytest.mark.parametrize("gpu", ["B200", "GB200", "GB300"])
def test_sdpa_runs_cudnn_on_blackwell(gpu):
    # PyTorch SDPA puts cuDNN first on sm_100/sm_103 (sdp_utils.cpp check_prefer_cudnn_attention): torchtitan's
    # `sdpa` prices the cuDNN curve there, FlashAttention-2 on H100 (test_sdpa_runs_the_flash_attention_2_curve).
    hw = HardwareRates.of(load_cluster(BLACKWELL[gpu]))
    shapes = _llama405_attention()
    L = LayoutArrays.from_layouts([Layout(mbs=1, gbs=1, seq=8192, flash_attn=True)])
    _, core_exec = layer_flops(shapes, L, False)
    assert flash_core_times(shapes, L, hw, core_exec, "sdpa")[0] == flash_core_times(shapes, L, hw, core_exec,
                                                                                       "cudnn")[0]
    assert H100.attention.sdpa_family == "fa2"


def _gpt_oss_attention(window: int | None = 128) -> ModelShapes:
    # cudnn-frontend configs/gpt_oss.py: 128 query = 128 KV heads, head dim 64, every layer windowed at 128.
    return ModelShapes.of(ModelSpec(name="sdpa-bench-gpt-oss", n_layers=1, hidden=8192, n_heads=128, n_kv_heads=128,
                                    head_dim=64, ffn_hidden=2880, vocab=201088, sliding_window=window))


def test_window_rows_are_the_published_gpt_oss_runs():
    # GB200 and GB300, forward and backward, window 128, head dim 64, 2k-32k (cuDNN 9.22, run of 2026-04-24).
    assert {(c.gpu, c.direction, c.window, c.head_dim) for c in WINDOW_CURVES} == {
        (g, d, 128, 64) for g in ("GB200", "GB300") for d in ("forward", "backward")}
    assert all("results/gpt_oss/" + c.gpu.lower() in c.source and c.seq == (2048, 4096, 8192, 16384, 32768)
               for c in WINDOW_CURVES)


@pytest.mark.parametrize("curve", WINDOW_CURVES, ids=lambda c: f"{c.gpu}-{c.direction}")
def test_published_window_points_within_10_percent(curve):
    # The benchmark counts the band's unmasked elements, diagonal included: N = s (w + 1) - w (w + 1) / 2, forward
    # 2 b h N (d_qk + d_v) (backward 2.5x); its time is that over the published rate. The model counts s w - w^2 / 2
    # per head; its time must come within 10 % of the published one at every length.
    hw = HardwareRates.of(load_cluster(BLACKWELL[curve.gpu]))
    shapes, w = _gpt_oss_attention(), 128
    for seq, published in zip(curve.seq, curve.tflops, strict=True):
        L = LayoutArrays.from_layouts([Layout(mbs=2, gbs=2, seq=seq, flash_attn=True)])
        _, core_exec = layer_flops(shapes, L, False)
        fwd, bwd = flash_core_times(shapes, L, hw, core_exec, "cudnn")
        unmasked = seq * (w + 1) - w * (w + 1) / 2
        bench_flops = 2 * 2 * 128 * unmasked * (64 + 64) * (1.0 if curve.direction == "forward" else 2.5)
        model_s = float(fwd[0]) if curve.direction == "forward" else float(bwd[0])
        assert model_s == pytest.approx(bench_flops / (published * 1e12), rel=0.10), (curve.gpu, seq)


def test_window_curve_only_for_its_own_window():
    # GB200 at 8k: window 128 runs its measured band rate (165 TFLOP/s forward); window 256 has no curve and runs the
    # full-causal head-dim-64 curve at 256 keys (clamped to its 2k end: B200's derived 228.4 x 2,500 / 2,250 TFLOP/s
    # forward, GB200's cuDNN curves being B200's at its clock).
    gb200 = HardwareRates.of(load_cluster("gb200-nvl72:1"))
    L = LayoutArrays.from_layouts([Layout(mbs=2, gbs=2, seq=8192, flash_attn=True)])
    for window, rate in ((128, 165e12), (256, 228.4e12 * 2500 / 2250)):
        shapes = _gpt_oss_attention(window)
        _, core_exec = layer_flops(shapes, L, False)
        fwd, _ = flash_core_times(shapes, L, gb200, core_exec, "cudnn")
        assert float(core_exec[0]) / float(fwd[0]) == pytest.approx(rate)
    # B200 runs GB200's measured window-128 band at its clock (same sm_100 die): 165 x 2,250 / 2,500.
    b200 = HardwareRates.of(load_cluster("dgx-b200:1"))
    shapes = _gpt_oss_attention(128)
    _, core_exec = layer_flops(shapes, L, False)
    fwd, _ = flash_core_times(shapes, L, b200, core_exec, "cudnn")
    assert float(core_exec[0]) / float(fwd[0]) == pytest.approx(165e12 * 2250 / 2500)


# cudnn-frontend on GB200 at cuDNN 9.19.1 (results/gb200_919_only_cudnn): GPT-OSS attention (64 / 8 heads, head dim
# 64, window 1024, gpt_oss_20260226_175022.csv) and Llama-3.1 attention (64 / 8 heads, head dim 128, full causal,
# llama3.1_20260226_174648.csv), bf16 TFLOP/s at 2k, 4k, 8k, 16k, 32k, as published.
GB200_919 = {
    ("forward", 64): (497, 574, 609, 624, 632), ("backward", 64): (559, 617, 646, 658, 660),
    ("forward", 128): (1042, 1335, 1598, 1687, 1720), ("backward", 128): (836, 1132, 1311, 1402, 1473),
}


def test_head_dim_64_rows_are_b200s_curve_times_the_gb200_919_ratio():
    """B200's head-dim-64 full-causal cuDNN rows: its published cuDNN 9.13.1 head-dim-128 curve at 2k-32k x the
    head-dim-64 / head-dim-128 rate of one cuDNN 9.19.1 run on GB200 (the same sm_100 die), e.g. 8k forward
    1171.278 x 609 / 1598 = 446.4. GB200 takes them at its clock; Blackwell Ultra (GB300) has none."""
    curves = {(c.direction, c.head_dim): c for c in get_attention_curves("B200")
              if c.kernel == "cudnn" and c.window is None}
    seq = (2048, 4096, 8192, 16384, 32768)
    for direction in ("forward", "backward"):
        d64, d128 = curves[(direction, 64)], curves[(direction, 128)]
        assert d64.seq == seq and d64.source.startswith("derived")
        base = [t for s, t in zip(d128.seq, d128.tflops, strict=True) if s in seq]
        want = [b * lo / hi for b, lo, hi in zip(base, GB200_919[(direction, 64)], GB200_919[(direction, 128)],
                                                   strict=True)]
        assert d64.tflops == pytest.approx(want, abs=0.05)
    assert curves[("forward", 64)].tflops[2] == pytest.approx(1171.278 * 609 / 1598, abs=0.05)
    gb200 = HardwareRates.of(load_cluster("gb200-nvl72:1")).attention
    assert gb200.forward_flops_per_s("cudnn", np.array([8192.0]), 64.0)[0] == pytest.approx(446.4e12 * 2500 / 2250)
    gb300 = HardwareRates.of(load_cluster("gb300-nvl72:1")).attention
    assert not [c for c in get_attention_curves("GB300") if c.head_dim == 64 and c.window is None]
    assert gb300.forward_flops_per_s("cudnn", np.array([8192.0]), 64.0)[0] == pytest.approx(1495.674e12)


def test_gpt_oss_full_layer_core_on_gb200_worked_example():
    # One full-attention GPT-OSS layer on GB200, mbs 1 x 8192 tokens, 64 heads of dim 64: causal forward FLOPs
    # 4 x 64 x 8192^2 x 64 / 2 = 549.76 GFLOP at 446.4 x 2500 / 2250 = 496.0 TFLOP/s = 1.1084 ms; backward 2.5x the
    # FLOPs at 464.4 x 2500 / 2250 = 516.0 TFLOP/s = 2.6636 ms (head dim 128 would have been 0.4224 + 1.3124 ms).
    shapes = ModelShapes.of(ModelSpec(name="gpt-oss-full", n_layers=1, hidden=2880, n_heads=64, n_kv_heads=8,
                                      head_dim=64, ffn_hidden=2880, vocab=201088))
    gb200 = HardwareRates.of(load_cluster("gb200-nvl72:1"))
    L = LayoutArrays.from_layouts([Layout(mbs=1, gbs=1, seq=8192, flash_attn=True)])
    _, core_exec = layer_flops(shapes, L, False)
    assert float(core_exec[0]) == pytest.approx(4 * 64 * 8192**2 * 64 / 2)
    fwd, bwd = flash_core_times(shapes, L, gb200, core_exec, "cudnn")
    assert float(fwd[0]) == pytest.approx(549.7558e9 / (446.4e12 * 2500 / 2250), rel=1e-6)
    assert float(bwd[0]) == pytest.approx(2.5 * 549.7558e9 / (464.4e12 * 2500 / 2250), rel=1e-6)


def test_window_needs_a_causal_row():
    from clusterplan.errors import BadInputError
    from clusterplan.hardware_db.catalog import _parse_attention, load_db

    row = {"direction": "forward", "causal": False, "window": 128, "gpu": "GB200", "kernel": "cudnn", "head_dim": 64,
           "seq": [2048, 4096], "tflops": [1.0, 2.0], "source": "x"}
    with pytest.raises(BadInputError, match="window must be a positive integer on a causal row"):
        _parse_attention({"rows": [row]}, load_db().gpus)


def test_torchtitan_stacks_run_sdpa_with_cudnn_first():
    """torchtitan's ScaledDotProductAttentionWrapper calls SDPA with cuDNN first (stacks.yaml torchtitan
    sources.kernels): on H100 its core runs the cuDNN curve (head dim 128, 8k: 529 TFLOP/s forward), not the SDPA
    FA2-backend one (313.5); the published torchtitan rows, older than the wrapper, keep plain `sdpa`
    (reference/titan.py published_sdpa). Where no cuDNN curve exists (AMD: PyTorch on ROCm has no cuDNN backend) it
    runs what plain SDPA runs."""
    from clusterplan.hardware_db import get_stack
    from clusterplan.reference.titan import published_sdpa

    for name in ("torchtitan", "torchtitan-compile", "torchtitan-compile-loss"):
        stack = get_stack(name)
        assert stack.attention_kernel == "sdpa_cudnn_first" and stack.torch_sdpa
        assert published_sdpa(stack).attention_kernel == "sdpa" and published_sdpa(stack).torch_sdpa
    assert H100.attention.family("sdpa_cudnn_first") == "cudnn"
    flops, fwd, _ = _core(_bench_model(128), 8192, "sdpa_cudnn_first")
    assert flops / fwd == pytest.approx(529e12)
    flops, fwd, _ = _core(_bench_model(128), 8192, "sdpa")
    assert flops / fwd == pytest.approx(313.5e12)
    mi300x = HardwareRates.of(load_cluster("mi300x-8:1")).attention
    assert mi300x.family("sdpa_cudnn_first") == mi300x.family("sdpa")


def test_flash_backward_counts_the_value_head_dim_apart():
    """Flash backward recomputes S and computes dQ, dK (inner d_qk) and dV, dP (inner d_v) against the forward's S
    (d_qk) and O (d_v): (3 d_qk + 2 d_v) / (d_qk + d_v). Equal head dims: 5 / 2 = 2.5 (Dao 2023); DeepSeek-V3's MLA,
    192 / 128: (576 + 256) / 320 = 2.6, as NVIDIA's cudnn-frontend DeepSeek-V3 attention benchmark counts it."""
    from clusterplan.models.hardware.attention import flash_backward_flops_over_forward

    assert flash_backward_flops_over_forward(128, 128) == ATTN_BWD_FLOPS_OVER_FWD == 2.5
    assert flash_backward_flops_over_forward(192, 128) == pytest.approx(2.6)
    # In the priced layer: DeepSeek-V3's attention backward is 2.6 x its forward FLOPs at the backward curve.
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.models.architecture.shapes import ModelShapes

    shapes = ModelShapes.of(load_model("deepseek-v3"))
    assert (shapes.q_dim / shapes.n_heads, shapes.v_dim / shapes.n_heads) == (192, 128)
