"""The MoE token dispatcher and the 1F1B all-to-all overlap as Layout fields: parsing, defaults that serialise as
before, Megatron-Core's preconditions as rules, which stacks run them, the Megatron export and its reading back, and
the estimate / plan command lines."""

from __future__ import annotations

import json

import pytest

from clusterplan.errors import BadInputError
from clusterplan.frameworks import export_plan
from clusterplan.frameworks.read import read_config
from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.batch import LayoutArrays, MoeDispatcherCode
from clusterplan.models.training.layout import Layout, layout_problems, stack_problems
from clusterplan.models.training.rules import RuleCode

DSV3_LAYOUT = dict(tp=1, pp=4, vpp=4, dp=64, ep=64, mbs=1, gbs=8192, seq=4096, schedule="interleaved-1f1b",
                   first_stage_layers=0, last_stage_layers=0)


def test_defaults_are_todays_dispatch_and_serialise_as_before():
    L = Layout()
    assert (L.moe_dispatcher, L.moe_a2a_overlap) == ("alltoall", False)
    assert "moe_dispatcher" not in L.to_dict() and "moe_a2a_overlap" not in L.to_dict()
    arrays = LayoutArrays.from_layouts([L])
    assert int(arrays.moe_dispatcher[0]) == MoeDispatcherCode.ALLTOALL and float(arrays.moe_a2a_overlap[0]) == 0.0


def test_parse_round_trips_through_dict_and_arrays():
    L = Layout.parse("ep=8,moe_dispatcher=hybridep,moe_a2a_overlap=1,gbs=64", world=8)
    assert (L.moe_dispatcher, L.moe_a2a_overlap) == ("hybridep", True)
    assert L.to_dict()["moe_dispatcher"] == "hybridep" and L.to_dict()["moe_a2a_overlap"] is True
    assert Layout.from_dict(L.to_dict()) == L
    assert LayoutArrays.from_layouts([L]).layout(0) == L
    assert "hybridep" in L.short() and "a2a-overlap" in L.short()


@pytest.mark.parametrize("text", ["moe_dispatcher=nccl", "moe_a2a_overlap=maybe"])
def test_bad_values_are_one_line_errors(text):
    with pytest.raises(BadInputError):
        Layout.parse(text)


@pytest.mark.parametrize(("change", "says"), [
    (dict(ep=1, dp=64), "ep > 1"),
    (dict(vpp=1, schedule="1f1b"), "interleaved-1f1b"),
    (dict(recompute="full"), "recompute=full"),
    (dict(recompute="selective", recompute_modules="moe"), "'moe' recompute module"),
    (dict(precision="fp32"), "precision=fp32"),
])
def test_a2a_overlap_keeps_megatron_cores_preconditions(change, says):
    model = load_model("deepseek-v3")
    good = Layout(**DSV3_LAYOUT, moe_a2a_overlap=True)
    assert not [p for p in layout_problems(model, good, 1024) if p.code == RuleCode.A2A_OVERLAP]
    bad = good.with_(**change)
    broken = [p for p in layout_problems(model, bad, 1024) if p.code == RuleCode.A2A_OVERLAP]
    assert len(broken) == 1 and says in str(broken[0])


def test_pp1_runs_the_overlap_without_interleaving():
    # combined_1f1b_schedule_for_no_pipelining: pp = 1 needs no virtual stages
    model = load_model("deepseek-v3")
    L = Layout(dp=64, ep=64, gbs=128, moe_a2a_overlap=True)
    assert not [p for p in layout_problems(model, L, 64) if p.code == RuleCode.A2A_OVERLAP]


@pytest.mark.parametrize(("stack", "dispatcher", "overlap", "ok"), [
    ("megatron-core", "deepep", True, True), ("megatron-core", "hybridep", False, True),
    ("torchtitan", "deepep", False, False), ("deepspeed", "hybridep", False, False),
    ("torchtitan", "alltoall", True, False), ("torchtitan", "alltoall", False, True),
])
def test_which_stacks_run_which_dispatcher(stack, dispatcher, overlap, ok):
    L = Layout(**DSV3_LAYOUT, moe_dispatcher=dispatcher, moe_a2a_overlap=overlap)
    problems = [p for p in stack_problems(L, get_stack(stack)) if "dispatcher" in str(p) or "overlap" in str(p)]
    assert (not problems) == ok


def test_megatron_export_writes_the_flex_dispatcher_and_the_overlap_and_reads_them_back(tmp_path):
    model, cluster = load_model("qwen3-30b-a3b"), load_cluster("dgx-h100:2")
    layout = Layout(pp=2, vpp=2, dp=8, ep=8, gbs=64, schedule="interleaved-1f1b", moe_dispatcher="deepep",
                    moe_a2a_overlap=True)
    text = export_plan("megatron", model, cluster, layout).text
    assert "--moe-token-dispatcher-type flex" in text and "--moe-flex-dispatcher-backend deepep" in text
    assert "--overlap-moe-expert-parallel-comm" in text
    path = tmp_path / "run.sh"
    path.write_text(text)
    read = read_config(path, model, cluster.world_size).layout
    assert (read.moe_dispatcher, read.moe_a2a_overlap) == ("deepep", True)


