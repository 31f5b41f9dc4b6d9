"""`plan --objective pareto | cost-to-train`: the time-cost frontier over node counts and GPU types."""

from __future__ import annotations

import json

import yaml

from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.solver.pareto import Point, frontier
from clusterplan.solver.search import sub_clusters

ARGS = ("plan", "--model", "llama3.1-8b", "--gbs", "256", "--seq", "4096", "--tokens", "1e12", "--format", "json")


class _Plan:  # frontier() only reads the cluster's size and GPU for labels and tie-breaks
    def __init__(self, gpus: int) -> None:
        self.cluster = type("C", (), {"world_size": gpus, "gpu": type("G", (), {"name": "X"})()})()


def test_frontier_by_hand():
    pts = [Point(10, 100, _Plan(8)), Point(5, 150, _Plan(16)), Point(6, 200, _Plan(32)), Point(20, 90, _Plan(4)),
           Point(20, 95, _Plan(2))]
    front, dominated = frontier(pts)
    # (5, 150) < (10, 100) < (20, 90) trade days for dollars; (6, 200) is beaten by (5, 150), (20, 95) by (20, 90).
    assert [(p.days, p.usd) for p in front] == [(5, 150), (10, 100), (20, 90)]
    assert {(p.days, p.usd): (b.days, b.usd) for p, b in dominated} == {(6, 200): (5, 150), (20, 95): (20, 90)}


def test_pareto_plans_are_non_dominated(run_cli):
    code, out, err = run_cli(*ARGS, "--cluster", "dgx-h100:16", "--objective", "pareto")
    assert code == 0, err
    data = json.loads(out)
    pts = [(p["time_to_train"]["days"], p["time_to_train"]["usd"]) for p in data["plans"]]
    assert pts == sorted(pts) and all(a[1] > b[1] for a, b in zip(pts, pts[1:], strict=False))
    for d in data["dominated"]:
        by = data["plans"][d["dominated_by"] - 1]["time_to_train"]
        assert by["days"] <= d["days"] and by["usd"] <= d["usd"]
    # one plan per node count: 1, 2, 4, 8, 16 nodes
    assert len(data["plans"]) + len(data["dominated"]) == 5
    assert all("trade_off" in p for p in data["plans"])


def test_pareto_spans_gpu_types(tmp_path):
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"node": "dgx-h100", "count": 4}, {"node": "dgx-a100-80g", "count": 2}]}))
    subs = sub_clusters(load_cluster(str(path)), all_types=True)
    assert [(s.gpu.name, s.n_nodes) for s in subs] == [
        ("H100-SXM5-80GB", 1), ("H100-SXM5-80GB", 2), ("H100-SXM5-80GB", 4),
        ("A100-SXM4-80GB", 1), ("A100-SXM4-80GB", 2)]


def test_cost_to_train_ranks_by_total_dollars(run_cli):
    code, out, err = run_cli(*ARGS, "--cluster", "dgx-h100:16", "--objective", "cost-to-train", "--top", "4")
    assert code == 0, err
    usd = [p["time_to_train"]["usd"] for p in json.loads(out)["plans"]]
    assert usd == sorted(usd)


def test_token_objectives_need_tokens(run_cli):
    for objective in ("cost-to-train", "pareto"):
        code, _, err = run_cli("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:2", "--gbs", "64", "--seq",
                               "4096", "--objective", objective)
        assert code == 2 and f"--objective {objective} needs --tokens" in err


def test_top_given_with_pareto_is_said_not_to_apply(run_cli):
    args = ("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:2", "--gbs", "64", "--seq", "4096",
            "--objective", "pareto", "--tokens", "1e11")
    _, _, err = run_cli(*args)
    assert "--top does not apply" not in err
    code, _, err = run_cli(*args, "--top", "3")
    assert code == 0 and "warning: --top does not apply to --objective pareto" in err
