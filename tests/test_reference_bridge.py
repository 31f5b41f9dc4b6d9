"""NeMo 25.11 / Megatron-Bridge pre-training throughput (tests/reference/megatron_bridge_2511.csv) against `estimate`.

Issue #13's target: every row the CLI can express within 15 % of the published tokens/s per GPU, median within 8 %.
These rows are a check set: no model constant is fitted to them, and no per-row factor exists.

The model does not reach the target yet. Each expressible row is asserted against the larger of the 15 % target and
the error it reached when this test last landed plus 3 points (BOUNDS), and the median against MEDIAN_BOUND, so the
test fails when the model gets worse; tighten the bounds as the model improves (a deliberate model change that moves a
row past its bound updates BOUNDS with the reason in its commit message). Rows the CLI cannot express are listed by
`python -m clusterplan.reference` with their reason; here each such row must carry one, and the set of expressible
rows may only grow. History: 0f36a86 + GPT-OSS preset: median 23.5 %, max 123 % over 14 rows; stacks' overlap:
median 25.3 %, max 147 % (the compute side over-predicts); uneven interleaved stages: 22 rows, median 24.6 %;
train-compute (GB300 preset, GEMMs priced by shape, flash attention at its measured kernel curves, fp8 recipe costs,
experts as grouped GEMMs, stack's first fp8 recipe): 31 rows, median 13.9 %, max 171 %. Each row now runs its own
fp8 recipe (FP8-CS tensorwise, FP8-MX mxfp8): the MXFP8 rows move up 2-4 points (the model prices MXFP8 cheaper than
current scaling; the data has it 4-6 % slower).
Measured: 2026-12-03 13:36 UTC on main a3541a5 (fp8 recipe per row): median |error| 14.2%, max 180.8% over 31 of 31 rows.
train-moe (MoE router/permute/unpermute kernels, TE 4-stream grouped GEMM, DeepSeek-V3 MTP on the last stage):
median |error| 12.1%, max 146.1% over 31 of 31 rows.
trainmem (memory as the recipes run: bf16 main gradients, grad_reduce_in_fp32=False in every perf recipe, so the
data-parallel gradient reduce moves 2 B per parameter; recompute modules): median 12.1 %, max 146.1 %; B200 GPT-OSS
+55 -> +91 %, B200 405B +4 points, GB200 GPT-OSS -9 points (after the TP-overlap GEMM side: median 10.0 %).
Blackwell attention curves (cudnn-frontend sdpa_benchmark_training: cuDNN and FA2, causal fwd/bwd, head dim 128, on
B200/GB200/GB300; B300 = GB300 x clock): the flash core on Blackwell had been priced as its two GEMMs on the shape
model (about 840 TFLOP/s for Llama at 8k) instead of the measured 1,170-1,580, so Blackwell predictions rise:
median |error| 13.6 %, max 142.4 % over 31 of 31 rows.
MXFP8 priced from sources (TE GEMM Profiling Tutorial on B300: block-scaled GEMMs 1.051x the per-tensor fp8 time,
operands pre-quantised; TE docs: per-tensor scaled fp8 keeps one copy on Blackwell, MXFP8 a row- and a column-wise
one): the MXFP8 rows drop 3-5 points, current scaling on Blackwell rises about 1 point (5 B per cast element, not
6): median |error| 13.1 %, max 139.9 % over 31 of 31 rows. MoE rows' bounds are left to the MoE work.
gptoss (GPT-OSS's eager swiglu_limit clamp around Megatron-Core's fused quick-GEGLU, priced as its HBM bytes; the
TFLOP/s column now in Megatron-Bridge's own FLOP count): GPT-OSS GB300 +48.2 -> +39.8 %, GB200 +64.3 -> +51.7 %,
B200 +95.9 -> +87.2 %, H100 +26.8 -> +18.0 %; no other row moves.
MoE host time (models/training/host.py: eager MoE layers issue their ops from the CPU, the dispatcher syncs once per
layer; per-op host cost from TransformerEngine#2053, CUDA graphs as each recipe sets them): median 12.6 %, max 89.7 %;
B200 Qwen3-30B +139.9 -> -4.5 %, B200 Qwen3-235B +88.7 -> +64.9 %, H100 Qwen3-30B +100.5 -> +89.7 %, GB300
DeepSeek-V3 FP8-MX +10.8 -> -0.6 % (MLA attention and shared experts counted as their modules), GB300 DeepSeek-V3 BF16 -3.4 -> -4.3 %, GB300 Qwen3-235B BF16 -5.9 -> -7.0 %.
GB200's cuDNN attention curve was measured at cuDNN 9.17, B200's and GB300's at 9.13.1 (the version moves the curve
~25 %, more than the GPU does): GB200 now runs B200's curve x 2,500 / 2,250 (cross-checked against GB300 x GB200/GB300
at cuDNN 9.22 within 3 %): GB200 rows drop 2-6 points; median 12.3 %, max 89.7 %.
bridgecfg (each row's recipe settings audited against the Megatron-Bridge perf configs, bridge.ROW_SOURCES): Qwen3-30B
runs without recompute (every perf config sets recompute_granularity None), B200 Qwen3-30B with CUDA graphs, B200
DeepSeek-V3 and GB200/B200/H100 GPT-OSS without, the 256-GPU Qwen3-235B, GB200 DeepSeek-V3 BF16 and GB300 GPT-OSS with
TE attention graphs: Qwen3-30B GB300 -14.5 -> +15.9 %, GB200 +1.1 -> +36.8 %, B200 -4.5 -> +224.6 %, H100 +89.7 ->
+158.5 %; the MoE host time had been matched against settings the recipes do not run. Median 12.9 %, max 224.6 %.
dsv3mtp (the GB300 / GB200 DeepSeek-V3 runs had no MTP layer: their published TFLOP/s are Megatron-Bridge's count
without it, bridge.MTP_LAYERS; B200 keeps it; and the optimizer step shards routed experts over the expert-DP group,
MoE rows 0-0.6 points slower): GB300 BF16 -4.3 -> -4.0 %, GB300 FP8-MX -0.6 -> +1.0 %, GB200 BF16 +12.9 -> +13.2 %,
GB200 FP8-MX -2.7 -> +18.7 % (its pp8 vp4 last rank no longer carries the MTP layer and second head), B200 +48.6 ->
+48.4 %; median 12.9 -> 13.2 %, max 224.0 %.
moeh100 (fp8 MoE layers pay Megatron-Core TEGroupedMLP's Fp8Padding / Fp8Unpadding copies of the routed tokens,
models/training/moe_layer.py fp8_padding_bytes; every fp8 MoE row moves down, no other row): H100 Qwen3-30B +158.0 ->
+148.6 %, B200 Qwen3-30B +224.0 -> +206.9 %, B200 Qwen3-235B +64.8 -> +55.4 %, B200 DeepSeek-V3 +48.4 -> +47.0 %,
GB200 Qwen3-30B +36.6 -> +28.8 %, GB200 DeepSeek-V3 FP8-MX +18.7 -> +14.1 %, GB300 Qwen3-30B +15.7 -> +9.0 %, GB300
DeepSeek-V3 FP8-MX +1.0 -> -2.8 %; median 13.2 -> 13.1 %, max 224.0 -> 206.9 %.
gptoss2 (Megatron-Core's eager expert fc2 bias x routing prob after the grouped GEMM, TEGroupedMLP._apply_bias, 12 B
forward / 16 B backward per routed token x hidden; head dim 64 on sm_100 at B200's cuDNN curve x the d64 / d128 rate
of one cuDNN 9.19.1 GB200 run): GPT-OSS GB300 +38.2 -> +32.4 %, GB200 +46.7 -> +28.2 %, B200 +86.1 -> +78.2 %, H100
+17.4 -> +13.2 %; no other row moves; median 12.2 %. Stop 36, GB200's sustained GEMM rate derived from B200's
measured one at GB200's 1,200 W cap (gemm.yaml; tests/test_sustained_gemm.py): every GB200 row 1.2-3.4 points faster
(8B FP8-CS +8.6 -> +6.2 %, 405B +11.3 -> +7.9 %); median 10.1 -> 7.9 %, max 114.9 %; bounds re-based to the landed
errors + 3 points.
"""

