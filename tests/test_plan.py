"""`clusterplan plan`: exhaustive search over the cost model, as a user runs it."""

from __future__ import annotations

import json

import pytest

from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.planfile import read_plan
from clusterplan.reference import report as reference
from clusterplan.solver.search import search

ARGS = ("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:2", "--gbs", "256", "--seq", "4096",
        "--format", "json")


def test_plan_json_is_ranked_and_deterministic(run_cli):
    code, out, err = run_cli(*ARGS)
    assert code == 0 and "searched" in err
    data = json.loads(out)
    steps = [p["step_time_s"] for p in data["plans"]]
    assert steps == sorted(steps) and len(steps) == 5
    assert all(p["feasible"] and p["memory"]["headroom_gib"] >= 0 for p in data["plans"])
    assert data["search"]["candidates"] == data["search"]["feasible"] + sum(data["search"]["rejected"].values())
    assert "placement" in data["plans"][0] and "why_best" in data["plans"][0]
    assert run_cli(*ARGS)[1] == out  # byte-identical


def test_plan_best_is_no_worse_than_any_single_estimate(run_cli):
    """Exactness: the search optimum beats a hand-picked layout priced by estimate."""
    data = json.loads(run_cli(*ARGS)[1])
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.training.layout import Layout

    cluster = load_cluster("dgx-h100:2")
    for text in ("tp=8,dp=2,mbs=1", "tp=4,pp=2,dp=2,mbs=2,recompute=full", "tp=2,dp=8,zero=3,mbs=4"):
        layout = Layout.parse(text + ",gbs=256,seq=4096", world=16)
        est = estimate(load_model("llama3.1-8b"), cluster, layout).to_json()
        if est["feasible"]:
            assert data["plans"][0]["step_time_s"] <= est["step_time_s"] * (1 + 1e-9)


def test_fix_pins_dimensions_and_out_writes_plan(run_cli, tmp_path):
    out_file = tmp_path / "plan.yaml"
    code, out, _ = run_cli(*ARGS, "--fix", "tp=4,recompute=full", "--out", str(out_file))
    assert code == 0
    data = json.loads(out)
    assert all(p["layout"]["tp"] == 4 and p["layout"]["recompute"] == "full" for p in data["plans"])
    plan = read_plan(out_file)
    assert plan.layout.tp == 4 and plan.cluster.world_size == 16


def test_nothing_fits_names_the_smallest_change(run_cli):
    # Nothing fits is an answer (exit 1, the options on stdout, one line on stderr), not bad input (exit 2).
    code, out, err = run_cli("plan", "--model", "llama3.1-405b", "--cluster", "dgx-h100:1", "--gbs", "64",
                             "--seq", "4096")
    assert code == 1 and "16 nodes instead of 1" in out
    assert "no layout of llama3.1-405b fits" in err and "nearest that fits: 16 nodes instead of 1 (+120 GPUs)" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("row", reference.read_rows("korthikanti2022.csv"), ids=lambda r: r["model"])
def test_published_layout_is_feasible_and_not_better_than_our_best(row):
    model = reference.gpt(int(row["hidden"]), int(row["heads"]), int(row["layers"]))
    cluster = reference.selene(int(row["gpus"]))
    published = reference.korthikanti_layouts(row, seqsel=True)
    est = estimate(model, cluster, published)
    assert est.feasible, est.reasons
    fixed = {"flash_attn": False, "precision": "fp16", "zero": 0}
    result = search(model, cluster, published.gbs, published.seq, fixed=fixed, top=5)
    assert result.plans[0].to_json()["step_time_s"] <= est.to_json()["step_time_s"] * (1 + 1e-9)


@pytest.mark.parametrize("row", reference.read_rows("megatron2021_table1.csv"), ids=lambda r: r["params_b"] + "B")
def test_table1_published_layout_fits_and_our_best_is_no_worse(row):
    """Narayanan 2021 Table 1 on its own cluster and batch (paper's fp16, no flash attention, no ZeRO)."""
    from clusterplan.models.training.layout import Layout

    h, a, n = int(row["hidden"]), int(row["heads"]), int(row["layers"])
    model, cluster = reference.gpt(h, a, n), reference.selene(int(row["gpus"]))
    published = Layout(tp=int(row["tp"]), pp=int(row["pp"]), dp=int(row["dp"]), mbs=1, gbs=int(row["global_batch"]),
                       seq=2048, recompute="full", precision="fp16", zero=0, flash_attn=False)
    est = estimate(model, cluster, published)
    assert est.feasible, est.reasons
    result = search(model, cluster, published.gbs, 2048, top=5,
                    fixed={"flash_attn": False, "precision": "fp16", "zero": 0})
    assert result.plans[0].to_json()["step_time_s"] <= est.to_json()["step_time_s"] * (1 + 1e-9)


