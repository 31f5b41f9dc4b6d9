"""Rules are objects: the search counts them by code, check prints their fix, and no one reads message text."""

from __future__ import annotations

import pytest

from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.layout import Layout, layout_problems
from clusterplan.models.training.rules import FIXES, Rule, RuleCode
from clusterplan.solver.placement import rerank_on_links
from clusterplan.solver.search import search
from clusterplan.solver.space import MICRO_BATCHES, ZERO, enumerate_space

MODEL = load_model("llama3.1-8b")  # 32 heads, 8 kv heads, 32 layers, ffn 14336


def test_every_code_has_a_fix():
    assert set(FIXES) == set(RuleCode)
    assert all(FIXES[c].strip() for c in RuleCode)


def test_layout_problems_are_rules_printing_their_message():
    # tp=3: heads (32), kv heads (8) and ffn (14336 = 2^11 * 7) break; pp=3 leaves 32 layers uneven; 3*3*... != 16.
    problems = layout_problems(MODEL, Layout(tp=3, pp=3, dp=1, gbs=8, sp=False), 16)
    assert [p.code for p in problems] == [RuleCode.WORLD, RuleCode.HEADS_TP, RuleCode.KV_HEADS_TP, RuleCode.FFN_TP,
                                          RuleCode.LAYERS_PP]
    assert all(isinstance(p, Rule) and str(p) == p.message and p.fix.startswith(FIXES[p.code]) for p in problems)
    assert str(problems[1]) == "n_heads(32) % tp(3) != 0"
    # An uneven layer count names a split that works: 32 layers on pp 3 = 11 on the middle rank (ceil 32 / 3), the
    # other 21 at the ends, 10 + 11.
    assert problems[-1].fix == FIXES[RuleCode.LAYERS_PP] + (": first_stage_layers=10,last_stage_layers=11 gives 10 + 1 "
                                                            "x 11 + 11 = 32")


def test_uneven_split_suggestions():
    from clusterplan.models.training.layout import uneven_split

    # DeepSeek-V2's 60 layers on pp 16: 14 middle ranks of 4, 2 + 2 at the ends; Llama 3.1 405B's 126 on pp 16
    # with 8 virtual stages: middle ranks of 8 (one layer per chunk), 7 + 7 (the Llama 3 paper's split).
    assert uneven_split(60, 16) == (2, 2)
    assert uneven_split(126, 16, 8) == (7, 7)
    assert uneven_split(61, 16) == (2, 3)  # the first end takes the smaller half
    assert uneven_split(61, 2) == (30, 31) and uneven_split(10, 16) is None  # pp 2: the two ends are the split


@pytest.mark.parametrize("flash", [True, False])
def test_rejections_count_every_layout_the_space_would_hold(flash):
    # Each structure expands to zero x mbs x recompute layouts; with flash attention off the recompute axis has all
    # three options (selective differs from none), so a rejected structure stands for 4 * 4 * 3 layouts, not 4 * 4 * 2.
    space = enumerate_space(MODEL, 16, 8, 64, 4096, {"flash_attn": flash})
    recomputes = 2 if flash else 3
    assert len(space.arrays) + sum(space.rejected.values()) == \
        space.structures * len(ZERO) * len(MICRO_BATCHES) * recomputes
    assert all(isinstance(code, RuleCode) for code in space.rejected)


def test_search_counts_by_code_and_rerank_returns_a_new_result():
    result = search(MODEL, load_cluster("dgx-h100:2"), 64, 4096, top=3)
    assert result.rejected and all(isinstance(code, RuleCode) for code in result.rejected)
    assert set(result.to_json()["search"]["rejected"]) == {str(c) for c in result.rejected}
    assert [p.rank for p in result.plans] == [1, 2, 3] and result.plans[0].why_best
    assert all(p.why_best is None for p in result.plans[1:])
    placed = rerank_on_links(result)
    assert placed is not result and placed.plans[0].placement is not None
    assert result.plans[0].placement is None  # the search's result is untouched
