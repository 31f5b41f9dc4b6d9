"""MosaicML llm-foundry's MPT training benchmarks (tests/reference/llmfoundry_mpt.csv: scripts/train/benchmarking/README.md
in mosaicml/llm-foundry, H100 80GB BF16 / FP8 and A100 80GB / 40GB tables) against `estimate` with the llm-foundry
stack (reference/foundry.py).

A held-out check set: no model constant is fitted to these rows and no per-row factor exists. Issue #13's target for
held-out H100-era runs: tokens/s within 10 % median and 20 % max. Each row is asserted against the larger of 15 % and
the error it reached when this test landed plus 3 points (BOUNDS), each group's median against MEDIAN_BOUNDS, so the
test fails when a change moves these rows the wrong way; tighten the bounds as the model improves (a deliberate model
change that moves a row past its bound updates BOUNDS with the reason in its commit message).
History (tokens/s median / max |error|): first measured 2026-12-03: H100 bf16 52 rows 28.6 % / 63.0 %, H100 fp8 10 rows
46.7 % / 65.3 %, A100 (80 GB and 40 GB) 139 rows 9.5 % / 85.1 %; 26.6 / 45.0 / 8.8 % medians with main's NCCL
interference term. With two terms of the llm-foundry stack priced from source (FSDP1 BACKWARD_POST's exposed backward
all-gather, step.py fsdp_post_prefetch_backward_s; flash_attn_fn's unpad / pad copies, compute.py UNPAD_GATHER_BYTES /
PAD_SCATTER_BYTES): 18.1 % / 59.3 %, 37.2 % / 61.7 %, 7.1 % / 82.8 %; 36 A100 rows that were already at or below their
published rate (350m / 125m, 13b - 30b with checkpointing) move further below, to -12.7 % at most.
With the attention kernel the tables ran (research/llm-foundry-mpt-attention.md: attn_impl triton, priced at the
FlashAttention-1 rate, attention_kernels.yaml fa1 = FA2 / 2, FA2 paper Sec. 4.1; no unpad copies on that path):
H100 bf16 6.6 % / 27.2 %, H100 fp8 5.5 % / 12.8 %, A100 8.4 % / 84.9 %. The 16k - 65k H100 rows went from +38 .. +59 %
to -13 .. -3 %. A100 rows move the other way by 1 - 6 points (the unpad copies they no longer pay): With A100's
flat FlashAttention-1 row at the midpoint of the FA2 paper's 25-40 % band (101.4 TFLOP/s; no per-length A100 curve is
published in text): A100 4.1 % / 32.4 % (the +55 .. +85 % 32k - 65k rows now within 15 %).
"""

from __future__ import annotations

import pytest

from clusterplan.reference import foundry
from clusterplan.reference.report import main as report_main

