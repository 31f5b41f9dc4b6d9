"""One price source and one rule for training and serving (hardware_db/prices.py), as worked examples.

A user's review found the same H100 at $2.99 in `plan` (gpus.yaml's one row per GPU, Lambda) and $6.88 in `serve-plan`
(prices.yaml, AWS: the provider that priced most of the requested GPUs), an A100 dearer than an H100 in training (a
2024 catalog's $3.67), and `serve-plan --gpus H100,H200,B200` dropping B200 (no AWS row) while training priced it (a
RunPod *spot* row). Now every command prices a GPU type at its cheapest row of prices.yaml at the pricing asked
(on_demand unless --pricing), across providers unless --provider NAME pins one.
"""

from __future__ import annotations

import json
from itertools import combinations

import pytest

from clusterplan.hardware_db.prices import choose_prices, load_prices
from clusterplan.models.hardware.cluster import load_cluster

PLAN = ("plan", "--model", "llama3.1-8b", "--gbs", "64", "--seq", "4096", "--top", "1", "--tokens", "1e11",
        "--format", "json")
SERVE = ("serve-plan", "--model", "llama3.1-8b", "--tp", "1", "--rate", "4", "--input-len", "500", "--output-len",
         "100", "--ttft-ms", "1000", "--tpot-ms", "100", "--disaggregate", "off", "--format", "json")
H100 = "H100-SXM5-80GB"


def _plan(run_cli, *args: str) -> dict:
    code, out, err = run_cli(*PLAN, *args)
    assert code == 0, err
    return json.loads(out)


def _serve(run_cli, *args: str) -> dict:
    code, out, err = run_cli(*SERVE, *args)
    assert code == 0, err
    return json.loads(out)


def test_the_same_gpu_costs_the_same_in_plan_and_serve_plan(run_cli):
    # H100 SXM: cheapest on-demand row is RunPod's $2.69 (2026-05), below Lambda $2.99, GCP $3.00, AWS $6.88.
    plan = _plan(run_cli, "--cluster", "dgx-h100:1")
    serve = _serve(run_cli, "--gpus", "H100")
    row = plan["prices"]["rows"][H100]
    assert row == serve["prices"]["rows"][H100]
    assert (row["provider"], row["pricing"], row["usd_per_gpu_hour"], row["date"]) == ("runpod", "on_demand", 2.69,
                                                                                        "2026-05")
    # the plan's dollars use it: 8 GPUs x $2.69 per hour
    assert plan["plans"][0]["time_to_train"]["usd_per_hour"] == pytest.approx(8 * 2.69)
    # and a serve instance of one H100 costs $2.69 per hour
    assert serve["pools"][0]["usd_per_hour"] == pytest.approx(serve["pools"][0]["instances"] * 2.69)
    # the library agrees: a cluster's groups carry the row the rule chose
    assert load_cluster("dgx-h100:1").groups[0].price == choose_prices(("H100",)).rows[H100]


def test_adding_a_gpu_type_never_raises_another_types_price():
    # Each type's price depends on its own rows only, under every rule: the price of a type asked alone equals its
    # price in any larger request (the old default switched provider with the request: H100 $2.99 -> $6.88).
    table = load_prices()
    gpus = sorted({r.gpu for r in table.rows})
    for provider in (None, *table.providers):
        for pricing in ("on_demand", "spot"):
            alone = {g: choose_prices((g,), provider, pricing).rows.get(g) for g in gpus}
            for pair in combinations(gpus, 2):
                rows = choose_prices(pair, provider, pricing).rows
                assert all(rows.get(g) == alone[g] for g in pair), (provider, pricing, pair)


def test_serve_plan_keeps_b200_and_h100_price_with_more_types(run_cli):
    alone = _serve(run_cli, "--gpus", "H100")
    more = _serve(run_cli, "--gpus", "H100,H200,B200")
    assert more["prices"]["rows"][H100] == alone["prices"]["rows"][H100]
    assert more["prices"]["missing"] == []  # B200 has an on-demand row now (Hyperstack $6.00, 2026-08-26)
    assert more["prices"]["rows"]["B200"]["usd_per_gpu_hour"] == 6.00
    assert more["usd_per_hour"] <= alone["usd_per_hour"]


def test_provider_aws_reproduces_the_aws_h100_price(run_cli):
    plan = _plan(run_cli, "--cluster", "dgx-h100:1", "--provider", "aws")
    assert plan["prices"]["provider"] == "aws" and plan["prices"]["rows"][H100]["usd_per_gpu_hour"] == 6.88
    assert plan["plans"][0]["time_to_train"]["usd_per_hour"] == pytest.approx(8 * 6.88)
    serve = _serve(run_cli, "--gpus", "H100", "--provider", "aws")
    assert serve["prices"]["rows"][H100]["usd_per_gpu_hour"] == 6.88