from __future__ import annotations

import pytest

from clusterplan.reference import bridge
from clusterplan.reference.bridge import bridge_rows, summary
from clusterplan.reference.report import main as report_main

TARGET_ROW = 0.15
TARGET_MEDIAN = 0.08

BOUNDS = {
    # row -> |error| bound of tokens/s per GPU (achieved + 3 points, at least the 15 % target); comment: achieved
    ("DGX-GB300", "LLAMA3_8B", "FP8-CS"): 0.15,  # -3.3% (one fp8 copy per current-scaled tensor on Blackwell)
    ("DGX-GB300", "LLAMA3_8B", "FP8-MX"): 0.15,  # -0.9% (MXFP8 GEMMs 1.051x per-tensor fp8, TE B300 table)
    ("DGX-GB300", "LLAMA3_70B", "FP8-CS"): 0.15,  # +8.6% (its 20 offloaded layers' host copies hide: offload_s 0;
    # +13.1 -> +8.6 with the FSDP collectives' NCCL CTAs taking SMs from the compute they overlap, interference_s)
    ("DGX-GB300", "LLAMA3.1_405B", "FP8-CS"): 0.15,  # -4.8% (-8.4% with TE's bulk TP-overlap SM margin)
    ("DGX-GB300", "DeepSeekV3", "BF16"): 0.15,  # -4.0% (run without the MTP layer, bridge.MTP_LAYERS: was -4.3%)
    ("DGX-GB300", "DeepSeekV3", "FP8-MX"): 0.15,  # -2.8% (fp8 expert padding copies: was +1.0%; without MTP: was
    # -0.6%; eager MoE host time on Grace, MLA and shared-expert modules counted: was +10.8%)
    ("DGX-GB300", "GPT_OSS_120B", "BF16"): 0.36,  # +32.4% (was +38.2%: Megatron-Core's eager expert fc2 bias,
    # TEGroupedMLP._apply_bias, moe_layer.expert_bias_bytes; GB300 keeps the head-dim-128 attention curve;
    # was +48.2%: the eager swiglu_limit clamp of Megatron-Core's
    # quick-GEGLU, compute.clamp_bytes; Blackwell attention curves; window-128 layers at their measured band rate;
    # +39.8 -> +38.4 with the recipe's TE attention graphs instead of full-iteration graphs, bridgecfg audit)
    ("DGX-GB300", "Qwen3_30B_a3B", "FP8-MX"): 0.15,  # +9.0% (fp8 expert padding copies: was +15.7%; recipe sets no
    # recompute: was -14.5% with full)
    ("DGX-GB300", "Qwen3_235B_a22B", "BF16"): 0.15,  # -7.9%
    ("DGX-GB200", "LLAMA3_8B", "FP8-CS"): 0.15,  # +6.2% (GB200 sustained GEMM rate, gemm.yaml: was +8.6%); +12.8%
    # (GB200 attention at B200's cuDNN 9.13.1 curve x clock,
    # was +16.9% at its own cuDNN 9.17 curve)
    ("DGX-GB200", "LLAMA3_8B", "FP8-MX"): 0.15,  # +10.5% (GB200 sustained GEMM rate: was +13.0%); +17.6% (MXFP8 GEMMs
    # 1.051x: +25.1 -> +21.8; GB200 attention at
    # B200's cuDNN 9.13.1 curve x clock: -> +17.6)
    ("DGX-GB200", "LLAMA3_70B", "FP8-CS"): 0.15,  # +7.7% (GB200 sustained GEMM rate: was +10.6%); +12.3% (+16.8 ->
    # +12.3: FSDP interference_s; GB200 attention at B200's cuDNN 9.13.1 curve x clock;
    # its 40 offloaded layers' host copies hide under TE's schedule at 225 GB/s: offload_s 0)
    ("DGX-GB200", "LLAMA3.1_405B", "FP8-CS"): 0.15,  # +7.5% (warm-up sends: was +7.9%; GB200 sustained GEMM rate: was
    # +11.3%); +11.2% (+7.1% with TE's bulk TP-overlap SM margin)
    ("DGX-GB200", "DeepSeekV3", "BF16"): 0.15,  # +7.8% (warm-up sends: +8.1%; GB200 sustained GEMM rate: was +10.2%);
    # +13.2% (without MTP: was +12.9%; recompute modules priced as the mla_up_proj GEMMs, not the core;
    # +13.9 -> +12.9 with the V2 recipe's TE attention graphs instead of full-iteration graphs)
    ("DGX-GB200", "DeepSeekV3", "FP8-MX"): 0.15,  # +5.5% (warm-up sends: +6.1%; GB200 sustained GEMM rate: was
    # +7.8%); +14.1% (fp8 expert padding copies: was +18.7%;
    # was -2.7%: the run had no MTP layer, bridge.MTP_LAYERS;
    # pp8 vp4's last rank held 6 layers + MTP layer + 2 LM heads, the slowest stage; without them rank 0's 7 layers)
    ("DGX-GB200", "GPT_OSS_120B", "BF16"): 0.28,  # +24.1% (GB200 sustained GEMM rate: was +26.0%); +28.2% (was
    # +46.7%: the eager expert fc2 bias -> +41.0, the
    # full-attention layers at the head-dim-64 sm_100 cuDNN curve -> +28.2; no CUDA graphs as the ep64 recipe: +49.7 -> +46.9;
    # was +64.3%: the eager activation clamp, rerun by the
    # moe_act recompute; Blackwell attention curves; window-128 layers at their measured band rate; -2 points with
    # GB200's full-causal cuDNN curve at B200's x clock)
    ("DGX-GB200", "Qwen3_30B_a3B", "FP8-MX"): 0.25,  # +22.0% (GB200 sustained GEMM rate: was +23.2%); +28.8% (fp8
    # expert padding copies: was +36.6%; recipe sets no
    # recompute: was +1.1% with full)
    ("DGX-GB200", "Qwen3_235B_a22B", "BF16"): 0.15,  # +0.4% (GB200 sustained GEMM rate: was +2.4%); +4.7% (TE
    # attention graphs as the 256-GPU recipe: was +7.0%)
    ("DGX-B200", "LLAMA3_8B", "FP8-CS"): 0.15,  # +8.8% (B200 HBM 7.672 TB/s, its 7,680-bit bus: was +9.6%)
    ("DGX-B200", "LLAMA3_8B", "FP8-MX"): 0.15,  # +11.3% (B200 HBM 7.672 TB/s: was +12.1%; MXFP8 GEMMs 1.051x; +15.2%
    # before)
    ("DGX-B200", "LLAMA3.1_405B", "FP8-CS"): 0.16,  # +10.2% (warm-up sends, stop 36); +12.1% (B200 sustained GEMM
    # rate, stop 35); +15.7% (+11.1% with TE's bulk SM margin); +17.2% (B200 HBM 7.672 TB/s: was +17.6%; TP overlap
    # -5.8, bf16 gradient reduce +4)
    ("DGX-B200", "LLAMA3.1_405B", "FP8-MX"): 0.17,  # +11.3% (warm-up sends, stop 36); +13.2% (B200 sustained GEMM
    # rate, stop 35); +18.8% (+14.2% with TE's bulk SM margin); +20.3% (B200 HBM 7.672 TB/s: was +20.7%; MXFP8 GEMMs
    # 1.051x; +25.3% before)
    ("DGX-B200", "DeepSeekV3", "FP8-MX"): 0.38,  # +34.7% (bound re-based to the landed error at stop 36); +46.3%
    # (B200 HBM 7.672 TB/s: was +47.0%; fp8 expert padding copies: was +48.4%;
    # no CUDA graphs as the tp1 pp16 ep8 recipe: was +56.4%;
    # keeps its MTP layer, as its published TFLOP/s count it)
    ("DGX-B200", "GPT_OSS_120B", "BF16"): 0.75,  # +71.5% (bound re-based to the landed error at stop 36); +77.1%
    # (B200 HBM 7.672 TB/s: was +78.2%; was +86.1%: eager expert fc2 bias, head-dim-64 cuDNN
    # curve, window-128 layers at GB200's band x clock; no CUDA graphs beside the recompute modules: +87.2 -> +86.8;
    # was +95.9%: the eager activation clamp; bf16 gradient
    # reduce halves the cross-node expert gradient reduce-scatter over edp 8 that hid part of the compute side's
    # over-prediction: was +55.2%; +91.1 -> +94.3 with the Blackwell attention curves)
    ("DGX-B200", "Qwen3_30B_a3B", "FP8-MX"): 0.27,  # +24.0% (bound re-based to the landed error at stop 36); +203.1%
    # (B200 HBM 7.672 TB/s: was +206.8%; fp8 expert padding copies: was +224.0%;
    # bridgecfg audit: every perf config sets CUDA graphs on
    # B200 and no recompute; was -4.5% priced eager with full recompute, +139.9% before the MoE host time)
    ("DGX-B200", "Qwen3_235B_a22B", "FP8-MX"): 0.42,  # +38.1% (bound re-based to the landed error at stop 36); +54.9%
    # (B200 HBM 7.672 TB/s: was +55.4%; fp8 expert padding copies: was +64.8%; eager MoE host
    # time: was +88.7%)
    ("DGX-H100", "LLAMA3_8B", "FP8-CS"): 0.15,  # -3.4% (+0.1 -> -3.4: its Megatron FSDP gathers now cost the
    # overlapped compute 24 of 132 SMs, interference_s)
    ("DGX-H100", "LLAMA3_70B", "FP8-CS"): 0.15,  # -2.2% (-5.1% with TE's bulk TP-overlap SM margin)
    ("DGX-H100", "LLAMA3.1_405B", "FP8-CS"): 0.15,  # +3.3% (-0.3% with TE's bulk SM margin; +19.1% when its bound was
    # set)
    ("DGX-H100", "GPT_OSS_120B", "BF16"): 0.17,  # +13.2% (was +17.4%: the eager expert fc2 bias; was +26.8%: the
    # eager activation clamp; no CUDA graphs)
    ("DGX-H100", "Qwen3_30B_a3B", "FP8-CS"): 1.17,  # +114.0% (fp8 GEMM k-depth term, fc2 k = 768: was +119.5%;
    # current scaling quantises each expert split in
    # 6 + 1 host ops: was +148.6%; fp8 expert padding copies: was +158.0%;
    # recipe sets no recompute: was +89.7% with full;
    # +100.5% before the MoE host time)
}
MEDIAN_BOUND = 0.107  # achieved 7.7 % (7.9 % before Megatron-Core's warm-up sends were exposed, pp_warmup_exposed;
# 10.1 % before GB200's sustained GEMM rate; 12.2 %, 12.3 % before the current-scaling split quantize; 13.1 % before
# interference_s; 12.9 % before the GB DeepSeek-V3 rows lost MTP)
NEW_ROW_BOUND = max(BOUNDS.values())
"""A row that becomes expressible later (a GB300 preset, uneven stages with vpp) is held to the worst stated bound
until its own bound is added here."""


