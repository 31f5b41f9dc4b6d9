"""Process helpers shared by the profile and validate launchers and their workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exit_now(code: int) -> None:
    """Leave without interpreter finalization once the process group is destroyed and the results are written:
    gloo's worker threads can still hold work objects whose teardown during finalization aborts the process
    ("terminate called without an active exception", SIGABRT; pytorch/pytorch#179291), failing a run that
    finished."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ---- launcher and worker lifetimes -------------------------------------------------------------------------------

LAUNCHER_PID_ENV = "CLUSTERPLAN_LAUNCHER_PID"
"""Set by a launcher in each worker's environment: the worker exits when its parent is no longer this process."""
HEARTBEAT_FILE_ENV = "CLUSTERPLAN_HEARTBEAT_FILE"
"""Set by the validate launcher: the worker's pulse touches this file and writes its phase there."""
HEARTBEAT_S = 0.5
"""Seconds between a worker's liveness beats (a thread, also while the main thread imports torch or waits in the
rendezvous); the launcher names a rank silent for its --timeout."""
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_popen_kwargs() -> dict[str, Any]:
    """Popen arguments for a worker rank: its own session (a terminal's Ctrl-C reaches only the launcher, which
    stops every rank; a worker's own children share its process group, so stop_group ends them all)."""
    return {"start_new_session": True}


def launcher_env() -> dict[str, str]:
    return {LAUNCHER_PID_ENV: str(os.getpid())}


def die_with_launcher() -> None:
    """In a worker, first thing: get SIGKILL when the launcher (the parent) exits, however it exits (Linux
    PR_SET_PDEATHSIG through ctypes), and leave now if it already has. Elsewhere the launcher's stop does it."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    launcher = os.environ.get(LAUNCHER_PID_ENV, "")
    if launcher.isdigit() and os.getppid() != int(launcher):  # the launcher died before prctl took effect
        os._exit(1)


def stop_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a worker and everything in its process group (it leads one: worker_popen_kwargs)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            proc.kill()
    else:  # the leader is gone; its children (if any) may remain in the group
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of a process (R, S, D, T stopped, t traced, Z zombie), None if unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    return fields[0] if fields else None


def is_stopped(pid: int) -> bool:
    """True for a process stopped by SIGSTOP/SIGTSTP (or a debugger), which makes no progress and sends no beat."""
    return process_state(pid) in ("T", "t")


def exit_words(code: int) -> str:
    """How a process ended, in words: the signal by name (SIGKILL: the OOM killer or kill -9), else the code."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Pulse:
    """A daemon thread that calls `beat()` every HEARTBEAT_S until the process ends."""

    def __init__(self, beat: Callable[[], None], interval_s: float = HEARTBEAT_S) -> None:
        self._beat = beat
        self._interval_s = interval_s
        self._thread = threading.Thread(target=self._run, name="clusterplan-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self._beat()
            except (OSError, ValueError):  # a closed pipe or file: the launcher is gone or done
                return
            time.sleep(self._interval_s)


class FileHeartbeat:
    """The validate worker's side: a phase name in HEARTBEAT_FILE_ENV's file, its mtime refreshed by a Pulse."""

    def __init__(self) -> None:
        self.path = os.environ.get(HEARTBEAT_FILE_ENV) or None
        self.index = 0
        self.phase("start-up")
        if self.path:
            Pulse(self._touch)

    def phase(self, name: str) -> None:
        """Enter the next phase (progress for the launcher)."""
        self.index += 1
        if self.path:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(f"{self.index} {name}\n")
            os.replace(tmp, self.path)

    def _touch(self) -> None:
        os.utime(self.path)


def read_file_heartbeat(path: Path) -> tuple[float, int, str] | None:
    """(last beat, wall clock; phase index; phase name) of a FileHeartbeat, None before its first beat."""
    try:
        beat_wall = path.stat().st_mtime
        index, _, phase = path.read_text(encoding="utf-8").strip().partition(" ")
        return beat_wall, int(index), phase
    except (OSError, ValueError):
        return None
