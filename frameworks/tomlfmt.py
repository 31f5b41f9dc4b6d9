"""A small TOML writer for the value kinds a launch config needs (the standard library only reads TOML)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

Value = str | int | float | bool | Sequence[str] | Sequence[Sequence[str]]


def toml_value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # TOML basic strings share JSON's escapes for ASCII text
    items = list(value)
    if items and not isinstance(items[0], str):
        rows = "".join(f"  {toml_value(row)},\n" for row in items)
        return f"[\n{rows}]"
    return "[" + ", ".join(toml_value(v) for v in items) + "]"


def toml_text(sections: Mapping[str, Mapping[str, Value]], comments: Sequence[str] = ()) -> str:
    """`comments` first (one `# ` line each), then one `[section]` per mapping, keys in the order given."""
    lines = [f"# {c}" if c else "#" for c in comments]
    for name, table in sections.items():
        lines.append("")
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in table.items())
    return "\n".join(lines).lstrip("\n") + "\n"
