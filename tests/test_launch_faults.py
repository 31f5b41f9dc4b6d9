"""Faults in the profile and validate launchers, with real torch worker processes on CPU (gloo).

A rank stopped during start-up (SIGSTOP), a rank killed by SIGKILL, and a killed launcher: the error is one line
naming the right rank, the signal and the phase, found within --timeout of the rank's last heartbeat (the line
reports that silence, so no wall clock is asserted), and no worker outlives its launcher by more than 5 s.
Workers are told apart from every other process by a tag in their environment.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("torch")

from clusterplan.errors import ClusterplanError  # noqa: E402
from clusterplan.models.architecture.spec import ModelSpec  # noqa: E402
from clusterplan.models.training.layout import Layout  # noqa: E402
from clusterplan.validate.launch import spawn  # noqa: E402

pytestmark = pytest.mark.torch
TAG_ENV = "CLUSTERPLAN_TEST_TAG"
GRACE_S = 5.0
"""How long workers may outlive their launcher (issue #16)."""
TIMEOUT_S = 10.0
"""--timeout of the runs: the silence that names a stopped rank (kept well above a loaded host's scheduling gaps)."""
TINY = ModelSpec(name="tiny", n_layers=2, hidden=32, n_heads=2, ffn_hidden=64, vocab=64)
RUN = [{"model": TINY.to_dict(), "layout": Layout.parse("dp=2,mbs=1,gbs=2,seq=16").to_dict(), "steps": 1}]


def tagged_pids(tag: str) -> list[int]:
    """Processes (other than this one) whose environment carries the tag."""
    found = []
    needle = f"{TAG_ENV}={tag}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
                if state != "Z":  # a zombie has exited; only its parent's wait is missing
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def assert_no_worker_left(tag: str) -> None:
    deadline = time.monotonic() + GRACE_S
    while tagged_pids(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tagged_pids(tag) == [], "workers outlived their launcher"


@pytest.fixture
def tag(monkeypatch):
    value = uuid.uuid4().hex
    monkeypatch.setenv(TAG_ENV, value)
    yield value
    for pid in tagged_pids(value):  # never leave a stray process behind a failed test
        os.kill(pid, signal.SIGKILL)


def _silence_s(message: str) -> float:
    found = re.search(r"no heartbeat for (\d+) s", message)
    assert found, message
    return float(found.group(1))


def test_profile_rank_stopped_in_start_up_is_named(tag, tmp_path):
    out = tmp_path / "c.json"
    env = {**os.environ, "CLUSTERPLAN_PROFILE_FAULT": "1:start-up:stop"}
    proc = subprocess.run([sys.executable, "-m", "clusterplan", "profile", "--nproc", "2", "--quick", "--device", "cpu",
                           "--timeout", str(TIMEOUT_S), "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "rank 1 was stopped (SIGSTOP" in proc.stderr and "during " in proc.stderr, proc.stderr
    assert TIMEOUT_S <= _silence_s(proc.stderr) <= TIMEOUT_S + GRACE_S
    assert not out.exists() and "partial results" not in proc.stderr  # none were written: none named
    assert_no_worker_left(tag)


def test_validate_rank_stopped_in_start_up_is_named(tag, monkeypatch):
    monkeypatch.setenv("CLUSTERPLAN_VALIDATE_FAULT", "stop:1")
    with pytest.raises(ClusterplanError) as info:
        spawn(RUN, nproc=2, timeout_s=TIMEOUT_S)
    message = str(info.value)
    assert message.startswith("rank 1 was stopped (SIGSTOP") and "during start-up" in message, message
    assert "\n" not in message and TIMEOUT_S <= _silence_s(message) <= TIMEOUT_S + GRACE_S
    assert_no_worker_left(tag)


def test_validate_killed_rank_is_named_with_its_signal(tag, monkeypatch):
    monkeypatch.setenv("CLUSTERPLAN_VALIDATE_FAULT", "kill:1")
    with pytest.raises(ClusterplanError, match=r"^rank 1 failed \(killed by SIGKILL\) during run 1/1") as info:
        spawn(RUN, nproc=2, timeout_s=60)
    assert "\n" not in str(info.value)
    assert_no_worker_left(tag)


def test_killed_launcher_takes_its_workers_along(tag, tmp_path):
    # A launcher whose rank 0 hangs (so the run lasts), killed with SIGKILL once both workers beat.
    script = ("from clusterplan.validate.launch import spawn; import json, sys; "
              "spawn(json.loads(sys.argv[1]), nproc=2, timeout_s=600)")
    import json

    env = {**os.environ, "CLUSTERPLAN_VALIDATE_FAULT": "hang:0"}
    launcher = subprocess.Popen([sys.executable, "-c", script, json.dumps(RUN)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len([p for p in tagged_pids(tag) if p != launcher.pid]) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len([p for p in tagged_pids(tag) if p != launcher.pid]) == 2, "the workers did not start"
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        assert_no_worker_left(tag)
    finally:
        if launcher.poll() is None:
            launcher.kill()
