"""Force-balanced MoE routing still leaves one expert-parallel rank busier than the mean (moe_layer.py
forced_balance_excess): Megatron-Core's moe_router_force_load_balancing draws fresh random logits per token
(moe_utils.RandomSTE), so a rank's received rows are a sum of independent per-token counts, and every rank waits for
the busiest of the ep at each layer's combine. Worked examples by hand, and the formula against a seeded simulation
of the router's random top-k (and DeepSeek-V3's group-limited top-k)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.normal import ceil_moments, expected_ceil
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.collectives import ep_collectives
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.moe_layer import (
    busiest_rank_ratio,
    expected_max_standard_normal,
    expert_rows_sd,
    forced_balance_excess,
    token_rank_picks,
)

QWEN = ModelShapes.of(load_model("qwen3-30b-a3b"))  # hidden 2048, 128 experts, top-8


def _arrays(**kw) -> LayoutArrays:
    base = dict(dp=8, ep=8, mbs=1, seq=4096, gbs=512, precision="bf16", recompute="none")
    return LayoutArrays.from_layouts([Layout(**{**base, **kw})])


def test_expected_maximum_of_normals_matches_the_order_statistics_tables():
    # E[max of n standard normals]: 0.5642 (n = 2, 1 / sqrt(pi)), 1.4236 (8), 1.7660 (16), 2.0697 (32) (David &
    # Nagaraja 2003 tables); 64 checked against a seeded simulation below.
    assert expected_max_standard_normal(1) == 0.0
    assert expected_max_standard_normal(2) == pytest.approx(1 / math.sqrt(math.pi), abs=1e-6)
    assert expected_max_standard_normal(8) == pytest.approx(1.4236, abs=1e-4)
    assert expected_max_standard_normal(16) == pytest.approx(1.7660, abs=1e-4)
    assert expected_max_standard_normal(32) == pytest.approx(2.0697, abs=1e-4)
    draws = np.random.default_rng(0).standard_normal((200_000, 64)).max(axis=1)
    assert expected_max_standard_normal(64) == pytest.approx(float(draws.mean()), abs=0.01)


def test_picks_on_one_rank_are_hypergeometric():
    # Qwen3-30B-A3B at ep 8: 16 of 128 experts per rank, top-8 picks of a uniform 8-subset. Mean 8 x 16/128 = 1,
    # variance 8 x (1/8)(7/8)(120/127) = 0.826772.
    mean, var = token_rank_picks(128, 8, 8)
    assert mean == 1.0
    assert var == pytest.approx(8 * (1 / 8) * (7 / 8) * (120 / 127), rel=1e-12)


def test_group_limited_picks_by_the_law_of_total_variance():
    # DeepSeek-V3 at ep 8: 256 experts in 8 groups of 32, 4 groups per token; a rank holds exactly one group. It is
    # chosen with probability 4/8; then it gets a hypergeometric share of 8 picks among 128 experts with 32 on it:
    # mean 2, variance 8 (1/4)(3/4)(120/127) = 1.417323. Total: mean 1/2 x 2 = 1, variance
    # 1/2 x 1.417323 + (1/2 x 4 - 1) = 1.708661 (about twice the ungrouped 0.851).
    mean, var = token_rank_picks(256, 8, 8, 8, 4)
    assert mean == pytest.approx(1.0)
    assert var == pytest.approx(0.5 * 8 * 0.25 * 0.75 * 120 / 127 + 0.5 * 4 - 1, rel=1e-12)


def test_the_busiest_rank_by_hand():
    # ep 8, 4,096 tokens a rank: the EP group routes 32,768 tokens; a rank's rows have mean 32,768 and standard
    # deviation sqrt(32,768 x 0.826772) = 164.59. The 8 loads sum to a constant (correlation -1/7), so the busiest
    # sits 1.4236 x sqrt(8/7) = 1.52190 deviations up: 1 + 1.52190 x 164.59 / 32,768 = 1.0076445.
    sd = math.sqrt(32_768 * 8 * (1 / 8) * (7 / 8) * (120 / 127))
    by_hand = 1.4236003 * math.sqrt(8 / 7) * sd / 32_768
    assert float(forced_balance_excess(QWEN, _arrays())[0]) == pytest.approx(by_hand, rel=1e-6)
    assert by_hand == pytest.approx(0.0076445, rel=1e-4)
    # The all-to-all ends when the busiest rank has its rows: T k h x 2 B = 134,217,728 B at the mean.
    assert float(ep_collectives(QWEN, _arrays()).size_bytes[0]) == pytest.approx(134_217_728 * (1 + by_hand))


def test_the_excess_shrinks_with_tokens_and_vanishes_where_no_rank_waits():
    # Four times the tokens halve it (a sum's deviation grows as the square root of its count).
    one, four = (float(forced_balance_excess(QWEN, _arrays(mbs=m, gbs=512))[0]) for m in (1, 4))
    assert four == pytest.approx(one / 2, rel=1e-9)
    # ep 1 (one rank), drop-and-pad (every expert padded to capacity), and a measured moe_imbalance (which holds the
    # statistics already) leave it out.
    assert float(busiest_rank_ratio(QWEN, _arrays(ep=1))[0]) == 1.0
    assert float(busiest_rank_ratio(QWEN, _arrays(moe_capacity_factor=1.0))[0]) == 1.0
    assert float(busiest_rank_ratio(QWEN, _arrays(moe_imbalance=1.2))[0]) == 1.2


def _simulated_excess(rng: np.random.Generator, n_experts: int, top_k: int, ep: int, tokens: int, trials: int,
                      groups: int = 1, groups_per_token: int = 0) -> float:
    """The busiest rank's rows over the mean, minus 1, routing `tokens` tokens by the top-k of fresh Gaussian logits
    (RandomSTE); with groups, Megatron-Core's group_limited_topk: the groups with the largest sums of their top
    k / groups_per_token scores, then the top-k among their experts."""
    local, out = n_experts // ep, []
    for _ in range(trials):
        scores = rng.standard_normal((tokens, n_experts))
        if groups > 1:
            size = n_experts // groups
            per_group = np.sort(scores.reshape(tokens, groups, size), axis=2)[:, :, -(top_k // groups_per_token):]
            chosen = np.argsort(per_group.sum(axis=2), axis=1)[:, -groups_per_token:]
            mask = np.zeros((tokens, groups), dtype=bool)
            np.put_along_axis(mask, chosen, True, axis=1)
            scores = np.where(np.repeat(mask, size, axis=1), scores, -np.inf)
        picks = np.argpartition(scores, -top_k, axis=1)[:, -top_k:]
        rows = np.bincount(picks.ravel() // local, minlength=ep)
        out.append(rows.max() / (tokens * top_k / ep))
    return float(np.mean(out)) - 1.0


def _formula(n_experts: int, top_k: int, ep: int, tokens: int, groups: int = 1, groups_per_token: int = 0) -> float:
    mean, var = token_rank_picks(n_experts, top_k, ep, groups, groups_per_token)
    return expected_max_standard_normal(ep) * math.sqrt(ep / (ep - 1)) * math.sqrt(var / tokens) / mean


def test_formula_against_a_seeded_simulation_of_the_random_router():
    rng = np.random.default_rng(13)
    # 4,096 tokens over the EP group (512 a rank at ep 8), 300 layers: the simulated mean has a standard error of
    # about 2 % of the excess; the formula is within 5 %.
    assert _formula(128, 8, 8, 4096) == pytest.approx(_simulated_excess(rng, 128, 8, 8, 4096, 300), rel=0.05)
    # GPT-OSS-like: 128 experts, top-4, ep 64 (2 local experts, 256 rows a rank on average): the near-normal sum
    # underestimates the skewed tail slightly; within 8 %.
    assert _formula(128, 4, 64, 4096) == pytest.approx(_simulated_excess(rng, 128, 4, 64, 4096, 300), rel=0.08)


def test_group_limited_formula_is_an_upper_bound_within_15_percent():
    # DeepSeek-V3's 4-of-8 groups at ep 8: uniform picks inside the chosen groups overstate the variance (the group
    # score makes every chosen group hold a pick): the formula lies above the simulated excess, by under 15 %.
    rng = np.random.default_rng(7)
    simulated = _simulated_excess(rng, 256, 8, 8, 4096, 150, groups=8, groups_per_token=4)
    formula = _formula(256, 8, 8, 4096, 8, 4)
    assert simulated < formula < 1.15 * simulated


def test_each_experts_rows_are_binomial():
    # Qwen3-30B-A3B at ep 8, 4,096 tokens a rank: each of the EP group's 32,768 tokens picks a given expert with
    # probability 8/128, so its rows have mean 2,048 and standard deviation sqrt(32,768 x 0.0625 x 0.9375) = 43.82.
    assert float(expert_rows_sd(QWEN, _arrays())[0]) == pytest.approx(math.sqrt(32_768 * 0.0625 * 0.9375), rel=1e-12)
    # Drop-and-pad: every expert is padded to its capacity, no spread.
    assert float(expert_rows_sd(QWEN, _arrays(moe_capacity_factor=1.0))[0]) == 0.0


def test_expected_row_tiles_and_their_spread_match_a_simulation():
    # 2,048 rows (16 tiles of 128 exactly) with sd 43.82: half the experts spill into a 17th tile, so the expected tile
    # count is 16.5, not 16; its variance that of a Bernoulli(1/2), 0.25, plus the rare 15th / 18th tile (2.9 sd
    # away): 0.2570. Checked against a seeded sample.
    mean, var = ceil_moments(np.array([2048.0]), 43.82, 128)
    assert float(mean[0]) == pytest.approx(16.5, abs=1e-6)
    assert float(var[0]) == pytest.approx(0.2570, abs=1e-3)
    rows = np.random.default_rng(3).normal(2100.0, 60.0, 400_000)
    mean, var = ceil_moments(np.array([2100.0]), 60.0, 64)
    assert float(mean[0]) == pytest.approx(np.ceil(rows / 64).mean(), abs=0.005)
    assert float(var[0]) == pytest.approx(np.ceil(rows / 64).var(), rel=0.02)
    # No spread: exactly the ceiling.
    assert float(expected_ceil(np.array([2049.0]), 0.0, 128)[0]) == 17.0


def test_an_experts_gemm_has_no_step_at_a_whole_number_of_tiles():
    # H100, a four-expert turn of 2,048 x 1,536 (x 2,048): priced at exactly 2,048 rows it fits whole tiles and one
    # more row costs a wave; with the rows' spread the time rises smoothly through that point.
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.hardware.rates import HardwareRates

    hw = HardwareRates.of(load_cluster("dgx-h100:1"))

    def t(m: float, sd: float) -> float:
        return float(hw.gemm_time_s(np.array([m]), 1536.0, 2048.0, np.array([False]), 4, m_sd=sd)[0])

    assert t(2049.0, 0.0) / t(2048.0, 0.0) > 1.05  # the step, priced without the spread
    assert t(2049.0, 43.82) / t(2048.0, 43.82) < 1.01
    assert t(2048.0, 0.0) < t(2048.0, 43.82) < t(2049.0, 0.0)
