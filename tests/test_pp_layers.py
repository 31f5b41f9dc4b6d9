"""Per-rank pipeline layer lists (Layout.pp_layers): torchtitan's per-stage module lists, Megatron's
--pipeline-model-parallel-layout and nanotron's cost-balanced splits, priced as run, worked by hand."""

from __future__ import annotations

import pytest

from clusterplan.errors import BadInputError
from clusterplan.frameworks.common import canonical
from clusterplan.hardware_db.stacks import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout, chunk_layers, layout_problems
from clusterplan.models.training.rules import RuleCode
from clusterplan.models.training.step import layer_cost, step_time

LLAMA8 = load_model("llama3.1-8b")  # 32 layers; its 128,256 x 4,096 LM head is ~2.4 layers of GEMM work
CLUSTER = load_cluster("dgx-h100:2")
BASE = dict(tp=1, pp=4, dp=4, mbs=1, gbs=64, seq=4096, zero=1, recompute="none")


def _est(**extra):
    return estimate(LLAMA8, CLUSTER, Layout(**BASE, **extra)).to_json()


def test_a_list_that_first_last_can_say_prices_the_same():
    listed, ends = _est(pp_layers=(9, 8, 8, 7)), _est(first_stage_layers=9, last_stage_layers=7)
    assert listed["step_time_s"] == ends["step_time_s"]
    assert listed["memory"] == ends["memory"]
    # ... and canonical writes it the way frameworks read it back: first/last with the rest even.
    c = canonical(LLAMA8, Layout(**BASE, pp_layers=(9, 8, 8, 7)))
    assert (c.first_stage_layers, c.last_stage_layers, c.pp_layers) == (9, 7, ())


def test_the_heaviest_rank_sets_the_pace():
    """6/9/10/7: the third rank's 10 layers outweigh the last rank's 7 + the LM head and the first's 6 + the
    embedding, so every micro-batch waits for 10 layers: compute = m x 10 x one layer's compute."""
    layout = Layout(**BASE, pp_layers=(6, 9, 10, 7))
    shapes, arrays = ModelShapes.of(LLAMA8), LayoutArrays.from_layouts([layout])
    hw, stack = HardwareRates.of(CLUSTER), get_stack()
    cost = layer_cost(shapes, arrays, hw, stack)
    m = 64 // (4 * 1)
    assert 7 * cost.total_s[0] + cost.head_s[0] < 10 * cost.total_s[0]  # the head does not tip the last rank
    assert float(step_time(shapes, arrays, hw, stack).compute_s[0]) == pytest.approx(m * 10 * cost.compute_s[0],
                                                                                      rel=1e-12)
    # Where the ten sit among the middle ranks does not change the time.
    assert _est(pp_layers=(6, 10, 9, 7))["step_time_s"] == _est(pp_layers=(6, 9, 10, 7))["step_time_s"]


def test_middle_memory_is_the_heaviest_rank_with_the_second_ranks_micro_batches():
    """The middle column holds the heaviest middle rank's layers with rank 1's pp - 1 micro-batches in flight: the
    same as first_stage_layers=5, last_stage_layers=7, whose two middle ranks hold (32 - 12) / 2 = 10 each."""
    listed = _est(pp_layers=(6, 9, 10, 7))["memory"]["by_stage"]
    ends = _est(first_stage_layers=5, last_stage_layers=7)["memory"]["by_stage"]
    assert listed["middle"] == ends["middle"]
    assert listed["last"] == ends["last"]
    assert listed["first"]["weights_gib"] > ends["first"]["weights_gib"]  # 6 layers against 5


def test_an_end_may_hold_the_lm_head_alone():
    """11/11/10/0: the last rank holds the final norm, LM head and loss only (nanotron splits so), which
    first_stage_layers/last_stage_layers cannot say (0 there means an even share)."""
    est = _est(pp_layers=(11, 11, 10, 0))
    last = est["memory"]["by_stage"]["last"]
    head_params = LLAMA8.vocab * LLAMA8.hidden + LLAMA8.hidden
    assert last["weights_gib"] == pytest.approx(head_params * 2 / 2**30, rel=1e-4)  # bf16 weights of the head
    c = canonical(LLAMA8, Layout(**BASE, pp_layers=(11, 11, 10, 0)))
    assert c.pp_layers == (11, 11, 10, 0) and c.first_stage_layers == c.last_stage_layers == 0
    assert Layout(**BASE, pp_layers=(11, 11, 10, 0)).short().endswith("layers 11/11/10/0")


