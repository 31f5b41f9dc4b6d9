"""--plot FILE on estimate and plan: the file is written and the plotted numbers are the JSON's."""

from __future__ import annotations

import json

import pytest

from clusterplan.cli.plot import plot_estimate, plot_plan, timeline_of
from clusterplan.models.training.timeline import simulate

pytest.importorskip("matplotlib")

EST = ("estimate", "--model", "llama3.1-70b", "--cluster", "dgx-h100:8", "--format", "json", "--layout")


def test_estimate_plot_shows_the_json(run_cli, tmp_path):
    path = tmp_path / "est.png"
    code, out, err = run_cli(*EST, "tp=8,pp=4,mbs=1,gbs=64,seq=8192,sp=1,recompute=selective", "--plot", str(path))
    assert code == 0, err
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(out)
    plotted = plot_estimate(data, str(tmp_path / "again.png"))
    for stage in ("first", "middle", "last"):
        for term, value in plotted["memory_gib"][stage].items():
            assert value == data["memory"]["by_stage"][stage][f"{term}_gib"]
    assert plotted["capacity_gib"] == data["memory"]["capacity_gib"]
    assert plotted["time_s"] == {k: v for k, v in data["time"].items() if v > 0}
    # the timeline: 64 sequences / (dp 2 x mbs 1) = 32 micro-batches x 4 stages x (forward, backward)
    assert len(plotted["timeline"]["bars"]) == 32 * 4 * 2


@pytest.mark.parametrize("schedule", ["1f1b", "interleaved-1f1b", "gpipe"])
def test_timeline_matches_the_step_models_bubble(run_cli, schedule):
    vpp = 2 if schedule == "interleaved-1f1b" else 1
    recompute = "full" if schedule == "gpipe" else "selective"  # GPipe keeps all 16 micro-batches' activations
    code, out, err = run_cli(*EST, f"tp=8,pp=4,vpp={vpp},mbs=1,gbs=32,seq=8192,sp=1,recompute={recompute},"
                             f"schedule={schedule}")
    assert code == 0, err
    data = json.loads(out)
    t = data["time"]
    tl = timeline_of(data)
    busy = sum(t[k] for k in ("compute_s", "tp_comm_s", "cp_comm_s", "ep_comm_s"))
    assert tl.busy_s == pytest.approx(busy, rel=1e-9)
    # The simulated step adds the bubble and the send/recv on the critical path, at most all of pp_comm.
    assert busy + t["bubble_s"] <= tl.makespan_s * (1 + 1e-9)
    assert tl.makespan_s <= (busy + t["bubble_s"] + t["pp_comm_s"]) * (1 + 1e-9)


def test_timeline_bubbles_by_hand():
    # t_f = 1, t_b = 2, p = 4 stages, m = 8 micro-batches: GPipe and 1F1B idle (p - 1)(t_f + t_b) = 9;
    # interleaving over v chunks divides it by v (Narayanan 2021); ZB-H1 leaves a third of 1F1B's (Qi et al. 2023,
    # T_F = T_B = T_W): 3.
    assert simulate("gpipe", 4, 8, 1.0, 2.0).bubble_s == pytest.approx(9.0)
    assert simulate("1f1b", 4, 8, 1.0, 2.0).bubble_s == pytest.approx(9.0)
    assert simulate("interleaved-1f1b", 4, 8, 1.0, 2.0, v=2).bubble_s == pytest.approx(4.5)
    assert simulate("interleaved-1f1b", 4, 8, 1.0, 2.0, v=4).bubble_s == pytest.approx(2.25)
    assert simulate("zb", 4, 8, 1.0, 2.0).bubble_s == pytest.approx(3.0)
    # 1F1B keeps at most p - s micro-batches in flight on stage s (its memory bound); GPipe keeps all m.
    tl = simulate("1f1b", 4, 8, 1.0, 2.0)
    in_flight, peak = 0, 0
    for op in sorted((o for o in tl.ops if o.stage == 0), key=lambda o: o.start_s):
        in_flight += 1 if op.kind == "F" else -1
        peak = max(peak, in_flight)
    assert peak == 4
    in_flight, peak = 0, 0
    for op in sorted((o for o in simulate("gpipe", 4, 8, 1.0, 2.0).ops if o.stage == 0), key=lambda o: o.start_s):
        in_flight += 1 if op.kind == "F" else -1
        peak = max(peak, in_flight)
    assert peak == 8


