"""Every research note a comment cites is in the repository (research/, copied from the project's curated notes)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITE = re.compile(r"research/([a-z-]+\.md)")


def test_cited_research_notes_exist():
    cited: dict[str, list[str]] = {}
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in {".venv", "build", ".git", "research"} or path.suffix not in {".py", ".yaml", ".md", ".toml"}:
            continue
        for name in CITE.findall(path.read_text(encoding="utf-8", errors="replace")):
            cited.setdefault(name, []).append(str(rel))
    assert len(cited) >= 4  # the walk sees the citations (hardware, serving, training, moe notes)
    missing = {name: files for name, files in cited.items() if not (ROOT / "research" / name).is_file()}
    assert missing == {}