BOUNDS = {
    # row label -> |tokens/s error| bound: achieved + 3 points, at least 15 %; (was: when first measured).
    "h100_bf16 70b s2048 g64 mbs8+ckpt": 0.15,  # +4.2% (was +13.3%)
    "h100_bf16 70b s2048 g32 mbs2+ckpt": 0.15,  # +11.6% (was +32.0%)
    "h100_bf16 30b s8192 g8 mbs1+ckpt": 0.31,  # +27.2% (was +57.8%)
    "h100_bf16 30b s4096 g8 mbs1+ckpt": 0.15,  # +6.2% (was +31.2%)
    "h100_bf16 30b s2048 g32 mbs14+ckpt": 0.15,  # +1.6% (was +9.8%)
    "h100_bf16 30b s2048 g16 mbs10+ckpt": 0.15,  # +3.0% (was +12.0%)
    "h100_bf16 30b s2048 g8 mbs3+ckpt": 0.15,  # +7.5% (was +23.1%)
    "h100_bf16 30b s1024 g8 mbs6+ckpt": 0.15,  # +7.7% (was +21.1%)
    "h100_bf16 13b s32768 g8 mbs1+ckpt": 0.15,  # -9.2% (was +40.8%)
    "h100_bf16 13b s16384 g8 mbs3+ckpt": 0.15,  # -7.3% (was +27.9%)
    "h100_bf16 13b s4096 g8 mbs10+ckpt": 0.15,  # -3.1% (was +11.4%)
    "h100_bf16 13b s2048 g64 mbs2": 0.22,  # +18.7% (was +49.0%)
    "h100_bf16 13b s2048 g32 mbs2": 0.21,  # +17.7% (was +46.9%)
    "h100_bf16 13b s2048 g16 mbs2": 0.21,  # +17.1% (was +45.0%)
    "h100_bf16 13b s2048 g8 mbs2": 0.16,  # +12.7% (was +38.0%)
    "h100_bf16 13b s1024 g8 mbs40+ckpt": 0.15,  # -1.1% (was +5.1%)
    "h100_bf16 7b s65536 g8 mbs1+ckpt": 0.16,  # -12.9% (was +51.9%)
    "h100_bf16 7b s32768 g8 mbs2+ckpt": 0.15,  # -10.6% (was +42.5%)
    "h100_bf16 7b s8192 g8 mbs8+ckpt": 0.15,  # -4.3% (was +21.9%)
    "h100_bf16 7b s4096 g8 mbs16+ckpt": 0.15,  # -3.9% (was +12.4%)
    "h100_bf16 7b s2048 g8 mbs6": 0.15,  # +7.7% (was +24.0%)
    "h100_bf16 7b s1024 g8 mbs64+ckpt": 0.15,  # -0.4% (was +6.4%)
    "h100_bf16 3b s65536 g8 mbs1+ckpt": 0.16,  # -12.4% (was +58.3%)
    "h100_bf16 3b s32768 g8 mbs3+ckpt": 0.16,  # -12.1% (was +47.4%)
    "h100_bf16 3b s16384 g8 mbs1": 0.15,  # -2.9% (was +49.2%)
    "h100_bf16 3b s8192 g8 mbs3": 0.15,  # -1.6% (was +34.8%)
    "h100_bf16 3b s4096 g8 mbs5": 0.15,  # +1.6% (was +26.5%)
    "h100_bf16 3b s2048 g64 mbs6": 0.15,  # +9.4% (was +29.3%)
    "h100_bf16 3b s2048 g32 mbs6": 0.15,  # +7.1% (was +26.4%)
    "h100_bf16 3b s2048 g16 mbs10": 0.15,  # +4.9% (was +21.9%)
    "h100_bf16 3b s1024 g8 mbs20": 0.15,  # +3.0% (was +14.9%)
    "h100_bf16 3b s512 g8 mbs40": 0.15,  # +4.2% (was +13.9%)
    "h100_bf16 1b s65536 g8 mbs1+ckpt": 0.16,  # -12.1% (was +61.2%)
    "h100_bf16 1b s32768 g8 mbs1": 0.15,  # -7.0% (was +60.4%)
    "h100_bf16 1b s16384 g8 mbs2": 0.15,  # -2.4% (was +53.2%)
    "h100_bf16 1b s8192 g8 mbs3": 0.15,  # +1.1% (was +42.5%)
    "h100_bf16 1b s4096 g8 mbs7": 0.15,  # +4.0% (was +32.3%)
    "h100_bf16 1b s2048 g64 mbs20": 0.15,  # +10.7% (was +30.1%)
    "h100_bf16 1b s2048 g32 mbs20": 0.15,  # +8.9% (was +27.8%)
    "h100_bf16 1b s2048 g16 mbs20": 0.15,  # +6.6% (was +25.1%)
    "h100_bf16 1b s2048 g8 mbs14": 0.15,  # +6.6% (was +25.6%)
    "h100_bf16 1b s1024 g8 mbs18": 0.15,  # +10.3% (was +25.3%)
    "h100_bf16 1b s512 g8 mbs56": 0.15,  # +10.2% (was +21.0%)
    "h100_bf16 760m s32768 g8 mbs1": 0.15,  # -6.7% (was +63.0%)
    "h100_bf16 760m s16384 g8 mbs3": 0.15,  # -4.7% (was +51.9%)
    "h100_bf16 760m s8192 g8 mbs6": 0.15,  # -0.3% (was +42.4%)
    "h100_bf16 760m s4096 g8 mbs12": 0.15,  # +4.1% (was +34.0%)
    "h100_bf16 760m s2048 g32 mbs24": 0.15,  # +5.4% (was +25.1%)
    "h100_bf16 760m s2048 g16 mbs24": 0.15,  # +4.4% (was +23.8%)
    "h100_bf16 760m s2048 g8 mbs24": 0.17,  # +13.3% (was +34.4%)
    "h100_bf16 760m s1024 g8 mbs48": 0.15,  # +3.1% (was +16.1%)
    "h100_bf16 760m s512 g8 mbs96": 0.15,  # +2.7% (was +12.6%)
    "h100_fp8 3b s32768 g8 mbs3+ckpt": 0.15,  # -6.9% (was +62.5%)
    "h100_fp8 3b s8192 g8 mbs3": 0.15,  # -1.9% (was +42.4%)
    "h100_fp8 3b s2048 g8 mbs10": 0.15,  # +4.3% (was +26.7%)
    "h100_fp8 3b s512 g8 mbs40": 0.15,  # +4.7% (was +18.0%)
    "h100_fp8 1b s32768 g8 mbs1": 0.15,  # -7.4% (was +64.4%)
    "h100_fp8 1b s8192 g8 mbs2": 0.15,  # +1.6% (was +51.0%)
    "h100_fp8 1b s512 g8 mbs56": 0.15,  # +2.5% (was +15.3%)
    "h100_fp8 350m s32768 g8 mbs1": 0.15,  # -9.5% (was +65.3%)
    "h100_fp8 350m s16384 g8 mbs2": 0.15,  # -6.2% (was +60.0%)
    "h100_fp8 350m s512 g8 mbs56": 0.16,  # +12.8% (was +29.3%)
    "a100_80gb 70b s2048 g64 mbs8+ckpt": 0.15,  # -1.7% (was +2.9%)
    "a100_80gb 70b s2048 g32 mbs2+ckpt": 0.15,  # -0.5% (was +10.4%)
    "a100_80gb 30b s8192 g8 mbs1+ckpt": 0.30,  # +26.2% (was +44.9%)
    "a100_80gb 30b s4096 g8 mbs1+ckpt": 0.15,  # -7.6% (was -4.3%)
    "a100_80gb 30b s2048 g8 mbs3+ckpt": 0.15,  # -10.0% (was -2.8%)
    "a100_80gb 30b s1024 g8 mbs6+ckpt": 0.15,  # -10.6% (was -4.7%)
    "a100_80gb 30b s512 g8 mbs12+ckpt": 0.15,  # -11.4% (was -6.2%)
    "a100_80gb 13b s32768 g8 mbs1+ckpt": 0.15,  # -7.9% (was +32.5%)
    "a100_80gb 13b s16384 g8 mbs3+ckpt": 0.15,  # -9.2% (was +15.2%)
    "a100_80gb 13b s8192 g8 mbs5+ckpt": 0.15,  # -10.3% (was +3.4%)
    "a100_80gb 13b s4096 g8 mbs10+ckpt": 0.15,  # -11.2% (was -3.8%)
    "a100_80gb 13b s2048 g8 mbs2": 0.15,  # +2.4% (was +17.2%)
    "a100_80gb 13b s1024 g8 mbs40+ckpt": 0.16,  # -12.6% (was -10.4%)
    "a100_80gb 7b s65536 g8 mbs1+ckpt": 0.15,  # -2.1% (was +66.0%)
    "a100_80gb 7b s32768 g8 mbs2+ckpt": 0.15,  # -4.6% (was +42.3%)
    "a100_80gb 7b s16384 g8 mbs4+ckpt": 0.15,  # -6.6% (was +22.3%)
    "a100_80gb 7b s8192 g8 mbs8+ckpt": 0.15,  # -8.6% (was +7.7%)
    "a100_80gb 7b s4096 g8 mbs16+ckpt": 0.15,  # -7.6% (was -1.1%)
    "a100_80gb 7b s2048 g8 mbs6": 0.15,  # -0.4% (was +7.4%)
    "a100_80gb 7b s1024 g8 mbs64+ckpt": 0.15,  # -11.0% (was -8.8%)
    "a100_80gb 3b s65536 g8 mbs1+ckpt": 0.15,  # -2.3% (was +76.4%)
    "a100_80gb 3b s32768 g8 mbs3+ckpt": 0.15,  # -3.1% (was +55.9%)
    "a100_80gb 3b s16384 g8 mbs1": 0.15,  # +4.5% (was +49.1%)
    "a100_80gb 3b s8192 g8 mbs3": 0.15,  # +3.3% (was +30.0%)
    "a100_80gb 3b s4096 g8 mbs5": 0.15,  # +2.6% (was +18.2%)
    "a100_80gb 3b s2048 g8 mbs10": 0.15,  # +0.8% (was +9.5%)
    "a100_80gb 3b s1024 g8 mbs20": 0.15,  # +0.8% (was +6.0%)
    "a100_80gb 3b s512 g8 mbs40": 0.15,  # -0.3% (was +2.8%)
    "a100_80gb 1b s65536 g8 mbs1+ckpt": 0.15,  # -2.8% (was +79.4%)
    "a100_80gb 1b s32768 g8 mbs1": 0.15,  # +4.9% (was +74.4%)
    "a100_80gb 1b s16384 g8 mbs2": 0.15,  # +4.3% (was +52.3%)
    "a100_80gb 1b s8192 g8 mbs3": 0.15,  # +4.5% (was +34.3%)
    "a100_80gb 1b s4096 g8 mbs7": 0.15,  # +2.3% (was +19.1%)
    "a100_80gb 1b s2048 g8 mbs14": 0.15,  # +1.7% (was +10.8%)
    "a100_80gb 1b s1024 g8 mbs18": 0.15,  # +0.6% (was +6.2%)
    "a100_80gb 1b s512 g8 mbs56": 0.15,  # +1.1% (was +3.8%)
    "a100_80gb 760m s65536 g8 mbs1+ckpt": 0.15,  # -2.1% (was +85.1%)
    "a100_80gb 760m s32768 g8 mbs1": 0.15,  # +4.2% (was +78.3%)
    "a100_80gb 760m s16384 g8 mbs3": 0.15,  # +4.6% (was +57.6%)
    "a100_80gb 760m s8192 g8 mbs6": 0.15,  # +3.5% (was +36.8%)
    "a100_80gb 760m s4096 g8 mbs12": 0.15,  # +2.4% (was +21.2%)
    "a100_80gb 760m s2048 g8 mbs24": 0.15,  # +1.1% (was +11.0%)
    "a100_80gb 760m s1024 g8 mbs48": 0.24,  # +20.5% (was +26.4%)
    "a100_80gb 760m s512 g8 mbs96": 0.31,  # +27.7% (was +30.7%)
    "a100_80gb 350m s65536 g8 mbs1": 0.19,  # +15.2%
    "a100_80gb 350m s32768 g8 mbs2": 0.15,  # +5.9% (was +13.6%)
    "a100_80gb 350m s16384 g8 mbs4": 0.15,  # +2.6% (was +8.6%)
    "a100_80gb 350m s8192 g8 mbs8": 0.15,  # -0.4% (was +3.6%)
    "a100_80gb 350m s4096 g8 mbs16": 0.15,  # -1.6% (was +0.7%)
    "a100_80gb 350m s2048 g8 mbs32": 0.15,  # -0.1% (was +0.9%)
    "a100_80gb 350m s1024 g8 mbs64": 0.15,  # +0.9% (was +1.0%)
    "a100_80gb 350m s512 g8 mbs128": 0.15,  # +0.0% (was -0.4%)
    "a100_80gb 125m s65536 g8 mbs1": 0.16,  # +12.7%
    "a100_80gb 125m s32768 g8 mbs2": 0.15,  # +4.7% (was +12.2%)
    "a100_80gb 125m s16384 g8 mbs4": 0.15,  # +5.4% (was +11.4%)
    "a100_80gb 125m s8192 g8 mbs8": 0.15,  # +4.5% (was +8.6%)
    "a100_80gb 125m s4096 g8 mbs16": 0.15,  # +5.8% (was +8.2%)
    "a100_80gb 125m s2048 g8 mbs40": 0.15,  # +5.7% (was +6.6%)
    "a100_80gb 125m s2048 g8 mbs32": 0.15,  # +5.6% (was +6.6%)
    "a100_80gb 125m s1024 g8 mbs64": 0.15,  # +6.0% (was +6.1%)
    "a100_80gb 125m s512 g8 mbs128": 0.15,  # +5.9% (was +5.5%)
    "a100_40gb 70b s2048 g128 mbs4+ckpt": 0.15,  # +3.6% (was +9.8%)
    "a100_40gb 70b s2048 g64 mbs2+ckpt": 0.36,  # +32.4% (was +45.8%)
    "a100_40gb 30b s2048 g128 mbs6+ckpt": 0.15,  # -2.2% (was -2.0%)
    "a100_40gb 30b s2048 g32 mbs4+ckpt": 0.15,  # -3.9% (was +1.8%)
    "a100_40gb 13b s8192 g8 mbs1+ckpt": 0.15,  # +10.5% (was +24.9%)
    "a100_40gb 13b s4096 g8 mbs2+ckpt": 0.15,  # +9.7% (was +19.0%)
    "a100_40gb 13b s2048 g128 mbs16+ckpt": 0.15,  # -2.0% (was -1.8%)
    "a100_40gb 13b s2048 g64 mbs16+ckpt": 0.15,  # -2.2% (was +1.1%)
    "a100_40gb 13b s2048 g32 mbs14+ckpt": 0.15,  # -3.5% (was -0.1%)
    "a100_40gb 13b s2048 g16 mbs10+ckpt": 0.15,  # -4.1% (was -0.3%)
    "a100_40gb 13b s2048 g8 mbs4+ckpt": 0.16,  # +12.8% (was +19.4%)
    "a100_40gb 13b s1024 g8 mbs8+ckpt": 0.16,  # +12.9% (was +18.0%)
    "a100_40gb 13b s512 g8 mbs16+ckpt": 0.16,  # +12.7% (was +16.9%)
    "a100_40gb 7b s16384 g8 mbs1+ckpt": 0.15,  # -0.2% (was +21.3%)
    "a100_40gb 7b s8192 g8 mbs3+ckpt": 0.15,  # -1.0% (was +11.6%)
    "a100_40gb 7b s4096 g8 mbs6+ckpt": 0.15,  # -1.7% (was +5.4%)
    "a100_40gb 7b s2048 g128 mbs18+ckpt": 0.15,  # -0.1% (was +3.8%)
    "a100_40gb 7b s2048 g64 mbs18+ckpt": 0.15,  # -1.2% (was +2.6%)
    "a100_40gb 7b s2048 g32 mbs18+ckpt": 0.15,  # -2.9% (was +0.8%)
    "a100_40gb 7b s2048 g16 mbs16+ckpt": 0.15,  # -0.8% (was +3.1%)
    "a100_40gb 7b s2048 g8 mbs12+ckpt": 0.15,  # -2.3% (was +1.6%)
    "a100_40gb 7b s1024 g8 mbs24+ckpt": 0.15,  # -2.6% (was -0.4%)
    "a100_40gb 7b s512 g8 mbs48+ckpt": 0.15,  # -1.4% (was -0.1%)
    "a100_40gb 3b s32768 g8 mbs1+ckpt": 0.15,  # -1.8% (was +35.8%)
    "a100_40gb 3b s16384 g8 mbs2+ckpt": 0.15,  # -0.6% (was +26.0%)
    "a100_40gb 3b s8192 g8 mbs1": 0.15,  # +6.9% (was +27.6%)
    "a100_40gb 3b s4096 g8 mbs2": 0.15,  # +5.8% (was +19.0%)
    "a100_40gb 3b s2048 g128 mbs6": 0.15,  # +10.0% (was +18.5%)
    "a100_40gb 3b s2048 g64 mbs6": 0.15,  # +7.7% (was +16.0%)
    "a100_40gb 3b s2048 g32 mbs6": 0.15,  # +5.6% (was +13.6%)
    "a100_40gb 3b s2048 g16 mbs5": 0.15,  # +4.5% (was +12.6%)
    "a100_40gb 3b s2048 g8 mbs5": 0.15,  # +2.7% (was +10.2%)
    "a100_40gb 3b s1024 g8 mbs10": 0.15,  # +2.5% (was +7.5%)
    "a100_40gb 3b s512 g8 mbs20": 0.15,  # +0.3% (was +3.9%)
    "a100_40gb 1b s32768 g8 mbs1+ckpt": 0.15,  # -0.6% (was +39.9%)
    "a100_40gb 1b s16384 g8 mbs1": 0.15,  # +4.1% (was +35.1%)
    "a100_40gb 1b s8192 g8 mbs2": 0.15,  # +4.5% (was +24.6%)
    "a100_40gb 1b s4096 g8 mbs4": 0.15,  # +3.8% (was +15.8%)
    "a100_40gb 1b s2048 g128 mbs10": 0.15,  # +7.9% (was +15.3%)
    "a100_40gb 1b s2048 g64 mbs10": 0.15,  # +5.9% (was +13.1%)
    "a100_40gb 1b s2048 g32 mbs10": 0.33,  # +29.3% (was +37.9%)
    "a100_40gb 1b s2048 g16 mbs8": 0.15,  # +3.5% (was +10.7%)
    "a100_40gb 1b s2048 g8 mbs8": 0.15,  # +3.4% (was +10.3%)
    "a100_40gb 1b s1024 g8 mbs16": 0.15,  # +2.2% (was +6.1%)
    "a100_40gb 1b s512 g8 mbs32": 0.15,  # +2.1% (was +4.5%)
    "a100_40gb 760m s32768 g8 mbs1+ckpt": 0.15,  # -1.5% (was +41.2%)
    "a100_40gb 760m s16384 g8 mbs1": 0.15,  # +3.8% (was +37.1%)
    "a100_40gb 760m s8192 g8 mbs3": 0.15,  # +4.8% (was +27.0%)
    "a100_40gb 760m s4096 g8 mbs6": 0.15,  # +4.4% (was +17.4%)
    "a100_40gb 760m s2048 g128 mbs12": 0.15,  # +8.2% (was +16.1%)
    "a100_40gb 760m s2048 g64 mbs12": 0.15,  # +6.8% (was +14.5%)
    "a100_40gb 760m s2048 g32 mbs12": 0.15,  # +5.6% (was +13.2%)
    "a100_40gb 760m s2048 g16 mbs12": 0.15,  # +5.6% (was +13.0%)
    "a100_40gb 760m s2048 g8 mbs12": 0.15,  # +4.1% (was +11.2%)
    "a100_40gb 760m s1024 g8 mbs24": 0.15,  # +2.4% (was +6.0%)
    "a100_40gb 760m s512 g8 mbs48": 0.15,  # +2.5% (was +4.2%)
    "a100_40gb 350m s32768 g8 mbs1": 0.15,  # +6.1% (was -8.5%)
    "a100_40gb 350m s16384 g8 mbs2": 0.15,  # +2.9% (was -9.2%)
    "a100_40gb 350m s8192 g8 mbs4": 0.15,  # +0.3% (was -9.0%)
    "a100_40gb 350m s4096 g8 mbs8": 0.15,  # -1.1% (was -7.6%)
    "a100_40gb 350m s2048 g128 mbs18": 0.15,  # +6.5% (was +2.1%)
    "a100_40gb 350m s2048 g64 mbs18": 0.15,  # +5.1% (was +0.6%)
    "a100_40gb 350m s2048 g32 mbs18": 0.15,  # +2.9% (was -1.5%)
    "a100_40gb 350m s2048 g16 mbs18": 0.15,  # -0.1% (was -4.5%)
    "a100_40gb 350m s2048 g8 mbs16": 0.15,  # -1.5% (was -5.8%)
    "a100_40gb 350m s1024 g8 mbs32": 0.15,  # -2.4% (was -5.2%)
    "a100_40gb 350m s512 g8 mbs64": 0.15,  # -2.8% (was -4.7%)
    "a100_40gb 125m s32768 g8 mbs1": 0.18,  # +14.3% (was -1.1%)
    "a100_40gb 125m s16384 g8 mbs2": 0.15,  # +10.1% (was -2.5%)
    "a100_40gb 125m s8192 g8 mbs5": 0.15,  # +4.5% (was -5.0%)
    "a100_40gb 125m s4096 g8 mbs13": 0.15,  # +3.1% (was -3.7%)
    "a100_40gb 125m s2048 g128 mbs26": 0.16,  # +12.8% (was +8.3%)
    "a100_40gb 125m s2048 g64 mbs26": 0.15,  # +11.9% (was +7.2%)
    "a100_40gb 125m s2048 g32 mbs26": 0.15,  # +10.3% (was +5.6%)
    "a100_40gb 125m s2048 g16 mbs26": 0.15,  # +7.4% (was -2.6%)
    "a100_40gb 125m s2048 g8 mbs26": 0.15,  # +3.0% (was -1.6%)
    "a100_40gb 125m s1024 g8 mbs52": 0.15,  # +4.3% (was +1.1%)
    "a100_40gb 125m s512 g8 mbs104": 0.15,  # +3.9% (was +1.6%)
}
MEDIAN_BOUNDS = {"H100 bf16": 0.10, "H100 fp8": 0.09, "A100": 0.07}  # achieved 6.6 %, 5.5 %, 4.1 % (target 10 %)
SECTION_ROWS = {"h100_bf16": 52, "h100_fp8": 10, "a100_80gb": 61, "a100_40gb": 78}