@pytest.mark.parametrize(("extra", "code"), [
    (dict(pp_layers=(8, 8, 8)), RuleCode.PP_LAYERS),
    (dict(pp_layers=(8, 8, 8, 9)), RuleCode.PP_LAYERS),
    (dict(pp_layers=(16, 0, 8, 8)), RuleCode.PP_LAYERS),
    (dict(pp_layers=(8, 8, 8, 8), first_stage_layers=8), RuleCode.PP_LAYERS),
])
def test_lists_that_cannot_run_are_refused_by_code(extra, code):
    codes = [p.code for p in layout_problems(LLAMA8, Layout(**BASE, **extra), 16)]
    assert codes == [code]


def test_one_stage_takes_no_list():
    layout = Layout(**{**BASE, "pp": 1, "dp": 16}, pp_layers=(32,))
    assert [p.code for p in layout_problems(LLAMA8, layout, 16)] == [RuleCode.UNEVEN_NEEDS_PP]


def test_text_and_lists_parse_and_bad_values_are_one_line_errors():
    assert Layout.parse("pp=4,pp_layers=6/9/10/7").pp_layers == (6, 9, 10, 7)
    assert Layout.from_dict({"pp": 4, "pp_layers": [6, 9, 10, 7]}).to_dict()["pp_layers"] == [6, 9, 10, 7]
    assert "pp_layers" not in Layout(pp=4).to_dict()
    for bad in ("6/9/x/7", "6/-1/10/7"):
        with pytest.raises(BadInputError, match="pp_layers"):
            Layout.parse(f"pp=4,pp_layers={bad}")


def test_interleaved_middle_ranks_give_their_remainder_to_the_earliest_chunk():
    """torchtitan's default split of Llama 3 70B over 8 stages (80 layers + one each for the embedding and the head,
    82 / 8 = 10 rem 2): chunks [10, 11, 10, 10, 10, 10, 10, 9], rank r holding chunks r and r + 4: 20/21/20/19."""
    model = load_model("llama3.1-70b")
    layout = Layout(tp=8, pp=4, vpp=2, dp=8, schedule="interleaved-1f1b", pp_layers=(20, 21, 20, 19))
    assert chunk_layers(model, layout) == [10, 11, 10, 10, 10, 10, 10, 9]
    assert layout_problems(model, layout, 256) == []


def test_plan_keeps_a_pinned_list_in_every_plan(run_cli):
    import json

    code, out, _ = run_cli("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:2", "--gbs", "128", "--seq",
                           "4096", "--fix", "pp=4,pp_layers=6/9/10/7", "--top", "5", "--format", "json")
    assert code == 0
    plans = json.loads(out)["plans"]
    assert plans and all(p["layout"]["pp_layers"] == [6, 9, 10, 7] for p in plans)
    # A list that cannot run is refused with the nearest layout that can: the even split.
    code, _, err = run_cli("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:2", "--gbs", "128", "--seq",
                           "4096", "--fix", "pp=4,pp_layers=6/9/10", "--top", "1")
    assert code == 1 and "pp_layers 6/9/10 -> even" in err


def test_nanotron_plans_and_estimates_run_its_cost_balanced_split(run_cli):
    """nanotron's build_model splits Llama 3.1 8B (32 layers of 4 h^2 + 3 h I = 243.3M cost, an LM head of
    V h = 525.3M = 2.2 layers) by cumulative cost: a quarter of the 8,311M total is 8.5 layers' worth, so rank 0
    closes after 9 layers, rank 1 after 18 (half: 17.1), rank 2 after 26 (25.6), and the last holds 6 with the head
    (stack pp_split)."""
    import json

    from clusterplan.models.training.pipeline_split import stack_pp_layers

    assert stack_pp_layers(LLAMA8, 4, "cost_balanced") == (9, 9, 8, 6)
    assert stack_pp_layers(LLAMA8, 2, "cost_balanced") == (18, 14)
    assert stack_pp_layers(LLAMA8, 4, "even") == ()
    code, out, _ = run_cli("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--gbs", "256", "--seq",
                           "4096", "--stack", "nanotron", "--fix", "pp=4", "--top", "3", "--format", "json")
    assert code == 0
    assert all(p["layout"]["pp_layers"] == [9, 9, 8, 6] for p in json.loads(out)["plans"])
    code, out, err = run_cli("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--stack", "nanotron",
                             "--layout", "tp=2,pp=4,mbs=1,gbs=64,seq=4096", "--format", "json")
    assert code == 0 and json.loads(out)["layout"]["pp_layers"] == [9, 9, 8, 6] and "9/9/8/6" in err


