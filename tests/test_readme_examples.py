"""The README's shown outputs are what the CLI prints now: each example's command is run and the text of every line
the README shows must appear in its output, whitespace-insensitive since the README wraps long lines (for a line cut
with '...' the text before the cut, for a '(...)' elision both sides; the plan's timing line 'searched N layouts in
X s' is the machine's, not compared). A model change that moves a shown number fails here until the README is re-run
(the placement and host examples have their own tests in test_placement.py and test_moe_host.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _fenced_block(start: int) -> list[str]:
    """The lines of the first fenced block at or after README offset `start`."""
    fence = README.index("```", start)
    body = README[README.index("\n", fence) + 1:README.index("```", fence + 3)]
    return body.rstrip("\n").split("\n")


def _block_after(prose: str) -> list[str]:
    """The block that follows a sentence of the README."""
    return _fenced_block(README.index(prose))


def _block_starting_with(first_line: str) -> list[str]:
    """The block whose first line begins with `first_line` (a '$ clusterplan ...' line)."""
    return _fenced_block(README.rindex("```", 0, README.index(first_line)))


def _shown_lines_are_printed(shown: list[str], printed: str) -> None:
    """Each shown line's text (whitespace runs as one space; the README wraps long lines) is in the output; text before
    a '...' cut, and both sides of a '(...)' elision, likewise."""
    flat = " ".join(printed.split())
    timed = re.compile(r" in \d+\.\d+ s")  # the search's wall time, the one part of its summary that varies
    for line in shown:
        if line.startswith("searched "):
            assert timed.sub("", " ".join(line.split())) in timed.sub("", flat), \
                f"README line not printed: {line!r}\nthe run prints:\n{printed}"
            continue
        if not line.strip() or line.startswith("$ "):
            continue
        if "(...)" in line:
            parts = line.split("(...)", 1)
        elif "..." in line:
            parts = [line[:line.index("...")]]
        else:
            parts = [line]
        for part in parts:
            text = " ".join(part.split())
            assert text in flat, f"README line not printed: {line!r}\nthe run prints:\n{printed}"


def _argv(command_line: str) -> list[str]:
    argv = shlex.split(command_line.replace("\\\n", " "))
    assert argv[0] == "clusterplan"
    return argv[1:]


def test_first_screen_plan_demo(run_cli):
    command = "plan --model llama3.1-70b --cluster dgx-h100:8 --gbs 512 --seq 8192 --top 3 --tokens 1e12"
    assert f"Real output of `clusterplan {command}`" in README
    code, out, err = run_cli(*command.split())
    assert code == 0
    _shown_lines_are_printed(_block_after(f"Real output of `clusterplan {command}`"), err + out)


@pytest.mark.parametrize("marker", [
    "$ clusterplan serve-plan --model llama3.1-8b --rate 20 --input-len lognormal:6.5:0.8 --output-len 256 --ttft-ms 500 "
    "--tpot-ms 50\n",
    "$ clusterplan plan --model llama3.1-405b --cluster dgx-h100:11 --gbs 1024 --seq 8192 --headroom-gib 4\n",
])
def test_shown_command_output(run_cli, marker):
    block = _block_starting_with(marker)
    code, out, err = run_cli(*_argv(block[0][2:]))
    assert code in (0, 1)  # 1: the infeasible example answers with its nearest options
    _shown_lines_are_printed(block[1:], err + out)


def test_time_to_train_example(run_cli):
    block = _block_starting_with("$ clusterplan plan --model llama3.1-405b --cluster dgx-h100:2048")
    plan_line, table = block[0], block[1:3]
    code, out, err = run_cli(*_argv(plan_line[2:]))
    assert code == 0
    _shown_lines_are_printed(table, out)
    layout = ("tp=8,pp=16,vpp=4,first_stage_layers=7,last_stage_layers=7,zero=2,dp_replicate=8,recompute=none,"
              "mbs=1,gbs=2048,"
              "seq=8192,precision=bf16,sp=1")
    code, out, err = run_cli("estimate", "--model", "llama3.1-405b", "--cluster", "dgx-h100:2048", "--layout", layout,
                             "--tokens", "15.6e12")
    assert code == 0
    _shown_lines_are_printed(block[4:], out)


def test_check_bridge_example(run_cli):
    # The README runs the fixture itself (its path is relative to the repository root).
    block = _block_starting_with("$ clusterplan check tests/fixtures/bridge/")
    root = Path(__file__).resolve().parent.parent
    argv = _argv(block[0][2:].replace("tests/fixtures/", str(root / "tests" / "fixtures") + "/"))
    code, out, err = run_cli(*argv)
    assert code == 0
    _shown_lines_are_printed(block[1:], err + out)


def test_check_example(run_cli):
    # The README's train.toml and bad.toml are tests/fixtures/check/good_torchtitan.toml and bad_torchtitan.toml.
    fixtures = Path(__file__).resolve().parent / "fixtures" / "check"
    block = _block_starting_with("$ clusterplan check train.toml")
    bad_at = next(i for i, ln in enumerate(block) if ln.startswith("$ clusterplan check bad.toml"))
    for lines, name, fixture, expect in ((block[:bad_at], "train.toml", "good_torchtitan.toml", 0),
                                         (block[bad_at:], "bad.toml", "bad_torchtitan.toml", 1)):
        argv = _argv(lines[0][2:].replace(name, str(fixtures / fixture)))
        code, out, err = run_cli(*argv)
        assert code == expect
        _shown_lines_are_printed([ln.replace(name, fixture) for ln in lines[1:]], err + out)
