"""Execution stacks (hardware_db/data/stacks.yaml): every entry loads, names its sources, and reaches the model."""

from __future__ import annotations

from dataclasses import replace

import pytest

from clusterplan.errors import BadInputError
from clusterplan.hardware_db import DEFAULT_STACK, get_stack, list_stacks
from clusterplan.hardware_db.stacks import REQUIRED_SOURCES, parse_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout, stack_problems
from clusterplan.models.training.rules import RuleCode

CONTRACT = {"megatron-core", "torchtitan", "torchtitan-compile", "deepspeed", "megatron-lm-2021"}


def test_every_contract_stack_loads_with_sources():
    assert CONTRACT <= set(list_stacks())
    for name in list_stacks():
        stack = get_stack(name)
        assert stack.name == name
        assert all(stack.sources[k].strip() for k in REQUIRED_SOURCES), name
        assert 0.0 <= stack.tp_overlap_share <= 1.0 and 0.0 <= stack.dp_overlap_share <= 1.0
        # Only TE userbuffers ("bulk") hide a share; async TP is priced per fused op (models/training/tp_overlap.py).
        assert (stack.tp_overlap == "bulk") == (stack.tp_overlap_share > 0.0), name
        # An empty schedule list means no pipeline parallelism (llm-foundry): then pp > 1 is refused outright.
        assert stack.schedules or stack.pp_max_zero == 0, name


def test_default_is_megatron_core_and_names_are_forgiving():
    assert DEFAULT_STACK == "megatron-core"
    assert get_stack() is get_stack("megatron-core")
    assert get_stack("TorchTitan").name == "torchtitan"


def test_unknown_stack_suggests_one():
    with pytest.raises(BadInputError, match="torchtitan"):
        get_stack("torchtitn")


def test_a_stack_without_sources_is_refused():
    raw = {"description": "x", "sources": {"overlap": "somewhere"}}
    with pytest.raises(BadInputError, match="without a source"):
        parse_stack("bad", raw)


def test_what_the_stacks_say_they_run():
    """The differences issue #13 names: Megatron has no zero-bubble, torchtitan has ZBV, DeepSpeed 1F1B only and
    ZeRO <= 1 under PP, the 2021 Megatron-LM no context parallelism."""
    mcore, titan, ds, old = (get_stack(n) for n in ("megatron-core", "torchtitan", "deepspeed", "megatron-lm-2021"))
    assert "zb" not in mcore.schedules and "zbv" in titan.schedules
    assert ds.schedules == ("1f1b",) and ds.pp_max_zero == 1
    assert old.cp_kinds == () and old.tp_overlap == "none" and old.attention_kernel == "unfused"
    assert mcore.tp_overlap == "bulk" and get_stack("torchtitan-compile").tp_overlap == "async_tp"
    assert titan.fsdp_granularity == "block" and ds.fsdp_granularity == "bucket"
    layout = Layout(tp=8, pp=4, dp=2, schedule="zb", zero=1)
    assert any("zb" in p.message for p in stack_problems(layout, mcore))
    assert any("zero" in p.message for p in stack_problems(layout, titan))
    assert {p.code for p in stack_problems(layout, mcore) + stack_problems(layout, titan)} == {RuleCode.STACK}
    assert stack_problems(layout.with_(schedule="1f1b"), mcore) == []


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_estimate_runs_under_every_stack(name):
    est = estimate(load_model("llama3.1-8b"), load_cluster("dgx-h100:1"),
                   Layout(tp=2, dp=4, sp=True, gbs=32, seq=4096), stack=get_stack(name))
    data = est.to_json()
    assert data["stack"] == name and data["step_time_s"] > 0


def test_default_estimate_is_megatron_core():
    est = estimate(load_model("llama3.1-8b"), load_cluster("dgx-h100:1"), Layout(tp=2, dp=4, gbs=32, seq=4096))
    assert est.to_json()["stack"] == "megatron-core"


