"""On a machine with NVIDIA GPUs: calibrate, record it in hardware_db, validate one-GPU plans (issues #7 and #8).

    python bench/bench_gpu.py [--quick] [--out-dir hardware_db/data/calibration]

1. `clusterplan profile` over every GPU of the machine (full sweep, plus Llama-3.1-8B's GEMM shapes at 4096 tokens)
   writes `<gpu>-x<N>-<date>.json` into --out-dir (the measured data hardware_db keeps, with date and method in its
   meta) and `<gpu>-x<N>-<date>.txt`, profile's table against the datasheet.
2. `clusterplan validate` runs each plan of bench/gpu_plans/ on one GPU (scaled to fit 60 GiB) with that calibration:
   the allocator's peak against the memory model, the step time against `estimate`; all of it goes to
   `<gpu>-x<N>-<date>-validate.json` and a table on stdout.
3. Unless --no-kernels, the kernel benches whose data the model uses or is checked on (MEASUREMENTS: GEMM k depth,
   training-layer GEMMs, attention backends, cast kernels, MoE expert GEMMs, the validate steps' kernel profile), each
   into `<gpu>-x<N>-<date>-<name>.csv` / `.json`; one that fails is reported and the others still run (exit 1 at the
   end). On one H200 the whole run takes about 4 minutes.

Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLANS = sorted((ROOT / "bench" / "gpu_plans").glob("*.yaml"))
MEASUREMENTS = (("bench_gemm_k.py", "gemm-k.csv"), ("bench_gemm_shapes.py", "layer-gemms.csv"),
                ("bench_attention.py", "sdpa-attention.csv"), ("bench_copy_kernels.py", "copy-kernels.csv"),
                ("bench_grouped_gemm.py", "expert-gemms.csv"), ("bench_step_profile.py", "step-profile.json"))
"""(script, output suffix): the kernel benches of step 3, as research/h200-own-measurements.md used them."""
KERNEL_BENCH_TIMEOUT_S = 900


def _cli(*args: str, timeout_s: float = 1800) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([sys.executable, "-m", "clusterplan", *args], capture_output=True, text=True,
                         timeout=timeout_s, cwd=ROOT)
    if run.returncode not in (0, 1):
        raise SystemExit(f"clusterplan {' '.join(args)} failed (exit {run.returncode}): {run.stderr.strip()}")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced profile sweep")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "hardware_db" / "data" / "calibration")
    parser.add_argument("--no-kernels", action="store_true", help="skip the kernel benches (step 3)")
    args = parser.parse_args()
    from clusterplan.profiler.runner import cuda_devices

    gpus = cuda_devices()
    if not gpus:
        print("no CUDA GPU here: nothing to measure (this bench is for a GPU machine)")
        return
    import torch

    name = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")
    stem = f"{name}-x{gpus}-{dt.date.today().isoformat()}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    calib = args.out_dir / f"{stem}.json"
    prof = _cli("profile", "--nproc", str(gpus), "--out", str(calib), "--model", "llama3.1-8b",
                "--layout", "mbs=1,seq=4096", *(["--quick"] if args.quick else []))
    (args.out_dir / f"{stem}.txt").write_text(prof.stdout + prof.stderr)
    print(prof.stdout)
    results = []
    print(f"{'plan':<34} {'mem pred GiB':>12} {'peak GiB':>9} {'mem err':>8} {'step pred s':>11} {'step s':>8} "
          f"{'time err':>9}")
    for plan in PLANS:
        run = _cli("validate", str(plan), "--nproc", "1", "--budget-gib", "60", "--steps", "5", "--calibration",
                   str(calib), "--format", "json")
        result = json.loads(run.stdout)
        results.append({"plan": plan.name, **result})
        peak = result["ranks"][0]["memory"].get("gpu_peak", {})
        t = result["time"]
        print(f"{plan.stem:<34} {peak.get('predicted_bytes', 0) / 2**30:>12.2f} "
              f"{peak.get('measured_bytes', 0) / 2**30:>9.2f} {peak.get('error_pct') or 0:>+7.1f}% "
              f"{t['predicted_s']:>11.4f} {t['measured_median_s']:>8.4f} {t['error_pct']:>+8.1f}%")
    out = args.out_dir / f"{stem}-validate.json"
    out.write_text(json.dumps({"calibration": calib.name, "results": results}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {calib}, {out}")
    if not args.no_kernels and not kernel_benches(args.out_dir, stem):
        raise SystemExit(1)


def kernel_benches(out_dir: Path, stem: str) -> bool:
    """Step 3: each of MEASUREMENTS into out_dir; False when any failed (each failure printed, the rest still run)."""
    ok = True
    for script, suffix in MEASUREMENTS:
        out = out_dir / f"{stem}-{suffix}"
        try:
            run = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--out", str(out)], capture_output=True,
                                 text=True, timeout=KERNEL_BENCH_TIMEOUT_S, cwd=ROOT)
        except subprocess.TimeoutExpired:
            print(f"{script}: no result within {KERNEL_BENCH_TIMEOUT_S} s")
            ok = False
            continue
        if run.returncode != 0:
            tail = (run.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{script}: failed (exit {run.returncode}): {tail}")
            ok = False
            continue
        if not out.exists():
            print(f"{script}: wrote nothing ({run.stdout.strip() or 'no output'})")
            ok = False
            continue
        print(f"{script}: wrote {out}")
    return ok


if __name__ == "__main__":
    main()
