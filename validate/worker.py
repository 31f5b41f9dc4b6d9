"""Entry point of one validation rank: `python -m clusterplan.validate.worker JOB.json OUT.json`.

Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT from the environment (set by launch.py or torchrun),
runs the job, gathers every rank's measurements on rank 0, which writes OUT.json. A failure prints the traceback
on stderr and exits 1, so the launcher can surface it.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta


def _device() -> object:
    import torch

    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def _inject_fault(rank: int, where: str) -> None:
    """CLUSTERPLAN_VALIDATE_FAULT=KIND:R makes rank R fail (raise), hang, die by SIGKILL (kill) at the run, or
    stop itself with SIGSTOP at start-up (stop), as the launcher's tests need."""
    import signal
    import time

    kind, _, target = os.environ.get("CLUSTERPLAN_VALIDATE_FAULT", "").partition(":")
    if not kind or int(target or -1) != rank or where != ("start-up" if kind == "stop" else "run"):
        return
    if kind == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "raise":
        raise RuntimeError(f"injected fault on rank {rank}")
    if kind == "hang":
        time.sleep(3600)


def main(argv: list[str]) -> int:
    from clusterplan.runtime.procs import FileHeartbeat, die_with_launcher

    die_with_launcher()
    beat = FileHeartbeat()  # beats from here on, also while torch is imported and during the rendezvous
    import torch.distributed as dist

    job_path, out_path = argv
    with open(job_path, encoding="utf-8") as fh:
        job = json.load(fh)
    device = _device()
    backend = "nccl" if device.type == "cuda" else "gloo"
    _inject_fault(int(os.environ.get("RANK", "-1")), "start-up")
    beat.phase("rendezvous")
    dist.init_process_group(backend, timeout=timedelta(seconds=float(job.get("timeout_s", 120))),
                            device_id=device if device.type == "cuda" else None)
    try:
        from clusterplan.fileio import dumps_json, write_atomic
        from clusterplan.models.architecture.spec import ModelSpec
        from clusterplan.models.training.layout import Layout
        from clusterplan.validate.run import RunSpec, run_rank

        runs = []
        for k, item in enumerate(job["runs"], start=1):  # several layouts share one process group (and torch import)
            beat.phase(f"run {k}/{len(job['runs'])}")
            _inject_fault(dist.get_rank(), "run")
            run = RunSpec(model=ModelSpec.from_dict(item["model"]), layout=Layout.from_dict(item["layout"]),
                          warmup_steps=int(item.get("warmup_steps", 1)), steps=int(item.get("steps", 3)),
                          seed=int(item.get("seed", 0)))
            result = run_rank(run, device, on_step=lambda i, n, k=k: beat.phase(
                f"run {k}/{len(job['runs'])} step {i}/{n}"))
            beat.phase(f"gather {k}/{len(job['runs'])}")
            gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
            dist.gather_object(result, gathered, dst=0)
            runs.append({"device": device.type, "ranks": gathered, "model": item["model"], "layout": item["layout"]})
        if dist.get_rank() == 0:
            write_atomic(out_path, dumps_json({"runs": runs}))
        # Tear down together: no rank closes its gloo/NCCL connections while a peer may still use them.
        beat.phase("teardown")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    from clusterplan.runtime.procs import exit_now

    exit_now(main(sys.argv[1:]))
