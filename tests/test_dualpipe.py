"""DualPipe (DeepSeek-V3, arXiv 2412.19437 section 3.2.1 and Table 2; deepseek-ai/DualPipe): each term pinned by a
worked example derived by hand from the paper's table, and the schedule gated by stack data."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from clusterplan.errors import InfeasibleError
from clusterplan.hardware_db.stacks import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.batch import LayoutArrays, MoeDispatcherCode
from clusterplan.models.training.dispatch import DISPATCHER_SMS, dispatcher_slowdown
from clusterplan.models.training.layout import Layout, layout_problems, stack_problems
from clusterplan.models.training.memory import inflight_microbatches, memory_breakdown
from clusterplan.models.training.rules import RuleCode
from clusterplan.models.training.step import bubble_s, dualpipe_ep_exposed_s, pp_comm_s
from clusterplan.solver.space import _structures


def arrays(**kw) -> LayoutArrays:
    return LayoutArrays.from_layouts([Layout(**kw)])


def test_bubble_worked_example():
    """pp = 8, a stage's micro-batch F = B = W = 1 s (our `stage` F + B + W = 3 s; the paper's full backward chunk
    B + W = 2 s, so backward_share 2/3; F&B, an overlapped pair, = 3 s). DualPipe: (pp/2 - 1)(F&B + B - 3W)
    = 3 x (3 + 2 - 3) = 6 s, against 1F1B's (pp - 1)(F + B + W) = 21 s and ZB-H1's (pp - 1)(F + B - W) = 7 s."""
    stage, w = np.array([3.0]), np.array([1.0])
    expected = {"dualpipe": 6.0, "1f1b": 21.0, "zb": 7.0}
    for schedule, seconds in expected.items():
        L = arrays(pp=8, schedule=schedule, gbs=20, mbs=1)
        assert float(bubble_s(stage, w, L.microbatches, L, 1.0, 2.0 / 3.0)[0]) == pytest.approx(seconds, abs=1e-12)
    # Backward twice the forward without a weight-gradient split (W = 0): 3 x (3 + 2) = 15 s; pp = 2 has none.
    L = arrays(pp=8, schedule="dualpipe", gbs=20, mbs=1)
    assert float(bubble_s(stage, np.array([0.0]), L.microbatches, L, 1.0, 2.0 / 3.0)[0]) == pytest.approx(15.0)
    L = arrays(pp=2, schedule="dualpipe", gbs=4, mbs=1)
    assert float(bubble_s(stage, w, L.microbatches, L, 1.0, 2.0 / 3.0)[0]) == 0.0


def test_ep_all_to_alls_hide_under_the_paired_chunk():
    """A layer: 4 s of all-to-alls, 6 s of compute, a third of it forward (F = 2, B = 4). The forward's 2 s of
    dispatch + combine run under the backward's 4 s, the backward's 2 s under the forward's 2 s: nothing exposed.
    The 4 s overlapped hold 20 of 132 SMs: the compute runs 132/112 slower beside them, ending at
    max(4, 6 + 4 x 20/132) = 6.606 s instead of 6 s (comm.interference_s). DeepEP's 20 SMs are the 20 DeepSeek-V3
    reserves for communication (section 3.2.2)."""
    L = arrays(pp=8, schedule="dualpipe", gbs=16, mbs=1, ep=8, dp=8, moe_dispatcher="deepep")
    assert DISPATCHER_SMS[MoeDispatcherCode.DEEPEP] == 20
    slowdown = dispatcher_slowdown(L, 132, 1.0)
    assert float(slowdown[0]) == pytest.approx(132.0 / 112.0)
    got = dualpipe_ep_exposed_s(np.array([4.0]), np.array([6.0]), np.array([1.0 / 3.0]), 1.0, slowdown)
    assert float(got[0]) == pytest.approx(4.0 * 20.0 / 132.0, rel=1e-12)
    # 10 s of all-to-alls: 5 s each way, under 4 s and 2 s: 1 + 3 = 4 s exposed; the 6 s hidden add 6 x 20/132.
    got = dualpipe_ep_exposed_s(np.array([10.0]), np.array([6.0]), np.array([1.0 / 3.0]), 1.0, slowdown)
    assert float(got[0]) == pytest.approx(4.0 + 6.0 * 20.0 / 132.0, rel=1e-12)
    # No slowdown (no SM count): only what exceeds the partner's compute.
    assert float(dualpipe_ep_exposed_s(np.array([10.0]), np.array([6.0]), np.array([1.0 / 3.0]), 1.0, 1.0)[0]) == 4.0


def test_memory_two_stages_and_pp_plus_one_microbatches():
    """Table 2: 2x the parameters per rank (stages i and pp-1-i) and pp + 1 micro-batches of activations in flight
    on every rank, in one stage's layers (1F1B: pp - i on stage i)."""
    L = arrays(pp=8, schedule="dualpipe", gbs=32, mbs=1)
    for position in ("first", "middle", "last"):
        assert float(inflight_microbatches(L, position)[0]) == 9.0
    one = arrays(pp=8, schedule="1f1b", gbs=32, mbs=1)
    assert float(inflight_microbatches(one, "first")[0]) == 8.0
    shapes = ModelShapes.of(load_model("llama3.1-8b"))
    dual, base = memory_breakdown(shapes, L).by_position, memory_breakdown(shapes, one).by_position
    # by_position[position, term]: terms weights, grads, optimizer first (BREAKDOWN_TERMS).
    np.testing.assert_allclose(dual[:, :3, 0], 2.0 * base[:, :3, 0], rtol=1e-12)