@pytest.fixture(scope="module")
def rows() -> list[foundry.FoundryRow]:
    return foundry.foundry_rows()


def test_every_csv_row_is_predicted_with_its_published_gpu_count(rows):
    assert len(rows) == len(BOUNDS) == sum(SECTION_ROWS.values()) == 201
    assert {r.label for r in rows} == set(BOUNDS)
    for section, n in SECTION_ROWS.items():
        assert sum(r.section == section for r in rows) == n
    for r in rows:
        assert r.expressible and r.layout.world == r.gpus and r.layout.zero == 3


@pytest.mark.parametrize("label", sorted(BOUNDS))
def test_row_within_bound(rows, label):
    row = next(r for r in rows if r.label == label)
    bound = BOUNDS[label]
    assert bound >= 0.15
    assert abs(row.error) <= bound, (
        f"{label}: predicted {row.predicted_tokens_per_s:.0f} tokens/s/GPU vs published "
        f"{row.published_tokens_per_s:.0f} ({row.error:+.1%}), bound {bound:.0%}")


def test_group_medians_within_bound(rows):
    for name, sections in foundry.GROUPS.items():
        n, med, _ = foundry.summary([r for r in rows if r.section in sections])
        assert n and med <= MEDIAN_BOUNDS[name], f"{name}: tokens/s median |error| {med:.1%}"


