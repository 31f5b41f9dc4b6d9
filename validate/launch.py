"""Spawn the ranks of a validation run on this machine and collect their measurements, never hanging.

Each rank is `python -m clusterplan.validate.worker` with RANK/WORLD_SIZE/MASTER_* in its environment (torchrun's
contract, so the same worker runs under torchrun on several machines). The launcher polls: the first rank that
exits non-zero ends the run and its error is raised; a run longer than `timeout_s` kills every rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from clusterplan.errors import ClusterplanError
from clusterplan.fileio import dumps_json
from clusterplan.runtime.procs import free_port


class RankFailedError(ClusterplanError):
    """A rank of the validation run failed or the run timed out."""

    reason = "rank_failed"

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


def _env(rank: int, nproc: int, port: int, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": str(threads)})
    return env


def _last_error(text: str) -> str:
    """The exception line of a traceback (the last line that is not torch's rank prefix noise)."""
    lines = [ln.split("]:", 1)[-1].strip() if ln.startswith("[rank") else ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line
    return lines[-1] if lines else "no output"


def _wait(procs: list[subprocess.Popen[bytes]], logs: list[Path], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        codes = [p.poll() for p in procs]
        failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            rank = failed[0]
            text = logs[rank].read_text(encoding="utf-8", errors="replace")
            raise RankFailedError(f"rank {rank} failed (exit {codes[rank]}): {_last_error(text)}",
                                  log_tail=text[-8000:])
        if all(c == 0 for c in codes):
            return
        if time.monotonic() > deadline:
            waiting = [r for r, c in enumerate(codes) if c is None]
            raise RankFailedError(f"timed out after {timeout_s:.0f} s waiting for rank(s) {waiting}; "
                                  "raise --timeout or look for a hang in a collective")
        time.sleep(0.05)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def spawn(runs: list[dict[str, Any]], nproc: int, timeout_s: float, threads_per_rank: int = 1) -> list[dict[str, Any]]:
    """Run each of `runs` (model, layout, steps, ...) in turn on `nproc` local ranks; return, per run, rank 0's
    gathered results ({"device", "ranks": [...]}). A rendezvous port taken between picking and binding it (another
    process won the race) is retried on a fresh port, twice at most."""
    for attempt in range(3):
        try:
            return _spawn_once(runs, nproc, timeout_s, threads_per_rank)
        except RankFailedError as exc:
            if attempt == 2 or "address already in use" not in exc.log_tail.lower():
                raise
    raise AssertionError("unreachable")


def _spawn_once(runs: list[dict[str, Any]], nproc: int, timeout_s: float, threads_per_rank: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="clusterplan-validate-") as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(dumps_json({"runs": runs, "timeout_s": timeout_s}), encoding="utf-8")
        port = free_port()
        logs = [Path(tmp) / f"rank{r}.log" for r in range(nproc)]
        procs = []
        try:
            for rank in range(nproc):
                with open(logs[rank], "wb") as log:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "clusterplan.validate.worker", str(job_path), str(out_path)],
                        env=_env(rank, nproc, port, threads_per_rank), stdout=log, stderr=subprocess.STDOUT))
            _wait(procs, logs, timeout_s)
        finally:
            _stop(procs)
        return json.loads(out_path.read_text(encoding="utf-8"))["runs"]
