"""Real validation runs on CPU: 4 gloo processes, exact memory accounting against the memory model.

One launch runs the three CI layouts in turn (one torch import per rank). Every rank's total memory
(weights + grads + optimizer + saved activations) is within 5% of the prediction; the states alone within 0.1%,
except the first stage's gradients under pure TP, where torch 2.13 keeps the vocab-sharded embedding's gradient
replicated (a runtime fact the memory model does not describe; the test pins it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from clusterplan.errors import ClusterplanError  # noqa: E402
from clusterplan.models.architecture.spec import ModelSpec  # noqa: E402
from clusterplan.models.training.layout import Layout  # noqa: E402
from clusterplan.validate.launch import spawn  # noqa: E402
from clusterplan.validate.report import rank_rows  # noqa: E402
from clusterplan.validate.rules import executed_layout  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "validate"
TINY = ModelSpec(name="tiny", n_layers=4, hidden=64, n_heads=4, n_kv_heads=2, ffn_hidden=192, vocab=128)
TINY_MOE = TINY.scaled(name="tiny-moe", n_layers=2, n_experts=4, top_k=2, expert_ffn_hidden=64)
CI_LAYOUTS = {
    "tp2 x dp2 (FSDP)": "tp=2,dp=2,zero=3,mbs=2,gbs=8,seq=64",
    "pp2 1F1B, 4 micro-batches": "pp=2,dp=2,zero=3,mbs=1,gbs=8,seq=64,schedule=1f1b",
    "tp2 x pp2": "tp=2,pp=2,mbs=1,gbs=4,seq=64",
    "dp4 DDP (zero 0), gradients reduced once per step": "dp=4,zero=0,mbs=1,gbs=8,seq=64",
}


EP_LAYOUT = "dp=4,ep=4,zero=3,mbs=1,gbs=4,seq=64"


@pytest.fixture(scope="module")
def ci_runs():
    cases = {name: (TINY, executed_layout(Layout.parse(text))) for name, text in CI_LAYOUTS.items()}
    cases["ep4 MoE"] = (TINY_MOE, executed_layout(Layout.parse(EP_LAYOUT)))
    runs = spawn([{"model": m.to_dict(), "layout": L.to_dict(), "steps": 2} for m, L in cases.values()],
                 nproc=4, timeout_s=240)
    return {name: rank_rows(m, L, run["ranks"]) for (name, (m, L)), run in zip(cases.items(), runs, strict=True)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CI_LAYOUTS))
def test_memory_within_5_percent_on_every_rank(ci_runs, name):
    rows = ci_runs[name]
    assert len(rows) == 4
    for row in rows:
        mem = row["memory"]
        assert abs(mem["total"]["error_pct"]) <= 5.0, (row["rank"], mem)
        assert abs(mem["weights"]["error_pct"]) <= 0.1 and abs(mem["optimizer"]["error_pct"]) <= 0.1
        assert mem["activations"]["measured_bytes"] > 0 and abs(mem["activations"]["error_pct"]) <= 10.0
        assert row["step_time_s"]["median"] > 0


@pytest.mark.slow
def test_expert_parallel_all_to_all_run(ci_runs):
    # One expert per rank, tokens dispatched by all-to-all. States are exact; the activation model assumes
    # balanced routing and no index/copy buffers, so it under-predicts this tiny MoE (stated, not asserted tight).
    for row in ci_runs["ep4 MoE"]:
        mem = row["memory"]
        assert abs(mem["weights"]["error_pct"]) <= 0.1 and abs(mem["optimizer"]["error_pct"]) <= 0.1
        assert mem["grads"]["error_pct"] == 0.0
        assert -60.0 <= mem["activations"]["error_pct"] < 0.0


@pytest.mark.slow
def test_replicated_embedding_gradient_under_tp_is_pinned(ci_runs):
    grads = {r["position"]: r["memory"]["grads"] for r in ci_runs["tp2 x pp2"]}
    assert grads["last"]["error_pct"] == 0.0
    # The measured extra is exactly the other half of the 128 x 64 fp32 embedding: 128 * 64 * 4 / 2 bytes.
    assert grads["first"]["measured_bytes"] - grads["first"]["predicted_bytes"] == 128 * 64 * 4 // 2


@pytest.mark.slow
def test_failing_rank_is_named(monkeypatch):
    monkeypatch.setenv("CLUSTERPLAN_VALIDATE_FAULT", "raise:1")
    layout = Layout.parse("tp=2,mbs=1,gbs=1,seq=16")
    with pytest.raises(ClusterplanError, match=r"rank 1 failed \(exit 1\) during run 1/1: RuntimeError: injected fault on rank 1"):
        spawn([{"model": TINY.to_dict(), "layout": layout.to_dict()}], nproc=2, timeout_s=60)


@pytest.mark.slow
def test_hanging_rank_ends_within_the_timeout(monkeypatch):
    monkeypatch.setenv("CLUSTERPLAN_VALIDATE_FAULT", "hang:0")
    layout = Layout.parse("mbs=1,gbs=1,seq=16")
    # Since issue #16 --timeout counts from the last progress, and the line names the phase.
    with pytest.raises(ClusterplanError, match=r"rank 0 made no progress for 5 s during run 1/1"):
        spawn([{"model": TINY.to_dict(), "layout": layout.to_dict()}], nproc=1, timeout_s=5)


@pytest.mark.slow
def test_cli_validate_json_and_tolerance(run_cli, tmp_path):
    out = tmp_path / "result.json"
    code, stdout, err = run_cli("validate", str(FIX / "tiny_tp2.yaml"), "--scale", "1", "--steps", "2",
                                "--format", "json", "--out", str(out), "--tolerance", "0.001")
    assert stdout, f"exit {code}, no JSON on stdout; stderr: {err}"
    result = json.loads(stdout)
    assert json.loads(out.read_text()) == result
    assert result["executed_layout"]["precision"] == "fp32" and result["device"] == "cpu"
    assert [r["rank"] for r in result["ranks"]] == [0, 1]
    assert result["time"]["measured_median_s"] > 0 and result["time"]["predicted_s"] > 0
    # The memory error is small but not below 0.001%, so --tolerance fails the run with exit 1.
    assert 0.001 < result["max_memory_error_pct"] <= 5.0
    assert code == 1 and not result["ok"] and "--tolerance 0.001%" in err


def test_layouts_a_real_run_cannot_execute_point_to_the_dry_run(run_cli):
    code, _, err = run_cli("validate", str(FIX / "mixtral_tp2_pp4_dp8_ep8.yaml"))
    assert code == 2 and "MoE layers with tp=2" in err and "--dry-run" in err