@pytest.fixture(scope="module")
def rows() -> list[bridge.BridgeRow]:
    return bridge_rows()


def _key(r: bridge.BridgeRow) -> tuple[str, str, str]:
    return (r.system, r.model, r.precision)


def test_every_csv_row_is_reported_with_a_model_preset(rows):
    assert len(rows) == 31
    assert {r.model for r in rows} == set(bridge.MODELS) - {"Nemotron_3_Nano", "Nemotron_3_Super"}  # bridge_hybrid.py
    for r in rows:
        assert r.expressible or r.reason, f"{r.label}: neither predicted nor given a reason"
        assert r.layout is not None and r.layout.world == r.gpus


def test_expressible_rows_only_grow(rows):
    expressible = {_key(r) for r in rows if r.expressible}
    lost = set(BOUNDS) - expressible
    assert not lost, f"rows no longer expressible: {sorted(lost)}"


@pytest.mark.parametrize("key", sorted(BOUNDS))
def test_row_error_within_bound(rows, key):
    row = next(r for r in rows if _key(r) == key)
    assert BOUNDS[key] >= TARGET_ROW
    assert abs(row.error) <= BOUNDS[key], (
        f"{row.label}: predicted {row.predicted_tokens_per_s:.0f} tokens/s/GPU vs published "
        f"{row.published_tokens_per_s:.0f} ({row.error:+.1%}), bound {BOUNDS[key]:.0%}")