def test_mpt_parameter_count_matches_every_published_numparams(rows):
    """Checked, not fitted: the MPT built from the yamls (learned positions of max_seq_len rows, biases, LayerNorm with
    bias, tied head) reproduces every row's NumParams exactly, including its growth of seq x d_model with the
    sequence length (the learned position embedding; ALiBi would add no parameters)."""
    for r in rows:
        assert r.model_params == r.published_params, r.label


def test_mpt_7b_parameters_worked_example():
    """MPT-7B (d 4096, 32 layers, vocab 50368) at seq 2048, by hand: per block Wqkv 3 d^2 + out d^2 + up 4 d^2 +
    down 4 d^2 = 12 d^2 = 201,326,592, biases 3 d + d + 4 d + d = 9 d and two LayerNorms 4 d: 13 d = 53,248; x 32 =
    6,444,154,880; wte 50368 x 4096 = 206,307,328; wpe 2048 x 4096 = 8,388,608; final LayerNorm 2 d = 8,192:
    6,658,859,008 (the README's NumParams)."""
    model = foundry.mpt_model("7b", 2048)
    assert 32 * (12 * 4096**2 + 13 * 4096) == 6_444_154_880
    assert model.total_params() == 6_444_154_880 + 206_307_328 + 8_388_608 + 8_192 == 6_658_859_008
    assert foundry.mpt_model("7b", 4096).total_params() - model.total_params() == 2048 * 4096


