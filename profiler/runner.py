"""The single-machine launcher of `clusterplan profile --nproc N`: starts N worker processes with the
torchrun environment, follows their progress lines, and ends the run when a rank dies or stops progressing.

A rank that exits non-zero, or makes no progress for timeout_s, stops every rank; the error names the rank
(the first to exit, or the one furthest behind) and what it was measuring. The workers' own collective timeout
is longer than the launcher's, so the launcher, which sees every rank, reports first.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from clusterplan.errors import BadInputError, ClusterplanError
from clusterplan.progress import ProgressFn
from clusterplan.runtime.procs import (
    exit_words,
    free_port,
    is_stopped,
    launcher_env,
    stop_group,
    worker_popen_kwargs,
)

STATE_ORDER = {"start-up": -1, "ready": 0, "begin": 1, "run": 2, "wait": 3, "done": 4}
STARTUP_S = 120.0
SETTLE_S = 2.0
# How long a rank that reported its own failure may take to exit before it is named without its exit code.
EXIT_GRACE_S = 5.0
# What gloo and NCCL say on the ranks that lose a peer (pair.cc "Connection closed by peer", NCCL "remote process").
PEER_LOSS = re.compile(r"closed by peer|reset by peer|remote worker|remote process|broken pipe|connection refused|"
                       r"timed out|timeout", re.IGNORECASE)


class ProfileError(ClusterplanError):
    """A worker rank died or hung; partial results stay in the output file."""


@dataclass(kw_only=True)
class RankState:
    rank: int
    proc: subprocess.Popen[str]
    log_path: Path
    index: int = 0
    total: int = 0
    state: str = "start-up"
    label: str = "start-up"
    changed_s: float = field(default_factory=time.monotonic)
    exited_s: float | None = None
    exited_wall: float | None = None
    failed_s: float | None = None
    """When the launcher read this rank's "failed" line (monotonic)."""
    failed_wall: float | None = None
    """When the rank itself failed (its wall clock, same machine): orders failures across ranks."""
    error: str = ""
    bad_input: bool = False
    beat_s: float = field(default_factory=time.monotonic)
    """When any line (progress or the worker's liveness pulse) last came from this rank (monotonic)."""
    phase: str = "start-up"
    """Start-up phase the rank last reported (start-up, rendezvous, planning)."""

    def failing(self) -> bool:
        return self.failed_s is not None or (self.exited_s is not None and self.proc.returncode != 0)

    def failed_at(self) -> float:
        return min(t for t in (self.failed_wall, self.exited_wall, float("inf")) if t is not None)

    def progress(self) -> tuple[int, int]:
        return (self.index, STATE_ORDER.get(self.state, 0))




def worker_env(rank: int, nproc: int, port: int, nodes: int = 1) -> dict[str, str]:
    """The variables torchrun gives a worker (torch/distributed/run.py), plus our heartbeat switch.

    nodes > 1 splits the local processes into pretend nodes (CPU only), to exercise the scale_out level.
    """
    per_node = nproc // nodes
    env = dict(os.environ)
    env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(nproc),
                "LOCAL_RANK": str(rank % per_node), "LOCAL_WORLD_SIZE": str(per_node), "GROUP_RANK": str(rank // per_node),
                "CLUSTERPLAN_PROFILE_HEARTBEAT": "1", "PYTHONUNBUFFERED": "1"})
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default; also keeps CPU timings stable
    return env


def _follow(state: RankState, stream: IO[str]) -> None:
    for line in stream:
        try:
            beat = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(beat, dict):
            continue
        state.beat_s = time.monotonic()
        if beat.get("state") == "alive":
            state.phase = str(beat.get("phase") or state.phase)
            continue
        if beat.get("state") == "failed":
            state.failed_wall, state.error, state.bad_input = float(beat["at"]), beat["error"], beat["code"] == 2
            state.failed_s = time.monotonic()
            continue
        try:
            state.index, state.total = int(beat["index"]), int(beat["total"])
        except (KeyError, TypeError, ValueError):  # some library's JSON on the worker's stdout, not a beat
            continue
        state.state, state.label = str(beat.get("state")), beat.get("label") or state.label
        state.changed_s = time.monotonic()


def _await_exit(state: RankState) -> None:
    state.proc.wait()
    state.exited_wall = time.time()
    state.exited_s = time.monotonic()


def _last_error_line(path: Path, rank: int) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    if not lines:
        return ""
    return lines[-1].removeprefix(f"error: rank {rank}: ").removeprefix("error: ")


def _stop(ranks: list[RankState]) -> None:
    for r in ranks:
        stop_group(r.proc)
    for r in ranks:
        r.proc.wait()


def _doing(r: RankState) -> str:
    """What the rank was doing, for the error line: its start-up phase or the measurement."""
    return f"during {r.phase}" if r.state == "start-up" else f"while measuring {r.label}"


def _kept(out: str) -> str:
    """The partial file, named only when it exists (a rank that died in start-up left none)."""
    return f"; partial results kept in {out} (continue with --resume)" if Path(out).is_file() else ""


def _allowed_s(state: RankState, timeout_s: float) -> float:
    # Start-up (importing torch, rendezvous, planning) may take longer than one measurement on a busy host.
    return max(timeout_s, STARTUP_S) if state.state == "start-up" else timeout_s


