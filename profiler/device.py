"""The device a worker measures on, and the run metadata written into the calibration file."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import socket
import subprocess
from typing import Any

from clusterplan import __version__
from clusterplan.errors import BadInputError


def pick_device(requested: str, local_rank: int) -> Any:
    """cuda:LOCAL_RANK when CUDA is there (or asked for), else cpu."""
    import torch

    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise BadInputError("--device cuda but torch sees no CUDA device; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise BadInputError(f"local rank {local_rank} has no GPU (this node has {torch.cuda.device_count()}); "
                                "lower --nproc / --nproc-per-node")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def backend_for(device: Any) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return "CPU " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU " + (platform.processor() or platform.machine())


def _nvidia_driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.strip().splitlines()[0] if out.strip() else ""


def run_meta(device: Any, *, world_size: int, local_world_size: int, quick: bool, model: str | None,
             layout: str | None) -> dict[str, Any]:
    import torch

    cuda = device.type == "cuda"
    return {
        "device_name": device_name(device),
        "device_count": world_size,
        "world_size": world_size,
        "local_world_size": local_world_size,
        "nodes": world_size // local_world_size,
        "backend": backend_for(device),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "",
        "driver": _nvidia_driver() if cuda else "",
        "allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32) if cuda else False,
        "cpu_threads": torch.get_num_threads(),
        "host_cpus": _host_cpus(),
        "python_version": platform.python_version(),
        "clusterplan_version": __version__,
        "hostname_sha256": hashlib.sha256(socket.gethostname().encode()).hexdigest(),
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        # GEMMs with a side below this are memory-bound on this device and left out of the GEMM curve fit
        # (H100: 256 rows x 8192^2 is ~240 FLOP/byte, near its ~260 ridge; a CPU core's ridge is ~4).
        "gemm_fit_min_dim": 256 if cuda else 32,
        "quick": quick,
        "model": model,
        "layout": layout,
        "method": "clusterplan profile: median of timed runs after warm-up; CUDA events on GPU, perf_counter "
                  "after a barrier on CPU; collectives max over ranks; nccl-tests busbw",
    }


def _host_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as a container's limit shows up), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
