"""Error bars (reference/intervals.py): the method by hand, leave-one-out coverage on the reference sets."""

from __future__ import annotations

import json
import math

import pytest

from clusterplan.reference.intervals import (
    RATE,
    calibration_interval,
    compute_rows,
    interval_for,
    leave_one_out,
    leave_one_set_out,
    load_residuals,
    prediction_interval,
    t90,
)


def test_t_table_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for dof in (1, 2, 3, 5, 10, 30, 40, 100):
        assert t90(dof) == pytest.approx(float(stats.t.ppf(0.9, dof)), abs=1e-3)


def test_prediction_interval_by_hand():
    # residuals +-0.1 (4 rows): mean 0, s = sqrt(4 x 0.01 / 3) = 0.11547, t(0.9, 3) = 1.6377, sqrt(1 + 1/4) = 1.1180:
    # h = 0.21143; measured / predicted in [e^-0.21143, e^0.21143] = [0.8094, 1.2355].
    low, high = prediction_interval([0.1, -0.1, 0.1, -0.1])
    assert (low, high) == (pytest.approx(0.8094, abs=1e-4), pytest.approx(1.2355, abs=1e-4))
    # a model that predicts 10 % too fast everywhere (r = ln 0.9) is corrected: the interval sits above 1.
    low, high = prediction_interval([math.log(0.9)] * 3 + [math.log(0.9) + 0.01])
    assert 1.08 < low < high < 1.14


def test_leave_one_out_coverage_on_the_reference_sets():
    """Each reference row's interval from the other rows: the measured time falls inside at about the stated rate.

    Measured on every published set reference/ compares on tokens/s (618 rows of 20 sets, 2026-12-06): 520 of 618
    (84.1 %) for the stated 80 %. Before the held-out sets
    joined, on the 56 rows of Narayanan Table 1, Korthikanti Table 5, Megatron-Bridge 25.11 and the hybrid dgxc
    rows: 45 of 56 (80 %), while those intervals held 357 of the other sets' 562 rows (63.5 %). Bounds: at least
    70 %, and below 97 % (not trivially wide)."""
    rows = list(load_residuals())
    assert len({r["label"] for r in rows}) == len(rows)  # test_stored_residuals_match_the_model keys rows by label
    sets = {r["set"] for r in rows}
    assert len(rows) >= 600 and {"narayanan2021-table1", "korthikanti2022-table5", "megatron-bridge-2511",
                                 "dgxc-hybrid", "nemo-long-context", "torchtitan-h100", "ultrascale"} <= sets
    coverage = leave_one_out(rows) / len(rows)
    assert RATE - 0.1 <= coverage < 0.97, coverage


def test_leave_one_set_out_coverage():
    """What a run from a source none of the sets came from meets: each row's interval from the other sets only.
    453 of 618 (73.3 %) with MIN_SETS = 2; 414 (67.0 %) with one set allowed per regime. Bound: at least 70 %."""
    rows = list(load_residuals())
    inside = leave_one_set_out(rows)
    assert RATE - 0.1 <= inside / len(rows) < 0.97, inside / len(rows)


def test_intervals_follow_the_regime():
    # A100 dense 16-bit rows at scale (Narayanan, Korthikanti: the model within 8 %) give a narrow interval; Blackwell
    # fp8 MoE rows (36 rows of six sets, predicted -22 .. +49 % off) a wide one: 0.91 .. 1.36 x the prediction, a 1.51
    # ratio (2026-12-06; 1.48 from the 25.11 rows alone). A width check, not an accuracy bound.
    a100 = interval_for({"generation": "ampere", "moe": "dense", "precision": "16-bit", "seq": "short", "scale": "large"})
    moe = interval_for({"generation": "blackwell", "moe": "moe", "precision": "fp8", "seq": "short", "scale": "pod"})
    assert a100.high_ratio / a100.low_ratio < 1.25 < 1.45 < moe.high_ratio / moe.low_ratio
    assert a100.rows >= 4 and "generation" in a100.matched_on


@pytest.mark.slow
def test_stored_residuals_match_the_model():
    """data/residuals.json is what the model predicts now; after a model change run
    `python -m clusterplan.reference.intervals --write` (or `make reference`)."""
    stored = {r["label"]: r for r in load_residuals()}
    now = {r["label"]: r for r in compute_rows()}
    assert set(stored) == set(now), "reference rows changed: regenerate data/residuals.json"
    for label, row in now.items():
        assert row["residual"] == pytest.approx(stored[label]["residual"], abs=1e-3), \
            f"{label}: stale residual, run python -m clusterplan.reference.intervals --write"
        assert row["regime"] == stored[label]["regime"]


