"""Reading a JSON object that gpt-ds or a tool wrote: a manifest, a client state, a model config.

`read(path, fix=...)` returns the object or raises one line naming the file and the fix: the file is
not UTF-8 JSON ("PATH is not valid JSON (...); FIX"), or its JSON is not an object ("PATH is not
KIND (a JSON list, not an object); FIX"). `parse` does the same for text held elsewhere (a file's
header). `read_or_none` and `parse_or_none` are for what may be absent or half written, where the
caller has a default: a cache, a lock file's holder, a folder being told apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpt_ds.errors import UserError


def parse(text: str | bytes, source: str | Path, *, fix: str, kind: str = "a JSON object",
          invalid: str = "is not valid JSON", error: type[UserError] = UserError) -> dict[str, Any]:
    """The JSON object in `text`, from `source`; else `error`: '{source} {invalid} (why); {fix}', or
    '{source} is not {kind} (a JSON list, not an object); {fix}'."""
    try:
        value = json.loads(text)
    except ValueError as err:  # JSONDecodeError, and UnicodeDecodeError of bytes
        raise error(f"{source} {invalid} ({err}); {fix}") from err
    if not isinstance(value, dict):
        raise error(f"{source} is not {kind} (a JSON {type(value).__name__}, not an object); {fix}")
    return value


def read(path: str | Path, *, fix: str, kind: str = "a JSON object", invalid: str = "is not valid JSON",
         error: type[UserError] = UserError, source: str | None = None) -> dict[str, Any]:
    """The JSON object in the file `path` (UTF-8), as `parse` says, naming it `source` (default: the path).
    A missing file is the caller's to name: FileNotFoundError."""
    source = str(path) if source is None else source
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{source} {invalid} ({err}); {fix}") from err
    return parse(text, source, fix=fix, kind=kind, invalid=invalid, error=error)


def parse_or_none(text: str | bytes) -> dict[str, Any] | None:
    """The JSON object in `text`, or None when it is not JSON or not an object."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read_or_none(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in the file `path`, or None when it is missing, unreadable, not JSON or not an object."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None
    return parse_or_none(text)
