"""Nearest feasible option (issue 14 item 6): when nothing fits, the smallest change that fits, priced by the model.

Worked examples: Llama 3.1 405B on 11 DGX H100 at gbs 1024, seq 8192 with 4 GiB headroom (the closest layout peaks
at 76.965 GiB of 79.6: the headroom is the real cause), and Llama 3.1 70B at tp4 pp2 mbs2 without recompute on
8 nodes (149.1 GiB: activations 84.0 GiB on the first stage). The pinned peaks move with the memory model; the
relations derived by hand below (limit, over, the headroom left) do not.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from clusterplan.errors import InfeasibleError
from clusterplan.hardware_db.stacks import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
from clusterplan.solver.feasible import (
    FEWER_NODES,
    MORE_NODES,
    Change,
    FeasibleOption,
    NothingFits,
    nearest_layout,
    node_ladders,
)
from clusterplan.solver.search import search

GBS, SEQ, NODES, HEADROOM_GIB = 1024, 8192, 11, 4.0


@pytest.fixture(scope="module")
def nothing_fits_405b() -> NothingFits:
    with pytest.raises(NothingFits) as info:
        search(load_model("llama3.1-405b"), load_cluster(f"dgx-h100:{NODES}"), GBS, SEQ, headroom_gib=HEADROOM_GIB)
    return info.value


def test_405b_on_11_nodes_names_the_headroom_as_the_cause(nothing_fits_405b):
    cause = nothing_fits_405b.nearest.cause
    assert cause.layout.short() == "tp8 pp11 dp1 mbs1 z1 ful+sp"
    assert cause.peak_gib == pytest.approx(76.965, abs=1e-3)
    # By hand: the limit is 79.6 - 4 = 75.6 GiB; the closest layout's 76.965 GiB is 1.365 over it and 2.635 under
    # the GPU's capacity, so the headroom (not the GPU) is what fails.
    assert cause.limit_gib == pytest.approx(75.6)
    assert cause.over_gib == pytest.approx(76.965 - 75.6, abs=1e-3)
    assert cause.largest_term == "optimizer" and cause.stage == "middle"
    assert "the 4 GiB headroom is what fails" in cause.describe()


def test_405b_headroom_option_is_what_the_closest_layout_leaves(nothing_fits_405b):
    best = nothing_fits_405b.nearest.options[0]
    # One knob, no GPU added: ranked first. floor((79.6 - 76.965) / 0.1) * 0.1 = 2.6 GiB.
    assert best.changes == (Change("headroom_gib", 4.0, 2.6),) and best.gpus_added == 0
    model, cluster = load_model("llama3.1-405b"), load_cluster(f"dgx-h100:{NODES}")
    with pytest.raises(InfeasibleError):  # 2.635 GiB free: 2.7 would not fit, so the value is rounded down
        search(model, cluster, GBS, SEQ, headroom_gib=2.7, suggest=False)
    rerun = search(model, cluster, GBS, SEQ, headroom_gib=2.6, top=1).plans[0].to_json()
    assert best.step_time_s == rerun["step_time_s"] and best.peak_gib == rerun["memory"]["peak_gib"]
    assert best.tokens_per_s == rerun["tokens_per_s"]


def test_405b_node_option_is_the_nearest_count_that_fits(nothing_fits_405b):
    nodes = [o for o in nothing_fits_405b.nearest.options if o.changes[0].knob == "nodes"]
    assert len(nodes) == 1
    option = nodes[0]
    # 12 nodes fit at the same 4 GiB headroom (the old hint doubled to 22): 8 GPUs added, ranked after the
    # headroom change that adds none.
    assert option.changes == (Change("nodes", 11, 12, 1),) and option.gpus_added == 8
    assert nothing_fits_405b.nearest.options.index(option) == 1
    rerun = search(load_model("llama3.1-405b"), load_cluster("dgx-h100:12"), GBS, SEQ, headroom_gib=HEADROOM_GIB,
                   top=1).plans[0].to_json()
    assert option.step_time_s == rerun["step_time_s"] and option.peak_gib == rerun["memory"]["peak_gib"]
    assert option.peak_gib <= 79.6 - HEADROOM_GIB


def test_nearest_plan_line_and_counts(nothing_fits_405b):
    text = str(nothing_fits_405b)
    assert text.startswith("no layout of llama3.1-405b fits 11 x dgx-h100")
    assert "nearest that fits: headroom 4 -> 2.6 GiB" in text and "\n" not in text
    counts = nothing_fits_405b.counts
    assert counts["feasible"] == 0 and counts["candidates"] == sum(counts["rejected"].values())


@pytest.fixture(scope="module")
def oom_70b():
    model, cluster = load_model("llama3.1-70b"), load_cluster("dgx-h100:8")
    layout = Layout.parse("tp=4,pp=2,mbs=2,gbs=512,seq=8192,recompute=none,zero=1", world=64)
    est = estimate(model, cluster, layout)
    return model, cluster, layout, nearest_layout(model, cluster, est, None, get_stack())


def test_70b_estimate_names_the_term_and_by_how_much(oom_70b):
    *_, nearest = oom_70b
    cause = nearest.cause
    assert cause.stage == "first" and cause.largest_term == "activations"
    assert cause.terms_gib["activations"] == pytest.approx(83.953, abs=1e-3)
    # By hand: 149.077 GiB peak against 79.6 GiB with no headroom: 69.477 GiB over.
    assert cause.over_gib == pytest.approx(149.077 - 79.6, abs=1e-3)
    assert nearest.reason.startswith("peak 149.1 GiB on the first stage > 79.6 GiB, over by 69.5 GiB: "
                                     "activations 84.0 GiB is the largest term")


def test_70b_options_are_the_nearest_rungs_priced_by_estimate(oom_70b):
    model, cluster, layout, nearest = oom_70b
    assert sorted(tuple(map(str, o.changes)) for o in nearest.options) == [("cp 1 -> 8",), ("recompute none -> full",)]
    for option in nearest.options:  # every number is estimate() of the changed layout, not a guess
        again = estimate(model, cluster, option.layout).to_json()
        assert again["feasible"] and option.step_time_s == again["step_time_s"]
        assert option.peak_gib == again["memory"]["peak_gib"] and option.tokens_per_s == again["tokens_per_s"]
    # Nearest rung: the rungs before the ones named do not fit (cp 2 and 4; selective keeps what none keeps with
    # flash attention), and neither does any rung of the knobs not named.
    for change in (dict(cp=2, dp=4), dict(cp=4, dp=2), dict(recompute="selective"), dict(mbs=1), dict(tp=8, dp=4),
                   dict(zero=3), dict(pp=4, dp=4), dict(pp=8, dp=2)):
        assert not estimate(model, cluster, replace(layout, **change)).feasible, change
    # The faster change first at the same (zero) GPUs added; the freed memory is the activations.
    assert nearest.options[0].step_time_s <= nearest.options[1].step_time_s
    assert all(min(o.memory_change_gib, key=o.memory_change_gib.get) == "activations" for o in nearest.options)


def test_estimate_tries_pairs_when_no_single_knob_fits():
    # 405B on one node: 891.6 GiB per GPU at tp 8; no single knob fits on 8 GPUs, so pairs with more nodes.
    model, cluster = load_model("llama3.1-405b"), load_cluster("dgx-h100:1")
    est = estimate(model, cluster, Layout.parse("tp=8,gbs=64,seq=4096", world=8))
    nearest = nearest_layout(model, cluster, est, None, get_stack())
    assert nearest.options and all(len(o.changes) == 2 for o in nearest.options)
    best = nearest.options[0]
    assert {c.knob for c in best.changes} == {"nodes", "pp"} and best.gpus_added == 248
    assert estimate(model, load_cluster("dgx-h100:32"), best.layout).to_json()["step_time_s"] == best.step_time_s


def test_no_nearest_for_a_feasible_layout_or_another_broken_rule():
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100:1")
    fits = estimate(model, cluster, Layout.parse("tp=2,gbs=64,seq=4096", world=8))
    broken = estimate(model, cluster, Layout.parse("tp=3,pp=1,dp=1,gbs=64,seq=4096"))
    assert fits.feasible and nearest_layout(model, cluster, fits, None, get_stack()) is None
    assert nearest_layout(model, cluster, broken, None, get_stack()) is None  # its reasons name the fix


def _option(knobs: int, gpus: int, step: float) -> FeasibleOption:
    return FeasibleOption(changes=tuple(Change(f"k{i}", 0, 1) for i in range(knobs)), gpus_added=gpus,
                          layout=Layout(), cluster="c", step_time_s=step, tokens_per_s=1.0, peak_gib=1.0,
                          capacity_gib=2.0, headroom_gib=0.0, memory_change_gib={})


def test_smallest_change_ranking():
    # one knob before two, then fewer GPUs added (fewer nodes count negative), then the faster step
    options = [_option(2, 0, 1.0), _option(1, 8, 1.0), _option(1, 0, 3.0), _option(1, 0, 2.0), _option(1, -8, 9.0)]
    ranked = sorted(options, key=FeasibleOption.sort_key)
    assert [(len(o.changes), o.gpus_added, o.step_time_s) for o in ranked] == [
        (1, -8, 9.0), (1, 0, 2.0), (1, 0, 3.0), (1, 8, 1.0), (2, 0, 1.0)]


def test_node_ladders_are_nearest_first_on_each_side():
    assert node_ladders(12) == {FEWER_NODES: [11, 10, 9, 8, 7, 6, 5, 4],
                                MORE_NODES: [13, 14, 15, 16, 17, 18, 19, 20, 24, 48, 96, 192, 384]}
    assert node_ladders(1) == {FEWER_NODES: [], MORE_NODES: [2, 3, 4, 5, 6, 7, 8, 9, 16, 32]}


def test_a_smaller_job_that_fits_is_offered_before_a_bigger_one():
    """tp8 pp2 pinned on 3 nodes: 16 does not divide 24 GPUs. 2 nodes and 4 nodes both fit; before, one ladder tried
    4 first and the first fit ended the node knob, so the cheaper 2-node job was never shown. Each direction is now
    its own knob, and the ranking puts the job that costs less by the hour (8 GPUs fewer) first, then the one that
    changes no hardware (pp 2 -> 3 on the 3 nodes), then the one that adds 8 GPUs."""
    with pytest.raises(NothingFits) as info:
        search(load_model("llama3.1-8b"), load_cluster("dgx-h100:3"), 64, 4096, fixed={"tp": 8, "pp": 2})
    nearest = info.value.nearest
    assert nearest.cause is None and nearest.tried[:3] == ("headroom_gib", FEWER_NODES, MORE_NODES)
    assert [(tuple(map(str, o.changes)), o.gpus_added) for o in nearest.options] == [
        (("2 nodes instead of 3",), -8), (("pp 2 -> 3",), 0), (("4 nodes instead of 3",), 8)]
    assert str(info.value).endswith(nearest.options[0].describe())
    # Every option is the search's best plan on the changed request, with the pins kept.
    rerun = search(load_model("llama3.1-8b"), load_cluster("dgx-h100:2"), 64, 4096, fixed={"tp": 8, "pp": 2}, top=1)
    assert nearest.options[0].step_time_s == rerun.plans[0].to_json()["step_time_s"]


def test_plan_cli_nothing_fits_json_and_exit_code(run_cli):
    args = ("plan", "--model", "llama3.1-405b", "--cluster", f"dgx-h100:{NODES}", "--gbs", str(GBS), "--seq", str(SEQ),
            "--headroom-gib", str(HEADROOM_GIB))
    code, out, err = run_cli(*args, "--format", "json")
    assert code == 1 and err.count("\n") == 1 and "nearest that fits: headroom 4 -> 2.6 GiB" in err
    data = json.loads(out)
    assert data["plans"] == [] and data["feasible"] is False and data["search"]["feasible"] == 0
    near = data["nearest_feasible"]
    assert near["cause"]["largest_term"] == "optimizer" and near["cause"]["over_gib"] == pytest.approx(1.3648)
    first = near["options"][0]
    assert first["changes"] == [{"knob": "headroom_gib", "from": 4.0, "to": 2.6, "steps": 1}]
    assert {"step_time_s", "tokens_per_s", "peak_gib", "layout", "gpus_added"} <= set(first)
    assert near["options"][1]["changes"][0] == {"knob": "nodes", "from": 11, "to": 12, "steps": 1}
    assert run_cli(*args, "--format", "json")[1] == out  # byte-identical
    code, text, _ = run_cli(*args)
    assert code == 1 and "the 4 GiB headroom is what fails" in text and "12 nodes instead of 11" in text


def test_estimate_cli_carries_the_nearest_option(run_cli):
    args = ("estimate", "--model", "llama3.1-70b", "--cluster", "dgx-h100:8", "--format", "json",
            "--layout", "tp=4,pp=2,mbs=2,gbs=512,seq=8192,recompute=none,zero=1")
    code, out, _ = run_cli(*args)
    assert code == 1
    near = json.loads(out)["nearest_feasible"]
    assert near["cause"]["largest_term"] == "activations"
    assert sorted(o["changes"][0]["knob"] for o in near["options"]) == ["cp", "recompute"]
    assert all(math.isfinite(o["step_time_s"]) and o["peak_gib"] <= o["capacity_gib"] for o in near["options"])
    code, out, _ = run_cli(*args[:-1], "tp=8,pp=4,mbs=1,gbs=512,seq=8192,recompute=selective")
    assert code == 0 and "nearest_feasible" not in json.loads(out)


@pytest.mark.parametrize(("model", "cluster", "text", "stack"), [
    ("deepseek-v3", "dgx-h100:16", "precision=fp8,tp=4,gbs=256,seq=8192,mbs=2", "megatron-core"),  # out of memory
    ("deepseek-v3", "dgx-h100:16", "precision=fp8,tp=4,ep=32,gbs=256,seq=8192,mbs=1,pp=4", "megatron-core"),
    ("llama3.1-70b", "dgx-h100:8", "tp=4,pp=2,mbs=2,gbs=256,seq=8192,recompute=none", "megatron-core"),
    ("llama3.1-70b", "dgx-h100:8", "tp=8,pp=2,mbs=1,gbs=256,seq=8192", "megatron-core"),  # fits
    ("llama3.1-8b", "dgx-a100-80g:1", "tp=1,mbs=1,gbs=64,seq=4096,precision=fp8", "megatron-core"),  # no fp8 cores
    ("llama3.1-8b", "dgx-h100:3", "tp=8,pp=3,mbs=1,gbs=64,seq=4096", "megatron-core"),  # 32 layers on pp 3
    ("llama3.1-8b", "dgx-h100:1", "mbs=1,gbs=64,seq=8192", "torchtitan"),
])
def test_the_rule_prefilter_agrees_with_estimate(model, cluster, text, stack):
    """nearest_layout prices a rung only once passes_rules says estimate() would find it feasible; the two must
    agree, or a fitting change would be skipped (DeepSeek-V3 on 128 H100 at tp 4: 1,500 rungs, 14 s -> 1.4 s)."""
    from clusterplan.models.training.estimate import passes_rules

    m, c, s = load_model(model), load_cluster(cluster), get_stack(stack)
    layout = Layout.parse(text, world=c.world_size)
    assert passes_rules(m, c, layout, s) == estimate(m, c, layout, stack=s).feasible


@pytest.mark.parametrize("model_name, cluster_ref, stack, layout", [
    # pp 2 -> 4 over Gemma 2 27B's 46 layers takes an uneven split (10 / 12 ... at the ends)
    ("gemma2-27b", "dgx-h100:1", "megatron-core", Layout(tp=2, pp=2, mbs=1, zero=1, gbs=64, seq=4096)),
    # tp 1 -> 4 turns sequence parallelism on where the layout had it off
    ("qwen3-30b-a3b", "dgx-b200:1", "torchtitan",
     Layout(tp=1, mbs=4, zero=1, recompute="none", precision="bf16", sp=False, ep=4, gbs=128, seq=8192)),
])
def test_each_option_applies_as_printed(model_name, cluster_ref, stack, layout):
    # Every layout key an option moves is in its change (the knob, or `also` beside it); applied to the user's own
    # layout, the printed changes give the option's layout (dp follows the world size) and so its numbers.
    model, cluster = load_model(model_name), load_cluster(cluster_ref)
    est = estimate(model, cluster, replace(layout, dp=cluster.world_size // (layout.tp * layout.pp * layout.cp)),
                   stack=get_stack(stack))
    near = nearest_layout(model, cluster, est, None, get_stack(stack))
    assert near is not None and near.options
    moved_more = 0
    for option in near.options:
        if any(c.knob == "nodes" for c in option.changes):
            continue
        fields = {"dp": option.layout.dp}
        for change in option.changes:
            fields[change.knob] = change.new
            fields.update({k: new for k, _, new in change.also})
            moved_more += bool(change.also)
        assert replace(est.layout, **fields) == option.layout, str(option.changes)
    assert moved_more >= 1
