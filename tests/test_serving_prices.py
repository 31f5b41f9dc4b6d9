"""Prices as data: one provider per answer unless mixing is asked for; every row carries date and source."""

from __future__ import annotations

import json

import pytest

from clusterplan.errors import BadInputError
from clusterplan.hardware_db.prices import choose_prices, load_prices


def test_every_row_has_provider_pricing_date_and_source() -> None:
    rows, snapshot = load_prices()
    assert snapshot and len(rows) >= 20
    for r in rows:
        assert r.provider and r.pricing and r.date and r.source and r.usd_per_gpu_hour > 0


def test_default_provider_prices_the_most_requested_gpus_and_never_mixes() -> None:
    choice = choose_prices(("A10G", "L4", "L40S", "A100-80GB", "H100", "H200"))
    assert choice.provider == "aws"  # prices A10G, L4, H100, H200: more than any other provider
    assert {r.provider for r in choice.rows.values()} == {"aws"}
    assert set(choice.missing) == {"L40S", "A100-SXM4-80GB"}
    # Two GPUs only the Melange example catalog prices together: that catalog, as the Melange tests expect.
    assert choose_prices(("A10G", "A100-80GB")).provider == "melange-example"


def test_any_mixes_on_request_cheapest_row_per_gpu() -> None:
    choice = choose_prices(("H100", "A100-80GB"), provider="any")
    assert choice.rows["H100-SXM5-80GB"].usd_per_gpu_hour == 2.69  # RunPod Secure Cloud
    assert choice.rows["A100-SXM4-80GB"].provider == "coreweave-2024"
    assert choose_prices(("H200",), pricing="spot").rows["H200-SXM-141GB"].usd_per_gpu_hour == 3.40  # aws spot, not runpod's


def test_user_price_file_and_bad_rows(tmp_path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"snapshot": "mine", "prices": [
        {"gpu": "H100", "provider": "acme", "region": "x", "pricing": "on_demand", "usd_per_gpu_hour": 2.0,
         "date": "2026-01", "source": "quote"}]}), encoding="utf-8")
    choice = choose_prices(("H100",), path=path)
    assert choice.provider == "acme" and choice.rows["H100-SXM5-80GB"].usd_per_gpu_hour == 2.0
    path.write_text(json.dumps({"prices": [{"gpu": "H100", "provider": "acme", "pricing": "on_demand",
                                            "usd_per_gpu_hour": 2.0}]}), encoding="utf-8")
    with pytest.raises(BadInputError, match="date, source"):
        choose_prices(("H100",), path=path)
    with pytest.raises(BadInputError, match="not in the price table"):
        choose_prices(("H100",), provider="nobody")


def test_serve_plan_reports_its_prices_and_prices_by_provider(run_cli) -> None:
    args = ("serve-plan", "--model", "llama3.1-8b", "--gpus", "H100", "--tp", "1", "--rate", "4", "--input-len", "500",
            "--output-len", "100", "--ttft-ms", "1000", "--tpot-ms", "100", "--disaggregate", "off", "--format", "json")
    code, out, err = run_cli(*args)
    assert code == 0, err
    aws = json.loads(out)
    assert aws["prices"]["provider"] == "aws" and not aws["prices"]["mixed_providers"]
    code, out, err = run_cli(*args, "--provider", "lambda")
    lam = json.loads(out)
    # Same fleet, priced at Lambda's $2.99 instead of AWS's $6.88 per GPU-hour.
    assert [p["instances"] for p in lam["pools"]] == [p["instances"] for p in aws["pools"]]
    assert lam["usd_per_hour"] == pytest.approx(aws["usd_per_hour"] * 2.99 / 6.88, rel=1e-3)