@pytest.mark.parametrize(("kw", "ok"), [
    ({"pp": 8, "gbs": 16}, True),             # 16 micro-batches = 2 pp: the smallest DualPipe.step accepts
    ({"pp": 8, "gbs": 14}, False),            # fewer than 2 pp
    ({"pp": 4, "gbs": 9}, False),             # odd micro-batches: half enter from each end
    ({"pp": 1, "gbs": 8}, False),             # no pipeline
    ({"pp": 8, "vpp": 2, "gbs": 32}, False),  # its two stages per rank are its own, not virtual stages
])
def test_shape_rules(kw, ok):
    model = load_model("llama3.1-8b")
    world = kw["pp"]
    layout = Layout(schedule="dualpipe", mbs=1, seq=4096, **kw)
    codes = {r.code for r in layout_problems(model, layout, world)}
    assert (RuleCode.DUALPIPE_SHAPE not in codes) == ok, codes


def test_pp_sends_overlap_under_hai_llm_only():
    """hai-llm lists dualpipe in pp_overlap_schedules: its steady-state sends hide (only the 2 (pp - 1) of fill and
    drain stay), 1 ms each: 14 ms; without the overlap all 2 (m + pp - 1) = 2 x 23 are exposed."""
    L = arrays(pp=8, schedule="dualpipe", gbs=16, mbs=1)
    p2p, stage = np.array([1e-3]), np.array([1.0])
    hw = type("HW", (), {"comm_overlap": 1.0})()
    assert float(pp_comm_s(p2p, L.microbatches, L, get_stack("hai-llm"), stage, hw)[0]) == pytest.approx(14e-3)
    assert float(pp_comm_s(p2p, L.microbatches, L, get_stack("megatron-core"), stage, hw)[0]) == pytest.approx(46e-3)


def test_search_offers_dualpipe_only_to_a_stack_that_runs_it():
    model = load_model("deepseek-v3")
    for name, offered in (("megatron-core", False), ("torchtitan", False), ("hai-llm", True)):
        left_out: Counter = Counter()
        found = {s["schedule"] for s in _structures(model, 64, 8, {"pp": 4, "tp": 1, "cp": 1, "vpp": 1},
                                                    get_stack(name), left_out)}
        assert ("dualpipe" in found) == offered, (name, found)
        assert "schedule dualpipe" not in left_out
    assert get_stack("hai-llm").can_run("schedule", "dualpipe")
    assert not get_stack("megatron-core").can_run("schedule", "dualpipe")


