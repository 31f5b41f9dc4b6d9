"""NVIDIA's published long-sequence runs with context parallelism (tests/reference/nemo_long_context.csv;
research/nemo-long-context.md): NeMo's "Long Sequence Performance" page (Llama 2 7B on 8-1,024 H100, NeMo 24.03,
8K-1M tokens; Llama 3 8B on 8-256 B200, NeMo 25.04, 32K-1M tokens) and the 64K Mixtral-8x22B rows of the NeMo
25.02 / 25.04 summaries, against `estimate` at the published layouts with ring CP (reference/nemo_long.py).

A held-out check set: nothing is fitted to it. It does not meet issue #13's targets. Each row is asserted against the
larger of 20 % and the error it reached when this test landed plus 3 points (BOUNDS), so a change that moves a row
the wrong way fails, and one that mends it shows as a tighter bound to set.
History (stop 38, first measured): 16 of 35 expressible, median 29.0 %, max 68.4 %, every row predicted too fast.
- Llama 2 7B on H100 (NeMo 24.03, cuDNN 9.0-era attention): +13.7 % at 8K (no CP), +25.1 % at 16K (tp 2, no CP),
  then +39 / +46 / +57 / +62 / +62 / +68 % from 32K (cp 2) to 1M (cp 32): the gap grows with the sequence, with or
  without CP; at 1M the priced step is 99.5 % attention core at 596 / 514 TFLOP/s forward / backward.
- Llama 3 8B on B200 (NeMo 25.04): +18 to +25 % at 32K-1M, flat in the sequence.
- Mixtral-8x22B at 64K (cp 8): +48.8 % (B200), +32.9 % (GB200).
Stop 40: the 2 / 4 GPU rows (part of one node) are expressed as PRESET:1xGPUS: B200 +8.9 % (8K), +10.8 % (16K); H100
+9.7 % (4K): 19 of 35, median 24.5 %.
Priced on FlashAttention-2's curves instead, the 8 H100 rows come within -1.1 .. +6.5 % (research/nemo-long-context.md);
which kernel NeMo 24.03 ran is not published, so the table stays on megatron-core's cuDNN.
The Llama rows publish TFLOP/s only; tokens/s are taken at NeMo's full s x s count, fixed a priori (the count the
24.09-25.02 summaries use); at the causal count the long rows' published tokens/s would be up to 1.95x larger.
"""

from __future__ import annotations

import pytest

from clusterplan.reference import nemo_long
from clusterplan.reference.report import TARGET_TIME_MAX, summary

BOUNDS = {
    "25.04.rc2 LLAMA3-8B 2": 0.20,  # +8.9 % (2 of one DGX B200's 8 GPUs, dgx-b200:1x2)
    "25.04.rc2 LLAMA3-8B 4": 0.20,  # +10.8 %
    "25.04.rc2 LLAMA3-8B 8": 0.209,  # +17.9 %
    "25.04.rc2 LLAMA3-8B 16": 0.234,  # +20.4 %
    "25.04.rc2 LLAMA3-8B 32": 0.275,  # +24.5 %
    "25.04.rc2 LLAMA3-8B 64": 0.241,  # +21.1 %
    "25.04.rc2 LLAMA3-8B 128": 0.230,  # +20.0 %
    "25.04.rc2 LLAMA3-8B 256": 0.244,  # +21.4 %
    "24.03.01 LLAMA2-7B 4": 0.20,  # +9.7 % (dgx-h100:1x4)
    "24.03.01 LLAMA2-7B 8": 0.20,  # +13.7 %
    "24.03.01 LLAMA2-7B 16": 0.281,  # +25.1 %
    "24.03.01 LLAMA2-7B 32": 0.424,  # +39.4 %
    "24.03.01 LLAMA2-7B 64": 0.492,  # +46.2 %
    "24.03.01 LLAMA2-7B 128": 0.598,  # +56.8 %
    "24.03.01 LLAMA2-7B 256": 0.653,  # +62.3 %
    "24.03.01 LLAMA2-7B 512": 0.652,  # +62.2 %
    "24.03.01 LLAMA2-7B 1024": 0.714,  # +68.4 %
    "25.02 Mixtral-8x22B 256": 0.518,  # +48.8 %
    "25.04 Mixtral-8x22B 256": 0.359,  # +32.9 %
}
MEDIAN_BOUND = 0.32  # achieved 29.0 % over 16 rows (stop 38), 24.5 % over 19 (stop 40)


@pytest.fixture(scope="module")
def rows() -> list:
    return nemo_long.long_rows()


def test_every_row_is_listed_with_a_reason_or_priced(rows):
    assert len(rows) == 35
    priced = {r.label for r in rows if r.expressible}
    assert priced == set(BOUNDS)
    for r in rows:
        if r.expressible:
            assert r.layout.world == r.gpus and r.layout.cp_kind == "ring" and r.layout.fp8_recipe == "delayed"
        else:
            assert r.reason


def test_each_row_within_its_bound(rows):
    for r in rows:
        if r.expressible:
            assert BOUNDS[r.label] >= TARGET_TIME_MAX
            assert abs(r.error) <= BOUNDS[r.label], f"{r.label}: {r.error:+.1%}"


def test_median_error(rows):
    n, med, _ = summary(rows)
    assert n == 19 and med <= MEDIAN_BOUND


def test_tokens_come_from_tflops_at_nemos_full_attention_count(rows):
    # Llama 2 7B, 1M tokens on 1,024 H100: 536 TFLOP/s / NeMo's count (Megatron's plus 6 s q_dim per layer: 32 layers
    # x 1,048,576 x 4096 x 6 = 824.6 GFLOP more) = 317 tokens/s per GPU.
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.reference.bridge import bridge_flops_per_token

    row = next(r for r in rows if r.label == "24.03.01 LLAMA2-7B 1024")
    model = load_model("llama2-7b")
    count = bridge_flops_per_token(model, 1048576, 8) + 6 * 32 * 1048576 * 4096
    assert row.published_tokens_per_s == pytest.approx(536e12 / count, rel=1e-9)
    assert row.published_tokens_per_s == pytest.approx(317, abs=1)
