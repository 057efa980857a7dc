"""Atomic file writes: a file is written under a hidden temporary name beside its destination and
renamed into place when complete, so a reader (or a rerun after a crash) sees the old content or the
new, never a part. Shards, manifests, checkpoint markers and settings all go through here."""

from __future__ import annotations

import os
from pathlib import Path


def temp_path(path: str | Path) -> Path:
    """Where a file is written before it is renamed to `path`: hidden, beside it (so the rename stays
    on one file system), unique to this process, and ending in `.tmp` so cleanups can find it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_bytes(path: str | Path, *parts: bytes) -> None:
    """Write `parts` one after the other to `path` atomically; fsync before the rename so that a crash
    cannot leave the new name pointing at data the disk never received."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            for part in parts:
                fh.write(part)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (see write_bytes)."""
    write_bytes(path, text.encode("utf-8"))