def test_plan_pareto_plot_shows_the_json(run_cli, tmp_path):
    path = tmp_path / "front.svg"
    code, out, err = run_cli("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:8", "--gbs", "256", "--seq",
                             "4096", "--tokens", "1e12", "--objective", "pareto", "--format", "json", "--plot", str(path))
    assert code == 0, err
    assert path.read_text().lstrip().startswith("<?xml")
    data = json.loads(out)
    plotted = plot_plan(data, str(tmp_path / "again.svg"))
    assert plotted["plans_days"] == [p["time_to_train"]["days"] for p in data["plans"]]
    assert plotted["plans_musd"] == [p["time_to_train"]["usd"] / 1e6 for p in data["plans"]]
    assert plotted.get("dominated_days", []) == [d["days"] for d in data["dominated"]]
    # the same inputs draw the same file
    assert (tmp_path / "again.svg").read_bytes() == path.read_bytes()


def test_plot_needs_png_or_svg(run_cli, tmp_path):
    code, _, err = run_cli(*EST, "tp=8,pp=1,mbs=1,gbs=64,seq=8192", "--plot", str(tmp_path / "x.jpg"))
    assert code == 2 and "ending in .png or .svg" in err and len(err.strip().splitlines()) == 1


def test_quiet_silences_diagnostics(run_cli, tmp_path):
    args = ("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--gbs", "64", "--seq", "4096")
    assert "searched" in run_cli(*args)[2]
    code, out, err = run_cli(*args, "--quiet", "--plot", str(tmp_path / "p.png"))
    assert code == 0 and err == "" and out and (tmp_path / "p.png").exists()


def test_experts_plot_shows_the_json(run_cli, tmp_path):
    # Per MoE layer, every method's max/mean and all-to-all time as the JSON has them.
    from clusterplan.cli.plot import plot_experts

    stats = tmp_path / "q.npz"
    assert run_cli("experts", "synth", "--model", "qwen3-30b-a3b", "--layers", "3", "--tokens", "2048",
                   "--out", str(stats))[0] == 0
    path = tmp_path / "experts.png"
    code, out, err = run_cli("experts", "--model", "qwen3-30b-a3b", "--cluster", "dgx-h100:2", "--stats", str(stats),
                             "--format", "json", "--plot", str(path))
    assert code == 0, err
    assert path.stat().st_size > 0
    data = json.loads(out)
    plotted = plot_experts(data, str(tmp_path / "again.svg"))
    assert set(plotted["max_over_mean"]) == set(data["methods"]) >= {"eplb-global", "balance", "chosen"}
    for name, method in data["methods"].items():
        assert plotted["max_over_mean"][name] == [row["max_over_mean"] for row in method["layers"]]
        assert plotted["all_to_all_ms"][name] == [row["all_to_all_s"] * 1e3 for row in method["layers"]]
    code, out, err = run_cli("experts", "--model", "qwen3-30b-a3b", "--cluster", "dgx-h100:2", "--stats", str(stats),
                             "--plot", str(tmp_path / "x.jpg"))
    assert code == 2 and out == "" and ".png or .svg" in err


@pytest.mark.parametrize(("recompute", "forward_share"), [("selective", 1 / 3), ("full", 1 / 4)])
def test_timeline_splits_a_microbatch_by_hand(recompute, forward_share):
    # 8 sequences / (dp 1 x mbs 1) = 8 micro-batches on 2 stages, 8 s of compute and in-stage comm = 1 s each:
    # forward : backward = 1 : 2 (backward twice the forward), under full recompute 1 : 3 (the forward runs again).
    data = {"layout": {"pp": 2, "dp": 1, "mbs": 1, "gbs": 8, "vpp": 1, "schedule": "1f1b", "recompute": recompute},
            "time": {"compute_s": 6.0, "tp_comm_s": 1.0, "cp_comm_s": 0.5, "ep_comm_s": 0.5, "pp_comm_s": 0.0}}
    tl = timeline_of(data)
    for op in tl.ops:
        share = forward_share if op.kind == "F" else 1 - forward_share
        assert op.end_s - op.start_s == pytest.approx(share, rel=1e-9), op


def test_timeline_stages_include_the_exposed_host_time(run_cli):
    # A host-bound pipeline (nanotron, 1B-shaped llama at tp 4, one sequence per micro-batch): the drawn stages are
    # busy for the host time too, or the timeline comes out short of the step.
    code, out, err = run_cli("estimate", "--model", "llama3.2-1b", "--cluster", "dgx-h100:1", "--stack", "nanotron",
                             "--format", "json", "--layout", "tp=4,pp=2,mbs=1,gbs=64,seq=4096,sp=1,zero=0")
    assert code == 0, err
    data = json.loads(out)
    t = data["time"]
    assert t["host_s"] > 0
    busy = sum(t[k] for k in ("compute_s", "tp_comm_s", "cp_comm_s", "ep_comm_s", "host_s"))
    assert timeline_of(data).busy_s == pytest.approx(busy, rel=1e-9)