def test_megatron_reader_takes_the_older_enable_deepep_flag_and_refuses_a_flex_without_backend(tmp_path):
    model = load_model("qwen3-30b-a3b")
    path = tmp_path / "old.sh"
    path.write_text("torchrun pretrain_gpt.py --num-experts 128 --expert-model-parallel-size 8 "
                    "--moe-token-dispatcher-type flex --moe-enable-deepep\n")
    assert read_config(path, model, 8).layout.moe_dispatcher == "deepep"
    path.write_text("torchrun pretrain_gpt.py --num-experts 128 --moe-token-dispatcher-type flex\n")
    with pytest.raises(BadInputError, match="moe-flex-dispatcher-backend"):
        read_config(path, model, 8)


def test_alltoall_export_is_unchanged():
    model, cluster = load_model("qwen3-30b-a3b"), load_cluster("dgx-h100:1")
    text = export_plan("megatron", model, cluster, Layout(dp=8, ep=8, gbs=64)).text
    assert "--moe-token-dispatcher-type alltoall" in text and "overlap-moe" not in text


def test_estimate_flags_set_the_fields(run_cli):
    args = ("estimate", "--model", "qwen3-30b-a3b", "--cluster", "dgx-h100:2", "--layout",
            "pp=2,vpp=2,ep=8,gbs=64,seq=4096,schedule=interleaved-1f1b", "--format", "json")
    code, out, _ = run_cli(*args, "--moe-dispatcher", "deepep", "--moe-a2a-overlap")
    layout = json.loads(out)["layout"]
    assert (layout["moe_dispatcher"], layout["moe_a2a_overlap"]) == ("deepep", True)
    code, out, err = run_cli(*args, "--moe-dispatcher", "nccl")
    assert code == 2 and out == "" and err.count("\n") == 1


def test_plan_fix_pins_the_dispatcher_and_refuses_it_on_a_stack_without_it(run_cli):
    base = ("plan", "--model", "qwen3-30b-a3b", "--cluster", "dgx-h100:2", "--gbs", "64", "--seq", "4096",
            "--format", "json", "--top", "1")
    code, out, _ = run_cli(*base, "--fix", "ep=8,moe_dispatcher=deepep")
    assert code == 0 and json.loads(out)["plans"][0]["layout"]["moe_dispatcher"] == "deepep"
    code, out, err = run_cli(*base, "--fix", "moe_dispatcher=deepep", "--stack", "torchtitan")
    assert code == 2 and "torchtitan" in err and err.count("\n") == 1


@pytest.mark.parametrize("target", ["torchtitan", "deepspeed"])
def test_other_frameworks_say_they_run_the_standard_all_to_all(target):
    model, cluster = load_model("qwen3-30b-a3b"), load_cluster("dgx-h100:1")
    layout = Layout(dp=8, ep=8, gbs=64, moe_dispatcher="deepep", moe_a2a_overlap=True)
    notes = export_plan(target, model, cluster, layout).notes
    assert any("moe_dispatcher=deepep" in n for n in notes) and any("moe_a2a_overlap" in n for n in notes)
    assert not any("moe_dispatcher" in n for n in export_plan(target, model, cluster, Layout(dp=8, ep=8, gbs=64)).notes)


def test_search_with_the_overlap_pinned_keeps_its_preconditions():
    """--fix moe_a2a_overlap=1 on qwen3-30b-a3b, 32 GPUs, ep 8, pp 2: the search offers only interleaved layouts
    without full recompute (before, it offered pp 2 1F1B with full recompute, which estimate then refused)."""
    from clusterplan.solver.space import enumerate_space
    model = load_model("qwen3-30b-a3b")
    space = enumerate_space(model, 32, 8, 256, 4096, {"ep": 8, "pp": 2, "moe_a2a_overlap": True})
    assert len(space.arrays) > 0
    assert space.rejected[RuleCode.A2A_OVERLAP] > 0
    for i in range(len(space.arrays)):
        L = space.arrays.layout(i)
        assert L.moe_a2a_overlap and not layout_problems(model, L, 32), L.short()