def test_exporters_refuse_dualpipe():
    from clusterplan.frameworks.megatron import runs_as as megatron_runs_as
    from clusterplan.frameworks.torchtitan import runs_as as titan_runs_as

    model = load_model("llama3.1-8b")
    layout = Layout(pp=4, dp=2, schedule="dualpipe", mbs=1, gbs=16, seq=4096)
    with pytest.raises(InfeasibleError, match="no DualPipe"):
        megatron_runs_as(model, layout)
    with pytest.raises(InfeasibleError, match="no DualPipe"):
        titan_runs_as(model, layout)


def test_estimate_runs_dualpipe_on_h800():
    from clusterplan.models.training.estimate import estimate

    model = load_model("deepseek-v3")
    cluster = load_cluster("hgx-h800:16")
    base = dict(pp=8, ep=16, zero=1, mbs=1, gbs=512, seq=4096, precision="fp8", first_stage_layers=5,
                last_stage_layers=8)
    dual = estimate(model, cluster, Layout(schedule="dualpipe", **base), stack=get_stack("hai-llm"))
    one = estimate(model, cluster, Layout(schedule="1f1b", **base), stack=get_stack("hai-llm"))
    # Same work per rank; DualPipe's bubble is (pp/2 - 1)(F&B + B - 3W) against (pp - 1)(F + B + W).
    d, o = dual.evaluation.time, one.evaluation.time
    assert dual.value(d.compute_s) == pytest.approx(one.value(o.compute_s), rel=1e-9)
    assert dual.value(d.bubble_s) < 0.5 * one.value(o.bubble_s)
    assert dual.value(d.ep_comm_s) < one.value(o.ep_comm_s)


def test_search_keeps_dualpipes_micro_batch_rule_at_every_micro_batch_size():
    """qwen3-30b-a3b on 16 GPUs at tp 1, pp 2, cp 1 (dp 8), gbs 32: mbs 1 gives 32 / 8 = 4 micro-batches = 2 x pp
    (runs); mbs 2 gives 2 < 4 and mbs 4 gives 1 (DualPipe.step refuses both). Before the search checked the rule per
    expanded mbs, `plan` offered the mbs 2 layout that `estimate` then called infeasible."""
    from clusterplan.solver.space import enumerate_space
    space = enumerate_space(load_model("qwen3-30b-a3b"), 16, 8, 32, 4096,
                            {"tp": 1, "pp": 2, "cp": 1, "vpp": 1, "ep": 8, "schedule": "dualpipe"},
                            stack=get_stack("hai-llm"))
    assert set(space.arrays.mbs.tolist()) == {1.0}
    assert space.rejected[RuleCode.DUALPIPE_SHAPE] > 0
    for i in range(len(space.arrays)):
        assert not layout_problems(load_model("qwen3-30b-a3b"), space.arrays.layout(i), 16)


def test_hai_llm_runs_no_context_parallelism():
    """The DeepSeek-V3 report describes no context parallelism: stacks.yaml hai-llm cp_kinds is empty, so cp = 1
    runs (the reference row) and cp > 1 is a stack problem the search leaves out (it offered cp 8 ring first)."""
    stack = get_stack("hai-llm")
    assert stack.cp_kinds == ()
    base = dict(pp=16, ep=64, zero=1, gbs=15360, seq=4096, schedule="dualpipe")
    assert not stack_problems(Layout(dp=128, **base), stack)
    assert [p.code for p in stack_problems(Layout(dp=16, cp=8, **base), stack)] == [RuleCode.STACK]


