"""The Llama 3 405B pre-training runs (tests/reference/llama3_405b_table4.csv; Dubey et al. 2024, arXiv 2407.21783,
Table 4) against `estimate` on the Llama 3 cluster preset with the layout the paper describes (reference/llama3.py).

A held-out check set: no constant is fitted to these rows and no per-row factor exists. Compared in the paper's own
FLOP count (PaLM's 6N + 12LHQT, which its MFU cites): the published TFLOP/s imply tokens/s per GPU, compared with
our predicted tokens/s. Each row is asserted against the error it reached when this test landed plus 3 points, at
least 20 % (issue #13: bounds of held-out sets), the median against MEDIAN_BOUND, so the test fails when a change
moves these rows the wrong way; tighten the bounds as the model improves (a deliberate model change that moves a row
past its bound updates BOUNDS with the reason in its commit message).
Measured when this set landed (tokens/s per GPU, paper's count): 8,192 GPUs +22.5 %, 16,384 GPUs +22.4 %, 16,384
GPUs with CP 16 at 128K +50.7 % (+7.6 % if the paper had counted attention with the causal half: the count, which
the paper does not spell out beyond citing PaLM, decides that row). The 8K rows are over-predicted by the same
~22 % at both scales; the drop from 8,192 to 16,384 GPUs (fewer micro-batches per DP group, a larger bubble) is
predicted to within a point (test_scale_drop_is_predicted). The least certain setting is V (chunks per rank, read
from the text as 8, not published as a number): V = 4 gives +16.2 / +11.2 / +35.8 %, V = 2 +5.0 / -6.5 / +13.4 %.
"""

from __future__ import annotations

import pytest

from clusterplan.models.architecture.catalog import load_model
from clusterplan.reference import llama3
from clusterplan.reference.report import main as report_main
from clusterplan.reference.report import read_rows

BOUNDS = {
    # row label -> |tokens/s error| bound in the paper's count: achieved + 3 points, at least 20 %.
    "405b 8192 cp1 s8k": 0.227,  # +19.7 % (+22.1 % before pp_warmup_exposed; +22.5 % when set)
    "405b 16384 cp1 s8k": 0.212,  # +18.2 % (+22.3 %; +22.4 %)
    "405b 16384 cp16 s128k": 0.505,  # +47.5 % (+50.3 %; +50.0 % when set, +50.7 % before interference_s) (+5.4 % in
    # the causal count)
}
MEDIAN_BOUND = 0.227  # achieved 19.7 % (22.3 % before Megatron-Core's warm-up and cool-down sends were exposed,
# stacks.yaml pp_warmup_exposed; 22.5 % when set; target 10 %)
H100_BF16_PEAK_TFLOPS = 989.4
"""hardware_db H100-SXM5-80GB dense bf16 peak (NVIDIA H100 datasheet), the MFU denominator."""


@pytest.fixture(scope="module")
def rows() -> list[llama3.Llama3Row]:
    return llama3.llama3_rows()


def test_every_table_row_is_predicted_with_its_published_layout(rows):
    assert len(rows) == len(BOUNDS) == 3
    assert {r.label for r in rows} == set(BOUNDS)
    for r, raw in zip(rows, read_rows(llama3.LLAMA3_CSV), strict=True):
        L = r.layout
        assert (L.world, L.tp, L.cp, L.pp, L.dp, L.seq) == (r.gpus, *(int(raw[k]) for k in ("tp", "cp", "pp", "dp",
                                                                                               "seq")))
        assert L.gbs == int(raw["batch_per_dp"]) * L.dp and L.zero == 2 and L.recompute == "none"
        assert L.cp_kind == "allgather" and L.schedule == "interleaved-1f1b" and L.fp32_grads


def test_published_table_is_self_consistent():
    """Table 4's own arithmetic: GPUs = TP x CP x PP x DP; Batch size/DP x DP x Seq. Len. = 16M tokens (2^24); the
    MFU is the TFLOP/s over the dense bf16 peak within the rounding of both (TFLOP/s to 10, MFU to 1 %)."""
    for raw in read_rows(llama3.LLAMA3_CSV):
        tp, cp, pp, dp = (int(raw[k]) for k in ("tp", "cp", "pp", "dp"))
        assert tp * cp * pp * dp == int(raw["gpus"])
        assert int(raw["batch_per_dp"]) * dp * int(raw["seq"]) == 2 ** 24 and raw["tokens_per_batch"] == "16M"
        assert abs(float(raw["tflops_per_gpu"]) / H100_BF16_PEAK_TFLOPS - float(raw["bf16_mfu"])) <= 0.01


