"""gpt_ds.lock: one writer per folder, refused with the holder's pid and host, never a stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from gpt_ds.errors import UserError
from gpt_ds.lock import LOCK_NAME, FolderLock

HOLD = "import sys, time; from gpt_ds.lock import FolderLock; lock = FolderLock(sys.argv[1], 'test run').acquire(); " \
       "print('held', flush=True); time.sleep(60)"


def hold_in_another_process(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_and_kill9_leaves_no_stale_lock(tmp_path):
    folder = tmp_path / "run"
    holder = hold_in_another_process(folder)
    try:
        with pytest.raises(UserError) as err:
            FolderLock(folder, "training run").acquire()
        message = str(err.value)
        assert f"pid {holder.pid} on " in message and "another training run" in message and "\n" not in message
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with FolderLock(folder, "training run") as lock:  # the kernel dropped the dead holder's lock
        assert str(os.getpid()) in lock.path.read_text()
    assert (folder / LOCK_NAME).read_text() == ""  # released: emptied, the same after every run


def test_the_same_process_can_take_it_again_after_release_and_a_file_in_the_path_is_one_line(tmp_path):
    lock = FolderLock(tmp_path / "a", "x").acquire()
    lock.release()
    FolderLock(tmp_path / "a", "x").acquire().release()
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="a part of that path is a file"):
        FolderLock(tmp_path / "file" / "sub", "x").acquire()
