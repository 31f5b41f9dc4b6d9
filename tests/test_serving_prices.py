"""Prices as data: by default each GPU type's cheapest row across providers (one provider with --provider); every row
carries date and source."""

from __future__ import annotations

import json

import pytest

from clusterplan.errors import BadInputError
from clusterplan.hardware_db.prices import choose_prices, load_prices


def test_every_row_has_provider_pricing_date_and_source() -> None:
    table = load_prices()
    assert table.snapshot and len(table.rows) >= 20
    for r in table.rows:
        assert r.provider and r.pricing and r.date and r.source and r.usd_per_gpu_hour > 0


def test_default_rule_takes_each_gpus_cheapest_row_across_providers() -> None:
    choice = choose_prices(("A10G", "L4", "L40S", "A100-80GB", "H100", "H200"))
    assert choice.provider == "cheapest" and choice.pricing == "on_demand"
    assert {g: (r.provider, r.usd_per_gpu_hour) for g, r in choice.rows.items()} == {
        "A10G": ("aws", 1.01), "L4": ("gcp", 0.75), "A100-SXM4-80GB": ("hyperstack", 1.60),
        "H100-SXM5-80GB": ("runpod", 2.69), "H200-SXM-141GB": ("hyperstack", 3.99)}
    # L40S has a spot row only: no on-demand price, and the fix names the pricing that has one.
    assert choice.missing == ("L40S",) and "--pricing spot" in choice.fixes["L40S"]
    # `any`, serve-plan's old name for mixing providers, is the default rule.
    assert choose_prices(("H100", "A100-80GB"), provider="any").rows == choose_prices(("H100", "A100-80GB")).rows
    assert choose_prices(("H200",), pricing="spot").rows["H200-SXM-141GB"].usd_per_gpu_hour == 3.40  # aws spot, not runpod's


def test_a_dated_catalog_prices_a_gpu_only_where_no_other_provider_does(tmp_path) -> None:
    # A dated catalog's row (a 2024 paper's $1.00) never undercuts a current provider's row for the same GPU ($2.00),
    # still prices a GPU no other provider prices (H100 here), and is what --provider NAME reproduces.
    path = tmp_path / "prices.yaml"
    rows = [{"gpu": "A100-80GB", "provider": "old-catalog", "pricing": "on_demand", "usd_per_gpu_hour": 1.0,
             "date": "2024-02", "source": "a 2024 paper"},
            {"gpu": "A100-80GB", "provider": "acme", "pricing": "on_demand", "usd_per_gpu_hour": 2.0,
             "date": "2026-08", "source": "acme's page"},
            {"gpu": "H100", "provider": "old-catalog", "pricing": "on_demand", "usd_per_gpu_hour": 4.0,
             "date": "2024-02", "source": "a 2024 paper"}]
    path.write_text(json.dumps({"dated_catalogs": ["old-catalog"], "prices": rows}), encoding="utf-8")
    choice = choose_prices(("A100-80GB", "H100"), path=path)
    assert choice.rows["A100-SXM4-80GB"].provider == "acme" and choice.rows["H100-SXM5-80GB"].provider == "old-catalog"
    assert choose_prices(("A100-80GB",), provider="old-catalog", path=path).rows["A100-SXM4-80GB"].usd_per_gpu_hour == 1.0
    packaged = choose_prices(("A100-80GB",)).rows["A100-SXM4-80GB"]
    assert packaged.provider not in load_prices().dated_catalogs


def test_user_price_file_and_bad_rows(tmp_path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"snapshot": "mine", "prices": [
        {"gpu": "H100", "provider": "acme", "region": "x", "pricing": "on_demand", "usd_per_gpu_hour": 2.0,
         "date": "2026-01", "source": "quote"}]}), encoding="utf-8")
    choice = choose_prices(("H100",), path=path)
    assert choice.rows["H100-SXM5-80GB"].provider == "acme" and choice.rows["H100-SXM5-80GB"].usd_per_gpu_hour == 2.0
    assert choice.table == str(path) and choice.snapshot == "mine"
    path.write_text(json.dumps({"prices": [{"gpu": "H100", "provider": "acme", "pricing": "on_demand",
                                            "usd_per_gpu_hour": 2.0}]}), encoding="utf-8")
    with pytest.raises(BadInputError, match="date, source"):
        choose_prices(("H100",), path=path)
    with pytest.raises(BadInputError, match="not in prices.yaml; use cheapest"):
        choose_prices(("H100",), provider="nobody")
    with pytest.raises(BadInputError, match="use one of on_demand, spot, reserved, capacity_block"):
        choose_prices(("H100",), pricing="hourly")


def test_serve_plan_reports_its_prices_and_prices_by_provider(run_cli) -> None:
    args = ("serve-plan", "--model", "llama3.1-8b", "--gpus", "H100", "--tp", "1", "--rate", "4", "--input-len", "500",
            "--output-len", "100", "--ttft-ms", "1000", "--tpot-ms", "100", "--disaggregate", "off", "--format", "json")
    code, out, err = run_cli(*args)
    assert code == 0, err
    cheapest = json.loads(out)
    assert cheapest["prices"]["provider"] == "cheapest"
    assert cheapest["prices"]["rows"]["H100-SXM5-80GB"]["provider"] == "runpod"
    code, out, err = run_cli(*args, "--provider", "aws")
    aws = json.loads(out)
    assert aws["prices"]["provider"] == "aws" and aws["prices"]["rows"]["H100-SXM5-80GB"]["usd_per_gpu_hour"] == 6.88
    # Same fleet, priced at AWS's $6.88 instead of RunPod's $2.69 per GPU-hour.
    assert [p["instances"] for p in aws["pools"]] == [p["instances"] for p in cheapest["pools"]]
    assert aws["usd_per_hour"] == pytest.approx(cheapest["usd_per_hour"] * 6.88 / 2.69, rel=1e-3)
