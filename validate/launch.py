"""Spawn the ranks of a validation run on this machine and collect their measurements, never hanging.

Each rank is `python -m clusterplan.validate.worker` with RANK/WORLD_SIZE/MASTER_* in its environment (torchrun's
contract, so the same worker runs under torchrun on several machines). The launcher polls: a rank that exits
non-zero ends the run (the one killed by a signal, or whose error is its own, is named, with the signal by name);
a rank without a heartbeat for `timeout_s` (stopped, wedged) or a run without progress for `timeout_s` (named: the
rank furthest behind) stops every rank. Workers run in their own process group and die with the launcher.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterplan.errors import ClusterplanError
from clusterplan.fileio import dumps_json
from clusterplan.progress import ProgressFn
from clusterplan.runtime.procs import (
    HEARTBEAT_FILE_ENV,
    exit_words,
    free_port,
    is_stopped,
    launcher_env,
    read_file_heartbeat,
    stop_group,
    worker_popen_kwargs,
)

STARTUP_S = 120.0
"""Least time start-up (importing torch) and the rendezvous get before ranks count as making no progress."""
RENDEZVOUS_INDEX = 2
"""FileHeartbeat phase index of the rendezvous (1 start-up, 2 rendezvous, 3 the first run)."""
SETTLE_S = 1.0
"""After the first rank exits non-zero, how long its peers get to exit too before the cause is picked."""


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


PEER_LOSS = re.compile(r"closed by peer|reset by peer|remote worker|remote process|broken pipe|connection refused|"
                       r"connection reset", re.IGNORECASE)
"""What gloo and NCCL say on the ranks that lose a peer: those ranks are victims, not the cause."""


@dataclass(kw_only=True)
class _Rank:
    rank: int
    proc: subprocess.Popen[bytes]
    log: Path
    beat_file: Path
    beat_wall: float = field(default_factory=time.time)
    """Wall clock of the rank's last heartbeat (the file's mtime)."""
    index: int = 0
    phase: str = "start-up"
    changed_wall: float = field(default_factory=time.time)
    """Wall clock of the rank's last phase change (progress)."""

    def refresh(self) -> None:
        beat = read_file_heartbeat(self.beat_file)
        if beat is not None:
            self.beat_wall = max(self.beat_wall, beat[0])
            if beat[1] != self.index:
                self.index, self.phase, self.changed_wall = beat[1], beat[2], time.time()

    def error(self) -> str:
        return _last_error(self.log.read_text(encoding="utf-8", errors="replace")) if self.log.is_file() else ""


def _failure(failed: list[_Rank]) -> RankFailedError:
    """The rank that caused the failure: killed by a signal first, else the first whose error is its own."""
    def key(r: _Rank) -> tuple[int, int, int]:
        code = r.proc.returncode or 0
        return (0 if code < 0 else 1, 1 if PEER_LOSS.search(r.error()) else 0, r.rank)

    first = min(failed, key=key)
    code = first.proc.returncode or 0
    how = f"exit {code}" if code > 0 else exit_words(code).removeprefix("was ")
    text = first.log.read_text(encoding="utf-8", errors="replace") if first.log.is_file() else ""
    return RankFailedError(f"rank {first.rank} failed ({how}) during {first.phase}: {_last_error(text)}",
                           log_tail=text[-8000:])


def phase_count(runs: list[dict[str, Any]]) -> int:
    """FileHeartbeat phases a worker goes through (validate/worker.py): start-up, rendezvous, per run its start,
    each warm-up and measured step and the gather, and the teardown."""
    return 2 + sum(2 + int(r.get("warmup_steps", 1)) + int(r.get("steps", 3)) for r in runs) + 1


