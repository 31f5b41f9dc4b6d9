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
