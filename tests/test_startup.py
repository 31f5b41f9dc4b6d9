"""The planner's commands never import torch (only profile and validate do), so they start fast."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from clusterplan.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("torch" in sys.modules, file=sys.stderr)
"""


@pytest.mark.parametrize("args", [
    ["plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--gbs", "8", "--seq", "2048"],
    ["estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--layout", "tp=8,gbs=8"],
    ["serve-plan", "--help"], ["experts", "--help"], ["check", "--help"], ["export", "--help"], ["hw", "list"],
])
def test_planner_commands_do_not_import_torch(args):
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == "False", proc.stderr[-2000:]