def test_rows_without_a_stated_bound_stay_within_the_worst_bound(rows):
    for r in rows:
        if r.expressible and _key(r) not in BOUNDS:
            assert abs(r.error) <= NEW_ROW_BOUND, f"{r.label}: {r.error:+.1%}; add its bound to BOUNDS"


def test_median_error_within_bound(rows):
    n, median, _ = summary(rows)
    assert n >= len(BOUNDS)
    assert median <= MEDIAN_BOUND, f"median |error| {median:.1%} > {MEDIAN_BOUND:.0%} (target {TARGET_MEDIAN:.0%})"


def test_recipe_stage_splits_match_hand_counts():
    """Megatron's embedding/loss-aware split and DeepSeek-V3's recipe layouts, counted by hand per pipeline rank."""
    from clusterplan.models.architecture.catalog import load_model

    l405 = load_model("llama3.1-405b")
    # 126 + 2 = 128 over pp 8 x vp 8 = 64 chunks of 2: rank 0 holds E+1, 2 x 7 = 15 layers; last rank 15; others 16.
    assert bridge.stage_split(l405, 8, 8)[:2] == (15, 15)
    # pp 16 x vp 4 = 64 chunks of 2: 4 chunks per rank, 7 layers on the end ranks.
    assert bridge.stage_split(l405, 16, 4)[:2] == (7, 7)
    ds = load_model("deepseek-v3")
    # pp 16: [E+4, 4 x 14, 1+MTP+L]; pp 4 x vp 4: rank 0 chunks 0,4,8,12 = 16, rank 3 chunks 3,7,11,15 = 4+4+4+1.
    assert bridge.stage_split(ds, 16, 1)[:2] == (4, 1)
    assert bridge.stage_split(ds, 4, 4)[:2] == (16, 13)
    assert bridge.stage_split(load_model("llama3.1-8b"), 1, 1) == (0, 0, "")


