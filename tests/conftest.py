from __future__ import annotations

from pathlib import Path

import pytest

REFERENCE = Path(__file__).parent / "reference"


@pytest.fixture
def run_cli(capsys):
    """Run `clusterplan ARGS` in-process through the real entry point; return (exit code, stdout, stderr)."""
    from clusterplan.cli.main import main

    def _run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return _run
