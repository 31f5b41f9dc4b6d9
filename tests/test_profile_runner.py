"""Who the launcher blames, on recorded rank states (no processes started)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from clusterplan.errors import BadInputError
from clusterplan.profiler.runner import ProfileError, RankState, _check, worker_env


class FakeProc:
    def __init__(self, returncode: int | None) -> None:
        self.returncode = returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            raise subprocess.TimeoutExpired("fake", timeout or 0)
        return self.returncode


def _rank(rank: int, tmp_path: Path, *, code: int | None = None, exited_wall: float | None = None,
          error: str = "", failed_wall: float | None = None, log: str = "", state: str = "run", index: int = 5,
          idle_s: float = 0.0) -> RankState:
    log_path = tmp_path / f"rank{rank}.log"
    log_path.write_text(log)
    now = time.monotonic()
    r = RankState(rank=rank, proc=FakeProc(code), log_path=log_path, index=index, total=41, state=state,
                  label="all_reduce scale_up 4 MiB", changed_s=now - idle_s)
    if exited_wall is not None:
        r.exited_wall, r.exited_s = exited_wall, now - 5
    if failed_wall is not None:
        r.failed_wall, r.failed_s, r.error = failed_wall, now - 5, error
    return r


def test_killed_rank_is_blamed_not_its_victim(tmp_path):
    # Rank 1 noticed the lost peer before the launcher noticed rank 0's death: the peer-loss error marks it a victim.
    victim = _rank(1, tmp_path, code=1, exited_wall=101.0, failed_wall=100.5,
                   error="RuntimeError: [pair.cc:553] Connection closed by peer [127.0.0.1]:22659")
    killed = _rank(0, tmp_path, code=-9, exited_wall=100.9)
    with pytest.raises(ProfileError, match=r"^rank 0 was killed by SIGKILL while measuring all_reduce"):
        _check([killed, victim], 10.0, "c.json")


def test_first_own_failure_wins(tmp_path):
    a = _rank(0, tmp_path, code=1, exited_wall=11.0, failed_wall=10.0, error="ValueError: first")
    b = _rank(1, tmp_path, code=1, exited_wall=11.0, failed_wall=10.5, error="ValueError: second")
    with pytest.raises(ProfileError, match="rank 0 exited with code 1 .*ValueError: first"):
        _check([a, b], 10.0, "c.json")


def test_bad_input_in_a_worker_is_bad_input(tmp_path):
    r = _rank(0, tmp_path, code=2, exited_wall=1.0, log="error: rank 0: c.json: was measured with world_size=2\n")
    with pytest.raises(BadInputError, match="^c.json: was measured with world_size=2$"):
        _check([r], 10.0, "c.json")


def test_waits_for_peers_before_blaming(tmp_path):
    # A failure seen just now, with a peer still running: give the peers SETTLE_S to report first.
    fresh = _rank(0, tmp_path, error="ValueError: x", failed_wall=1.0)
    fresh.failed_s = time.monotonic()
    running = _rank(1, tmp_path)
    assert _check([fresh, running], 10.0, "c.json") is False


def test_hang_blames_the_rank_behind(tmp_path):
    waiting = _rank(0, tmp_path, state="run", idle_s=20)   # inside the collective, waiting for its peer
    stuck = _rank(1, tmp_path, state="begin", idle_s=20)   # never reached it
    with pytest.raises(ProfileError, match="^rank 1 made no progress for 10 s"):
        _check([waiting, stuck], 10.0, "c.json")
    assert _check([_rank(0, tmp_path, idle_s=5), _rank(1, tmp_path, idle_s=20)], 10.0, "c.json") is False


def test_start_up_gets_more_time(tmp_path):
    slow = [_rank(r, tmp_path, state="start-up", idle_s=60) for r in (0, 1)]
    assert _check(slow, 10.0, "c.json") is False  # importing torch on a busy host: up to STARTUP_S (120 s)


def test_worker_env_is_torchrun_like():
    env = worker_env(3, 4, 29500, nodes=2)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"], env["GROUP_RANK"]) == \
        ("3", "4", "1", "2", "1")
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"] == "29500"


def test_stopped_rank_in_start_up_is_named_without_a_partial_file(tmp_path):
    # A real process stopped with SIGSTOP (what the kernel shows as state T), silent for 20 s > --timeout 10,
    # while its peer still beats: named at once, in its start-up phase; no file was written, so none is named.
    import signal

    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        sleeper.send_signal(signal.SIGSTOP)
        for _ in range(100):  # the stop is asynchronous
            if _is_stopped(sleeper.pid):
                break
            time.sleep(0.02)
        stopped = _rank(1, tmp_path, state="start-up", idle_s=20)
        stopped.proc, stopped.beat_s, stopped.phase = sleeper, time.monotonic() - 20, "start-up"
        peer = _rank(0, tmp_path, state="start-up", idle_s=20)
        peer.proc = subprocess.Popen(["sleep", "60"])
        peer.phase = "rendezvous"
        with pytest.raises(ProfileError, match=r"^rank 1 was stopped \(SIGSTOP.* during start-up: no heartbeat for 20 s") \
                as info:
            _check([peer, stopped], 10.0, str(tmp_path / "missing.json"))
        assert "partial results" not in str(info.value)
        peer.proc.kill()
    finally:
        sleeper.kill()


def test_a_silent_rank_that_is_not_stopped_gets_the_start_up_allowance(tmp_path):
    # A busy host can starve a rank's heartbeat thread for seconds while torch imports: not a fault before STARTUP_S.
    slow = _rank(1, tmp_path, state="start-up", idle_s=30)
    slow.beat_s = time.monotonic() - 30
    slow.proc = subprocess.Popen(["sleep", "60"])
    try:
        assert _check([_rank(0, tmp_path, state="start-up", idle_s=30), slow], 10.0, "c.json") is False
    finally:
        slow.proc.kill()


def _is_stopped(pid: int) -> bool:
    from clusterplan.runtime.procs import is_stopped

    return is_stopped(pid)
