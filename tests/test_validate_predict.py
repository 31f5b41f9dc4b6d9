"""validate's predictions: stage positions, per-position bytes, and pricing an fp32 run at the fp32 GEMM curve."""

from __future__ import annotations

from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.calibration import Calibration, GemmCurve
from clusterplan.models.training.layout import Layout
from clusterplan.validate.predict import position_of, predicted_bytes, run_calibration
from clusterplan.validate.report import error_pct

TINY = ModelSpec(name="tiny", n_layers=4, hidden=64, n_heads=4, n_kv_heads=2, ffn_hidden=192, vocab=128)


def test_positions():
    assert [position_of(r, 4) for r in range(4)] == ["first", "middle", "middle", "last"]
    assert position_of(0, 1) == "first"


def test_fp32_adam_states_are_16_bytes_per_parameter():
    # fp32 weights 4 + fp32 grads 4 + Adam m, v 8 (models/training/memory.bytes_per_param), no sharding at dp = tp = pp = 1.
    p = predicted_bytes(TINY, Layout.parse("mbs=1,gbs=1,seq=64,precision=fp32,optimizer=adam"))["first"]
    n = TINY.total_params()
    assert (p["weights"], p["grads"], p["optimizer"]) == (4 * n, 4 * n, 8 * n)


def test_fp32_run_is_priced_at_the_fp32_gemm_curve():
    cal = Calibration(gemm={"bf16": GemmCurve(max_tflops=0.2, half_flops=3e6),
                            "fp32": GemmCurve(max_tflops=0.1, half_flops=2e5)})
    fp32 = run_calibration(cal, Layout.parse("precision=fp32,gbs=1"))
    assert fp32.gemm_curve("bf16") == GemmCurve(max_tflops=0.1, half_flops=2e5)
    assert run_calibration(cal, Layout.parse("gbs=1")) is cal  # a bf16 run keeps the bf16 curve
    assert run_calibration(None, Layout.parse("precision=fp32,gbs=1")) is None


def test_error_sign_and_zero():
    assert error_pct(95.0, 100.0) == -5.0 and error_pct(1.0, 0.0) is None


def test_a_gpu_result_is_priced_as_the_bf16_run_it_was(run_cli, tmp_path):
    # A torchrun result from GPUs (--measured): fp32 states but bf16 autocast, so the step time is the estimate of
    # the bf16 layout, and the allocator's peak is compared with the predicted total.
    import json
    from pathlib import Path

    from clusterplan.models.training.estimate import estimate
    from clusterplan.models.training.planfile import read_plan
    from clusterplan.validate.rules import executed_layout

    plan_path = Path(__file__).parent / "fixtures" / "validate" / "tiny_tp2.yaml"
    plan = read_plan(plan_path)
    layout = executed_layout(plan.layout)
    ranks = [{"rank": r, "coords": {"pp": 0, "dp_replicate": 0, "dp_shard": 0, "cp": 0, "tp": r}, "stages": [0],
              "bytes": {"weights": 1000, "grads": 1000, "optimizer": 2000, "activations": 500},
              "gpu_peak_bytes": 5000, "step_time_s": {"median": 0.01, "min": 0.009, "max": 0.011, "all": [0.01]},
              "loss": 4.8} for r in range(2)]
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"runs": [{"device": "cuda", "ranks": ranks, "model": plan.model.to_dict(),
                                            "layout": layout.to_dict()}]}))
    code, out, err = run_cli("validate", str(plan_path), "--measured", str(result), "--format", "json")
    assert code == 0, err
    got = json.loads(out)
    from clusterplan.validate.predict import runtime_stack

    # validate's runs are eager PyTorch (torchtitan-like, no gradient clipping: validate.predict.runtime_stack)
    bf16 = estimate(plan.model, plan.cluster, layout.with_(precision="bf16"), eager_layers=True,
                    stack=runtime_stack()).to_json()
    assert got["time"]["predicted_s"] == bf16["step_time_s"] and got["time"]["measured_median_s"] == 0.01
    assert got["ranks"][0]["memory"]["gpu_peak"]["measured_bytes"] == 5000


def test_gpu_bench_plans_scale_to_one_gpu(run_cli, tmp_path):
    # bench/bench_gpu.py validates these on an H100; here: each is a valid plan that --scale auto fits in 60 GiB.
    import json
    from pathlib import Path

    plans = sorted((Path(__file__).parent.parent / "bench" / "gpu_plans").glob("*.yaml"))
    assert len(plans) == 3
    for plan in plans:
        job = tmp_path / f"{plan.stem}.json"
        code, _, err = run_cli("validate", str(plan), "--write-job", str(job), "--budget-gib", "60")
        assert code == 0, err
        run = json.loads(job.read_text())["runs"][0]
        assert run["layout"]["tp"] == run["layout"]["pp"] == 1 and run["model"]["n_layers"] >= 8


def test_a_listed_middle_rank_is_priced_with_its_own_layers():
    # pp_layers 1/3/2/1 of 7 layers: rank 1 holds 3 and rank 2 holds 2 layers; a middle rank holds no embedding or
    # head, so its weights are its layers' and the two ranks' differ by exactly 2 / 3.
    from clusterplan.validate.predict import rank_layout

    spec = ModelSpec(name="tiny7", n_layers=7, hidden=64, n_heads=4, n_kv_heads=2, ffn_hidden=192, vocab=128)
    layout = Layout.parse("pp=4,pp_layers=1/3/2/1,mbs=1,gbs=4,seq=64")
    one, two = (predicted_bytes(spec, rank_layout(layout, r))["middle"]["weights"] for r in (1, 2))
    assert two == 2 / 3 * one
    assert rank_layout(layout, 0) == layout and rank_layout(layout, 3) == layout
    assert predicted_bytes(spec, layout)["middle"]["weights"] == one  # the heaviest stands for the middle