def test_the_optimizer_step_waits_for_the_rank_with_the_most_parameters():
    """0/11/11/10: the first rank holds the embedding alone, the last 10 layers and the 525M-parameter LM head, the
    most; its step (ZeRO-1 over dp 4, fused Adam with fp32 master weights: 32 B per parameter) sets the term."""
    shapes = ModelShapes.of(LLAMA8)
    hw = HardwareRates.of(CLUSTER)
    opt = _est(pp_layers=(0, 11, 11, 10))["time"]["optimizer_s"]
    last = 10 * (shapes.attn_params + shapes.dense_mlp_params + shapes.norm_params) + shapes.head_params
    assert opt == pytest.approx(last / 4 * 32.0 / hw.hbm_bytes_per_s, rel=1e-4)


def test_a_plan_file_with_stages_and_a_list_is_refused(run_cli, tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text("format: clusterplan-plan\nversion: 1\nmodel: llama3.1-70b\n"
                    "cluster: tests/fixtures/clusters/mixed_h100_a100.yaml\n"
                    "layout: {tp: 4, pp: 3, dp: 4, mbs: 1, gbs: 64, seq: 4096, pp_layers: [20, 30, 30]}\n"
                    "stages: [{gpu: A100-SXM4-80GB, layers: 20}, {gpu: A100-SXM4-80GB, layers: 30}, "
                    "{gpu: H100-SXM5-80GB, layers: 30}]\n")
    code, _, err = run_cli("estimate", "--plan", str(path))
    assert code == 2 and "pp_layers" in err and "Traceback" not in err


def test_nearest_options_may_change_pp_without_the_old_list(run_cli):
    # A list holds the stages of one pp; an option that changes pp runs the new pp's own split (not a list of the
    # wrong length, which every new pp would refuse).
    import json

    code, out, _ = run_cli("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--stack", "hai-llm",
                           "--layout", "tp=1,pp=4,dp=2,mbs=1,gbs=64,seq=4096,schedule=dualpipe,pp_layers=9/8/8/7",
                           "--format", "json")
    assert code == 1
    options = json.loads(out)["nearest_feasible"]["options"]
    pp = [o for o in options if [c["knob"] for c in o["changes"]] == ["pp"]]
    assert pp and all("pp_layers" not in o["layout"] for o in pp)


def test_nanotron_split_falls_back_to_even_where_it_cannot_be_priced_as_run():
    from clusterplan.models.training.pipeline_split import cost_balanced_ranks, stack_pp_layers

    # pp 16: the head lands on rank 14 beside 2 layers, the last rank holds only the cast and the loss
    ranks = cost_balanced_ranks(LLAMA8, 16)
    assert ranks[-2] == (2, True) and ranks[-1] == (0, False)
    assert stack_pp_layers(LLAMA8, 16, "cost_balanced") == ()
    # pp 32: middle ranks would hold no layer; never a list the user did not give that the rules refuse
    assert stack_pp_layers(LLAMA8, 32, "cost_balanced") == ()


def test_nanotron_plans_where_its_split_falls_back_search_only_the_even_split(run_cli):
    # pp 16 on Llama 3.1 8B: nanotron's split cannot be priced as run, the even split stands in for it, and the
    # search tries no first/last stage sizes (nanotron has no setting for them).
    import json

    code, out, _ = run_cli("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:2", "--gbs", "256", "--seq",
                           "4096", "--stack", "nanotron", "--fix", "pp=16", "--top", "5", "--format", "json")
    assert code == 0
    for p in json.loads(out)["plans"]:
        lay = p["layout"]
        assert "pp_layers" not in lay and lay["first_stage_layers"] == lay["last_stage_layers"] == 0


def test_nanotron_nearest_pp_option_runs_nanotrons_split(run_cli):
    # Llama 3.1 8B at pp 1 does not fit one node under nanotron; the nearest "pp 1 -> 2" option is priced with the
    # 18/14 split nanotron runs, the numbers `estimate` prints for that layout itself.
    import json

    code, out, _ = run_cli("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--stack", "nanotron",
                           "--layout", "tp=1,mbs=1,gbs=64,seq=4096", "--format", "json")
    assert code == 1
    options = json.loads(out)["nearest_feasible"]["options"]
    pp = next(o for o in options if [c["knob"] for c in o["changes"]] == ["pp"])
    assert pp["layout"]["pp_layers"] == [18, 14]
    code, out, _ = run_cli("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--stack", "nanotron",
                           "--layout", "tp=1,pp=2,mbs=1,gbs=64,seq=4096", "--format", "json")
    direct = json.loads(out)
    assert pp["step_time_s"] == pytest.approx(direct["step_time_s"], rel=1e-5)
    assert pp["peak_gib"] == pytest.approx(direct["memory"]["peak_gib"], rel=1e-5)