def test_readme_mfu_worked_example_and_every_row():
    """The README's MFU: 3 x (2 N + 4 n_layers d seq) FLOPs per token. MPT-7B at 2048: 3 x (2 x 6,658,859,008 +
    4 x 32 x 4096 x 2048) = 43,174,379,520; x 10643 tokens/s/GPU / 989.5e12 = 46.44 % (published 46.44)."""
    model = foundry.mpt_model("7b", 2048)
    assert foundry.readme_flops_per_token(model, 2048) == 43_174_379_520
    assert 43_174_379_520 * 10643 / foundry.README_PEAK_FLOPS["h100_bf16"] == pytest.approx(0.4644, abs=5e-5)


def test_published_mfu_follows_the_readme_formula(rows):
    """Checked, not fitted: published tokens/s/GPU x readme_flops_per_token / Composer's GPU_AVAILABLE_FLOPS gives
    every published MFU within 0.2 points (both columns are rounded), fp8 rows over the fp8 peak."""
    for r in rows:
        mfu = r.published_tokens_per_s * r.readme_flops_per_token / foundry.README_PEAK_FLOPS[r.section]
        assert abs(mfu - r.published_mfu) <= 0.002, (r.label, mfu, r.published_mfu)


def test_mixed_precision_mode_sets_the_reduce_dtype(rows):
    """Composer get_mixed_precision: DEFAULT reduces in fp32 (fp32_grads), PURE in bf16. PURE rows: the whole A100 40GB
    table and the A100 80GB 70b rows (precision bf16)."""
    for r in rows:
        pure = r.section == "a100_40gb" or (r.section == "a100_80gb" and r.size == "70b")
        assert r.layout.fp32_grads == (not pure), r.label


