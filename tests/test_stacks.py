"""Execution stacks (hardware_db/data/stacks.yaml): every entry loads, names its sources, and reaches the model."""

from __future__ import annotations

import pytest

from clusterplan.errors import BadInputError
from clusterplan.hardware_db import DEFAULT_STACK, get_stack, list_stacks
from clusterplan.hardware_db.stacks import REQUIRED_SOURCES, parse_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout, stack_problems

CONTRACT = {"megatron-core", "torchtitan", "torchtitan-compile", "deepspeed", "megatron-lm-2021"}


def test_every_contract_stack_loads_with_sources():
    assert CONTRACT <= set(list_stacks())
    for name in list_stacks():
        stack = get_stack(name)
        assert stack.name == name
        assert all(stack.sources[k].strip() for k in REQUIRED_SOURCES), name
        assert 0.0 <= stack.tp_overlap_share <= 1.0 and 0.0 <= stack.dp_overlap_share <= 1.0
        assert (stack.tp_overlap == "none") == (stack.tp_overlap_share == 0.0), name
        assert stack.schedules, name


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
    assert any("zb" in p for p in stack_problems(layout, mcore))
    assert any("zero" in p for p in stack_problems(layout, titan))
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
