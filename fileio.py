"""Reading user files with clear errors, and writing output files atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from clusterplan.errors import BadInputError


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` so that readers see either the old file or the whole new one."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    write_atomic_bytes(path, text.encode("utf-8"))


def write_atomic_bytes(path: str | os.PathLike[str], payload: bytes) -> None:
    """Temp file in the same folder, fsync, rename: an interrupted write never leaves a half file."""
    if not isinstance(payload, bytes):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _cannot_write(target, exc) from exc
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; output files get the usual permissions
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _cannot_write(target, exc) from exc
        raise


def _cannot_write(target: Path, exc: OSError) -> BadInputError:
    """A folder that cannot be made, a read-only or full disk, a directory in the way: the user's to fix."""
    reason = f"{exc.filename} is a file, not a folder" if isinstance(exc, FileExistsError) else exc.strerror or exc
    return BadInputError(f"{target}: cannot write ({reason}); give a path in a writable folder")


def dumps_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, fixed separators, trailing newline."""
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"


def path_exists(ref: str | os.PathLike[str]) -> bool:
    """Path(ref).exists(), but False (not OSError) for a name the OS rejects, e.g. one too long to be a path."""
    try:
        return Path(ref).exists()
    except OSError:
        return False


def load_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a YAML or JSON file whose top level is a mapping; one-line errors otherwise."""
    import yaml

    p = Path(path)
    if path_exists(p) and p.is_dir():
        raise BadInputError(f"{p}: is a directory; give the path of a YAML or JSON file")
    if not path_exists(p) or not p.is_file():
        raise BadInputError(f"{p}: no such file; give the path of an existing YAML or JSON file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{p}: cannot read ({exc}); give a readable UTF-8 text file") from exc
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"{p}: malformed {'JSON' if p.suffix == '.json' else 'YAML'} ({first}); fix the syntax") from exc
    if data is None:
        raise BadInputError(f"{p}: the file is empty; expected a mapping at the top level")
    if not isinstance(data, dict):
        raise BadInputError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data