def test_hai_llm_runs_no_tensor_parallelism(run_cli):
    """The DeepSeek-V3 report trains 'without using costly Tensor Parallelism' (stacks.yaml hai-llm max_tp 1): the
    search generates tp 1 only and says what it left out (before, `plan --stack hai-llm` picked tp4 when tp was not
    pinned); estimate / export name tp or etp > 1 through stack_problems; a pinned tp > 1 is refused in one line.
    megatron-core has no limit (max_tp absent: None)."""
    from clusterplan.solver.space import enumerate_space

    hai, mcore = get_stack("hai-llm"), get_stack("megatron-core")
    assert (hai.max_tp, mcore.max_tp) == (1, None)
    model = load_model("qwen3-30b-a3b")
    space = enumerate_space(model, 16, 8, 64, 4096, stack=hai)
    assert len(space.arrays.tp) and set(space.arrays.tp.tolist()) == {1.0} and space.left_out["tp > 1"] > 0
    assert max(enumerate_space(model, 16, 8, 64, 4096, stack=mcore).arrays.tp.tolist()) == 8
    base = dict(pp=2, ep=8, zero=1, gbs=64, seq=4096)
    assert not stack_problems(Layout(dp=8, **base), hai)
    assert [p.field for p in stack_problems(Layout(tp=2, dp=4, **base), hai)] == ["tp"]
    assert [p.field for p in stack_problems(Layout(tp=2, etp=2, dp=4, **base), hai)] == ["tp", "etp"]
    assert not stack_problems(Layout(tp=2, dp=4, **base), mcore)
    args = ("plan", "--model", "qwen3-30b-a3b", "--cluster", "hgx-h800:2", "--stack", "hai-llm", "--gbs", "64",
            "--seq", "4096", "--top", "1")
    code, out, err = run_cli(*args)
    assert code == 0 and "tp > 1 (" in err and " tp1 " in out
    code, out, err = run_cli(*args, "--fix", "tp=2")
    assert code == 2 and out == "" and err.count("\n") == 1 and "up to 1 only" in err


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1"])
def test_max_tp_must_be_a_whole_degree_with_a_source(bad):
    """stacks.yaml max_tp: a whole number >= 1 with its source under sources.max_tp; else one line saying so."""
    from clusterplan.errors import BadInputError
    from clusterplan.hardware_db.stacks import _read, parse_stack

    raw = dict(_read("stacks.yaml")["stacks"]["hai-llm"])
    assert parse_stack("hai-llm", raw).max_tp == 1
    with pytest.raises(BadInputError, match=r"^stacks.yaml: hai-llm: max_tp must be a whole number >= 1, got "):
        parse_stack("hai-llm", {**raw, "max_tp": bad})
    unsourced = {**raw, "sources": {k: v for k, v in raw["sources"].items() if k != "max_tp"}}
    with pytest.raises(BadInputError, match=r"max_tp without a source; add sources.max_tp$"):
        parse_stack("hai-llm", unsourced)


def test_dualpipe_updates_two_stages_per_rank():
    # DualPipe keeps stages i and pp-1-i on rank i (arXiv 2412.19437 Table 2): its optimizer step updates twice the
    # parameters of the same layout under 1F1B, as its memory counts twice the states.
    from clusterplan.hardware_db import get_stack
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.training.estimate import estimate
    from clusterplan.models.training.layout import Layout

    model, cluster, stack = load_model("llama3.1-8b"), load_cluster("dgx-h100:1"), get_stack("hai-llm")
    times = {s: estimate(model, cluster, Layout(pp=4, dp=2, zero=1, mbs=1, gbs=64, seq=4096, recompute="none",
                                                schedule=s), stack=stack).to_json()["time"]["optimizer_s"]
             for s in ("1f1b", "dualpipe")}
    assert times["dualpipe"] == pytest.approx(2 * times["1f1b"], rel=1e-9)
