"""A cluster file's own price (`usd_per_gpu_hour:` on a group): a contract or reservation wins over the price table's
rows, and the cost objectives run on GPUs the table has no price for (GB200 / GB300 NVL72)."""

from __future__ import annotations

import json

import pytest

from clusterplan.errors import BadInputError
from clusterplan.models.hardware.cluster import cluster_from_dict, load_cluster


def test_the_group_price_replaces_the_catalog_one():
    assert load_cluster("gb200-nvl72:18").groups[0].price is None
    priced = cluster_from_dict({"groups": [{"node": "gb200-nvl72", "count": 18, "usd_per_gpu_hour": 6.5}]})
    assert priced.groups[0].price.usd_per_gpu_hour == 6.5 and priced.groups[0].price.given
    h100 = cluster_from_dict({"groups": [{"node": "dgx-h100", "count": 2, "usd_per_gpu_hour": 2.0}]})
    assert h100.groups[0].price.usd_per_gpu_hour == 2.0 != load_cluster("dgx-h100:2").groups[0].price.usd_per_gpu_hour
    for bad in (0, -1, "cheap", True, float("nan")):
        with pytest.raises(BadInputError, match="usd_per_gpu_hour must be a price"):
            cluster_from_dict({"groups": [{"node": "dgx-h100", "count": 1, "usd_per_gpu_hour": bad}]})


def test_cost_to_train_runs_on_a_priced_gb200_file_and_says_how_when_unpriced(run_cli, tmp_path):
    path = tmp_path / "gb200.yaml"
    path.write_text("groups:\n  - {node: gb200-nvl72, count: 2, usd_per_gpu_hour: 6.5}\n", encoding="utf-8")
    args = ("plan", "--model", "llama3.1-8b", "--gbs", "64", "--seq", "4096", "--objective", "cost-to-train",
            "--tokens", "1e12", "--top", "1")
    code, out, _ = run_cli(*args, "--cluster", str(path))
    assert code == 0 and "$ total" in out
    code, out, err = run_cli(*args, "--cluster", "gb200-nvl72:2")
    assert code == 2 and out == "" and ("or `usd_per_gpu_hour:` on the group in a cluster file; or use --objective "
                                        "time-to-train") in err


def test_an_unpriced_gpu_says_why_its_dollars_are_missing(run_cli):
    # GB200 has no row in prices.yaml: the plan has no $ columns, and stderr and the JSON say why and how to fix it.
    args = ("--model", "llama3.1-8b", "--gbs", "64", "--seq", "4096", "--tokens", "1e12", "--top", "1")
    code, out, err = run_cli("plan", *args, "--cluster", "gb200-nvl72:2", "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    why = ("no on_demand price for GB200 from any provider in prices.yaml; no row prices it: give --prices FILE with "
           "your price, or `usd_per_gpu_hour:` on the group in a cluster file")
    assert data["usd_missing_reason"] == why
    assert "usd" not in data["plans"][0]["time_to_train"]
    assert data["plans"][0]["time_to_train"]["usd_missing_reason"] == why
    assert f"no $ columns: {why}\n" in err
    code, out, err = run_cli("plan", *args, "--cluster", "dgx-h100:2", "--format", "json")  # priced: no note
    assert code == 0 and "usd_missing_reason" not in out and "no $ columns" not in err
    # estimate --tokens: the same reason, once on stderr
    code, out, err = run_cli("estimate", "--model", "llama3.1-8b", "--cluster", "gb200-nvl72:2", "--layout",
                             "gbs=64,seq=4096", "--tokens", "1e12", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["time_to_train"]["usd_missing_reason"] == why
    assert err.count(f"no $ to train: {why}") == 1