def test_pricing_spot_prices_b200_at_its_spot_row(run_cli):
    # B200's RunPod figure ($5.98, deploybase Mar 2026) is a spot row: it prices B200 under --pricing spot only.
    plan = _plan(run_cli, "--cluster", "dgx-b200:1", "--pricing", "spot")
    row = plan["prices"]["rows"]["B200"]
    assert (row["provider"], row["pricing"], row["usd_per_gpu_hour"]) == ("runpod", "spot", 5.98)
    assert plan["plans"][0]["time_to_train"]["usd_per_hour"] == pytest.approx(8 * 5.98)
    on_demand = _plan(run_cli, "--cluster", "dgx-b200:1")["prices"]["rows"]["B200"]
    assert (on_demand["provider"], on_demand["usd_per_gpu_hour"]) == ("hyperstack", 6.00)


@pytest.mark.parametrize("command", [
    PLAN[:-2] + ("--cluster", "dgx-h100:1"),
    ("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--layout", "gbs=64,seq=4096"),
    SERVE[:-2] + ("--gpus", "H100"),
])
@pytest.mark.parametrize(("flag", "value", "choices"), [
    ("--provider", "nobody", "use cheapest (the default: each GPU's cheapest row; `any` is the same) or one of aws, "),
    ("--pricing", "hourly", "use one of on_demand, spot, reserved, capacity_block"),
])
def test_unknown_provider_or_pricing_exits_2_naming_the_choices(run_cli, command, flag, value, choices):
    code, out, err = run_cli(*command, flag, value)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and choices in err


def test_a_cluster_files_own_price_wins_and_the_output_says_so(run_cli, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("groups:\n  - {node: dgx-h100, count: 1, usd_per_gpu_hour: 2.0}\n", encoding="utf-8")
    code, out, err = run_cli(*PLAN[:-2], "--cluster", str(path), "--provider", "aws")
    assert code == 0, err
    assert "prices: H100-SXM5-80GB $2.00/GPU-h (your cluster file's " in out and "in place of the price table" in out
    data = _plan(run_cli, "--cluster", str(path), "--provider", "aws")
    assert data["prices"]["rows"][H100]["provider"] == "cluster file"
    assert data["plans"][0]["time_to_train"]["usd_per_hour"] == pytest.approx(8 * 2.0)


def test_the_table_and_estimate_say_which_price_they_used(run_cli):
    code, out, err = run_cli(*PLAN[:-2], "--cluster", "dgx-h100:1")
    assert code == 0, err
    assert ("prices: H100-SXM5-80GB $2.69/GPU-h (runpod on_demand, 2026-05, spheron blog May 2026); rule: each GPU "
            "type's cheapest on_demand row, prices.yaml snapshot 2026-09") in " ".join(out.split())
    code, out, err = run_cli("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--layout",
                             "gbs=64,seq=4096", "--tokens", "1e11", "--provider", "gcp")
    assert code == 0, err
    assert "prices: H100-SXM5-80GB $3.00/GPU-h (gcp on_demand, 2026-03, costnimbus survey Mar 2026); rule: provider " \
           "gcp's on_demand rows" in " ".join(out.split())


def test_a_mixed_cluster_prices_each_type_by_the_same_rule(run_cli, tmp_path):
    path = tmp_path / "mixed.yaml"
    path.write_text("groups:\n  - {node: dgx-h100, count: 1}\n  - {node: dgx-a100-80g, count: 1}\n", encoding="utf-8")
    data = _plan(run_cli, "--cluster", str(path))
    rows = data["prices"]["rows"]
    assert {g: r["usd_per_gpu_hour"] for g, r in rows.items()} == {H100: 2.69, "A100-SXM4-80GB": 1.60}
    assert data["plans"][0]["time_to_train"]["usd_per_hour"] == pytest.approx(8 * 2.69 + 8 * 1.60)


def test_same_inputs_give_byte_identical_json(run_cli):
    code, out, err = run_cli(*PLAN, "--cluster", "dgx-h100:1", "--provider", "any")
    assert code == 0 and '"prices"' in out and out == run_cli(*PLAN, "--cluster", "dgx-h100:1", "--provider", "any")[1]


def test_hw_show_gives_the_default_price_and_every_row(run_cli):
    code, out, err = run_cli("hw", "show", "H100", "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert data["price"]["provider"] == "runpod" and data["price"]["usd_per_gpu_hour"] == 2.69
    # every row the table has for it, by pricing model, cheapest first
    assert set(data["prices"]) == {"on_demand", "reserved", "capacity_block"}
    assert [r["usd_per_gpu_hour"] for r in data["prices"]["on_demand"]] == [2.69, 2.99, 3.00, 4.25, 6.16, 6.88, 6.98]
