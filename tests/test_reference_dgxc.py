"""NVIDIA's DGX Cloud Benchmarking recipes (tests/reference/dgxc_benchmarking.csv; research/dgxc-recipes.md): Llama 3.1
8B / 70B / 405B, Nemotron-4 15B / 340B, GPT-3 175B, Grok-1, DeepSeek-V3 and Llama 4 Maverick pre-training step times on
8 to 2,048 H100 and 128 to 512 GB200, against `estimate` with the megatron-core stack at each published layout and the
settings the pinned NeMo commits set (reference/dgxc.py).

A held-out check set: no model constant is fitted to these rows and no per-row factor exists. Issue #13's target for
held-out runs: tokens/s within 10 % median and 20 % max. Each (model, system, precision) group's worst row is asserted
against the larger of that max (20 %) and the error it reached when this test landed plus 3 points (BOUNDS); the
median against MEDIAN_BOUND (landed + 1 point).
History (2026-12-05, first measured): 107 of 114 rows priced (the 7 Nemotron-H rows are hybrid Mamba), median 7.0 %,
max 207 % (the same after the bf16 rows reduced gradients in fp32 as NeMo 2.0's bf16_mixed sets, and Megatron-Core's
buckets were sized as the recipes set them); the 74 H100 rows median 3.8 % (every dense H100 group within -12 .. +18 %), the 33 GB200 rows median 25 %
(the sm_100 over-prediction of research/blackwell-dense.md, 10-15 points larger on fp8 rows), DeepSeek-V3 in NeMo 25.04
+30 / +34 % on H100 and +195 .. +207 % on GB200 (its GB200 rows ran at 10 % MFU, 3.3x below Megatron-Bridge 25.11's).
Stop 36: GB200's GEMMs at the sustained rate derived from B200's at GB200's 1,200 W cap (gemm.yaml): the 33 GB200
rows 3-4 points faster, median 21.7 % (+3.5 .. +40.5 %, DeepSeek-V3 +190 .. +200 %); all rows median 6.5 %, max 200 %.
Then Megatron-Core's warm-up and cool-down pipeline sends exposed (pp_warmup_exposed): every interleaved row 0-3 points
slower; GB200 median 20.5 % (+3.5 .. +37.9 %), H100 3.7 % (Nemotron-4 340B -11 .. -17 %); all 6.7 %.
Stop 39: hybrid Mamba blocks priced (the mixer at its memory roofline, research/mamba-ssd-traffic.md): the 7
Nemotron-H 56B rows are expressible and come out +29.5 .. +36.7 % too fast, every dense row unchanged; all 114 rows
median 7.1 %, the 81 H100 rows 4.2 %. The Mamba mixer then at the SSD kernels' measured rate (mamba_kernels
SSD_KERNEL_COPY_SHARE, vLLM PR #27299's H100 timing): +13.8 .. +20.1 %, medians unchanged.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import median

import pytest

from clusterplan.reference import dgxc
from clusterplan.reference.report import TARGET_TIME_MAX, read_rows

BOUNDS = {  # group -> bound (landed worst + 3 points, at least 20 %); comment: the group's range now (stop 36's two
    # changes: GB200's sustained GEMM rate, then Megatron-Core's exposed warm-up sends) and, where it moved, when landed
    ("llama3.1-8b", "H100", "BF16"): 0.20,  # +1.4 .. +2.1 %
    ("llama3.1-8b", "H100", "FP8"): 0.20,  # +2.0 .. +4.5 %
    ("llama3.1-70b", "H100", "BF16"): 0.20,  # +2.1 .. +2.3 % (+2.2 .. +2.4 %)
    ("llama3.1-70b", "H100", "FP8"): 0.20,  # -4.3 .. -1.4 % (-3.7 .. -0.8 %)
    ("llama3.1-405b", "H100", "BF16"): 0.20,  # -3.0 .. +0.2 % (-2.8 .. +0.5 %)
    ("llama3.1-405b", "H100", "FP8"): 0.20,  # -6.7 .. -2.9 % (-6.5 .. -2.5 %)
    ("llama3.1-405b", "GB200", "BF16"): 0.20,  # +11.7 .. +13.8 % (+16.6 .. +18.7 %)
    ("llama3.1-405b", "GB200", "FP8"): 0.299,  # +21.9 .. +24.4 % (+28.2 .. +30.8 %)
    ("nemotron4-15b", "H100", "BF16"): 0.20,  # +2.5 .. +7.3 %
    ("nemotron4-15b", "H100", "FP8"): 0.20,  # +6.4 .. +12.8 %
    ("nemotron4-340b", "H100", "BF16"): 0.20,  # -16.5 .. -15.7 % (-15.2 .. -14.4 %)
    ("nemotron4-340b", "H100", "FP8"): 0.20,  # -13.1 .. -11.1 % (-11.0 .. -9.0 %)
    ("nemotron4-340b", "GB200", "BF16"): 0.20,  # +6.1 .. +9.7 % (+9.8 .. +15.8 %)
    ("nemotron4-340b", "GB200", "FP8"): 0.318,  # +17.9 .. +24.7 % (+22.1 .. +33.1 %)
    ("gpt3-175b", "H100", "BF16"): 0.20,  # +2.4 .. +4.2 % (+3.0 .. +4.8 %)
    ("gpt3-175b", "H100", "FP8"): 0.214,  # +3.7 .. +17.3 % (+4.7 .. +18.4 %; published 636 / 610 / 656 at 512 /
    # 1,024 / 2,048 GPUs)
    ("deepseek-v3", "H100", "BF16"): 0.371,  # +29.7 .. +33.8 % (+30.0 / +34.1 %)
    ("deepseek-v3", "GB200", "BF16"): 2.028,  # +189.5 .. +199.8 % (+194.9 .. +207.4 %)
    ("grok1-314b", "GB200", "BF16"): 0.20,  # +3.5 .. +5.0 % (+6.4 .. +7.9 %)
    ("grok1-314b", "GB200", "FP8"): 0.247,  # +19.5 .. +21.7 % (+22.9 .. +25.3 %)
    ("grok1-314b", "H100", "BF16"): 0.20,  # -2.8 % (-2.6 %)
    ("grok1-314b", "H100", "FP8"): 0.20,  # +16.1 % (+16.5 %)
    ("llama4-maverick-17b-128e", "GB200", "BF16"): 0.296,  # +21.7 .. +25.0 % (+26.6 .. +30.0 %)
    ("llama4-maverick-17b-128e", "GB200", "FP8"): 0.435,  # +32.8 .. +37.9 % (+38.0 .. +43.3 %)
    ("llama4-maverick-17b-128e", "H100", "BF16"): 0.20,  # +7.0 %
    ("llama4-maverick-17b-128e", "H100", "FP8"): 0.20,  # +15.4 % (+15.5 %)
    ("nemotron-h-56b", "H100", "FP8"): 0.231,  # +13.8 .. +20.1 % (+29.5 .. +36.7 % at the SSD kernels' roofline)
}
MEDIAN_BOUND = 0.081  # 7.1 % over 114 rows (6.7 % over the 107 before the Nemotron-H rows; 7.0 % when it landed)
H100_MEDIAN_BOUND = 0.052  # 4.2 % over the 81 H100 rows (3.7 % over the 74 before Nemotron-H; 3.8 % when it landed)


@pytest.fixture(scope="module")
def rows() -> list[dgxc.DgxcRow]:
    return dgxc.dgxc_rows()


def test_every_csv_row_is_priced_or_says_why(rows):
    assert len(rows) == len(read_rows(dgxc.DGXC_CSV)) == 114
    assert all(r.expressible for r in rows)  # the Nemotron-H rows since hybrid Mamba blocks are priced


def test_published_step_times_agree_with_published_throughput():
    """The transcription's own check: seq x gbs / step time is the printed tokens/s within 1 %, except the Grok-1
    512-GB200 rows, whose printed tokens/s repeat the 256-GPU ones (a copy error in the README: their step times
    match the weak-scaling series, which is what the table is priced from)."""
    off = []
    for r in read_rows(dgxc.DGXC_CSV):
        derived = float(r["gbs"]) * float(r["seq"]) / float(r["step_time_s"])
        if abs(derived / float(r["tokens_per_s_total"]) - 1) > 0.01:
            off.append((r["model"], r["system"], r["gpus"], r["precision"]))
    assert off == [("grok1-314b", "GB200", "512", "BF16"), ("grok1-314b", "GB200", "512", "FP8")]


def test_each_group_within_its_bound(rows):
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r.expressible:
            groups[(r.model, r.system, r.precision)].append(r.error)
    assert set(groups) == set(BOUNDS)
    for key, errors in groups.items():
        assert BOUNDS[key] >= TARGET_TIME_MAX
        assert max(abs(e) for e in errors) <= BOUNDS[key], (key, errors)


def test_median(rows):
    priced = [abs(r.error) for r in rows if r.expressible]
    assert median(priced) <= MEDIAN_BOUND
    assert median(abs(r.error) for r in rows if r.expressible and r.system == "H100") <= H100_MEDIAN_BOUND


def test_recipe_settings_reach_the_layout(rows):
    """What the pinned NeMo scripts set, as each row runs it: DeepSeek-V3's token drop, selective recompute and first /
    last stage sizes (64 // pp - 1, 64 // pp - 2), Llama 3.1 405B's embedding / loss counted in the split, Llama 4's
    fp8-only CUDA graphs on H100, fp8 parameters on every fp8 row."""
    by = {(r.model, r.system, r.precision, r.gpus): r.layout for r in rows}
    ds = by[("deepseek-v3", "H100", "BF16", 512)]
    assert (ds.moe_capacity_factor, ds.recompute, ds.recompute_modules) == (1.0, "selective", "mla_up_proj")
    assert (ds.pp, ds.first_stage_layers, ds.last_stage_layers) == (8, 7, 6)
    assert (by[("deepseek-v3", "GB200", "BF16", 256)].first_stage_layers,
            by[("deepseek-v3", "GB200", "BF16", 256)].recompute_modules) == (15, "core_attn")
    l405 = by[("llama3.1-405b", "H100", "BF16", 512)]
    assert (l405.pp, l405.vpp, l405.first_stage_layers, l405.last_stage_layers) == (8, 8, 15, 15)
    assert by[("llama3.1-405b", "H100", "BF16", 64)].first_stage_layers == 7  # 30-layer proxy: (30 + 2) / 32 = 1
    assert by[("llama4-maverick-17b-128e", "H100", "FP8", 512)].cuda_graphs == "full"
    assert by[("llama4-maverick-17b-128e", "H100", "BF16", 512)].cuda_graphs == "none"
    assert by[("nemotron4-340b", "H100", "BF16", 256)].vpp == 12
    assert all(r.layout.fp8_params == (r.precision == "FP8") for r in rows if r.expressible)
