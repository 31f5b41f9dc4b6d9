"""--plot on serve-estimate (latency against load) and serve-plan (cost against SLO): the file is written, the
plotted numbers are the JSON's, and the sweep / frontier terms are pinned by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clusterplan.models.serving.estimate import running_cap, sweep_loads
from clusterplan.models.serving.sim import Engine
from clusterplan.solver.serve_frontier import LOAD_FRACTIONS, staircase

SE = ("serve-estimate", "--model", "llama3.1-8b", "--gpu", "H100", "--input-len", "1000", "--output-len", "200",
      "--format", "json")
SP = ("serve-plan", "--model", "llama3.1-8b", "--gpus", "H100,L4", "--tp", "1,2", "--rate", "10", "--input-len",
      "1000", "--output-len", "200", "--ttft-ms", "500", "--tpot-ms", "50", "--format", "json")


def test_sweep_loads_by_hand():
    # requested 5 req/s, saturation 20: 10 geometric rates from 0.25 x 5 = 1.25 to 1.25 x 20 = 25, ratio 20^(1/9),
    # 4 significant digits, plus 5 itself.
    loads = sweep_loads(5.0, 20.0, integer=False)
    assert loads[0] == 1.25 and loads[-1] == 25.0 and 5.0 in loads and len(loads) == 11
    assert loads[1] == float(f"{1.25 * 20 ** (1 / 9):.4g}")
    # in flight: integers from max(1, 0.25 x 16) = 4 to 1.25 x 256 = 320; rounding merges none here
    assert sweep_loads(16.0, 256.0, integer=True) == (4.0, 7.0, 11.0, 16.0, 17.0, 28.0, 46.0, 74.0, 121.0, 197.0, 320.0)


def test_running_cap_by_hand():
    # 100 + 50 tokens reserve ceil(150 / 16) = 10 pages of 16 = 160 tokens: 10000 // 160 = 62 requests fit, under
    # the 256-sequence cap; with room for 10^6 tokens the sequence cap binds.
    engine = Engine(kv_capacity_tokens=10_000, max_seqs=256, kv_block_tokens=16)
    assert running_cap(engine, np.full(8, 100), np.full(8, 50)) == 62
    assert running_cap(Engine(kv_capacity_tokens=10**6, max_seqs=256), np.full(8, 100), np.full(8, 50)) == 256


def test_staircase_by_hand():
    # (latency, cost): b beats a on cost at a higher latency, c costs more than b (dominated), d is the cheapest.
    pts = [(1.0, 5.0, (0, 0)), (2.0, 3.0, (0, 1)), (3.0, 4.0, (1, 0)), (4.0, 1.0, (1, 1)), (5.0, 1.0, (2, 0))]
    assert staircase(pts) == ((0, 0), (0, 1), (1, 1))


@pytest.mark.parametrize(("load", "suffix"), [(("--rate", "5"), "png"), (("--concurrency", "16"), "svg")])
def test_serve_estimate_plot_shows_the_json(run_cli, tmp_path, load, suffix):
    pytest.importorskip("matplotlib")
    from clusterplan.cli.plot import plot_serve_estimate

    path = tmp_path / f"se.{suffix}"
    code, out, err = run_cli(*SE, *load, "--plot", str(path))
    assert code == 0, err
    head = path.read_bytes()[:8]
    assert head == b"\x89PNG\r\n\x1a\n" if suffix == "png" else path.read_text().lstrip().startswith("<?xml")
    data = json.loads(out)
    sweep = data["load_sweep"]
    plotted = plot_serve_estimate(data, str(tmp_path / f"again.{suffix}"))
    assert plotted["load"] == [p["load"] for p in sweep["points"]]
    for key in ("ttft_ms", "tpot_ms"):
        for q in ("p50", "p90", "p99"):
            assert plotted[key][q] == [p[key][q] for p in sweep["points"]]
    assert plotted["requests_per_s"] == [p["requests_per_s"] for p in sweep["points"]]
    assert plotted["saturation_load"] == sweep["saturation"]["load"]
    # The requested load is one of the sweep's and is the very simulation the rest of the JSON reports.
    here = next(p for p in sweep["points"] if p["load"] == sweep["requested"])
    assert here["ttft_ms"] == data["ttft_ms"] and here["tpot_ms"] == data["tpot_ms"]
    assert here["requests_per_s"] == data["throughput"]["requests_per_s"]
    assert [p["past_saturation"] for p in sweep["points"]] == [p["load"] > sweep["saturation"]["load"]
                                                               for p in sweep["points"]]
    # Past saturation TTFT is far above its value at the lowest load (the queue), TPOT no lower.
    assert sweep["points"][-1]["past_saturation"]
    assert sweep["points"][-1]["ttft_ms"]["p90"] > 5 * sweep["points"][0]["ttft_ms"]["p90"]
    assert sweep["points"][-1]["tpot_ms"]["p90"] >= sweep["points"][0]["tpot_ms"]["p90"]
    if suffix == "svg":  # the same inputs draw the same file
        assert (tmp_path / f"again.{suffix}").read_bytes() == path.read_bytes()


def test_serve_estimate_without_plot_or_sweep_is_unchanged(run_cli):
    code, out, _ = run_cli(*SE, "--rate", "5")
    assert code == 0 and "load_sweep" not in json.loads(out)
    code, swept, _ = run_cli(*SE, "--rate", "5", "--sweep")
    assert code == 0
    assert {k: v for k, v in json.loads(swept).items() if k != "load_sweep"} == json.loads(out)


def test_serve_plan_plot_shows_the_json(run_cli, tmp_path):
    pytest.importorskip("matplotlib")
    from clusterplan.cli.plot import plot_serve_plan

    path = tmp_path / "sp.svg"
    code, out, err = run_cli(*SP, "--plot", str(path))
    assert code == 0, err
    assert path.read_text().lstrip().startswith("<?xml")
    data = json.loads(out)
    f = data["cost_vs_slo"]
    plotted = plot_serve_plan(data, str(tmp_path / "again.svg"))
    assert (tmp_path / "again.svg").read_bytes() == path.read_bytes()
    assert set(plotted["candidates"]) == {c["instance"] for c in f["candidates"]}
    for c in f["candidates"]:
        for key in ("ttft", "tpot"):
            xs, ys, ok = plotted["candidates"][c["instance"]][key]
            assert xs == [p[f"{key}_ms"] for p in c["points"]]
            assert ys == [p["usd_per_million_output_tokens"] for p in c["points"]]
            assert ok == [p["meets_slo"] for p in c["points"]]
    for key in ("ttft", "tpot"):
        refs = f[f"{key}_frontier"]
        assert plotted["frontier"][key] == ([f["candidates"][c]["points"][k][f"{key}_ms"] for c, k in refs],
                                            [f["candidates"][c]["points"][k]["usd_per_million_output_tokens"]
                                             for c, k in refs])
        assert plotted["slo_ms"][key] == f[f"{key}_slo_ms"]
        assert plotted["chosen"][key] == (data[f"{key}_ms"], data["usd_per_million_output_tokens"])


def test_serve_plan_frontier_terms(run_cli):
    code, out, err = run_cli(*SP, "--frontier")
    assert code == 0, err
    data = json.loads(out)
    f = data["cost_vs_slo"]
    assert f["ttft_slo_ms"] == 500 and f["tpot_slo_ms"] == 50 and f["percentile"] == 90
    assert {c["instance"] for c in f["candidates"]} == {"H100-SXM5-80GB tp1 pp1", "H100-SXM5-80GB tp2 pp1",
                                                        "L4 tp1 pp1", "L4 tp2 pp1"}
    for c in f["candidates"]:
        rates = [p["rate_rps"] for p in c["points"]]
        assert rates == pytest.approx([x * c["saturation_rps"] for x in LOAD_FRACTIONS], rel=1e-3)
        for p in c["points"]:
            # every output is 200 tokens: $/1M = $/h x 1e6 / (3600 s x rate x 200)
            assert p["usd_per_million_output_tokens"] == pytest.approx(
                c["usd_per_hour"] * 1e6 / (3600 * p["rate_rps"] * 200), rel=1e-3)
            assert p["meets_slo"] == (p["ttft_ms"] <= 500 and p["tpot_ms"] <= 50)
    # The TTFT frontier: points within the TPOT target, latency rising and cost falling; no point within TPOT
    # that is as fast as a step is cheaper than it.
    steps = [f["candidates"][c]["points"][k] for c, k in f["ttft_frontier"]]
    assert steps and all(p["tpot_ms"] <= 50 for p in steps)
    assert all(a["ttft_ms"] <= b["ttft_ms"] and a["usd_per_million_output_tokens"] > b["usd_per_million_output_tokens"]
               for a, b in zip(steps, steps[1:], strict=False))
    within = [p for c in f["candidates"] for p in c["points"] if p["tpot_ms"] <= 50]
    for s in steps:
        assert min(p["usd_per_million_output_tokens"] for p in within if p["ttft_ms"] <= s["ttft_ms"]) \
            == s["usd_per_million_output_tokens"]
    # the plan (integer instances, mixes) costs no less than the cheapest single-type point within its SLO
    assert data["usd_per_million_output_tokens"] >= min(p["usd_per_million_output_tokens"] for p in within
                                                       if p["meets_slo"]) - 1e-9
    code, plain, _ = run_cli(*SP)
    assert {k: v for k, v in data.items() if k != "cost_vs_slo"} == json.loads(plain)


def test_serve_plan_plot_refuses_capacity_tables(run_cli, tmp_path):
    from conftest import REFERENCE

    code, out, err = run_cli("serve-plan", "--capacity-table", str(REFERENCE / "melange_example.json"), "--rate", "4",
                             "--plot", str(tmp_path / "x.png"))
    assert code == 2 and out == "" and "--capacity-table" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(*SP, "--plot", str(tmp_path / "x.jpg"))
    assert code == 2 and ".png or .svg" in err
