"""Pins reach every search: `plan --fix` keys the homogeneous search once dropped (fp32_grads, recompute_modules,
offload_layers, dp_replicate alone), and the mixed-GPU pipeline's precision, fp8-only parameters and the other keys
it takes, each a worked example that fails when a pin is dropped again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clusterplan.errors import InfeasibleError
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.solver.hetero import MIXED_PINS, hetero_plan, mixed_pins_not_applied

FIXTURES = Path(__file__).parent / "fixtures" / "clusters"
HOPPER = str(FIXTURES / "mixed_h100_h200.yaml")
MIXED_A100 = str(FIXTURES / "mixed_h100_a100.yaml")
PLAN_8B = ("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:2", "--gbs", "64", "--seq", "4096",
           "--format", "json")


def _plans(run_cli, fix: str) -> list[dict]:
    code, out, err = run_cli(*PLAN_8B, "--fix", fix)
    assert code == 0, err
    return json.loads(out)["plans"]


@pytest.mark.parametrize(("fix", "key", "value"), [
    ("fp32_grads=0", "fp32_grads", False),
    ("recompute_modules=mlp", "recompute_modules", "mlp"),
    ("offload_layers=2", "offload_layers", 2),
    ("dp_replicate=2", "dp_replicate", 2),
])
def test_every_plan_keeps_the_pinned_key(run_cli, fix, key, value):
    plans = _plans(run_cli, fix)
    assert plans and all(p["layout"][key] == value for p in plans)


def test_pins_that_narrow_another_key(run_cli):
    # Named selective modules are selective recompute; activation offloading runs at pp 1 only.
    assert all(p["layout"]["recompute"] == "selective" for p in _plans(run_cli, "recompute_modules=mlp"))
    assert all(p["layout"]["pp"] == 1 for p in _plans(run_cli, "offload_layers=2"))


def test_pinned_bf16_gradients_are_priced_as_estimate_prices_them(run_cli):
    # Worked example: 8B at tp1 pp1 dp16 ZeRO-1 keeps its gradients in bf16 (2 B per parameter), not fp32 (4 B).
    p16 = _plans(run_cli, "fp32_grads=0,tp=1,pp=1,zero=1,mbs=1,recompute=none,precision=bf16")[0]
    p32 = _plans(run_cli, "fp32_grads=1,tp=1,pp=1,zero=1,mbs=1,recompute=none,precision=bf16")[0]
    # the JSON rounds GiB to 5 digits
    assert p16["memory"]["grads_gib"] == pytest.approx(p32["memory"]["grads_gib"] / 2, abs=1e-4)
    code, out, _ = run_cli("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:2", "--layout",
                           "tp=1,pp=1,dp=16,zero=1,mbs=1,gbs=64,seq=4096,recompute=none,fp32_grads=0",
                           "--format", "json")
    assert code == 0
    assert json.loads(out)["step_time_s"] == p16["step_time_s"]


def test_contradictory_narrowing_pins_are_bad_input(run_cli):
    for fix in ("recompute=full,recompute_modules=mlp", "pp=2,offload_layers=2"):
        code, _, err = run_cli(*PLAN_8B, "--fix", fix)
        assert code == 2 and len(err.strip().splitlines()) == 1


# ---- the mixed-GPU pipeline ------------------------------------------------------------------------------------
def test_mixed_hopper_searches_fp8_with_fp8_only_parameters():
    # H100 and H200 both run fp8: the mixed pipeline tries it, with fp8-only parameters where they run, as the
    # homogeneous search does; pinned bf16 it stays bf16 and is slower.
    model, cluster = load_model("llama3.1-70b"), load_cluster(HOPPER)
    fp8 = hetero_plan(model, cluster, 256, 4096)
    bf16 = hetero_plan(model, cluster, 256, 4096, fixed={"precision": "bf16"})
    assert fp8.layout.precision == "fp8" and fp8.layout.fp8_params
    assert bf16.layout.precision == "bf16" and not bf16.layout.fp8_params
    assert fp8.balanced.step_time_s < bf16.balanced.step_time_s
    # the best single type alone runs the same pin
    assert bf16.fastest_only_layout is not None and bf16.fastest_only_layout.precision == "bf16"


def test_mixed_pins_are_taken_or_named():
    model, cluster = load_model("llama3.1-70b"), load_cluster(HOPPER)
    pins = {"precision": "fp8", "fp8_params": False, "tp": 4, "mbs": 1, "recompute": "full", "zero": 2}
    plan = hetero_plan(model, cluster, 256, 4096, fixed=pins)
    assert {k: getattr(plan.layout, k) for k in pins} == pins
    assert plan.pins_not_applied == ()
    named = hetero_plan(model, cluster, 256, 4096, fixed={"vpp": 2, "schedule": "interleaved-1f1b"})
    assert named.pins_not_applied == ("schedule", "vpp") == mixed_pins_not_applied({"vpp": 2,
                                                                                   "schedule": "interleaved-1f1b"})
    assert named.to_json()["pins_not_applied"] == ["schedule", "vpp"]
    assert set(pins) <= MIXED_PINS


def test_best_single_type_is_the_faster_plan_not_the_first_of_equal_gemm_rates():
    # H100 and H200 share one GEMM rate; the 16 H200 alone (141 GB) beat the 16 H100 alone (80 GB) at 70B.
    plan = hetero_plan(load_model("llama3.1-70b"), load_cluster(HOPPER), 256, 4096, fixed={"precision": "bf16"})
    assert plan.fastest_only_gpu == "H200-SXM-141GB"
    assert plan.to_json()["fastest_type_only"]["gpu"] == "H200-SXM-141GB"


def test_mixed_pin_no_split_can_take_leaves_the_plans_standing(run_cli):
    # pp 1 has no pipeline to split across types: the homogeneous plans stand, the reason is on stderr, exit 0.
    with pytest.raises(InfeasibleError, match="pp=1"):
        hetero_plan(load_model("llama3.1-70b"), load_cluster(HOPPER), 256, 4096, fixed={"pp": 1})
    code, out, err = run_cli("plan", "--model", "llama3.1-70b", "--cluster", HOPPER, "--gbs", "256", "--seq", "4096",
                             "--fix", "pp=1", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["plans"] and "pp=1" in data["mixed_gpu_types"]["refused"]
    assert "mixed GPU types: no pipeline split" in err


def test_mixed_a100_cluster_stays_bf16():
    plan = hetero_plan(load_model("llama3.1-70b"), load_cluster(MIXED_A100), 256, 4096)
    assert plan.layout.precision == "bf16"


@pytest.mark.parametrize(("stack", "check"), [
    ("deepspeed", lambda lay: lay.tp == 1 or lay.pp == 1),       # AutoTP beside data parallelism only
    ("torchtitan", lambda lay: lay.zero == 3),                   # FSDP2: no ZeRO-1, and its DDP takes no pipeline
])
def test_the_mixed_pipeline_runs_only_what_the_stack_runs(stack, check):
    from clusterplan.hardware_db import get_stack

    plan = hetero_plan(load_model("llama3.1-70b"), load_cluster(HOPPER), 256, 4096, stack=get_stack(stack))
    assert check(plan.layout)


def test_a_stack_without_pipelines_has_no_mixed_pipeline():
    from clusterplan.hardware_db import get_stack

    with pytest.raises(InfeasibleError, match="no 1F1B pipeline"):
        hetero_plan(load_model("llama3.1-70b"), load_cluster(HOPPER), 256, 4096, stack=get_stack("llm-foundry"))
