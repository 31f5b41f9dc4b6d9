"""The Hugging Face Ultra-Scale Playbook's benchmark sweep (tests/reference/ultrascale_playbook.csv, a link to
reference/data/: every 1-node point of its interactive figure, nanotron on 8 H100) against `estimate` with the nanotron stack
(reference/ultrascale.py).

A held-out check set, but for one constant fitted on five of its rows (stacks.yaml nanotron
dense_host.uncounted_scale on reference/ultrascale.py HOST_FIT_POINTS; those five are left out of the time
statistics). First measured 2026-12-05: tokens/s median |error| 30.4 %, max
325 % over 68 points (the max: tp >= 2 at one sequence per micro-batch, +64 .. +325 %, which the published runs show 2-4x
slower than the same model at mbs 8-16, a host-bound regime the model does not price for a dense eager stack); rank-0
memory median 12.5 %, max 37.3 % (20.0 % before nanotron's cost-balanced pipeline split was applied). With nanotron's
fp32 gradient accumulation pass per micro-batch priced (stacks.yaml grad_accum_bytes_per_param, 10 B per parameter):
26.4 % / 314 %. With the dense layers' host calls priced (stacks.yaml nanotron dense_host: the tp >= 4 points at one
sequence per micro-batch are host-bound) the max fell to 219 % (the tp 8 1B point +314 -> +127 %); with rank 0's
pipeline layers as the sweep's log counts them (1B: 10 / 5 / 3 at pp 2 / 4 / 8) the 1B pipeline points lose the
errors that cancelled (pp 4: -15 -> +24 %, as the same model's pp 1 points), so the time median is 27.1 %; with the
published memory read as what it is (max_memory_reserved: no CUDA context, no NCCL buffers) and nanotron's DDP
buckets, persistent all-gather buffers and second K/V copy, the memory median fell to 9.1 % (max 31.0 %). With
nanotron's splits that first / middle / last cannot say priced as per-rank lists (Layout.pp_layers: 9/9/8/6,
5/4/4/5/4/4/4/2, 4/4/4/4/4/4/4/0, 6/5/5/0; they were even splits before) the memory median is 7.6 % and the time
median 27.6 % (the even splits' errors had partly cancelled). With nanotron's cross-entropy as its code runs it (eager
ops over fp32 logits, 38 + 14 B per logit against a fused loss's 24: stacks.yaml loss_impl sharded_fp32) and the
layout copies around its attention and its merged gate-and-up split (qkv_layout_copies, glu_split_cat) the time
median is 20.0 % (the tp 1 points +23 -> +11 % median); with its TP matmuls slowed beside the NCCL kernels they
overlap (tp_overlap.local_shard_exposed_s, as the data-parallel overlap prices it) 19.0 %. With the dense layer's
host time at 2.18 x its counted calls (dense_host.uncounted_scale, fitted on the 1B points at pp 1, tp 2-8, mbs 1:
their micro-batch takes 70-74 ms at every tp) 13.1 % over the 63 held-out points (the host-bound 3B / 8B points at tp
4-8 +77 .. +117 % -> -2 .. +3 %). The bounds
are the landing's plus 3 points, to fail when a change moves the set the wrong way; tighten them as the model
improves.
"""

from __future__ import annotations

import pytest

from clusterplan.reference import ultrascale as U

MEDIAN_TIME_BOUND = 0.161  # 13.1 % + 3 points, over the held-out points (HOST_FIT_POINTS left out)
MEDIAN_MEMORY_BOUND = 0.106  # 7.6 % + 3 points
PEAK_H100_BF16 = 989e12
"""The sweep's MFU divides by the H100 SXM dense bf16 peak (checked on every row below)."""


@pytest.fixture(scope="module")
def rows():
    return U.ultrascale_rows()


@pytest.mark.parametrize(("size", "billions"), [("1B", 1.34), ("3B", 3.57), ("8B", 8.86), ("80B", 80.0)])
def test_models_reproduce_the_sweeps_parameter_counts(size, billions):
    # nanotron docs/benchmark_summary.svg labels the models by their parameter counts.
    assert U.ultrascale_model(size).total_params() / 1e9 == pytest.approx(billions, abs=0.005)


def test_published_mfu_is_the_published_tokens_over_6n_plus_attention(rows):
    # MFU = tokens/s x (6 N + 12 L h s) / 989 TFLOP/s, attention non-causal; a tied model under pp counts its
    # embedding twice (its LM head is a separate copy on the last stage): a check on the transcription.
    for r in rows:
        model = U.ultrascale_model(r.model)
        n = model.total_params() + (model.vocab * model.hidden if model.tied_embeddings and r.layout.pp > 1 else 0)
        flops = 6 * n + 12 * model.n_layers * model.hidden * U.SEQ
        assert r.published_tokens_per_s * flops / PEAK_H100_BF16 == pytest.approx(r.published_mfu, abs=0.006), r.label