def test_flex_dispatcher_needs_an_expert_group_of_two():
    """Megatron-Core's MoEFlexTokenDispatcher asserts tp_size * ep_size > 1 over the expert tp x ep group: deepep at
    ep 1, etp 1 is refused; ep 1 with etp 2, or ep 2, runs; alltoall at ep 1 is the plain dense-like case."""
    model = load_model("qwen3-30b-a3b")
    codes = lambda **kw: {p.code for p in layout_problems(model, Layout(**{"dp": 8, "gbs": 64, **kw}), 8)}  # noqa: E731
    assert RuleCode.FLEX_DISPATCHER in codes(ep=1, moe_dispatcher="deepep")
    assert RuleCode.FLEX_DISPATCHER in codes(ep=1, moe_dispatcher="hybridep")
    assert RuleCode.FLEX_DISPATCHER not in codes(ep=2, moe_dispatcher="deepep")
    assert RuleCode.FLEX_DISPATCHER not in codes(ep=1, etp=2, tp=2, dp=4, moe_dispatcher="deepep")
    assert RuleCode.FLEX_DISPATCHER not in codes(ep=1)


def test_dispatcher_and_overlap_on_a_dense_model_are_refused(run_cli):
    """llama3.1-8b has no experts: --moe-dispatcher / --moe-a2a-overlap used to be priced as if absent (exit 0)."""
    model = load_model("llama3.1-8b")
    for change in (dict(moe_dispatcher="deepep"), dict(moe_a2a_overlap=True)):
        problems = layout_problems(model, Layout(dp=8, gbs=64, **change), 8)
        assert [p.code for p in problems] == [RuleCode.MOE_FIELDS_DENSE]
    assert not layout_problems(model, Layout(dp=8, gbs=64), 8)
    code, out, err = run_cli("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--layout",
                             "tp=1,gbs=64,seq=4096", "--moe-dispatcher", "deepep", "--format", "json")
    assert code == 1 and "mixture-of-experts" in out


def test_stack_help_names_every_shipped_stack():
    """--stack's help listed six of the eight stacks (hai-llm, added with DualPipe, and llm-foundry were missing)."""
    from clusterplan.cli.options import STACK_NAMES
    from clusterplan.hardware_db.stacks import list_stacks
    assert tuple(STACK_NAMES.split(", ")) == list_stacks()


def test_estimate_warns_what_the_stack_does_not_run(run_cli):
    """estimate prices a layout as given, on any stack; what the stack would not run is a warning on stderr (as
    export says it): DeepEP on torchtitan, DualPipe on megatron-core. The JSON on stdout is unchanged."""
    args = ("estimate", "--model", "qwen3-30b-a3b", "--cluster", "dgx-h100:2", "--format", "json", "--layout",
            "tp=1,ep=8,zero=3,gbs=64,seq=4096,mbs=1")
    code, out, err = run_cli(*args, "--stack", "torchtitan", "--moe-dispatcher", "deepep")
    assert code in (0, 1) and json.loads(out)["layout"]["moe_dispatcher"] == "deepep"
    assert err.count("\n") == 1 and err.startswith("warning: stack torchtitan has no deepep token dispatcher"), err
    code, _, err = run_cli(*args, "--stack", "torchtitan")
    assert "warning" not in err
    code, _, err = run_cli("estimate", "--model", "qwen3-30b-a3b", "--cluster", "hgx-h800:2", "--format", "json",
                           "--layout", "tp=1,pp=2,ep=8,gbs=64,seq=4096,mbs=1,schedule=dualpipe")
    assert "warning: stack megatron-core has no dualpipe schedule" in err


def test_plan_table_shows_a_pinned_dispatcher_and_overlap(run_cli):
    """The plan table's layout column named neither (only the JSON carried them)."""
    code, out, _ = run_cli("plan", "--model", "qwen3-30b-a3b", "--cluster", "dgx-h100:2", "--gbs", "64", "--seq",
                           "4096", "--top", "1", "--fix", "ep=8,pp=1,moe_dispatcher=deepep,moe_a2a_overlap=1")
    assert code == 0 and " deepep a2a-overlap " in out
    code, out, _ = run_cli("plan", "--model", "qwen3-30b-a3b", "--cluster", "dgx-h100:2", "--gbs", "64", "--seq",
                           "4096", "--top", "1", "--fix", "ep=8,pp=1")
    assert code == 0 and "deepep" not in out and "a2a-overlap" not in out


def test_estimate_defaults_zero_to_what_the_stack_runs(run_cli):
    """A layout without zero= takes ZeRO-1 (Layout's default) on a stack that runs it, and the stack's highest stage
    where it does not: torchtitan shards fully by default (data_parallel_shard_degree -1), so it gets zero 3 and no
    warning; zero=1 written out is still priced as given, with the warning."""
    args = ("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--format", "json", "--layout")
    code, out, err = run_cli(*args, "gbs=64,seq=8192,mbs=1", "--stack", "torchtitan")
    assert code == 0 and json.loads(out)["layout"]["zero"] == 3 and "warning" not in err, err
    code, out, err = run_cli(*args, "gbs=64,seq=8192,mbs=1,zero=1", "--stack", "torchtitan")
    assert json.loads(out)["layout"]["zero"] == 1 and "warning: stack torchtitan has no zero=1" in err
    code, out, _ = run_cli(*args, "gbs=64,seq=8192,mbs=1")
    assert json.loads(out)["layout"]["zero"] == 1
