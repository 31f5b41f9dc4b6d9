"""Numbers with a meaning are named constants (the brief: "Enums/named constants, not magic numbers"): read from the
source with ast, so a bare denominator floor or a fraction of two literals cannot come back inside a function.

Flagged outside a module-level assignment: a float literal below 1e-100 (a division guard such as 1e-300: step.py
TINY_S, moe/metrics.py TINY_TOKENS) and a quotient of two number literals (a share such as 2.0 / 3.0: step.py
BACKWARD_SHARE_2X)."""

from __future__ import annotations

import ast
from pathlib import Path

import clusterplan

ROOT = Path(clusterplan.__file__).parent
TINY = 1e-100


def _module_level(tree: ast.Module) -> set[int]:
    """ids of every node inside a module-level (annotated) assignment: where a constant gets its name."""
    return {id(sub) for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign)) for sub in ast.walk(node)}


def _number(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)


def unnamed_numbers(source: str) -> list[str]:
    tree = ast.parse(source)
    named = _module_level(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in named:
            continue
        if _number(node) and isinstance(node.value, float) and 0 < node.value < TINY:
            found.append(f"{node.lineno}: {node.value!r}")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and _number(node.left) and \
                _number(node.right):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_scan_finds_what_it_looks_for():
    assert unnamed_numbers("def f(x, share=2.0 / 3.0):\n    return x / max(x, 1e-300)\n") == ["1: 2.0 / 3.0",
                                                                                               "2: 1e-300"]
    assert unnamed_numbers("TINY_S = 1e-300\nSHARE = 2.0 / 3.0\n") == []


def package_sources(root: Path = ROOT) -> list[Path]:
    """The package's own modules: every .py file whose folders, up to the package root, are all packages (have an
    __init__.py), tests excluded. The package root is the repository root, so a virtual environment or build folder
    inside it (.venv with torch's tests, whose newer syntax this Python cannot parse) is not the package."""
    found, folders = [], [root]
    while folders:  # descend only into packages, so the .venv's thousands of files are never listed
        folder = folders.pop()
        for path in folder.iterdir():
            if path.is_dir() and path.name != "tests" and (path / "__init__.py").is_file():
                folders.append(path)
            elif path.suffix == ".py" and path.is_file():
                found.append(path)
    return sorted(found)


def test_the_scan_reads_the_package_and_only_it(tmp_path):
    """A .venv in the repository root (CI's `make test-all` creates one there) holds torch's own tests, which this
    Python cannot parse: only package folders are read."""
    for f in ("__init__.py", "models/__init__.py", "models/step.py", "tests/test_x.py",
              ".venv/lib/site-packages/torch/__init__.py", ".venv/lib/site-packages/torch/x.py", "scratch/y.py"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("")
    assert {str(p.relative_to(tmp_path)) for p in package_sources(tmp_path)} == {"__init__.py", "models/__init__.py",
                                                                                 "models/step.py"}
    rel = {str(p.relative_to(ROOT)) for p in package_sources()}
    assert {"models/training/step.py", "models/moe/metrics.py", "cli/plot.py"} <= rel


def test_no_bare_denominator_floor_or_literal_fraction_in_the_package():
    found = {str(path.relative_to(ROOT)): hits for path in package_sources()
             if (hits := unnamed_numbers(path.read_text(encoding="utf-8")))}
    assert found == {}
