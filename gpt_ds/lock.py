"""One writer per folder: an exclusive advisory lock held for the life of a run.

`FolderLock(folder, what)` takes `fcntl.flock` on FOLDER/.gpt-ds.lock and writes the holder's pid and
host into it. The kernel drops the lock when the process ends in any way (kill -9 included), so a
crash never leaves a stale lock (only the pid it wrote, which the next holder overwrites); the file
stays, emptied on release (removing it would let a waiting process lock a file that no longer has a
name); a second run into the same folder is refused with the holder's pid
and host. Used by training (RUN_DIR, rank 0) and data_prep (its output folder).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from gpt_ds import json_object
from gpt_ds.errors import UserError

LOCK_NAME = ".gpt-ds.lock"


class FolderLock:
    """An exclusive lock on `folder` (created if missing) until `release` or the process ends."""

    def __init__(self, folder: str | Path, what: str) -> None:
        self.folder = Path(folder)
        self.what = what
        self._fh = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def acquire(self) -> "FolderLock":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+", encoding="utf-8")
        except (FileExistsError, NotADirectoryError):
            raise UserError(f"cannot create {self.folder}: a part of that path is a file; choose another folder") from None
        except PermissionError:
            raise UserError(f"cannot write in {self.folder}: permission denied; choose a folder you can write") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = _holder(fh.read())
            fh.close()
            raise UserError(f"{self.folder} is in use by another {self.what} ({holder}); wait for it to end, "
                            "or choose another folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.truncate(0)  # while still held: an idle folder's lock file is empty, the same after every run
            self._fh.flush()
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(text: str) -> str:
    info = json_object.parse_or_none(text) or {}
    if not {"pid", "host", "since"} <= info.keys():
        return "a process that has not written its pid yet"
    return f"pid {info['pid']} on {info['host']}, since {info['since']}"
