"""NVIDIA's MLPerf Training submissions (tests/reference/mlperf_training.csv; research/mlperf-gpt3-runs.md,
research/mlperf-v5-runs.md): GPT-3 175B on 256 to 11,616 H100 and 64 B200, Llama 3.1 405B on 512 to 8,192 H100 and
256 / 512 GB200 (v5.0), Llama 3.1 8B on 72 and 512 GB200 / GB300 (v5.1), against `estimate` with the megatron-core
stack at each config's layout and fp8 recipe (reference/mlperf.py).

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
Later that day the configs' fp8 parameters (config_common.sh FP8_PARAMS=True: Layout.fp8_params, no bf16 copy of the
weights, their all-gather in fp8) and v4.0's bf16 gradient sync (distributed_fused_adam.yaml grad_sync_dtype: bf16,
Layout.fp32_grads off) were priced: median 2.8 %, max 7.4 %, and no row is refused for memory any more (before, the
512 / 256-GPU GPT-3 rows and the 405B row were refused at 85.5 / 86.4 / 87.6 GiB though they ran).
- GPT-3 on 10,752 / 11,616 H100 +1.5 % (-18.7 %): half the gradient and weight bytes over 448 / 484 replicas.
- GPT-3 on 512 H100 -3.7 %, on 256 -7.4 % (its FP8_PARAMS assumed: its config_common.sh is not stored); B200 +1.9 %;
  Llama 3.1 405B -4.8 % (its pretrain.py also reduces gradients in bf16: grad_reduce_in_fp32=False).

The v5.0 / v5.1 rows were added held out the same day (10 priced, 4 NVFP4 rows listed, not priced): median over the 16
priced rows 3.8 %, max 83.7 %. Stop 38 prices the 4 NVFP4 rows (Layout.fp8_recipe nvfp4): GB300 on 512 +0.1 %, GB200
on 512 / 2,560 / 5,120 +19.3 / +22.3 / +23.0 % (the fp8 GB200 rows' sm_100 bias plus a few points); median 4.6 % over 20.
- Llama 3.1 405B on 2,048 / 2,432 / 2,560 / 8,192 H100 -3.8 / -3.5 / -3.5 / -0.0 %.
- Llama 3.1 405B on 256 / 512 GB200 +17.6 / +20.6 %: the sm_100 bias the Megatron-Bridge GB200 rows show.
- Llama 3.1 8B on 72 GB300 / GB200 +3.7 / +9.5 % (one sequence per data-parallel rank, tp 1 cp 2); on 512 +83.7 /
  +73.4 % (tp 2 cp 4, one 8K sequence per 8 GPUs, an 85 ms step): the model hides the 25 ms gradient reduce-scatter
  and 7 ms weight all-gather under that step's backward and forward, while the published step is about their sum with
  the compute. Not explained; no constant fitted.
Stop 36, GB200's GEMMs at the sustained rate derived from B200's at GB200's 1,200 W cap (gemm.yaml): the GB200 rows
3 points faster (405B +14.1 / +17.1 %, 8B +8.0 / +70.7 %); the median stays 4.0 %. The same stop, Megatron-Core's
warm-up and cool-down pipeline sends exposed (stacks.yaml pp_warmup_exposed): GPT-3 on 10,752 / 11,616 H100 +0.7 / +0.8 %,
the 405B rows 0.3-1 point slower (GB200 +13.5 / +16.4 %); median 4.2 %.
"""

from __future__ import annotations

import pytest

from clusterplan.reference import mlperf
from clusterplan.reference.report import TARGET_TIME_MAX, summary