def test_nanotron_splits_pipeline_stages_by_block_cost():
    # 1B: a decoder layer costs 4 h^2 + 3 h I = 67.1M, the LM head V h = 268.4M (4 layers): 20 layers' worth in all.
    # pp 2: the 10th layer's cumulative cost is exactly half the total, so the 11th starts rank 1 (the sweep's log:
    # rank 0 holds 939.5M parameters = the 268.4M embedding + 10 layers).
    one = U.ultrascale_model("1B")
    assert U.nanotron_stage_layers(one, 2) == [(10, False), (6, True)]
    assert U.nanotron_stage_layers(one, 4) == [(5, False), (5, False), (5, False), (1, True)]
    # pp 8: thresholds every 2.5 layers' worth; the head (4 layers' worth) reaches rank 6's with 1 layer before it.
    assert U.nanotron_stage_layers(one, 8) == [(3, False), (2, False), (3, False), (2, False), (3, False), (2, False),
                                               (1, True), (0, False)]
    # expressed as first / middle / last where the middle ranks are even and the head shares the last rank
    r = {"model": "3B", "mbs": "1", "ga": "128", "dp": "2", "pp": "4", "tp": "1", "zero": "0"}
    layout, _ = U.ultrascale_layout(r)
    assert (layout.first_stage_layers, layout.last_stage_layers, layout.pp_layers) == (8, 4, ())
    # ... and as a per-rank list where they cannot: the 8B at pp 4 (9/9/8/6: middle ranks differ) and the 3B at pp 8
    # (the LM head alone on the last rank).
    eight = {**r, "model": "8B", "dp": "2", "zero": "1"}
    assert U.ultrascale_layout(eight)[0].pp_layers == (9, 9, 8, 6)
    three = {**r, "dp": "1", "pp": "8", "ga": "256"}
    assert U.ultrascale_layout(three)[0].pp_layers == (4, 4, 4, 4, 4, 4, 4, 0)


def test_every_point_but_the_failed_run_is_compared(rows):
    assert len(rows) == 69
    assert [r.label for r in rows if not r.expressible] == ["1B dp1 tp1 pp8 mbs1 ga128 z1"]


def test_memory_verdicts_agree_with_what_ran_and_what_crashed(rows):
    # Every point that ran fits by estimate's memory but one: 8B dp4 tp1 pp2 ZeRO-1, priced 80.0 GiB on the first stage
    # (78.8 GiB reserved) against the 79.6 GiB of an H100, where the run reserved 71.5 GiB; the same run is 2.7x
    # slower than the 8B's other pipeline points (+219 % priced), and the sweep's raw log marks it oom_error True
    # (data/ultrascale_raw_log.csv header). It fitted (68.5 GiB) before nanotron's DDP buckets (2 B per parameter, 9.2 GiB here; seen at
    # ZeRO-0 in the sweep's allocated column) and second K/V copy (2.3 GiB) were priced. Of the 176 that crashed (out
    # of memory or another failure, the figure does not say which) estimate refuses 158 for memory (151 before the
    # per-rank lists priced the pp 8 points the even-split rule refused; the 80B model's 57 among them): a bound.
    crashed = U.crashed_points()
    assert len(crashed) == 176
    assert [r.label for r in rows if "out of memory" in r.refused] == ["8B dp4 tp1 pp2 mbs1 ga64 z1"]
    assert sum(1 for c in crashed if c.verdict == "out of memory") >= 158


def test_errors_stay_within_the_landing_bounds(rows):
    from statistics import median

    compared = [r for r in rows if r.expressible]
    held = [r for r in compared if not r.fitted]
    assert len(compared) - len(held) == len(U.HOST_FIT_POINTS) == 5
    assert median(abs(r.error) for r in held) <= MEDIAN_TIME_BOUND
    assert median(abs(r.memory_error) for r in compared) <= MEDIAN_MEMORY_BOUND


def test_the_raw_log_is_the_figure_with_two_more_columns(rows):
    # The sweep's raw log (data/ultrascale_raw_log.csv) holds every point that ran, with the figure's tokens/s and,
    # as its "GPU memory", max_memory_reserved ("Mem Res"): so the figure shows reserved memory.
    from clusterplan.reference.report import read_rows

    log = U.raw_log()
    figure = [r for r in read_rows(U.ULTRASCALE_CSV) if r["status"] == "ran"]
    assert len(figure) == len(log) == 69
    for r in figure:
        logged = log[U.point_key(r)]
        assert abs(float(logged["tokens_per_s_per_gpu"]) - float(r["tokens_per_s_per_gpu"])) <= 1.0
        assert abs(float(logged["mem_res_gib"]) - float(r["gpu_memory_gib"])) <= 0.051


def test_rank0_layers_are_the_logged_ones_wherever_the_split_is_expressed(rows):
    # Rank 0's logged parameter count fixes its decoder layers (1B pp2: 940M = the 268.4M embedding + 10 layers of
    # 67.1M; one tp2 pp2 run logs 503M x 2 = 11 layers, build_model's own "exceeds" split).
    log = U.raw_log()
    checked = 0
    for r in rows:
        L = r.layout
        if L.pp == 1 or not L.first_stage_layers:
            continue
        key = (r.model, L.mbs, L.microbatches, L.dp, L.pp, L.tp, r.zero)
        assert L.first_stage_layers == U.logged_rank0_layers(U.ultrascale_model(r.model), L.tp,
                                                             log[key]["local_params"]), r.label
        checked += 1
    assert checked >= 25


def test_state_memory_matches_the_logged_allocation_at_zero_0(rows):
    # After the step the activations are gone: the allocated peak is the state (ZeRO-0: 2 B weights, 2 B DDP buckets,
    # 4 B fp32 gradients, 4 B master, 8 B Adam). Landing: median -1.7 % over 36 ZeRO-0 points (the misses: mbs 8-16
    # and the pipeline splits first / middle / last stages cannot express); bound = landing + 3 points.
    from statistics import median

    zero0 = [r.state_error for r in rows if r.expressible and r.zero == 0]
    assert len(zero0) == 36
    assert median(abs(e) for e in zero0) <= 0.047
    # ZeRO-1 (state: 2 B weights, 2 B DDP buckets, 4 B fp32 gradients, 12/dp B master + Adam) also holds the step's
    # flat all-gather copies, 2 + 2/dp B per parameter: landing median |error| 0.6 % over 32 points (18.8 % without).
    zero1 = [r.state_error for r in rows if r.expressible and r.zero == 1]
    assert len(zero1) == 32
    assert median(abs(e) for e in zero1) <= 0.036
