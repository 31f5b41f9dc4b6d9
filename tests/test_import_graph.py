"""The import graph flows one way (issue #12): cli -> solver / validate / profiler / frameworks / reference ->
models -> hardware_db, and inside models: architecture and hardware below training, serving and moe.

Read from the source with ast (every `import`, also inside functions), so a lazy import cannot hide a back edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lower number = lower layer; a module may import its own layer's part or lower ones, never higher.
LAYER = {
    "errors": 0, "fileio": 0, "progress": 0, "hardware_db": 1,
    "models.architecture": 2, "models.hardware": 2,
    "models.training": 3, "models.serving": 3, "models.moe": 3,
    "frameworks": 4, "runtime": 4, "solver": 5, "profiler": 6, "validate": 6, "reference": 6,
    "cli": 7,
}
# Same-layer parts that must not know each other.
SEPARATE = [{"profiler", "validate"}, {"models.training", "models.serving", "models.moe"},
            {"models.architecture", "models.hardware"}]


def part_of(dotted: str) -> str | None:
    """The LAYER key a `clusterplan.` module belongs to (None: the package root itself)."""
    for key in sorted(LAYER, key=len, reverse=True):
        if dotted == key or dotted.startswith(key + "."):
            return key
    return None


def edges() -> list[tuple[str, str, str]]:
    found = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in {"tests", "bench", ".venv", "build"}:
            continue
        src = part_of(".".join(rel.with_suffix("").parts))
        if src is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("clusterplan."):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("clusterplan.")]
            for name in names:
                dst = part_of(name.removeprefix("clusterplan."))
                if dst is not None and dst != src:
                    found.append((str(rel), src, dst))
    return found


def test_no_module_imports_a_higher_layer():
    back = [f"{f}: {s} -> {d}" for f, s, d in edges() if LAYER[d] > LAYER[s]]
    assert back == []


def test_parts_on_one_layer_stay_apart():
    crossing = [f"{f}: {s} -> {d}" for f, s, d in edges() if {s, d} in SEPARATE or any({s, d} <= g for g in SEPARATE)]
    assert crossing == []


def test_graph_is_not_empty():
    # The walk must see the real edges, or the two tests above pass on nothing.
    pairs = {(s, d) for _, s, d in edges()}
    assert ("cli", "solver") in pairs and ("models.training", "models.hardware") in pairs