BOUNDS = {
    "v4.0 DGX-H100 gpt3-175b 512 tp4 pp8v4 mbs2 gbs2304": 0.20,  # -3.7% (-4.7% bf16 params, -8.8% SM margin)
    "v4.0 DGX-H100 gpt3-175b 10752 tp4 pp6v8 mbs1 gbs2688": 0.20,  # +1.5% (-18.7%, -20.7%)
    "v4.0 DGX-H100 gpt3-175b 11616 tp4 pp6v8 mbs1 gbs2904": 0.20,  # +1.5% (-18.7%, -20.7%)
    "v4.1 DGX-H100 gpt3-175b 256 tp4 pp8v6 mbs2 gbs2048": 0.20,  # -7.4% (-7.5%, -11.6%)
    "v4.1 DGX-B200 gpt3-175b 64 tp4 pp8v6 mbs2 gbs2048": 0.20,  # +1.9% (-1.3%)
    "v5.0 DGX-H100 llama3.1-405b 512 tp8 pp8v8 cp2 mbs1 gbs1152": 0.20,  # -4.8% (-5.4%, -8.8%)
    "v5.0 DGX-H100 llama3.1-405b 2048 tp8 pp8v8 cp2 mbs1 gbs1152": 0.20,  # -3.8%
    "v5.0 DGX-H100 llama3.1-405b 2432 tp8 pp8v8 cp2 mbs1 gbs1216": 0.20,  # -3.5%
    "v5.0 DGX-H100 llama3.1-405b 2560 tp8 pp8v8 cp2 mbs1 gbs1120": 0.20,  # -3.5%
    "v5.0 DGX-H100 llama3.1-405b 8192 tp8 pp8v8 cp2 mbs1 gbs1536": 0.20,  # -0.0%
    "v5.0 DGX-GB200 llama3.1-405b 256 tp4 pp8v8 cp2 mbs1 gbs448": 0.20,  # +14.1% (+17.6% before GB200's sustained rate)
    "v5.0 DGX-GB200 llama3.1-405b 512 tp4 pp8v8 cp2 mbs1 gbs896": 0.201,  # +17.1% (+20.6%)
    # +86.9% (re-based from 0.867 / +83.7% on 2026-12-05: a dense model's reduce-scatter had carried the ring latency
    # of an empty expert-data-parallel buffer over dp x cp = 256 ranks, a collective Megatron-Core never issues;
    # step._collective prices a zero-byte collective at 0, which made this, already the worst row, 3 points worse)
    "v5.1 DGX-GB300 llama3.1-8b 512 tp2 pp1v1 cp4 mbs1 gbs64": 0.899,
    "v5.1 DGX-GB300 llama3.1-8b 72 tp1 pp1v1 cp2 mbs1 gbs36": 0.20,  # +3.7%
    "v5.1 DGX-GB200 llama3.1-8b 512 tp2 pp1v1 cp4 mbs1 gbs64": 0.737,  # +70.7% (+73.4%)
    "v5.1 DGX-GB200 llama3.1-8b 72 tp1 pp1v1 cp2 mbs1 gbs36": 0.20,  # +8.0% (+9.5%)
    # NVFP4, priced since stop 38 (gemm.yaml nvfp4_gemm_time_ratio; the GB200 rows +24.0 / +26.8 / +27.3 % before the
    # NVFP4 GEMMs' k_0 grew with their k-loop's speed, rates.for_fp8_recipe)
    "v5.1 DGX-GB300 llama3.1-405b 512 tp2 pp8v8 cp2 mbs1 gbs1152": 0.20,  # +0.1%
    "v5.1 DGX-GB200 llama3.1-405b 512 tp4 pp8v8 cp2 mbs1 gbs1152": 0.223,  # +19.3%
    "v5.1 DGX-GB200 llama3.1-405b 2560 tp4 pp8v8 cp2 mbs1 gbs960": 0.253,  # +22.3%
    "v5.1 DGX-GB200 llama3.1-405b 5120 tp4 pp8v8 cp2 mbs1 gbs1280": 0.26,  # +23.0%
}
MEDIAN_BOUND = 0.058  # achieved 4.6 % over 20 rows since the NVFP4 rows (4.2 % over 16 before); 3.8 % over 16 rows (2.8 % over the first 6; 6.5 % with bf16 params and fp32 grad sync, 10.2 % with TE's bulk SM margin)
NOT_EXPRESSIBLE = {  # the config sets no virtual stages (v3.x)
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
    assert len(rows) == len(BOUNDS) + len(NOT_EXPRESSIBLE) == 25
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


NVFP4_GB300 = "v5.1 DGX-GB300 llama3.1-405b 512 tp2 pp8v8 cp2 mbs1 gbs1152"


def test_every_expressible_row_fits_in_memory(rows):
    # The runs ran: with the configs' fp8-only parameters and bf16 gradient sync no fp8 layout is refused for memory.
    # The NVFP4 run on GB300 (tp 2) is: priced with bf16 parameters beside the 4-bit weight cache (Megatron-Bridge
    # refuses fp4 parameters; the run's config_common_fp4.sh, which may keep them fp4 only, is not stored).
    assert all(r.refused == "" for r in rows if r.expressible and r.label != NVFP4_GB300)
    gb300 = next(r for r in rows if r.label == NVFP4_GB300)
    assert gb300.refused.startswith("out of memory") and not gb300.layout.fp8_params


def test_nvfp4_rows_run_the_nvfp4_recipe_with_bf16_parameters(rows):
    nvfp4 = [r for r in rows if r.layout.fp8_recipe == "nvfp4"]
    assert len(nvfp4) == 4 and all(r.expressible and not r.layout.fp8_params for r in nvfp4)


def test_fp8_params_and_bf16_grad_sync_are_what_moved_the_largest_runs(rows):
    # GPT-3 on 10,752 H100 (dp 448, 6 micro-batches): the same layout with bf16 weights beside the fp8 copies and
    # fp32 gradient sync is the -18.7 % row this set first printed (-17.4 % since a dense model's empty expert buffer
    # issues no collective: step._collective; -19.1 % since Megatron-Core's warm-up and cool-down sends are exposed,
    # stacks.yaml pp_warmup_exposed: at 6 micro-batches x 8 virtual stages every pass is warm-up or cool-down).
    from dataclasses import replace

    from clusterplan.hardware_db import get_stack
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.training.estimate import estimate

    row = next(r for r in rows if r.label == "v4.0 DGX-H100 gpt3-175b 10752 tp4 pp6v8 mbs1 gbs2688")
    assert row.layout.fp8_params and not row.layout.fp32_grads
    plain = replace(row.layout, fp8_params=False, fp32_grads=True)
    js = estimate(load_model("gpt3-175b"), load_cluster("dgx-h100:1344"), plain, stack=get_stack(mlperf.STACK),
                  fp8_recipe=mlperf.FP8_RECIPE).to_json()
    assert js["tokens_per_s"] / row.gpus / row.published_tokens_per_s - 1 == pytest.approx(-0.191, abs=0.005)