def test_llm_foundry_stack_terms_worked_example():
    """The llm-foundry stack's terms by hand. Optimizer: Composer DecoupledAdamW priced as the foreach AdamW, 84 B per
    parameter, plus FSDP1 clip_grad_norm_ (norm read 4 B + in-place scale 8 B): 96 B (megatron-core's fused Adam:
    32). Gradient reduce-scatter: 4 B per parameter under DEFAULT (reduce_dtype float32), 2 B under PURE. One flat
    all-gather per MPTBlock. Eager-kernel bytes beyond the fused ones: none (MPT has LayerNorm, one F.layer_norm kernel,
    an ungated GELU and learned positions, no RoPE; the Triton attention copies nothing; no SDPA layout copies).
    fp8: te.Linear casts its weight every micro-batch (no cached copy), delayed scaling."""
    from dataclasses import replace

    import numpy as np

    from clusterplan.hardware_db import get_stack
    from clusterplan.models.architecture.shapes import ModelShapes
    from clusterplan.models.training.batch import LayoutArrays
    from clusterplan.models.training.compute import unfused_extra_bytes
    from clusterplan.models.training.layout import Layout
    from clusterplan.models.training.memory import bytes_per_param
    from clusterplan.models.training.step import optimizer_bytes_per_param, zero3_collectives_per_layer

    stack = get_stack("llm-foundry")
    default = LayoutArrays.from_layouts([Layout(dp=8, zero=3, mbs=6, gbs=48, seq=2048, recompute="none")])
    pure = LayoutArrays.from_layouts([Layout(dp=8, zero=3, mbs=6, gbs=48, seq=2048, recompute="none",
                                             fp32_grads=False)])
    assert float(optimizer_bytes_per_param(default, stack)[0]) == 84.0 + 12.0 == 96.0
    assert float(optimizer_bytes_per_param(default, get_stack("megatron-core"))[0]) == 32.0
    assert float(bytes_per_param(default)[1][0]) == 4.0 and float(bytes_per_param(pure)[1][0]) == 2.0
    shapes = ModelShapes.of(foundry.mpt_model("7b", 2048))
    assert float(zero3_collectives_per_layer(shapes, default, stack, np.array([1e9]))[0]) == 1.0
    # The tables ran attn_impl triton (research/llm-foundry-mpt-attention.md): triton_flash_attn_fn only views q, k, v,
    # so no eager copies. Its `flash` path (attention_unpad) would add flash_attn_fn's unpad / pad copies, MPT-7B
    # (q = k = v = 4096 wide) at mbs 6 x 2048 = 12288 tokens: q, k, v gathers 4 B x (4096 + 8192) + the output's
    # zero-fill and scatter 6 B x 4096 = 73,728 B = 18 d per token.
    assert float(unfused_extra_bytes(shapes, default, False, stack)[0]) == 0.0
    flash_path = replace(stack, attention_unpad=True)
    assert float(unfused_extra_bytes(shapes, default, False, flash_path)[0]) == 12288 * 73728 == 905_969_664
    assert float(unfused_extra_bytes(shapes, default, False, get_stack("megatron-core"))[0]) == 0.0
    assert not get_stack("megatron-core").attention_unpad and not stack.attention_unpad
    assert stack.attention_kernel == "triton" and stack.fp8_recipes == ("delayed",) and not stack.fp8_weight_copy
    assert stack.selective_recompute == "none" and stack.loss_impl == "fused" and stack.fsdp_impl == "flat"