def test_cost_objective_may_use_fewer_nodes(run_cli):
    """$/token: 70B at a small batch is cheapest on part of the cluster (less data-parallel traffic per token) when
    the stack cannot hide that traffic: DeepSpeed's ZeRO-3 (a latency chain per prefetch bucket). Megatron-Core and
    FSDP2 hide it under compute, and there the full cluster costs the same per token. (gbs 32 x 4096 tokens: at
    128 x 8192 the Hugging Face loss's fp32 logits leave the 64-GPU ZeRO-3 layouts no headroom; at 64 x 4096 the
    eager kernels DeepSpeed's Hugging Face model runs, priced since compute.py unfused_extra_bytes, give the
    traffic enough compute to hide under on all 128 GPUs.)"""
    args = ("plan", "--model", "llama3.1-70b", "--cluster", "dgx-h100:16", "--gbs", "32", "--seq", "4096",
            "--top", "3", "--format", "json", "--stack", "deepspeed")
    code, out, _ = run_cli(*args, "--objective", "cost")
    assert code == 0
    cheap = json.loads(out)["plans"]
    costs = [p["usd_per_million_tokens"] for p in cheap]
    assert costs == sorted(costs)
    fastest = json.loads(run_cli(*args)[1])["plans"][0]
    assert cheap[0]["usd_per_million_tokens"] <= fastest["usd_per_million_tokens"]
    gpus = lambda plan: int(plan["cluster"].rsplit("= ", 1)[1].split()[0])  # noqa: E731
    assert gpus(cheap[0]) < gpus(fastest) == 128


def test_timing_is_opt_in(run_cli):
    code, out, _ = run_cli(*ARGS, "--timing")
    assert code == 0 and json.loads(out)["search"]["seconds"] >= 0
    assert "seconds" not in json.loads(run_cli(*ARGS)[1])["search"]


def test_pinning_expert_keys_on_a_dense_model_is_bad_input(run_cli):
    # Every layout would break EP_DENSE / MOE_FIELDS_DENSE; the pin itself is the mistake, so it is named in one line.
    for fix in ("ep=2", "moe_imbalance=1.5", "moe_dispatcher=deepep"):
        code, out, err = run_cli("plan", "--model", "llama3.1-70b", "--cluster", "dgx-h100:8", "--gbs", "512",
                                 "--seq", "8192", "--fix", fix)
        key = fix.split("=")[0]
        assert code == 2 and out == "" and err.strip() == (f"error: --fix {key}: llama3.1-70b is a dense model (no "
                                                           f"experts); drop {key}"), err


def test_plan_table_tells_hsdp_and_dispatch_apart():
    # Two plans that differ only in dp_replicate (HSDP: 2 replicas of 16-way sharding) must not print alike.
    from clusterplan.cli.plan import _layout_label

    base = Layout(tp=2, dp=32, zero=2, mbs=1, gbs=512, seq=2048, recompute="none").to_dict()
    hsdp = Layout(tp=2, dp=32, dp_replicate=2, zero=2, mbs=1, gbs=512, seq=2048, recompute="none").to_dict()
    assert _layout_label(base) == "tp2 pp1 dp32 mbs1 zero2 none sp"
    assert _layout_label(hsdp) == "tp2 pp1 dp32(2x16) mbs1 zero2 none sp"
    moe = Layout(dp=8, ep=8, etp=2, tp=2, zero=1, mbs=1, gbs=64, seq=4096, moe_capacity_factor=1.0,
                 cuda_graphs="attn").to_dict()
    assert " ep8etp2 " in _layout_label(moe) and _layout_label(moe).endswith(" drop1 graphs:attn")


def test_why_best_reads_a_left_out_key_at_its_default():
    # A layout dict leaves keys out at their defaults: the runner-up's bf16 plan has no fp8_params key, so the line
    # said "fp8_params=True (vs None)".
    from clusterplan.solver.search import why_best

    best = {"layout": {"tp": 2, "fp8_params": True}, "step_time_s": 1.0, "time": {"compute_s": 0.9}}
    runner = {"layout": {"tp": 2}, "step_time_s": 1.1, "time": {"compute_s": 1.0}}
    assert why_best(best, runner).startswith("fp8_params=True (vs False): saves compute -0.1 s")