def test_a_hybrid_prediction_draws_on_the_hybrid_rows_alone():
    """A hybrid Mamba stack's interval comes from the published hybrid runs (dgxc Nemotron-H 56B, +29.5 .. +36.7 %
    too fast at the roofline, +13.8 .. +20.1 % at the SSD kernels' measured rate): it lies above the prediction,
    where the measured times were; a dense prediction never draws on them."""
    want = {"generation": "hopper", "moe": "hybrid", "precision": "16-bit", "seq": "long", "scale": "node"}
    iv = interval_for(want)
    assert "moe" in iv.matched_on and iv.rows == 7 and 1.1 < iv.low_ratio < iv.high_ratio < 1.3
    dense = interval_for({**want, "moe": "dense"})
    assert "moe" in dense.matched_on and dense.rows > 7 and dense.low_ratio < 1.0


def test_calibration_spread_by_hand(tmp_path):
    # largest fit error 0.1 over 10 points: s = 0.1 around 0, t(0.9, 10) = 1.3722, sqrt(1.1) = 1.04881:
    # h = 0.14392 -> [0.8660, 1.1548]
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"gemm": {"bf16": {"rms_log_error": 0.1, "points": 10}},
                                "attention": {"bf16": {"rms_log_error": 0.05, "points": 6}}}))
    iv = calibration_interval(str(path))
    assert (iv.low_ratio, iv.high_ratio) == (pytest.approx(0.8660, abs=1e-4), pytest.approx(1.1548, abs=1e-4))


def test_estimate_and_plan_carry_intervals(run_cli):
    code, out, err = run_cli("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--layout",
                             "tp=8,gbs=8,seq=4096", "--tokens", "1e11", "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    iv = data["step_time_interval"]
    assert iv["regime"] == {"generation": "hopper", "moe": "dense", "precision": "16-bit", "seq": "medium",
                            "scale": "node"}
    ref = interval_for(iv["regime"])
    assert iv["low_s"] == pytest.approx(data["step_time_s"] * ref.low_ratio, rel=1e-5)
    assert iv["high_s"] == pytest.approx(data["step_time_s"] * ref.high_ratio, rel=1e-5)
    t = data["time_to_train"]
    assert t["days_interval"] == [pytest.approx(t["days"] * ref.low_ratio, rel=1e-5),
                                  pytest.approx(t["days"] * ref.high_ratio, rel=1e-5)]
    code, out, err = run_cli("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:2", "--gbs", "64", "--seq",
                             "4096", "--format", "json", "--top", "5")
    assert code == 0, err
    data = json.loads(out)
    lo, hi = data["plans"][0]["step_time_interval"]["low_s"], data["plans"][0]["step_time_interval"]["high_s"]
    assert data["ties_with_best"] == [p["rank"] for p in data["plans"][1:] if lo <= p["step_time_s"] <= hi]
    assert data["ties_with_best"]  # plans within a few per cent of each other are ties under a 10-20 % interval


def test_a_tie_is_judged_around_the_prediction():
    """A hybrid's interval sits above its prediction (its regime's rows ran slower than predicted): 36.6-40.2 s for
    #1's 30.0 s. That offset moves every plan of the regime alike; the spread, sqrt(40.2 / 36.6) = 1.048 as a ratio
    around the interval's centre, is what can reorder plans: #2 (30.2 s) and #3 (31.2 s) lie within 30.0 x 1.048 =
    31.44 s and tie with #1; #4 (37.0 s) does not. The interval says where it lies against the prediction."""
    from clusterplan.reference.intervals import placement, ties

    plans = [{"rank": 1, "step_time_s": 30.0, "step_time_interval": {"low_s": 36.6, "high_s": 40.2}},
             {"rank": 2, "step_time_s": 30.2}, {"rank": 3, "step_time_s": 31.2}, {"rank": 4, "step_time_s": 37.0}]
    assert ties(plans) == [2, 3]
    assert placement(36.6, 40.2, 30.0) == "above" and placement(0.9, 1.1, 1.0) == "around"
    assert placement(0.5, 0.8, 1.0) == "below"
