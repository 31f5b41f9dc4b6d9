"""Placing ranks on real links: torchtitan's mesh order by default; on uneven measured links each parallel axis is
priced on the link its hops cross, and the node order is chosen for the model's own step time."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest

from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import cluster_from_dict, load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.estimate import estimate, step_times_on_links
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.step import Group, _collective, _p2p
from clusterplan.models.training.topology import (
    Axis,
    axis_links_gb_per_s,
    axis_node_pairs,
    communicating_node_pairs,
    link_matrix,
    links_of_orders,
)
from clusterplan.solver.links import optimize_node_order
from clusterplan.solver.placement import coordinates

CLUSTERS = Path(__file__).parent / "fixtures" / "clusters"
SLOW = str(CLUSTERS / "slow_link.yaml")
TWO_PODS = str(CLUSTERS / "two_pods.yaml")


def test_mesh_order_puts_tp_innermost():
    layout = Layout(tp=8, pp=2, dp=4, gbs=64)
    assert coordinates(layout, 0) == {"pp": 0, "dp_replicate": 0, "dp_shard": 0, "cp": 0, "tp": 0}
    assert coordinates(layout, 7)["tp"] == 7 and coordinates(layout, 8)["dp_shard"] == 1
    assert coordinates(layout, 32)["pp"] == 1


# ---- which nodes each axis connects ---------------------------------------------------------------------------


def test_communicating_pairs_of_a_small_mesh():
    # 4 nodes of 8: tp fills a node; dp pairs nodes (0,1) and (2,3); the pipeline hops (0,2) and (1,3).
    pairs = communicating_node_pairs(Layout(tp=8, pp=2, dp=2, gbs=64), load_cluster(SLOW))
    assert pairs == {"pp": {(0, 2), (1, 3)}, "dp_shard": {(0, 1), (2, 3)}}


def test_interleaved_pipeline_wraps_from_the_last_stage_to_the_first():
    # One stage per node: 1F1B hops 0-1, 1-2, 2-3; interleaved (vpp 2) also sends stage 3's output to stage 0.
    cluster = load_cluster(SLOW)
    plain = communicating_node_pairs(Layout(tp=8, pp=4, gbs=64), cluster)
    inter = communicating_node_pairs(Layout(tp=8, pp=4, vpp=2, schedule="interleaved-1f1b", gbs=64), cluster)
    assert plain == {"pp": {(0, 1), (1, 2), (2, 3)}}
    assert inter == {"pp": {(0, 1), (1, 2), (2, 3), (0, 3)}}
    # ZB-V's V returns along the same hops: no wrap-around.
    assert communicating_node_pairs(Layout(tp=8, pp=4, vpp=2, schedule="zbv", gbs=64), cluster) == plain


def test_all_to_all_axes_connect_every_pair_of_their_nodes():
    cluster = load_cluster(SLOW)
    # EP 32 over 4 nodes (stride 1): the dispatch all-to-all talks between every pair of nodes; only in MoE models.
    moe = communicating_node_pairs(Layout(dp=32, ep=32, gbs=64), cluster, moe=True)
    assert moe["ep"] == {(a, b) for a in range(4) for b in range(a + 1, 4)}
    assert "ep" not in communicating_node_pairs(Layout(dp=32, ep=32, gbs=64), cluster)
    # Ulysses CP over 4 nodes (tp 8, cp 4) is an all-to-all too; ring CP only links ring neighbours (with wrap).
    a2a = communicating_node_pairs(Layout(tp=8, cp=4, cp_kind="a2a", gbs=64), cluster)["cp"]
    ring = communicating_node_pairs(Layout(tp=8, cp=4, gbs=64), cluster)["cp"]
    assert a2a == {(a, b) for a in range(4) for b in range(a + 1, 4)}
    assert ring == {(0, 1), (1, 2), (2, 3), (0, 3)}


def test_each_axis_gets_the_slowest_link_it_crosses():
    # Two pods, nodes handed out alternately: tp8 pp4 dp2 puts each dp pair on neighbouring nodes (different
    # pods, 40 GB/s) and each pipeline hop two nodes apart (same pod, 380 GB/s).
    cluster = load_cluster(TWO_PODS)
    layout = Layout(tp=8, pp=4, dp=2, gbs=64)
    assert axis_links_gb_per_s(layout, cluster) == {"dp_shard": 40.0, "pp": 380.0}
    # Pod-contiguous order (pod A = 0 2 4 6 first): dp pairs inside a pod, the pipeline crosses once.
    assert axis_links_gb_per_s(layout, cluster, (0, 2, 4, 6, 1, 3, 5, 7)) == {"dp_shard": 380.0, "pp": 40.0}
    assert axis_links_gb_per_s(layout, load_cluster("dgx-h100:8")) is None  # no matrix: no per-axis links


# ---- worked examples: each axis priced on its own link ---------------------------------------------------------


def _arrays(**kw) -> LayoutArrays:
    return LayoutArrays.from_layouts([Layout(**kw)])


def test_dp_ring_across_pods_all_reduces_at_the_pod_link():
    """dp_shard ring across pods: 40 GB/s per node / 8 GPUs = 5 GB/s per GPU (the NDR NIC's 48 GB/s is not the
    limit). All-reduce of S = 1 GB over 2 ranks, one per node: 2(n-1) = 2 steps of 5 us + 2(n-1)/n x S / 5 GB/s =
    10 us + 0.2 s = 0.20001 s. The pipeline axis on 380 GB/s: 47.5 GB/s per GPU, 10 us + 1e9 / 47.5e9 s."""
    cluster = load_cluster(TWO_PODS)
    hw = HardwareRates.of(cluster, None, {"dp_shard": 40.0, "pp": 380.0})
    assert hw.link("all_reduce", "dp_shard").bw_out == pytest.approx(5e9)
    assert hw.link("all_reduce", "pp").bw_out == pytest.approx(47.5e9)
    assert hw.link("all_reduce", "tp").bw_out == pytest.approx(48e9)  # no cap: 8 NDR NICs x 0.96 x 50 / 8
    L = _arrays(tp=8, pp=4, dp=2, gbs=64)
    dp = _collective("all_reduce", np.array([1e9]), Group.of(L, Axis.DP_SHARD), hw)
    assert float(dp[0]) == pytest.approx(10e-6 + 0.2, rel=1e-12)
    fast = HardwareRates.of(cluster, None, {"dp_shard": 380.0, "pp": 40.0})
    assert float(_collective("all_reduce", np.array([1e9]), Group.of(L, Axis.DP_SHARD), fast)[0]) == pytest.approx(
        10e-6 + 1e9 / 47.5e9, rel=1e-12)


def test_pipeline_hop_sends_at_its_own_link():
    """A pipeline send of 8 MB across nodes on the 40 GB/s link: 5 us + 8e6 / 5e9 = 1.605 ms; on 380 GB/s:
    5 us + 8e6 / 47.5e9."""
    cluster = load_cluster(TWO_PODS)
    slow = HardwareRates.of(cluster, None, {"dp_shard": 380.0, "pp": 40.0})
    fast = HardwareRates.of(cluster, None, {"dp_shard": 40.0, "pp": 380.0})
    two = np.array([2.0])
    assert float(_p2p(np.array([8e6]), two, slow, Axis.PP)[0]) == pytest.approx(5e-6 + 8e6 / 5e9, rel=1e-12)
    assert float(_p2p(np.array([8e6]), two, fast, Axis.PP)[0]) == pytest.approx(5e-6 + 8e6 / 47.5e9, rel=1e-12)


def test_expert_all_to_all_across_pods_runs_at_the_pod_link():
    """EP 16 over two nodes (stride 1: 8 GPUs per node): the 8 GPUs per node share the 40 GB/s link, 5 GB/s each.
    All-to-all of S = 1 GB per rank: every rank sends its remote half at once, so the link carries 8 x 0.5 GB per
    node (step.cross_node_all_to_all_s): 1/2 x 1e9 / 5e9 + (16 - 8) x 5 us = 100.04 ms across, plus the local share
    7/16 x 1e9 / 369e9 + 7 x 2 us = 1.1996 ms over NVLink. (The ring rule priced it at the group's 8 x 5 GB/s:
    75 us + 23.4375 ms, a quarter of what the link can carry in that time.)"""
    hw = HardwareRates.of(load_cluster(TWO_PODS), None, {"ep": 40.0, "dp_shard": 380.0})
    L = _arrays(dp=16, ep=16, gbs=64)
    got = _collective("all_to_all", np.array([1e9]), Group.of(L, Axis.EP), hw)
    r = hw.link("all_to_all", Axis.EP)
    assert (r.bw_in, r.lat_in, float(r.bw_out), r.lat_out) == pytest.approx((369e9, 2e-6, 5e9, 5e-6))
    assert float(got[0]) == pytest.approx(0.5 * 1e9 / 5e9 + 8 * 5e-6 + 7 / 16 * 1e9 / 369e9 + 7 * 2e-6, rel=1e-12)


def test_search_bound_prices_every_axis_at_the_slowest_link():
    hw = HardwareRates.of(load_cluster(TWO_PODS))
    assert [hw.link("all_gather", a).bw_out for a in ("tp", "pp", "dp_shard", "ep")] == [pytest.approx(5e9)] * 4


def test_a_pipeline_spanning_nodes_is_priced_across_them():
    # tp2 cp2 pp8 on 4 nodes: two stages per node, so hops 1-2, 3-4, 5-6 cross nodes; the pipeline is priced on
    # the node link (5 GB/s in the default order of the slow-link cluster, 380 GB/s placed off it).
    cluster, model = load_cluster(SLOW), load_model("llama3.1-8b")
    layout = Layout(tp=2, cp=2, pp=8, gbs=64, seq=4096, recompute="none")
    default = estimate(model, cluster, layout).to_json()["time"]["pp_comm_s"]
    placed = estimate(model, cluster, layout, node_order=(0, 2, 3, 1)).to_json()["time"]["pp_comm_s"]
    assert placed < default / 10


# ---- the optimiser against every node order --------------------------------------------------------------------


def _every_order(model, cluster, layout):
    """The model's own step time of `layout` under every node order of the cluster (one vectorised evaluation of
    step_time: entry k is what estimate(..., node_order=orders[k]) returns, checked on a sample below)."""
    orders = np.array(list(itertools.permutations(range(cluster.n_nodes))))
    links = links_of_orders(axis_node_pairs(layout, cluster, model.is_moe), link_matrix(cluster), orders)
    steps = step_times_on_links(model, cluster, layout, {str(a): v for a, v in links.items()})
    return orders, steps


BRUTE_FORCE = [
    ("llama3.1-70b", TWO_PODS, Layout(tp=8, pp=4, vpp=2, dp=2, gbs=256, seq=8192, schedule="interleaved-1f1b",
                                      recompute="none")),
    ("llama3.1-70b", TWO_PODS, Layout(tp=8, pp=2, dp=4, gbs=256, seq=8192, zero=3)),
    ("llama3.1-8b", TWO_PODS, Layout(tp=4, pp=4, cp=2, dp=2, gbs=64, seq=16384, recompute="none")),
    ("mixtral-8x7b", TWO_PODS, Layout(tp=2, pp=2, dp=16, ep=8, gbs=256, seq=4096)),
    ("llama3.1-8b", SLOW, Layout(tp=4, pp=4, vpp=2, cp=2, gbs=64, seq=4096, schedule="interleaved-1f1b",
                                 recompute="none")),
    ("llama3.1-8b", SLOW, Layout(tp=8, pp=2, dp=2, gbs=64, seq=4096)),
]


@pytest.mark.parametrize(("model_name", "cluster_path", "layout"), BRUTE_FORCE)
def test_chosen_order_is_the_fastest_of_every_order(model_name, cluster_path, layout):
    model, cluster = load_model(model_name), load_cluster(cluster_path)
    assert not estimate(model, cluster, layout).reasons  # a layout that runs, so every order is priced
    orders, steps = _every_order(model, cluster, layout)
    assert steps.max() > steps.min()  # the order matters for this layout
    order = optimize_node_order(model, layout, cluster)
    assert order.method == "ilp" and sorted(order.physical) == list(range(cluster.n_nodes))
    assert order.step_time_s == pytest.approx(float(steps.min()), rel=1e-12)
    assert order.default_step_time_s == pytest.approx(float(steps[0]), rel=1e-12)  # orders[0] is the identity
    # The vectorised times are estimate()'s: the chosen order, the identity and a sample of others.
    rng = np.random.default_rng(0)
    for k in [0, int(np.argmin(steps)), *rng.integers(0, len(orders), 5)]:
        got = estimate(model, cluster, layout, node_order=tuple(int(p) for p in orders[k])).to_json()["step_time_s"]
        assert got == float(f"{steps[k]:.6g}")
    placed = estimate(model, cluster, layout, node_order=order.physical).to_json()["step_time_s"]
    assert placed == float(f"{order.step_time_s:.6g}")


def _noisy_cluster(n: int, seed: int):
    """n DGX H100 nodes with a measured-looking matrix: every pair at its own speed, 20-400 GB/s."""
    rng = np.random.default_rng(seed)
    m = rng.integers(20, 400, size=(n, n)).astype(float)
    m = np.minimum(m, m.T)
    np.fill_diagonal(m, 0.0)
    return cluster_from_dict({"groups": [{"node": "dgx-h100", "count": n}], "node_bandwidth_gb_per_s": m.tolist()})


@pytest.mark.parametrize("layout", [Layout(tp=8, pp=2, dp=3, gbs=48, seq=4096),
                                    Layout(tp=4, pp=2, dp=3, cp=2, gbs=48, seq=4096),
                                    Layout(tp=2, pp=2, dp=6, cp=2, gbs=48, seq=4096, zero=3)])
def test_noisy_matrix_chosen_order_is_the_fastest_of_every_order(layout):
    # 15 distinct link speeds: many threshold vectors are out of reach, so the per-axis ceilings and the
    # impossible-vector pruning carry the search; still exactly the best of all 6! orders.
    model, cluster = load_model("llama3.1-8b"), _noisy_cluster(6, seed=1)
    assert not estimate(model, cluster, layout).reasons
    _, steps = _every_order(model, cluster, layout)
    order = optimize_node_order(model, layout, cluster)
    assert order.method == "ilp"
    assert order.step_time_s == pytest.approx(float(steps.min()), rel=1e-12) and steps.min() < steps[0]
    placed = estimate(model, cluster, layout, node_order=order.physical).to_json()["step_time_s"]
    assert placed == float(f"{order.step_time_s:.6g}")


def test_two_pods_contiguous_order_beats_the_interleaved_default():
    # The case: with pods handed out alternately, dp rings cross pods in the default order; the chosen
    # order keeps them inside a pod and the step is faster by the dp all-reduce's difference.
    model, cluster = load_model("llama3.1-70b"), load_cluster(TWO_PODS)
    layout = BRUTE_FORCE[0][2]
    order = optimize_node_order(model, layout, cluster)
    assert order.default_axis_links_gb_per_s == {"dp_shard": 40.0, "pp": 380.0}
    assert order.axis_links_gb_per_s["dp_shard"] == 380.0
    default = estimate(model, cluster, layout).to_json()["time"]
    placed = estimate(model, cluster, layout, node_order=order.physical).to_json()["time"]
    # dp rings at 380 GB/s instead of 40 (9.5x, less their fixed latency); the pipeline's sends now cross pods
    assert placed["dp_comm_s"] < default["dp_comm_s"] / 5 and placed["pp_comm_s"] > default["pp_comm_s"]
    changed = {term for term in default if default[term] != placed[term]}
    assert changed == {"dp_comm_s", "pp_comm_s"}
    saved_s = sum(default[term] - placed[term] for term in changed)
    assert saved_s > 0.5 and order.default_step_time_s - order.step_time_s == pytest.approx(saved_s, abs=1e-4)


def test_default_order_kept_when_nothing_is_faster():
    # tp8 dp8 over both pods: every ring through 8 nodes crosses pods, so no order is faster than the default.
    model, cluster = load_model("llama3.1-8b"), load_cluster(TWO_PODS)
    order = optimize_node_order(model, Layout(tp=8, dp=8, gbs=64, seq=4096), cluster)
    assert order.physical == tuple(range(8)) and order.step_time_s == order.default_step_time_s


# ---- what plan prints -------------------------------------------------------------------------------------------


def test_plan_reports_the_gain_it_prices(run_cli):
    fix = "tp=8,pp=4,vpp=2,schedule=interleaved-1f1b,zero=1,recompute=none,mbs=1"
    args = ("plan", "--model", "llama3.1-70b", "--cluster", TWO_PODS, "--gbs", "256", "--seq", "8192", "--fix", fix,
            "--top", "1")
    code, out, _ = run_cli(*args, "--format", "json")
    assert code == 0
    best = json.loads(out)["plans"][0]
    pl = best["placement"]
    assert pl["method"] == "ilp" and best["step_time_s"] == pl["step_time_placed_s"]
    assert {n["node"] for n in pl["nodes"]} <= set(range(8))
    model, cluster = load_model("llama3.1-70b"), load_cluster(TWO_PODS)
    _, steps = _every_order(model, cluster, Layout(**best["layout"]))
    assert pl["step_time_placed_s"] == float(f"{steps.min():.6g}")
    assert pl["step_time_default_order_s"] == float(f"{steps[0]:.6g}")
    assert pl["gain_s"] == float(f"{pl['step_time_default_order_s'] - pl['step_time_placed_s']:.6g}") > 0
    assert set(pl["time_change_s"]) == {"dp_comm_s", "pp_comm_s"}
    code, text, _ = run_cli(*args)
    m = re.search(r"step ([\d.]+) s vs ([\d.]+) s in default order: ([\d.]+) s \(([\d.]+)%\) faster", text)
    assert m, text
    placed_s, default_s, gain_s, pct = (float(g) for g in m.groups())
    assert (placed_s, default_s, gain_s) == (pl["step_time_placed_s"], pl["step_time_default_order_s"], pl["gain_s"])
    assert gain_s == pytest.approx(default_s - placed_s, abs=1e-5)
    assert pct == pytest.approx(100 * gain_s / default_s, abs=0.05)
    assert "dp_shard 380 (default 40)" in text


def test_readme_uneven_link_example(run_cli):
    # README "Planning on real clusters": the example's plan gains a real step-time difference from its order.
    code, out, _ = run_cli("plan", "--model", "llama3.1-8b", "--cluster", SLOW, "--gbs", "64", "--seq", "4096",
                           "--format", "json")
    assert code == 0
    pl = json.loads(out)["plans"][0]["placement"]
    assert pl["method"] == "ilp" and pl["gain_s"] > 0.1 * pl["step_time_default_order_s"]
    assert pl["axis_links_gb_per_s"]["pp"] == 380 and pl["default_axis_links_gb_per_s"]["pp"] == 5
    # The README shows this run's placement lines verbatim.
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    shown = readme[readme.index("$ clusterplan plan --model llama3.1-8b --cluster tests/fixtures/clusters/slow_link"):]
    shown = shown[:shown.index("```")]
    lines = [ln.strip() for ln in shown.splitlines() if ln.strip().startswith(("placement of", "node order", "step "))]
    assert len(lines) == 3
    code, text, _ = run_cli("plan", "--model", "llama3.1-8b", "--cluster", SLOW, "--gbs", "64", "--seq", "4096")
    assert code == 0 and all(ln in text for ln in lines), f"README 'Uneven links' example is stale; the run prints:\n{text}"


def test_readme_two_pods_example(run_cli):
    code, out, _ = run_cli("plan", "--model", "llama3.1-70b", "--cluster", TWO_PODS, "--gbs", "256", "--seq", "8192",
                           "--format", "json")
    assert code == 0
    pl = json.loads(out)["plans"][0]["placement"]
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert (f"step {pl['step_time_placed_s']:.6g} s vs {pl['step_time_default_order_s']:.6g} s, "
            f"{pl['gain_s']:.6g} s ({pl['gain_s'] / pl['step_time_default_order_s']:.1%}) faster") in readme, (
        "README 'Uneven links' two-pod numbers are stale: rerun its command and copy the step line")
    assert pl["axis_links_gb_per_s"] == {"dp_shard": 380, "pp": 40}
    assert pl["default_axis_links_gb_per_s"] == {"dp_shard": 40, "pp": 380}


# ---- cluster files describing pods ------------------------------------------------------------------------------


def test_pods_describe_the_same_links_as_the_matrix():
    pods = cluster_from_dict({"groups": [{"node": "dgx-h100", "count": 8}],
                              "pods": {"nodes": [[0, 2, 4, 6], [1, 3, 5, 7]], "inside_gb_per_s": 380,
                                       "between_gb_per_s": 40}})
    assert pods.node_bandwidth_gb_per_s == load_cluster(TWO_PODS).node_bandwidth_gb_per_s


@pytest.mark.parametrize(("pods", "message"), [
    ({"nodes": [[0, 1], [1]], "inside_gb_per_s": 380, "between_gb_per_s": 40}, "exactly one pod"),
    ({"nodes": [[0], [1, 2]], "inside_gb_per_s": 380, "between_gb_per_s": 40}, "exactly one pod"),
    ({"nodes": [[0], [1]], "inside_gb_per_s": 380}, "exactly one pod"),
    ({"nodes": [[0], [1]], "inside_gb_per_s": 380, "between_gb_per_s": 0}, "must be GB/s from 1e-06 to 1e"),
    ({"nodes": [[0], [True]], "inside_gb_per_s": 380, "between_gb_per_s": 40}, "exactly one pod"),
])
def test_bad_pods_are_one_line_errors(pods, message):
    from clusterplan.errors import BadInputError
    with pytest.raises(BadInputError, match=message):
        cluster_from_dict({"groups": [{"node": "dgx-h100", "count": 2}], "pods": pods})
    with pytest.raises(BadInputError, match="not both"):
        cluster_from_dict({"groups": [{"node": "dgx-h100", "count": 2}], "pods": pods,
                           "node_bandwidth_gb_per_s": [[0, 1], [1, 0]]})


def test_thinned_levels_are_reported_as_coarse(monkeypatch):
    # With fewer candidate vectors allowed than the matrix has levels, the levels are thinned (method says so);
    # the order is still a real one, priced by the model, and no slower than the default.
    import clusterplan.solver.links as links

    monkeypatch.setattr(links, "MAX_CANDIDATES", 16)
    model, cluster, layout = load_model("llama3.1-8b"), _noisy_cluster(6, seed=1), Layout(tp=4, pp=2, dp=3, cp=2, gbs=48)
    order = links.optimize_node_order(model, layout, cluster)
    assert order.method == "ilp-coarse" and sorted(order.physical) == list(range(6))
    assert order.step_time_s <= order.default_step_time_s
    got = estimate(model, cluster, layout, node_order=order.physical).to_json()["step_time_s"]
    assert got == float(f"{order.step_time_s:.6g}")
