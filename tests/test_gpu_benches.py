"""The GPU benches (bench/bench_gpu.py and the measurement scripts whose data the model uses or is checked on) run on a
machine without a GPU as CI's does: each says so in one line, writes nothing and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parent.parent
BENCHES = ("bench_gpu.py", "bench_gemm_k.py", "bench_gemm_shapes.py", "bench_attention.py", "bench_copy_kernels.py",
           "bench_grouped_gemm.py", "bench_step_profile.py")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the benches would measure it")
@pytest.mark.parametrize("bench", BENCHES)
def test_gpu_bench_without_a_gpu_says_so(bench, tmp_path):
    out = tmp_path / "out.csv"
    args = [] if bench == "bench_gpu.py" else ["--out", str(out)]
    run = subprocess.run([sys.executable, str(ROOT / "bench" / bench), *args], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "no CUDA GPU here: nothing to measure (this bench is for a GPU machine)"
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the benches would measure it")
def test_bench_gpu_runs_every_kernel_bench_and_reports_each(tmp_path, capsys):
    # bench_gpu.py's step 3 runs each kernel bench with --out; here (no GPU) each writes nothing, which is reported
    # per script, and the step fails as a whole (exit 1 in main) instead of claiming the data was written.
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_gpu

    assert not bench_gpu.kernel_benches(tmp_path, "test")
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == [script for script, _ in bench_gpu.MEASUREMENTS]
    assert all("wrote nothing (no CUDA GPU here" in ln for ln in lines)
    assert {script for script, _ in bench_gpu.MEASUREMENTS} == set(BENCHES) - {"bench_gpu.py"}
