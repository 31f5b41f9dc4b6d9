"""The input layer every file reader goes through, and atomic output files.

Reading: names checked (length, control characters) and shown escaped, sizes checked with stat before a byte is read,
JSON and YAML parsed with bounded nesting, bounded integers (checked on the digits, before int() converts them),
string keys only, no duplicate keys and no YAML aliases. Every refusal is one BadInputError line.
Writing: `check_output_path` before any work, `write_atomic` at the end; `dumps_json` refuses non-finite numbers
by name (`NonFiniteResultError`).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clusterplan.errors import BadInputError

MAX_NAME_BYTES = 255
"""Longest file-name component Linux, macOS and Windows file systems accept (NAME_MAX)."""
MAX_PATH_BYTES = 4096
"""Longest path Linux accepts (PATH_MAX)."""
MAX_TEXT_BYTES = 16 << 20
"""Largest YAML/JSON settings file (model, cluster, plan, calibration, capacity table): the largest real one, a
calibration with its raw measurements, is about 100 KiB; DeepSeek-V3's config.json is 1.7 KiB."""
MAX_YAML_BYTES = 2 << 20
"""Largest YAML file: a YAML node costs about 0.5 KiB while composed, so 2 MiB stays under 1 GiB of memory."""
MAX_DATA_BYTES = 128 << 20
"""Largest data file (routing statistics, request traces, histograms): BurstGPT's 1.4 M-request trace is 60 MiB,
DeepSeek-V3's full routing statistics with transitions (58 x 256 x 256 counts) about 30 MiB as JSON."""
MAX_DEPTH = 32
"""Deepest nesting of lists/mappings accepted (our deepest file, stats transitions, nests 4 deep)."""
MAX_INT_DIGITS = 24
"""Most digits of an integer in an input file: the largest count we read (tokens, 1e15 FLOPs) has 16; Python
refuses to convert more than 4300 and big ones cost quadratic time, so the digits are counted before int()."""


# ---- names --------------------------------------------------------------------------------------------------

def show(path: str | os.PathLike[str]) -> str:
    """A file name as it goes into a one-line message: escaped (repr) when it holds control characters or
    non-printable text, shortened when it is longer than any real name."""
    text = os.fsdecode(path) if not isinstance(path, str) else path
    if len(text) > 2 * MAX_NAME_BYTES:
        text = f"{text[:60]}...{text[-20:]} ({len(text.encode('utf-8', 'surrogateescape'))} bytes)"
    return text if text.isprintable() else ascii(text)


def check_name(path: str | os.PathLike[str], what: str = "file") -> Path:
    """Refuse a name the OS would reject (too long, NUL byte) with one line; return it as a Path."""
    text = os.fsdecode(path) if not isinstance(path, str) else path
    if "\x00" in text:
        raise BadInputError(f"{show(text)}: a {what} name cannot contain a NUL byte; give a real file name")
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_PATH_BYTES:
        raise BadInputError(f"{show(text)}: {what} path is {len(raw)} bytes, over the {MAX_PATH_BYTES} an OS accepts; "
                            "give a shorter path")
    for part in Path(text).parts:
        n = len(part.encode("utf-8", "surrogateescape"))
        if n > MAX_NAME_BYTES:
            raise BadInputError(f"{show(text)}: a {what} name part is {n} bytes, over the {MAX_NAME_BYTES} a file "
                                "system accepts; give a shorter name")
    return Path(text)


def path_exists(ref: str | os.PathLike[str]) -> bool:
    """Path(ref).exists(), but False (not OSError) for a name the OS rejects, e.g. one too long to be a path."""
    try:
        return Path(ref).exists()
    except (OSError, ValueError):
        return False


def is_file(ref: str | os.PathLike[str]) -> bool:
    """Path(ref).is_file() without OSError/ValueError for names the OS rejects."""
    try:
        return Path(ref).is_file()
    except (OSError, ValueError):
        return False