def _check(ranks: list[RankState], timeout_s: float, out: str) -> bool:
    """True when all ranks finished; raises when one failed or hung."""
    kept = _kept(out)
    failed = [r for r in ranks if r.failing()]
    if failed:
        seen_s = min(t for r in failed for t in (r.failed_s, r.exited_s) if t is not None)
        if not all(r.exited_s is not None for r in ranks) and time.monotonic() - seen_s < SETTLE_S:
            return False  # let the peers report too, then blame the first to fail
        # A rank whose error is about a lost peer is a victim; blame the first rank that failed on its own.
        primary = [r for r in failed if not PEER_LOSS.search(r.error or _last_error_line(r.log_path, r.rank))]
        first = min(primary or failed, key=RankState.failed_at)
        why = first.error or _last_error_line(first.log_path, first.rank)
        if (first.bad_input or first.proc.returncode == 2) and why:
            raise BadInputError(why)
        code = first.proc.returncode
        if first.exited_s is None:  # it reported its failure; give it a moment to exit so its code can be named
            try:
                code = first.proc.wait(timeout=EXIT_GRACE_S)
            except subprocess.TimeoutExpired:
                code = None
        how = "failed" if code is None else exit_words(code)
        raise ProfileError(f"rank {first.rank} {how} {_doing(first)}{': ' + why if why else ''}"
                           f"{kept}; log {first.log_path}")
    if all(r.exited_s is not None for r in ranks):
        return True
    running = [r for r in ranks if r.exited_s is None]
    now = time.monotonic()
    # A rank the kernel shows stopped (SIGSTOP) is named timeout_s after its last heartbeat, whatever the phase.
    # One that is merely silent (a busy host can starve a thread for seconds) gets the progress allowance, and
    # only when it is behind the rest and they still beat (a rank ahead is waiting for the one behind).
    stopped = [r for r in running if now - r.beat_s > timeout_s and is_stopped(r.proc.pid)]
    behind = min(r.progress() for r in running)
    silent = [r for r in running if now - r.beat_s > _allowed_s(r, timeout_s) and r.progress() == behind]
    if stopped or (silent and len(silent) < len(running)):
        r = min(stopped or silent, key=lambda x: x.beat_s)
        how = "was stopped (SIGSTOP or SIGTSTP: process state T)" if stopped else "stopped responding"
        raise ProfileError(f"rank {r.rank} {how} {_doing(r)}: no heartbeat for {now - r.beat_s:.0f} s "
                           f"(--timeout {timeout_s:g}); stopped all ranks{kept}; log {r.log_path}")
    if all(now - r.changed_s > _allowed_s(r, timeout_s) for r in running):
        stuck = [r for r in running if r.progress() == behind]
        who = "rank " + str(stuck[0].rank) if len(stuck) == 1 else "ranks " + ", ".join(str(r.rank) for r in stuck)
        raise ProfileError(f"{who} made no progress for {_allowed_s(stuck[0], timeout_s):g} s {_doing(stuck[0])}; "
                           f"stopped all ranks{kept}")
    return False


def launch(worker_args: list[str], *, nproc: int, timeout_s: float, out: str,
           on_progress: ProgressFn | None = None, nodes: int = 1) -> None:
    """Run `python -m clusterplan.profiler.worker WORKER_ARGS` on nproc local ranks until all finish.

    A rendezvous port taken between picking and binding it (another process won the race) is retried on a fresh
    port, twice at most; nothing was measured yet then."""
    for attempt in range(3):
        try:
            _launch_once(worker_args, nproc=nproc, timeout_s=timeout_s, out=out, on_progress=on_progress, nodes=nodes)
            return
        except ProfileError as exc:
            if attempt == 2 or "address already in use" not in str(exc).lower():
                raise


def _launch_once(worker_args: list[str], *, nproc: int, timeout_s: float, out: str,
                 on_progress: ProgressFn | None, nodes: int) -> None:
    log_dir = Path(f"{out}.logs")  # next to the partial results it explains; removed after a clean run
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # Collectives inside the workers wait longer than the launcher, so the launcher names the culprit first.
    args = [*worker_args, "--timeout", str(timeout_s * 2 + 30)]
    ranks: list[RankState] = []
    try:
        for rank in range(nproc):
            log_path = log_dir / f"rank{rank}.log"
            with open(log_path, "w", encoding="utf-8") as log:
                proc = subprocess.Popen([sys.executable, "-m", "clusterplan.profiler.worker", *args],
                                        env={**worker_env(rank, nproc, port, nodes), **launcher_env()},
                                        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
                                        **worker_popen_kwargs())
            state = RankState(rank=rank, proc=proc, log_path=log_path)
            ranks.append(state)
            threading.Thread(target=_follow, args=(state, proc.stdout), daemon=True).start()
            threading.Thread(target=_await_exit, args=(state,), daemon=True).start()
        while not _check(ranks, timeout_s, out):
            if on_progress is not None:
                lead = ranks[0]
                on_progress(lead.index + (lead.state == "done"), lead.total, lead.label)
            time.sleep(0.05)
    finally:
        _stop(ranks)
    _cleanup(log_dir)


def _cleanup(log_dir: Path) -> None:
    for p in log_dir.glob("*.log"):
        p.unlink(missing_ok=True)
    log_dir.rmdir()


def cuda_devices() -> int:
    """GPUs torch sees; without an NVIDIA driver, 0 without importing torch (seconds saved on CPU hosts)."""
    if not Path("/proc/driver/nvidia").exists() and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