def test_plan_searches_only_what_the_stack_runs_and_says_what_it_left_out():
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.solver.search import search

    model, cluster = load_model("llama3.1-70b"), load_cluster("dgx-h100:8")
    ds = search(model, cluster, 512, 8192, top=50, stack=get_stack("deepspeed"))
    for p in ds.plans:
        assert p.layout.schedule == "1f1b" and p.layout.vpp == 1
        assert p.layout.pp == 1 or p.layout.zero <= 1
        assert p.layout.cp == 1 or p.layout.cp_kind == "a2a"
    assert any("schedule interleaved-1f1b" in n for n in ds.notes)
    mcore = search(model, cluster, 512, 8192, top=5, fixed={"pp": 4}, stack=get_stack("megatron-core"))
    assert all(p.layout.schedule in ("1f1b", "interleaved-1f1b") for p in mcore.plans)
    assert any("schedule zb" in n for n in mcore.notes)
    # gbs 256: torch.distributed.pipelining keeps every micro-batch's logits on the last stage until the step's end
    # (memory.py torch_pipeline_bytes), so at 512 no torchtitan layout of this pipeline fits 64 GPUs.
    titan = search(model, cluster, 256, 8192, top=5, fixed={"pp": 4, "vpp": 2, "schedule": "zbv"},
                   stack=get_stack("torchtitan"))
    assert titan.plans and all(p.layout.schedule == "zbv" and p.layout.zero in (0, 3) for p in titan.plans)
    with pytest.raises(BadInputError, match="cannot run"):
        search(model, cluster, 512, 8192, fixed={"pp": 4, "vpp": 2, "schedule": "zbv"}, stack=get_stack())


def test_interleaved_schedule_over_uneven_stages():
    """126 layers on pp 16 with vpp 8: 7 layers on the first and last ranks, 8 on each of the 14 middle ones
    (Megatron's pipeline layout). The interleaved bubble is the slowest rank's (pp-1)/vpp, far below 1F1B's."""
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.training.layout import layout_problems

    model = load_model("llama3.1-405b")
    assert model.n_layers == 126
    layout = Layout(tp=8, pp=16, vpp=8, dp=16, schedule="interleaved-1f1b", first_stage_layers=7,
                    last_stage_layers=7, gbs=2048, seq=8192, recompute="none")
    assert layout_problems(model, layout, 2048) == []
    assert any("middle stage layers" in str(p) for p in layout_problems(model, layout.with_(first_stage_layers=14,
                                                                                       last_stage_layers=14), 2048))
    cluster = load_cluster("dgx-h100:256")
    inter = estimate(model, cluster, layout).to_json()["time"]
    flat = estimate(model, cluster, layout.with_(vpp=1, schedule="1f1b")).to_json()["time"]
    assert inter["bubble_s"] < flat["bubble_s"] / 4
    assert inter["pp_comm_s"] > 0


def test_a_stack_without_pipeline_parallelism_refuses_pp():
    """llm-foundry (Composer FSDP) has no pipeline schedule: pp > 1 is refused with a one-line fix, pp = 1 runs."""
    foundry = get_stack("llm-foundry")
    assert foundry.schedules == () and foundry.cp_kinds == () and foundry.tp_overlap == "none"
    problems = stack_problems(Layout(pp=2, dp=4, zero=3, recompute="none"), foundry)
    assert [p.message for p in problems] == ["stack llm-foundry has no pipeline parallelism; set pp=1"]
    assert stack_problems(Layout(dp=8, zero=3, recompute="full"), foundry) == []


def test_fp8_tp_gathers_fp8_reads_the_stacks_first_recipe():
    """torchtitan's first fp8 recipe, tensorwise, casts before the TP all-gather (fp8_tp_allgather_recipes); with
    rowwise first it gathers bf16; megatron-core lists none; a stack without fp8 gathers no fp8."""
    from dataclasses import replace

    from clusterplan.hardware_db.stacks import get_stack

    titan = get_stack("torchtitan")
    assert titan.fp8_recipes[0] == "tensorwise" and titan.fp8_tp_gathers_fp8
    assert not replace(titan, fp8_recipes=("rowwise", "tensorwise")).fp8_tp_gathers_fp8
    assert not get_stack("megatron-core").fp8_tp_gathers_fp8
    assert not get_stack("deepspeed").fp8_tp_gathers_fp8


