"""Days and dollars agree with each other wherever a plan is re-priced or saved: worked examples from an audit of the
time-to-train answers (2026-12-05)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clusterplan.models.training.planfile import read_plan

FIXTURES = Path(__file__).parent / "fixtures" / "clusters"


def _plans(run_cli, *args: str) -> list[dict]:
    code, out, err = run_cli("plan", *args, "--format", "json")
    assert code == 0, err
    return json.loads(out)["plans"]


def test_placed_plans_price_their_days_at_the_placed_step(run_cli):
    # On two interleaved pods the placement cuts the step time; the days and dollars follow it.
    p = _plans(run_cli, "--model", "llama3.1-70b", "--cluster", str(FIXTURES / "two_pods.yaml"), "--gbs", "256",
               "--seq", "4096", "--tokens", "1e12", "--fix", "tp=4,pp=2")[0]
    assert p["placement"]["step_time_placed_s"] < p["placement"]["step_time_default_order_s"]
    train = p["time_to_train"]
    assert train["days_without_failures"] == pytest.approx(1e12 / p["tokens_per_s"] / 86400, rel=1e-4)
    assert train["usd_without_failures"] == pytest.approx(p["usd_per_million_tokens"] * 1e6, rel=1e-3)


def test_cost_to_train_saves_the_node_count_it_chose(run_cli, tmp_path):
    path = tmp_path / "plan.yaml"
    p = _plans(run_cli, "--model", "llama3.1-8b", "--cluster", "dgx-h100:4", "--gbs", "256", "--seq", "4096",
               "--tokens", "1e11", "--objective", "cost-to-train", "--out", str(path))[0]
    saved = read_plan(path)
    assert saved.cluster.world_size == p["layout"]["dp"] * p["layout"]["tp"] * p["layout"]["pp"] * p["layout"]["cp"]
    code, _, err = run_cli("estimate", "--plan", str(path), "--format", "json")
    assert code == 0, err


def test_a_cluster_files_price_survives_the_chosen_node_count(run_cli, tmp_path):
    cluster = tmp_path / "c.yaml"
    cluster.write_text("name: mine\ngroups:\n  - {node: dgx-h100, count: 4, usd_per_gpu_hour: 2.0}\n", encoding="utf-8")
    path = tmp_path / "plan.yaml"
    _plans(run_cli, "--model", "llama3.1-8b", "--cluster", str(cluster), "--gbs", "256", "--seq", "4096",
           "--tokens", "1e11", "--objective", "cost-to-train", "--out", str(path))
    saved = read_plan(path)
    assert saved.cluster.groups[0].price.usd_per_gpu_hour == 2.0


def test_spare_nodes_are_in_the_price_per_token(run_cli, tmp_path):
    # 4 nodes and 4 spares: the spares are paid for, so $/1M tokens is the 8 nodes' price over the 4 nodes' tokens.
    cluster = tmp_path / "c.yaml"
    cluster.write_text("name: spares\ngroups:\n  - {node: dgx-h100, count: 4, usd_per_gpu_hour: 2.0}\n"
                       "resilience: {spare_nodes: 4}\n", encoding="utf-8")
    p = _plans(run_cli, "--model", "llama3.1-8b", "--cluster", str(cluster), "--gbs", "256", "--seq", "4096",
               "--tokens", "1e11")[0]
    assert p["usd_per_million_tokens"] == pytest.approx(8 * 8 * 2.0 / 3600 / p["tokens_per_s"] * 1e6, rel=1e-3)


def test_no_price_per_token_from_half_a_cluster(run_cli, tmp_path):
    cluster = tmp_path / "mixed.yaml"
    cluster.write_text("name: mixed\ngroups:\n  - {node: dgx-h100, count: 2}\n  - {node: gb200-nvl72, count: 1}\n",
                       encoding="utf-8")
    code, out, err = run_cli("plan", "--model", "llama3.1-8b", "--cluster", str(cluster), "--gbs", "256", "--seq",
                             "4096", "--format", "json")
    assert code == 0, err
    assert all("usd_per_million_tokens" not in p for p in json.loads(out)["plans"])


def test_estimate_caps_the_token_budget(run_cli):
    code, _, err = run_cli("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--layout", "dp=8,gbs=64",
                           "--tokens", "1e30")
    assert code == 2 and "at most" in err and len(err.strip().splitlines()) == 1


def test_cluster_files_read_exponent_numbers(tmp_path, run_cli):
    # YAML 1.1 (PyYAML) reads 1e-3 as a string; a failure rate written so is a number here (YAML 1.2 floats).
    from clusterplan.fileio import loads_yaml

    assert loads_yaml("a: 1e-3\nb: 1.0e12\nc: '1e-3'\n", "x") == {"a": 0.001, "b": 1e12, "c": "1e-3"}
    cluster = tmp_path / "c.yaml"
    cluster.write_text("name: r\ngroups:\n  - {node: dgx-h100, count: 2}\nresilience: {failures_per_gpu_hour: 1e-4}\n",
                       encoding="utf-8")
    code, _, err = run_cli("plan", "--model", "llama3.1-8b", "--cluster", str(cluster), "--gbs", "64", "--seq", "4096",
                           "--tokens", "1e11")
    assert code == 0, err


def test_the_saved_sub_cluster_keeps_only_what_the_plan_runs_on(run_cli, tmp_path):
    # A mixed cluster file with a price on each group: cost-to-train picks one group's node count; the saved plan
    # holds that group alone (and no bandwidth matrix of the whole cluster), so `estimate --plan` reads it back.
    cluster = tmp_path / "mixed.yaml"
    cluster.write_text("name: mixed\ngroups:\n  - {node: dgx-h100, count: 2, usd_per_gpu_hour: 2.0}\n"
                       "  - {node: hgx-h200, count: 2, usd_per_gpu_hour: 3.0}\n", encoding="utf-8")
    path = tmp_path / "plan.yaml"
    _plans(run_cli, "--model", "llama3.1-8b", "--cluster", str(cluster), "--gbs", "256", "--seq", "4096", "--tokens",
           "1e11", "--objective", "cost-to-train", "--out", str(path))
    saved = read_plan(path)
    assert len(saved.cluster.groups) == 1
    code, _, err = run_cli("estimate", "--plan", str(path), "--format", "json")
    assert code == 0, err


@pytest.mark.parametrize(("objective", "key", "lead"), [("cost-to-train", "usd", "expected $ to train $"),
                                                         ("time-to-train", "days", "expected days to train ")])
def test_why_first_names_what_the_objective_ranks_by(run_cli, objective, key, lead):
    # "why #1" under a to-train objective quoted the step-time terms only (and $ per 1M tokens under cost-to-train's
    # cost branch); it now leads with the expected dollars / days of #1 and #2, the numbers the ranking compares.
    plans = _plans(run_cli, "--model", "llama3.1-8b", "--cluster", "dgx-h100:4", "--gbs", "512", "--seq", "8192",
                   "--tokens", "1e11", "--objective", objective)
    why = plans[0]["why_best"]
    first, second = plans[0]["time_to_train"][key], plans[1]["time_to_train"][key]
    assert why.startswith(lead) and first <= second
    shown = f"${first:,.0f}" if key == "usd" else f"{first:.4g} days"
    assert shown in why and "per 1M tokens" not in why


def test_experts_improvement_words_a_worse_share_as_higher():
    from clusterplan.cli.experts import _lower

    assert _lower(0.123) == "12.3% lower" and _lower(-0.001) == "0.1% higher" and _lower(0.0001) == "the same"
