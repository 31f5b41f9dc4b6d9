"""NVIDIA's MLPerf Training submissions (tests/reference/mlperf_training.csv; research/mlperf-gpt3-runs.md): GPT-3
175B on 256 to 11,616 H100 and 64 B200, Llama 3.1 405B on 512 H100, against `estimate` with the megatron-core stack
at each config's layout, fp8 delayed scaling (reference/mlperf.py).

A held-out check set: no model constant is fitted to these rows and no per-row factor exists. Issue #13's target for
held-out runs: tokens/s within 10 % median and 20 % max. Each expressible row is asserted against the larger of that
max (20 %) and the error it reached when this test landed plus 3 points (BOUNDS); the median against MEDIAN_BOUND.
History (2026-12-04, first measured): 6 of 11 expressible (v3.0 / v3.1 configs set no virtual stages); median
10.2 %, max 20.7 %, every row predicted too slow. The same day the bulk TP overlaps were priced without an SM margin,
as NVIDIA's tuned userbuffers configs run them (stacks.yaml tp_overlap_bulk_sm_margin 0; NeMo
tp_overlap_configs/userbuffers.py; research/tp-overlap-ub-configs.md): median 6.5 %, max 18.7 %.
- GPT-3 on 256 / 512 H100 -7.5 / -4.7 % (were -11.6 / -8.8 %), compute-bound (95-97 % of the step).
- GPT-3 on 10,752 / 11,616 H100 -18.7 % (were -20.7 %): 32 % of the predicted step is exposed data-parallel traffic
  over 448 / 484 replicas with 6 micro-batches to hide it under.
- B200 +1.9 % (was -1.3 %); Llama 3.1 405B -5.4 % (was -8.8 %).
The 512 / 256-GPU GPT-3 rows and the 405B row are refused as out of memory (85.5 / 86.4 / 87.6 GiB) though they ran:
recompute and fp8 parameters are not stated for them (only the B200 config says FP8_PARAMS=True).
"""

from __future__ import annotations

import pytest

from clusterplan.reference import mlperf
from clusterplan.reference.report import TARGET_TIME_MAX, summary

BOUNDS = {
    "v4.0 DGX-H100 gpt3-175b 512 tp4 pp8v4 mbs2 gbs2304": 0.20,  # -4.7% (-8.8% with TE's bulk SM margin)
    "v4.0 DGX-H100 gpt3-175b 10752 tp4 pp6v8 mbs1 gbs2688": 0.217,  # -18.7% (-20.7%)
    "v4.0 DGX-H100 gpt3-175b 11616 tp4 pp6v8 mbs1 gbs2904": 0.217,  # -18.7% (-20.7%)
    "v4.1 DGX-H100 gpt3-175b 256 tp4 pp8v6 mbs2 gbs2048": 0.20,  # -7.5% (-11.6%)
    "v4.1 DGX-B200 gpt3-175b 64 tp4 pp8v6 mbs2 gbs2048": 0.20,  # +1.9% (-1.3%)
    "v5.0 DGX-H100 llama3.1-405b 512 tp8 pp8v8 cp2 mbs1 gbs1152": 0.20,  # -5.4% (-8.8%)
}
MEDIAN_BOUND = 0.095  # achieved 6.5 % (10.2 % with TE's bulk SM margin, 2026-12-04)
NOT_EXPRESSIBLE = {  # the config sets no virtual stages
    "v3.0 DGX-H100 gpt3-175b 512 tp4 pp8v1 mbs1 gbs2048",
    "v3.0 DGX-H100 gpt3-175b 768 tp4 pp8v1 mbs1 gbs3072",
    "v3.1 DGX-H100 gpt3-175b 512 tp4 pp8v1 mbs1 gbs2048",
    "v3.1 DGX-H100 gpt3-175b 4096 tp4 pp8v1 mbs1 gbs2048",
    "v3.1 DGX-H100 gpt3-175b 10752 tp4 pp8v1 mbs1 gbs2688",
}


@pytest.fixture(scope="module")
def rows() -> list[mlperf.MlperfRow]:
    return mlperf.mlperf_rows()


def test_every_csv_row_is_listed_once(rows):
    assert len(rows) == len(BOUNDS) + len(NOT_EXPRESSIBLE) == 11
    assert {r.label for r in rows} == set(BOUNDS) | NOT_EXPRESSIBLE
    for r in rows:
        assert r.layout.world == r.gpus
        assert r.expressible == (r.label in BOUNDS)


@pytest.mark.parametrize("label", sorted(BOUNDS))
def test_row_tokens_per_s_within_its_bound(rows, label):
    row = next(r for r in rows if r.label == label)
    assert BOUNDS[label] >= TARGET_TIME_MAX
    assert abs(row.error) <= BOUNDS[label], f"{label}: {row.error:+.1%}"


def test_median_error(rows):
    n, med, _ = summary(rows)
    assert n == len(BOUNDS)
    assert med <= MEDIAN_BOUND


def test_published_rate_is_one_step_of_tokens_over_its_logged_time(rows):
    # v4.1 on 256 H100: 2048 sequences x 2048 tokens in 18.37 s over 256 GPUs = 891.9 tokens/s per GPU (the CSV's).
    row = next(r for r in rows if r.label == "v4.1 DGX-H100 gpt3-175b 256 tp4 pp8v6 mbs2 gbs2048")
    assert row.published_tokens_per_s == pytest.approx(2048 * 2048 / 18.37 / 256, rel=1e-3)