def test_deepspeed_autotp_rules():
    """DeepSpeed AutoTP training (stacks.yaml deepspeed: tp_sequence_parallel false, tp_max_zero 2, tp_alone): tensor
    parallelism all-reduces whole activations beside data parallelism under ZeRO 0-2; each other combination is a
    stack rule on its own field, and megatron-core runs them all."""
    from clusterplan.models.training.layout import Layout, stack_problems

    ds, mcore = get_stack("deepspeed"), get_stack("megatron-core")
    # recompute="none": DeepSpeed has no selective recompute (a rule of its own, test below)
    assert not stack_problems(Layout(tp=4, dp=16, zero=2, sp=False, gbs=64, recompute="none"), ds)
    for layout, field in ((Layout(tp=4, dp=16, zero=2, sp=True, gbs=64, recompute="none"), "sp"),
                          (Layout(tp=4, dp=16, zero=3, sp=False, gbs=64, recompute="none"), "zero"),
                          (Layout(tp=4, pp=2, dp=8, zero=1, sp=False, gbs=64, recompute="none"), "tp"),
                          (Layout(tp=4, cp=2, cp_kind="a2a", dp=8, zero=1, sp=False, gbs=64, recompute="none"),
                           "tp")):
        assert [p.field for p in stack_problems(layout, ds)] == [field], layout
        assert not stack_problems(replace(layout, cp_kind="ring"), mcore)


def test_stacks_without_selective_recompute_refuse_it_and_default_to_none():
    # nanotron, DeepSpeed and llm-foundry checkpoint whole layers only (selective_recompute: none): recompute=selective
    # is a stack problem, plan does not search it, and a layout that names no recompute runs none there.
    for name in ("nanotron", "deepspeed", "llm-foundry"):
        stack = get_stack(name)
        assert stack.recompute_modes == ("none", "full") and stack.default_recompute == "none"
        problems = stack_problems(Layout(dp=8, zero=stack.default_zero, recompute="selective"), stack)
        assert [p.field for p in problems] == ["recompute"] and "recompute=none or recompute=full" in problems[0].message
    assert get_stack("megatron-core").default_recompute == "selective"


def test_sequence_parallelism_at_tp_1_changes_no_memory():
    # At tp 1 there is nothing to shard: sp=1 keeps what sp=0 keeps (torchtitan's op-level SAC save list added the
    # SP reduce-scatter outputs, 4 GiB at Llama 3.1 8B, seq 8192, before).
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.training.estimate import estimate
    from clusterplan.models.training.layout import Layout

    model, cluster, titan = load_model("llama3.1-8b"), load_cluster("dgx-h100:1"), get_stack("torchtitan")
    mem = [estimate(model, cluster, Layout.parse(f"tp=1,mbs=1,gbs=8,seq=8192,sp={sp}", world=8, defaults={"zero": 3}),
                    stack=titan).to_json()["memory"]["peak_gib"] for sp in (0, 1)]
    assert mem[0] == mem[1]


def test_deepspeed_has_no_hybrid_sharding_and_plan_offers_none(run_cli, tmp_path):
    # DeepSpeed shards ZeRO over the whole data-parallel group (MiCS, its hierarchical sharding, is gone in 0.19):
    # plan --stack deepspeed offered dp16(2x8) first, which its own export then refused.
    ds = get_stack("deepspeed")
    assert not ds.hsdp and get_stack("torchtitan").hsdp and get_stack("megatron-core").hsdp
    hsdp = Layout(dp=16, dp_replicate=2, zero=3, mbs=2, gbs=64, seq=4096, recompute="none")
    assert [p.field for p in stack_problems(hsdp, ds)] == ["dp_replicate"]
    plan = tmp_path / "d.yaml"
    code, out, err = run_cli("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:2", "--gbs", "64", "--seq",
                             "4096", "--stack", "deepspeed", "--fix", "zero=3", "--out", str(plan))
    assert code == 0 and "(2x8)" not in out and "dp_replicate > 1 (hybrid sharding)" in err
    code, _, err = run_cli("export", str(plan), "--to", "deepspeed")
    assert code == 0, err