def is_dir(ref: str | os.PathLike[str]) -> bool:
    try:
        return Path(ref).is_dir()
    except (OSError, ValueError):
        return False


def _existing_file(path: str | os.PathLike[str], kind: str, max_bytes: int) -> Path:
    p = check_name(path)
    if is_dir(p):
        raise BadInputError(f"{show(p)}: is a directory; give the path of a {kind} file")
    if not is_file(p):
        raise BadInputError(f"{show(p)}: no such file; give the path of an existing {kind} file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise BadInputError(f"{show(p)}: cannot read ({exc.strerror}); give a readable {kind} file") from None
    if size > max_bytes:
        raise BadInputError(f"{show(p)}: {size:,} bytes, over the {max_bytes >> 20} MiB a {kind} file may have; "
                            "is this the right file?")
    return p


def read_bytes(path: str | os.PathLike[str], kind: str = "data", max_bytes: int = MAX_DATA_BYTES) -> bytes:
    p = _existing_file(path, kind, max_bytes)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise BadInputError(f"{show(p)}: cannot read ({exc.strerror}); give a readable {kind} file") from None
    if len(data) > max_bytes:  # grew after stat (or a special file): refuse the same way
        raise BadInputError(f"{show(p)}: over the {max_bytes >> 20} MiB a {kind} file may have")
    return data


def read_text(path: str | os.PathLike[str], kind: str = "text", max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of an existing, readable file of at most max_bytes; one-line errors otherwise."""
    data = read_bytes(path, kind, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{show(path)}: not UTF-8 text (byte {exc.start}); give a UTF-8 {kind} file") from None


# ---- numbers ------------------------------------------------------------------------------------------------

def bounded_int(text: str, where: str) -> int:
    """int(text) with its digits counted first (no 5,000-digit conversions)."""
    digits = len(text.strip().lstrip("+-").replace("_", ""))
    if digits > MAX_INT_DIGITS:
        raise BadInputError(f"{where}: an integer with {digits} digits; numbers here have at most {MAX_INT_DIGITS}")
    return int(text)


def finite_float(value: Any, where: str, *, low: float = -math.inf, high: float = math.inf) -> float:
    """A real number (not bool) in [low, high] that is finite; one line naming `where` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadInputError(f"{where} must be a number, got {value!r}")
    if isinstance(value, int) and abs(value) > 10**MAX_INT_DIGITS:
        raise BadInputError(f"{where} is far too large ({len(str(abs(value)))} digits)")
    out = float(value)
    if not math.isfinite(out) or not low <= out <= high:
        raise BadInputError(f"{where} must be a finite number in [{low:g}, {high:g}], got {value!r}")
    return out


# ---- JSON and YAML ------------------------------------------------------------------------------------------

_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _check_json_depth(text: str, where: str) -> None:
    depth = 0
    for m in _BRACKETS.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise BadInputError(f"{where}: nested more than {MAX_DEPTH} levels deep; is this the right file?")
        elif c in "]}":
            depth -= 1


def _no_duplicates(where: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise BadInputError(f"{where}: key {key!r} appears twice in one object; keep one")
            out[key] = value
        return out
    return hook


def loads_json(text: str, where: str) -> Any:
    """json.loads with bounded depth and integers, refusing duplicate keys; one-line errors."""
    _check_json_depth(text, where)
    try:
        return json.loads(text, parse_int=lambda s: bounded_int(s, where), object_pairs_hook=_no_duplicates(where))
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{where}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                            "fix the syntax") from None
    except RecursionError:  # defence in depth: _check_json_depth stops this first
        raise BadInputError(f"{where}: nested too deeply; is this the right file?") from None


def _yaml_loader(where: str) -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader without aliases, with bounded nesting and integers, string keys only, no duplicate keys."""

        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise BadInputError(f"{where}: line {mark.line + 1}: YAML aliases (*name) are not accepted; "
                                    "write the value out")
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise BadInputError(f"{where}: nested more than {MAX_DEPTH} levels deep; is this the right file?")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def construct_yaml_int(self, node: Any) -> int:
            digits = len(re.sub(r"[^0-9a-fA-F]", "", str(node.value)))
            if digits > MAX_INT_DIGITS:
                raise BadInputError(f"{where}: line {node.start_mark.line + 1}: an integer with {digits} digits; "
                                    f"numbers here have at most {MAX_INT_DIGITS}")
            return super().construct_yaml_int(node)

        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str):
                    raise BadInputError(f"{where}: line {line}: key {key!r} ({type(key).__name__}) is not a name; "
                                        "keys must be strings (quote it)")
                if key in seen:
                    raise BadInputError(f"{where}: line {line}: key {key!r} appears twice in one mapping; keep one")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)
    # YAML 1.2 floats: PyYAML (YAML 1.1) reads 1e-3 and 1.0e12 as strings (its float needs a dot and a signed
    # exponent); a cluster file's `failures_per_gpu_hour: 1e-3` is a number.
    Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))
    return Loader


def loads_yaml(text: str, where: str) -> Any:
    """yaml.safe_load without aliases, deep nesting, huge integers, non-string or duplicate keys."""
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader(where))  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise BadInputError(f"{where}: malformed YAML ({first}{at}); fix the syntax") from None
    except RecursionError:
        raise BadInputError(f"{where}: nested too deeply; is this the right file?") from None


def _shipped_yaml_loader(where: str) -> type:
    import yaml

    # libyaml's parser when PyYAML was built with it (the same safe constructors, several times faster on the model
    # presets and hardware tables); the pure-Python SafeLoader otherwise.
    class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
        """SafeLoader for the data this package ships: anchors and merge keys (<<: *name) allowed, a key written
        twice in one mapping refused (yaml.safe_load keeps the later one silently)."""

        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise ValueError(f"{where}: line {key_node.start_mark.line + 1}: key {key!r} appears twice in "
                                     "one mapping; keep one")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return Loader


def load_shipped_yaml(path: str | os.PathLike[str]) -> Any:
    """One of the package's own YAML data files (hardware_db/data, model presets): like yaml.safe_load, but a
    duplicate key is an error. A shipped file's mistake is a bug of ours, so it raises ValueError, not BadInputError."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_shipped_yaml_loader(show(path)))  # noqa: S506 - a SafeLoader subclass


def load_document(path: str | os.PathLike[str], *, max_bytes: int = MAX_TEXT_BYTES) -> Any:
    """A YAML or JSON file (by extension: .json is JSON, anything else YAML) through the checks above."""
    is_json = Path(path).suffix == ".json"
    text = read_text(path, "JSON" if is_json else "YAML or JSON", max_bytes if is_json else min(max_bytes, MAX_YAML_BYTES))
    where = show(path)
    return loads_json(text, where) if is_json else loads_yaml(text, where)


def load_mapping(path: str | os.PathLike[str], *, max_bytes: int = MAX_TEXT_BYTES) -> dict[str, Any]:
    """Load a YAML or JSON file whose top level is a mapping; one-line errors otherwise."""
    data = load_document(path, max_bytes=max_bytes)
    where = show(path)
    if data is None:
        raise BadInputError(f"{where}: the file is empty; expected a mapping at the top level")
    if not isinstance(data, dict):
        raise BadInputError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    return data


# ---- writing ------------------------------------------------------------------------------------------------

def check_output_path(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Refuse an output path that cannot be written, before any work: a bad name, a directory, a parent that
    is a file, missing or not writable. A missing folder is refused rather than made: a typo in a folder name
    would otherwise create a new tree (write_atomic still makes folders for the library's own outputs)."""
    p = check_name(path, "output file")
    where = f"{option} {show(p)}"
    if is_dir(p):
        raise BadInputError(f"{where}: is a directory; give a file name")
    if path_exists(p) and not _stream_target(p) and not os.path.isfile(p):
        raise BadInputError(f"{where}: is not a regular file (a socket or block device); give a file name")
    parent = p.parent
    while not path_exists(parent):  # the nearest existing folder must be a folder we can write in
        if parent == parent.parent:
            break
        parent = parent.parent
    if path_exists(parent) and not is_dir(parent):
        raise BadInputError(f"{where}: {show(parent)} is a file, not a folder; give a path in a writable folder")
    if parent != p.parent:
        raise BadInputError(f"{where}: folder {show(p.parent)} does not exist; create it first "
                            f"(mkdir -p {show(p.parent)}) or give a path in an existing folder")
    if is_dir(parent) and not os.access(parent, os.W_OK | os.X_OK):
        raise BadInputError(f"{where}: folder {show(parent)} is not writable; give a path in a writable folder")
    if path_exists(p) and not os.access(p, os.W_OK) and not os.access(p.parent, os.W_OK):
        raise BadInputError(f"{where}: not writable; give a path in a writable folder")
    return p


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` so that readers see either the old file or the whole new one."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    write_atomic_bytes(path, text.encode("utf-8"))


def _stream_target(target: Path) -> bool:
    """Whether `target` (followed through links) is a character device or a FIFO (/dev/stdout, a named pipe): written
    to directly, as a shell redirect would, since a rename would replace the node with a file."""
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def write_atomic_bytes(path: str | os.PathLike[str], payload: bytes) -> None:
    """Temp file in the same folder, fsync, rename: an interrupted write never leaves a half file. Through a symbolic
    link, the file it points to is replaced (the link stays); a character device or FIFO is written to directly."""
    if not isinstance(payload, bytes):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    target = check_name(path, "output file")
    if _stream_target(target):
        try:
            with open(target, "wb") as fh:
                fh.write(payload)
        except OSError as exc:
            raise _cannot_write(target, exc) from exc
        return
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _cannot_write(target, exc) from exc
    wrapped = False
    try:  # from mkstemp on, any interruption (a signal included) removes the temp file below
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; output files get the usual permissions
        with os.fdopen(fd, "wb") as fh:
            wrapped = True
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        if not wrapped:  # interrupted before the file object took the descriptor over
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _cannot_write(target, exc) from exc
        raise


def _cannot_write(target: Path, exc: OSError) -> BadInputError:
    """A folder that cannot be made, a read-only or full disk, a directory in the way: the user's to fix."""
    reason = (f"{show(exc.filename)} is a file, not a folder" if isinstance(exc, FileExistsError)
              else exc.strerror or exc)
    return BadInputError(f"{show(target)}: cannot write ({reason}); give a path in a writable folder")


# ---- results ------------------------------------------------------------------------------------------------

class NonFiniteResultError(BadInputError):
    """A computed time, memory or cost that is infinite or NaN: some input drove it out of range."""

    reason = "non_finite"

    def __init__(self, field: str, value: float) -> None:
        self.field = field
        self.value = value
        super().__init__(f"the result {field} is {value} (not a finite number): an input value is out of range")


def _non_finite(obj: Any, path: str) -> Iterator[tuple[str, float]]:
    if isinstance(obj, float):
        if not math.isfinite(obj):
            yield path or "value", obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from _non_finite(obj[k], f"{path}.{k}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _non_finite(v, f"{path}[{i}]")
    elif type(obj).__module__ == "numpy" and hasattr(obj, "dtype") and getattr(obj, "ndim", 1) == 0:
        yield from _non_finite(float(obj), path)


def require_finite(obj: Any) -> Any:
    """Raise NonFiniteResultError naming the first infinite or NaN number in a result; return obj otherwise."""
    for field, value in _non_finite(obj, ""):
        raise NonFiniteResultError(field, value)
    return obj


def dumps_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, fixed separators, trailing newline; non-finite numbers refused by name."""
    try:
        return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except ValueError:
        require_finite(obj)
        raise
