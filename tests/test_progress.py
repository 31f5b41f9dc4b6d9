"""Progress on stderr (issue 18 item 5): drawn on a terminal, silent with --quiet, with --format json into a pipe
and when stderr is not a terminal; stdout is byte-identical either way. The long computations take the progress
callback as an optional callable and report each unit of work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clusterplan.cli.console import console

FIX = Path(__file__).parent / "fixtures" / "validate"
SE = ("serve-estimate", "--model", "llama3.1-8b", "--gpu", "H100", "--input-len", "1000", "--output-len", "200",
      "--rate", "5", "--sweep")
SP = ("serve-plan", "--model", "llama3.1-8b", "--gpus", "H100", "--tp", "1", "--rate", "6", "--input-len", "500",
      "--output-len", "100", "--ttft-ms", "1000", "--tpot-ms", "100")


@pytest.fixture
def terminal(monkeypatch):
    """stderr is a terminal (as in an interactive shell): rich is told so, the captured stream stays the same."""
    from rich.console import Console as RichConsole

    monkeypatch.setattr(console, "err", RichConsole(stderr=True, force_terminal=True, no_color=True, width=120,
                                                    highlight=False, soft_wrap=True, emoji=False))


def _three_ways(run_cli, monkeypatch, args, expect):
    """(plain stderr, terminal stderr, terminal --quiet stderr); stdout must not change between them."""
    code, out_plain, err_plain = run_cli(*args)
    assert code == 0, err_plain
    from rich.console import Console as RichConsole

    monkeypatch.setattr(console, "err", RichConsole(stderr=True, force_terminal=True, no_color=True, width=120,
                                                    highlight=False, soft_wrap=True, emoji=False))
    code, out_tty, err_tty = run_cli(*args)
    assert code == 0, err_tty
    code, out_quiet, err_quiet = run_cli(*args, "--quiet")
    assert code == 0, err_quiet
    assert out_plain == out_tty == out_quiet
    assert expect in err_tty and expect not in err_plain
    assert err_quiet == ""
    assert "\r" not in err_plain and "\x1b" not in err_plain  # no frames, no colour where stderr is a file
    return err_plain, err_tty


def test_serve_estimate_sweep_progress(run_cli, monkeypatch):
    _, err = _three_ways(run_cli, monkeypatch, SE, "latency against load")
    assert "load" in err


def test_serve_plan_progress(run_cli, monkeypatch):
    _three_ways(run_cli, monkeypatch, SP, "simulating 1 instance types")


def test_json_into_a_pipe_is_silent_even_on_a_terminal(run_cli, terminal):
    # capsys's stdout is not a terminal: --format json goes to a program, so no progress even on a terminal
    code, out, err = run_cli(*SE, "--format", "json")
    assert code == 0 and json.loads(out)["load_sweep"] and err == ""
    code, out, err = run_cli(*SP, "--format", "json")
    assert code == 0 and json.loads(out)["pools"] and err == ""
    code, _, err = run_cli(*SE)
    assert code == 0 and "latency against load" in err  # the table format on the same terminal shows it


def test_experts_ilp_progress(run_cli, monkeypatch, tmp_path):
    stats = tmp_path / "q.npz"
    assert run_cli("experts", "synth", "--model", "qwen3-30b-a3b", "--layers", "2", "--tokens", "1024",
                   "--out", str(stats))[0] == 0
    args = ("experts", "--model", "qwen3-30b-a3b", "--cluster", "dgx-h100:2", "--stats", str(stats), "--method", "ilp")
    _, err = _three_ways(run_cli, monkeypatch, args, "placing experts")
    assert "layer" in err


def test_validate_dry_run_progress(run_cli, monkeypatch):
    pytest.importorskip("torch")
    _three_ways(run_cli, monkeypatch, ("validate", str(FIX / "tiny_tp2.yaml"), "--dry-run"), "dry run")


# ---- the callbacks the computations call ---------------------------------------------------------------------

def _recorder():
    calls: list[tuple[int, int, str]] = []
    return calls, lambda done, total, what: calls.append((done, total, what))


def _check(calls, total):
    assert calls and calls[-1][:2] == (total, total)
    assert all(c[1] == total for c in calls) and [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_sweep_reports_each_load():
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.models.serving.estimate import estimate_for

    calls, progress = _recorder()
    est = estimate_for(load_model("llama3.1-8b"), "H100", input_len="500", output_len="50", rate=4.0, sweep=True,
                       progress=progress)
    _check(calls, len(est.load_sweep.points))
    assert len(calls) == len(est.load_sweep.points) + 1


def test_frontier_and_capacity_table_report_each_instance():
    from clusterplan.hardware_db import get_link
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.solver.serve import Limits, candidate_instances, make_workload, plan_serving
    from clusterplan.solver.serve_frontier import cost_slo_frontier

    work = make_workload(4.0, "500", "50", None, 1000.0, 100.0, 90.0, 0)
    instances, _ = candidate_instances(load_model("llama3.1-8b"), ("H100",), (1, 2), (1,))
    calls, progress = _recorder()
    cost_slo_frontier(instances, work, progress)
    _check(calls, len(instances))
    calls, progress = _recorder()
    plan_serving(instances, work, Limits(), "off", get_link("ib-ndr"), progress)
    assert [c[:2] for c in calls] == [(g, len(instances)) for g in range(len(instances))]
    assert all(c[2].startswith("colocated ") for c in calls)


def test_ilp_and_balance_report_each_layer(run_cli, tmp_path):
    pytest.importorskip("pulp")
    from clusterplan.solver.experts_plan import ExpertsRequest, plan_experts

    stats = tmp_path / "s.npz"
    assert run_cli("experts", "synth", "--model", "qwen3-30b-a3b", "--layers", "3", "--tokens", "1024",
                   "--out", str(stats))[0] == 0
    for method in ("ilp", "balance"):
        calls, progress = _recorder()
        plan_experts(ExpertsRequest(model_ref="qwen3-30b-a3b", cluster_ref="dgx-h100:2", stats_path=str(stats),
                                    method=method), progress)
        first_pass = [c for c in calls if "re-placed" not in c[2]]
        assert [c[:2] for c in first_pass] == [(1, 3), (2, 3), (3, 3)], calls


@pytest.mark.slow
def test_validate_follows_the_slowest_rank():
    pytest.importorskip("torch")
    from clusterplan.models.architecture.spec import ModelSpec
    from clusterplan.models.training.layout import Layout
    from clusterplan.validate.launch import phase_count, spawn

    tiny = ModelSpec(name="tiny", n_layers=2, hidden=32, n_heads=2, ffn_hidden=64, vocab=64)
    runs = [{"model": tiny.to_dict(), "layout": Layout.parse("dp=2,mbs=1,gbs=2,seq=16").to_dict(), "steps": 2}]
    # start-up, rendezvous; run 1/1, 1 warm-up + 2 measured steps, gather; teardown
    assert phase_count(runs) == 2 + (1 + 1 + 2 + 1) + 1
    calls, progress = _recorder()
    spawn(runs, nproc=2, timeout_s=120, on_progress=progress)
    assert calls and all(c[1] == 8 for c in calls) and max(c[0] for c in calls) <= 8
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)  # the slowest rank never goes back
    assert all(c[2].startswith("rank ") for c in calls)