def _wait(ranks: list[_Rank], timeout_s: float, on_progress: ProgressFn | None = None, total: int = 0) -> None:
    """Until every rank exits 0; raises naming the rank that failed, stopped, went silent or stalled the rest.
    Every check is against timeout_s since that rank's last heartbeat or the run's last progress.
    on_progress(phases done by the slowest rank, total, its phase) when that changes."""
    shown = None
    while True:
        for r in ranks:
            r.refresh()
        if on_progress is not None:
            slowest = min(ranks, key=lambda x: (x.index, x.rank))
            if (slowest.index, slowest.phase) != shown:
                shown = (slowest.index, slowest.phase)
                on_progress(slowest.index, total, f"rank {slowest.rank} {slowest.phase}")
        codes = [r.proc.poll() for r in ranks]
        failed = [r for r, c in zip(ranks, codes, strict=True) if c not in (None, 0)]
        if failed:
            time.sleep(SETTLE_S)  # the cause and its victims exit within moments; see them all before naming one
            return_codes = [r.proc.poll() for r in ranks]
            raise _failure([r for r, c in zip(ranks, return_codes, strict=True) if c not in (None, 0)])
        if all(c == 0 for c in codes):
            return
        now = time.time()
        running = [r for r, c in zip(ranks, codes, strict=True) if c is None]
        # Stopped (SIGSTOP): named timeout_s after its last beat. Merely silent (a busy host can starve a thread):
        # the progress allowance, and only when behind the rest while they beat (the rest wait for it).
        behind = min(r.index for r in running)
        # Importing torch and the rendezvous may take longer than one step on a busy host.
        allowed_s = max(timeout_s, STARTUP_S) if behind <= RENDEZVOUS_INDEX else timeout_s
        stopped = [r for r in running if now - r.beat_wall > timeout_s and is_stopped(r.proc.pid)]
        silent = [r for r in running if now - r.beat_wall > allowed_s and r.index == behind]
        if stopped or (silent and len(silent) < len(running)):
            r = min(stopped or silent, key=lambda x: x.beat_wall)
            how = "was stopped (SIGSTOP or SIGTSTP: process state T)" if stopped else "stopped responding"
            raise RankFailedError(f"rank {r.rank} {how} during {r.phase}: no heartbeat for {now - r.beat_wall:.0f} s "
                                  f"(--timeout {timeout_s:g}); stopped all ranks")
        if now - max(r.changed_wall for r in running) > allowed_s:
            stuck = [r for r in running if r.index == behind]
            who = f"rank {stuck[0].rank}" if len(stuck) == 1 else "ranks " + ", ".join(str(r.rank) for r in stuck)
            raise RankFailedError(f"{who} made no progress for {allowed_s:g} s during {stuck[0].phase} (the others "
                                  "wait for it); raise --timeout or look for a hang there")
        time.sleep(0.05)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        stop_group(p)
    for p in procs:
        p.wait()


def spawn(runs: list[dict[str, Any]], nproc: int, timeout_s: float, threads_per_rank: int = 1,
          on_progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """Run each of `runs` (model, layout, steps, ...) in turn on `nproc` local ranks; return, per run, rank 0's
    gathered results ({"device", "ranks": [...]}). A rendezvous port taken between picking and binding it (another
    process won the race) is retried on a fresh port, twice at most. on_progress(done, total, what): the slowest
    rank's phase (phase_count in all)."""
    for attempt in range(3):
        try:
            return _spawn_once(runs, nproc, timeout_s, threads_per_rank, on_progress)
        except RankFailedError as exc:
            if attempt == 2 or "address already in use" not in exc.log_tail.lower():
                raise
    raise AssertionError("unreachable")


def _spawn_once(runs: list[dict[str, Any]], nproc: int, timeout_s: float, threads_per_rank: int,
                on_progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="clusterplan-validate-") as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(dumps_json({"runs": runs, "timeout_s": timeout_s}), encoding="utf-8")
        port = free_port()
        ranks: list[_Rank] = []
        try:
            for rank in range(nproc):
                log, beat = Path(tmp) / f"rank{rank}.log", Path(tmp) / f"rank{rank}.beat"
                with open(log, "wb") as fh:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "clusterplan.validate.worker", str(job_path), str(out_path)],
                        env={**_env(rank, nproc, port, threads_per_rank), **launcher_env(),
                             HEARTBEAT_FILE_ENV: str(beat)},
                        stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **worker_popen_kwargs())
                ranks.append(_Rank(rank=rank, proc=proc, log=log, beat_file=beat))
            _wait(ranks, timeout_s, on_progress, phase_count(runs))
        finally:
            _stop([r.proc for r in ranks])
        return json.loads(out_path.read_text(encoding="utf-8"))["runs"]
