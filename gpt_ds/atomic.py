"""Atomic file writes: a file is written under a hidden temporary name beside its destination and
renamed into place when complete, so a reader (or a rerun after a crash) sees the old content or the
new, never a part. Shards, manifests, checkpoint markers and settings all go through here.

A full disk is an error the user can fix: `disk_full` turns ENOSPC (or a quota's EDQUOT) into one
line naming the path, the space the write needed and the space left; `full_disk_as_error` wraps a
block of writes with it. The temporary file goes, so the old content stays complete."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from gpt_ds.errors import UserError

FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(UserError):
    """A write ran out of space (ENOSPC, EDQUOT)."""


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system holding `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def disk_full(path: str | Path, needed: int | None, what: str = "writing") -> DiskFull:
    """The one-line error for a full disk at `path`: what needed how much, and what is free."""
    return DiskFull(f"no space left on the device {what} {path}: it needs about {_size(needed)} and "
                    f"{_size(free_bytes(path))} is free; free some space there or choose a folder on another disk "
                    "(what was complete before is untouched; rerun the same command afterwards)")


def is_full_disk(err: BaseException) -> bool:
    """ENOSPC/EDQUOT, also where a library reports it in its own exception type (safetensors' Rust
    I/O error says "No space left on device (os error 28)")."""
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno in FULL_DISK_ERRNOS
    return any(text in str(err) for text in ("No space left on device", "Disk quota exceeded"))


@contextlib.contextmanager
def full_disk_as_error(path: str | Path, needed: int | None, what: str = "writing") -> Iterator[None]:
    """Within this block, a write that runs out of space raises `disk_full(path, needed)`."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        if is_full_disk(err):
            raise disk_full(path, needed, what) from err
        raise


def file_sha256(path: str | Path, chunk: int = 1 << 24) -> str:
    """The sha256 of the file at `path`, read in chunks (shards, checkpoints and weights are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
        with full_disk_as_error(path, sum(len(part) for part in parts)), open(tmp, "wb") as fh:
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
