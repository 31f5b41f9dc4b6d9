"""A cluster file's own price (`usd_per_gpu_hour:` on a group): a contract or reservation replaces hardware_db's
observation, and the cost objectives run on GPUs hardware_db has no price for (GB200 / GB300 NVL72)."""

from __future__ import annotations

import pytest

from clusterplan.errors import BadInputError
from clusterplan.models.hardware.cluster import cluster_from_dict, load_cluster


def test_the_group_price_replaces_the_catalog_one():
    assert load_cluster("gb200-nvl72:18").groups[0].gpu.price is None
    priced = cluster_from_dict({"groups": [{"node": "gb200-nvl72", "count": 18, "usd_per_gpu_hour": 6.5}]})
    assert priced.groups[0].gpu.price.usd_per_gpu_hour == 6.5
    h100 = cluster_from_dict({"groups": [{"node": "dgx-h100", "count": 2, "usd_per_gpu_hour": 2.0}]})
    assert h100.groups[0].gpu.price.usd_per_gpu_hour == 2.0 != load_cluster("dgx-h100:2").groups[0].gpu.price.usd_per_gpu_hour
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
    assert code == 2 and out == "" and "use --objective time-to-train, or give yours in a cluster file: `usd_per_gpu_hour:`" in err