def test_report_carries_the_foundry_table(capsys):
    assert report_main(["--markdown"]) == 0
    text = capsys.readouterr().out
    assert "MosaicML llm-foundry MPT training benchmarks" in text
    assert text.count("| h100_bf16 | ") == 52 and text.count("| a100_40gb | ") == 78


def test_fsdp1_backward_post_prefetch_worked_example(rows):
    """FSDP1 BACKWARD_POST (step.py fsdp_post_prefetch_backward_s): the next block's all-gather is issued only once the
    current block's gradients are complete, so it is exposed whole, and the reduce-scatter queued behind it on the same
    NCCL stream runs under the next block's backward. By hand, all-gather 2 ms, reduce-scatter 3 ms, backward 10 ms:
    2 ms exposed (BACKWARD_PRE: 0, both under the compute); a 12 ms reduce-scatter: 2 + (12 - 10) = 4 ms; serial
    (overlap 0): 2 + 3 = 5 ms. Only llm-foundry sets it; the same row priced with BACKWARD_PRE is faster."""
    from dataclasses import replace

    import numpy as np

    from clusterplan.hardware_db import get_stack, list_stacks
    from clusterplan.models.training.estimate import estimate
    from clusterplan.models.training.step import fsdp_post_prefetch_backward_s

    def post(ag: float, rs: float, compute: float, overlap: float) -> float:
        return float(fsdp_post_prefetch_backward_s(np.array(ag), np.array(rs), np.array(compute), overlap))

    assert post(2e-3, 3e-3, 10e-3, 1.0) == pytest.approx(2e-3, rel=1e-12)
    assert post(2e-3, 12e-3, 10e-3, 1.0) == pytest.approx(4e-3, rel=1e-12)
    assert post(2e-3, 3e-3, 10e-3, 0.0) == pytest.approx(5e-3, rel=1e-12)
    assert [s for s in list_stacks() if get_stack(s).fsdp_backward_prefetch == "post"] == ["llm-foundry"]
    row = next(r for r in rows if r.label == "h100_bf16 13b s2048 g8 mbs2")
    stack = get_stack("llm-foundry")
    model, cluster = foundry.mpt_model("13b", 2048), foundry.foundry_cluster("h100_bf16", 8)
    slow = estimate(model, cluster, row.layout, stack=stack).to_json()["time"]["dp_comm_s"]
    fast = estimate(model, cluster, row.layout,
                    stack=replace(stack, fsdp_backward_prefetch="pre")).to_json()["time"]["dp_comm_s"]
    assert slow > fast