def test_torchtitan_plans_no_zero_bubble_over_uneven_stages_nor_ddp_beside_other_parallelism(run_cli, tmp_path):
    # DeepSeek-V3's 61 layers: ZBVZeroBubble runs two even chunks per rank as torchtitan builds it, and torchtitan's
    # apply_ddp takes a 1-D mesh; the search offered both (zb first, then zero 0 beside tp / pp / ep) and the
    # export refused them.
    plan = tmp_path / "t.yaml"
    code, out, err = run_cli("plan", "--model", "deepseek-v3", "--cluster", "dgx-h100:32", "--gbs", "512", "--seq",
                             "4096", "--stack", "torchtitan", "--top", "3", "--out", str(plan))
    assert code == 0 and "schedule zbv over uneven stages" in err and "zero 0 with tp, pp, cp or ep" in err
    assert run_cli("export", str(plan), "--to", "torchtitan")[0] == 0
    ds = Layout(tp=8, pp=16, dp=2, ep=16, zero=0, mbs=1, gbs=512, seq=4096, first_stage_layers=3,
                last_stage_layers=2)
    assert [p.field for p in stack_problems(ds, get_stack("torchtitan"))] == ["zero"]


def test_megatron_core_recomputes_whole_layers_per_model_chunk():
    # The block method checkpoints the first N layers of each virtual-pipeline chunk: 3 layers per rank over 4 chunks
    # cannot run (the export wrote 4); 4 can.
    mcore = get_stack("megatron-core")
    odd = Layout(tp=4, pp=2, vpp=4, dp=8, zero=1, mbs=1, gbs=512, seq=8192, recompute="full", recompute_layers=3,
                 sp=True, schedule="interleaved-1f1b")
    assert [p.field for p in stack_problems(odd, mcore)] == ["recompute_layers"]
    assert stack_problems(replace(odd, recompute_layers=4), mcore) == []
    assert stack_problems(odd, get_stack("torchtitan")) == [] or all(
        p.field != "recompute_layers" for p in stack_problems(odd, get_stack("torchtitan")))


def test_torchtitan_tensor_parallelism_always_shards_the_sequence(run_cli):
    # apply_tp's SequenceParallel norms have no off switch: sp=0 with tp > 1 is a layout torchtitan does not run.
    layout = Layout(tp=4, dp=2, zero=3, mbs=1, gbs=64, seq=8192, sp=False)
    assert [p.field for p in stack_problems(layout, get_stack("torchtitan"))] == ["sp"]
    assert stack_problems(replace(layout, sp=True), get_stack("torchtitan")) == []
    assert all(p.field != "sp" for p in stack_problems(layout, get_stack("megatron-core")))
    code, out, err = run_cli("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--gbs", "64", "--seq",
                             "8192", "--stack", "torchtitan", "--fix", "sp=0")
    assert "tp > 1 without sequence parallelism" in err and " tp2 " not in out and " tp4 " not in out


def test_a_pinned_hybrid_sharding_on_a_stack_without_it_is_one_line(run_cli):
    code, out, err = run_cli("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:2", "--gbs", "64", "--seq",
                             "4096", "--stack", "deepspeed", "--fix", "zero=3,dp_replicate=2")
    assert code == 2 and out == "" and "(no hybrid sharding); unpin it or pick another --stack" in err


@pytest.mark.parametrize("model_name, cluster_ref, gbs, seq", [
    ("llama3.1-8b", "dgx-h100:2", 64, 4096), ("gemma2-27b", "dgx-h100:4", 128, 8192),
    ("mixtral-8x7b", "dgx-h100:4", 256, 4096), ("qwen3-235b-a22b", "gb200-nvl72:8", 512, 4096),
])
def test_what_a_stack_plans_its_framework_exports(model_name, cluster_ref, gbs, seq):
    # The top plans of each stack export to that stack's frameworks without a refusal (a review found DeepSpeed
    # plans with uneven pipeline ends, HSDP, torchtitan DDP beside tp / pp and zero-bubble over uneven stages,
    # each refused by the export of the stack that planned it).
    from clusterplan.frameworks import export_plan
    from clusterplan.solver.search import search

    model, cluster = load_model(model_name), load_cluster(cluster_ref)
    targets = {"megatron-core": ("megatron", "megatron-bridge"), "torchtitan": ("torchtitan", "torchtitan-py"),
               "deepspeed": ("deepspeed",)}
    for stack, frameworks in targets.items():
        for plan in search(model, cluster, gbs, seq, stack=get_stack(stack), top=5).plans:
            for target in frameworks:
                export_plan(target, model, cluster, plan.layout, stack=stack if "titan" in target else None)
