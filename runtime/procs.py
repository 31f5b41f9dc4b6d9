"""Process helpers shared by the profile and validate launchers and their workers."""

from __future__ import annotations

import os
import socket
import sys


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