def test_fp8_gain_over_bf16_is_predicted(rows):
    """H100 fp8 (TE te.Linear, delayed scaling) over bf16 at the same model, sequence, GPUs and micro-batch, the five
    pairs both tables publish: 3b s32768 mbs3 1.00x, 3b s8192 mbs3 1.15x, 3b s512 mbs40 1.31x, 1b s32768 mbs1 1.05x,
    1b s512 mbs56 1.35x. Priced from the fp8 GEMM rate, the per-micro-batch weight casts and the input / gradient
    quantisation (nothing fitted): each predicted gain within 15 points of the published one (landed: within 10;
    14.9 since the fp8 GEMM k-depth term, gemm.yaml fp8_k_overhead: the 1b s512 pair's fp8 row went +2.5 -> -2.0 %,
    its gain error is now the bf16 row's +10.2 %, bf16 GEMMs having no published k sweep to price theirs)."""
    by = {(r.section, r.size, r.seq, r.gpus, r.mbs): r for r in rows}
    pairs = [(k, by[("h100_bf16", *k[1:])]) for k in by if k[0] == "h100_fp8" and ("h100_bf16", *k[1:]) in by]
    assert len(pairs) == 5
    for key, bf16 in pairs:
        fp8 = by[key]
        published = fp8.published_tokens_per_s / bf16.published_tokens_per_s
        predicted = fp8.predicted_tokens_per_s / bf16.predicted_tokens_per_s
        assert abs(predicted - published) <= 0.15, (key, published, predicted)