@pytest.mark.parametrize("label", sorted(BOUNDS))
def test_row_within_bound(rows, label):
    row = next(r for r in rows if r.label == label)
    bound = BOUNDS[label]
    assert bound >= llama3.TARGET_TIME_MAX
    assert abs(row.error) <= bound, (
        f"{label}: predicted {row.predicted_tokens_per_s:.1f} tokens/s/GPU vs {row.published_tokens_per_s:.1f} "
        f"implied by {row.published_tflops:.0f} TFLOP/s ({row.error:+.1%}), bound {bound:.0%}")


def test_median_within_bound(rows):
    _, med, _ = llama3.summary(rows)
    assert med <= MEDIAN_BOUND, f"tokens/s median |error| {med:.1%}"


def test_scale_drop_is_predicted(rows):
    """Section 3.3.2: MFU drops from 43 % on 8K GPUs (DP 64, 32 sequences per DP group) to 41 % on 16K (DP 128, 16
    per group) 'due to the lower batch size per DP group': published 400 / 430 = 0.930 per GPU. Our ratio comes from
    the bubble (pp - 1) / (V M) growing as M halves; it must be a drop and within 2 points of the published one."""
    by = {r.label: r for r in rows}
    small, large = by["405b 8192 cp1 s8k"], by["405b 16384 cp1 s8k"]
    published = large.published_tflops / small.published_tflops
    predicted = large.predicted_tokens_per_s / small.predicted_tokens_per_s
    assert predicted < 1.0 and abs(predicted - published) <= 0.02, (published, predicted)


def test_palm_flop_count_worked_example():
    """PaLM Appendix B, 6N + 12LHQT per token, Llama 3 405B: N = 405,853,388,800 parameters (126 layers of
    attention 16384 x (16384 + 2 x 1024) + 16384 x 16384 and SwiGLU 3 x 16384 x 53248, norms, embedding and head
    128256 x 16384 each); L H Q = 126 x 16384. At T = 8192: 2,435,120,332,800 + 202,937,204,736 =
    2,638,057,537,536; at 131072 the attention term is 16x: 3,246,995,275,776. Causal: half the attention term."""
    m = load_model(llama3.MODEL)
    assert llama3.palm_flops_per_token(m, 8192) == 6 * 405_853_388_800 + 12 * 126 * 16384 * 8192 == 2_638_057_537_536
    assert llama3.palm_flops_per_token(m, 131072) == 2_435_120_332_800 + 3_246_995_275_776
    assert llama3.causal_flops_per_token(m, 8192) == 2_435_120_332_800 + 202_937_204_736 // 2


def test_llama3_stage_split_matches_hand_count():
    """Section 3.3.2: one layer removed from the first and the last stage leaves the first chunk with only the
    embedding and the last with only output and loss, so a chunk held one layer: (126 + 2) slots / 16 ranks = 8
    chunks per rank, 7 layers on the first and last rank, 8 on the others (7 + 14 x 8 + 7 = 126)."""
    m = load_model(llama3.MODEL)
    vpp, ends = llama3.pipeline_chunks(m, 16)
    assert (vpp, ends) == (8, 7) and 2 * ends + 14 * vpp == m.n_layers
    with pytest.raises(ValueError):
        llama3.pipeline_chunks(m, 12)  # 128 slots do not split into 12 ranks of whole chunks


def test_row_errors_are_in_the_papers_count(rows):
    """The predicted TFLOP/s are the predicted tokens/s x the paper's count, so the two errors are one number; the
    causal reading lowers the implied tokens/s by the attention term's half (8K: 3.8 %, 128K: 28.6 %)."""
    for r in rows:
        assert r.predicted_tflops / r.published_tflops == pytest.approx(
            r.predicted_tokens_per_s / r.published_tokens_per_s, rel=1e-12)
        assert r.causal_error < r.error
    by = {r.label: r for r in rows}
    long = by["405b 16384 cp16 s128k"]
    assert (1 + long.causal_error) / (1 + long.error) == pytest.approx(
        (2_435_120_332_800 + 3_246_995_275_776 / 2) / (2_435_120_332_800 + 3_246_995_275_776), rel=1e-12)


def test_report_carries_the_llama3_table(capsys):
    assert report_main(["--markdown"]) == 0
    text = capsys.readouterr().out
    assert "Llama 3 405B pre-training" in text and text.count("| 8192 | tp8 pp16v8") == 1
    assert text.count("| 16384 | tp8 pp16v8") == 2 and "Not added:" in text


def test_fewer_chunks_mean_a_larger_bubble(rows):
    """V is derived from the text, not published: with fewer chunks per rank the bubble (pp - 1) / (V M) grows, so
    every row's predicted throughput falls as V goes 8 -> 4 -> 2 (the sensitivity TABLES.md prints)."""
    by_v = llama3.chunk_sensitivity(rows)
    for i, r in enumerate(rows):
        assert r.layout.vpp == 8 and r.error > by_v[4][i] > by_v[2][i], (r.label, r.error, by_v[4][i], by_v[2][i])
