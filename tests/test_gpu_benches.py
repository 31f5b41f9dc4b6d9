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