def test_report_prints_the_bridge_table_and_writes_markdown(tmp_path, capsys):
    assert report_main(["--markdown"]) == 0
    text = capsys.readouterr().out
    assert "Megatron-Bridge" in text and text.count("| DGX-") == 31
    out = tmp_path / "reference.md"
    assert report_main(["--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == text


def test_each_row_runs_its_own_fp8_recipe():
    """FP8-CS is per-tensor current scaling; FP8-MX is MXFP8 on Blackwell and the DeepSeek-V3 blocks on H100."""
    from clusterplan.models.hardware.cluster import load_cluster

    blackwell, hopper = load_cluster("dgx-b200:1"), load_cluster("dgx-h100:1")
    assert bridge.fp8_recipe("FP8-CS", blackwell) == "tensorwise"
    assert bridge.fp8_recipe("FP8-MX", blackwell) == "mxfp8"
    assert bridge.fp8_recipe("FP8-MX", hopper) == "blockwise"
    assert bridge.fp8_recipe("BF16", hopper) is None


def test_every_row_names_its_recipe_source(rows):
    """The audit (bridge.ROW_SOURCES) covers every CSV row (25.11, and the hybrid table's), with a verdict and the
    files it read."""
    from clusterplan.reference.bridge_hybrid import hybrid_rows

    assert {_key(r) for r in [*rows, *hybrid_rows()]} == set(bridge.ROW_SOURCES)
    for key, src in bridge.ROW_SOURCES.items():
        assert src.verdict in bridge.VERDICTS, key
        assert ".py" in src.source or ".yaml" in src.source, key
    later = [r for r in rows if bridge.ROW_SOURCES[_key(r)].note]
    assert later and all(bridge.ROW_SOURCES[_key(r)].note in r.notes for r in later)


def test_recipe_settings_the_audit_fixed():
    """Qwen3 perf configs set recompute_granularity None (overriding the recipe's enable_recompute); B200 Qwen3-30B
    ran dropless (Megatron-Bridge issue #1998), which a 25.11 full-iteration graph cannot hold: no graphs; B200
    DeepSeek-V3 (tp1 pp16 ep8) none; the ep64 GB200 GPT-OSS recipe none beside its modules."""
    from clusterplan.models.architecture.catalog import load_model

    csv = {(r["system"], r["model"], r["precision"]): r for r in bridge.read_rows(bridge.BRIDGE_CSV)}
    q30 = load_model("qwen3-30b-a3b")
    for system, precision in (("DGX-GB300", "FP8-MX"), ("DGX-B200", "FP8-MX"), ("DGX-H100", "FP8-CS")):
        layout, _ = bridge.bridge_layout(csv[(system, "Qwen3_30B_a3B", precision)], q30)
        assert layout.recompute == "none"
    b200_q30, _ = bridge.bridge_layout(csv[("DGX-B200", "Qwen3_30B_a3B", "FP8-MX")], q30)
    assert b200_q30.cuda_graphs == "none" and b200_q30.moe_capacity_factor is None
    assert "#1998" in bridge.ROW_SOURCES[("DGX-B200", "Qwen3_30B_a3B", "FP8-MX")].source
    ds, _ = bridge.bridge_layout(csv[("DGX-B200", "DeepSeekV3", "FP8-MX")], load_model("deepseek-v3"))
    assert (ds.cuda_graphs, ds.recompute_modules) == ("none", "mla_up_proj")
    go, _ = bridge.bridge_layout(csv[("DGX-GB200", "GPT_OSS_120B", "BF16")], load_model("gpt-oss-120b"))
    assert (go.cuda_graphs, go.recompute_modules) == ("none", "moe_act+layernorm")


def test_deepseek_mtp_layer_per_row(rows):
    """The GB300 / GB200 DeepSeek-V3 runs had no MTP layer (bridge.MTP_LAYERS: their published TFLOP/s count none);
    the B200 run keeps the recipe's one, on its last stage after the last decoder layer."""
    ds = {r.system: r for r in rows if r.model == "DeepSeekV3"}
    for system in ("DGX-GB300", "DGX-GB200"):
        model, note = bridge.row_model({"system": system, "model": "DeepSeekV3"})
        assert model.mtp_layers == 0 and "MTP layers 1 -> 0" in note
    model, _ = bridge.row_model({"system": "DGX-B200", "model": "DeepSeekV3"})
    assert model.mtp_layers == 1
    assert any("1+MTP+L" in n for n in ds["DGX-B200"].notes)
    assert not any("MTP+L" in n for r in rows if r.model == "DeepSeekV3" and r.system != "DGX-B200" for n in r.notes)


def test_b200_qwen3_235b_runs_slower_with_the_overlap_it_had(rows):
    """README: the 25.11 B200 Qwen3-235B FP8-MX run had Megatron-Core's 1F1B all-to-all overlap (PR #1760), and with
    each merged layer pair priced as one host/GPU stretch (models/training/host.py) the model, like NVIDIA, finds the
    overlap slower on that layout: 4,500 tokens/s per GPU with it, 4,800 without (README "How good are the
    predictions?"; 4,500 / 4,830 before forced balancing's statistical excess and the experts' expected row tiles,
    moe_layer.forced_balance_excess / expert_rows_sd; 4,510 / 4,890 before the per-expert GEMMs' kernel time, gemm.yaml bf16_kernel_us / fp8_kernel_us;
    4,570 / 5,000 before B200's measured sustained GEMM rate, gemm.yaml sustained_fraction_*)."""
    from dataclasses import replace

    from clusterplan.hardware_db import get_stack
    from clusterplan.models.training.estimate import estimate

    row = next(r for r in rows if (r.system, r.model, r.precision) == ("DGX-B200", "Qwen3_235B_a22B", "FP8-MX"))
    assert row.layout.moe_a2a_overlap
    assert row.predicted_tokens_per_s == pytest.approx(4504, rel=0.005)
    csv = next(r for r in bridge.read_rows(bridge.BRIDGE_CSV)
               if (r["system"], r["model"], r["precision"]) == ("DGX-B200", "Qwen3_235B_a22B", "FP8-MX"))
    model, _ = bridge.row_model(csv)
    _, cluster, _ = bridge.bridge_cluster(row.system, row.gpus)
    without = estimate(model, cluster, replace(row.layout, moe_a2a_overlap=False), stack=get_stack("megatron-core"),
                       fp8_recipe="mxfp8").to_json()["tokens_per_s"] / row.gpus
    assert without == pytest.approx(4798, rel=0.005)
