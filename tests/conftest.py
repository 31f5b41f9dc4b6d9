from __future__ import annotations

import json
from pathlib import Path

import pytest

REFERENCE = Path(__file__).parent / "reference"
HF_FIXTURES = Path(__file__).parent / "fixtures" / "hf"


def hf_config(name: str) -> dict:
    """tests/fixtures/hf/NAME/config.json as a dict, less its `_source` note."""
    raw = json.loads((HF_FIXTURES / name / "config.json").read_text())
    raw.pop("_source", None)
    return raw


def transformers_count(raw: dict) -> int:
    """Parameters of transformers' own causal-LM model for this config, built on the meta device (skipped without
    torch or transformers)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model(**raw)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


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
