"""The user-facing error type and the one place that turns it into a clean exit (`run_cli`, `exit_process`).

Every entry point raises `UserError` for bad input (a missing path, an inconsistent config, ...)
with a message that names the problem and the fix; `run_cli` prints it as one line on stderr and
exits non-zero, so users never see a traceback for a mistake they can correct.

Under several ranks every rank runs the same checks on the same files and reaches the same verdict;
such an error (`every_rank`, set by the training plan, and `PeerFailed`, which a rank raises when
rank 0's check failed) is printed by rank 0 alone, so that the console shows it once.
`first_line` quotes another library's error in such a line. `ArgumentParser` raises argparse's own errors (an unknown flag, a bad value) as such an error, where
argparse would print its usage and exit on every rank.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NoReturn


QUIET_RANK_DELAY_S = 2.0


class UserError(Exception):
    """Bad input or environment that the user can fix; the message says how."""

    exit_code = 2
    every_rank = False  # True: every rank raised this same error; only rank 0 prints it


class PeerFailed(UserError):
    """Rank 0's check failed and rank 0 says why; this rank stops without a message of its own."""

    every_rank = True


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are a one-line UserError marked every_rank (each rank parses the same command
    line); --help still prints and exits 0."""

    def error(self, message: str) -> NoReturn:
        err = UserError(f"{message} (see {self.prog} --help)")
        err.every_rank = True
        raise err


def first_line(err: BaseException | str, limit: int = 200, empty: str | None = None) -> str:
    """The first non-blank line of `err`'s message, cut to `limit` characters, for a one-line error that
    quotes a library's. An empty message gives `empty` (default: the exception's type name); never raises."""
    text = str(err)
    line = next((line.strip() for line in text.splitlines() if line.strip()), None)
    if line is None:
        line = empty if empty is not None else type(err).__name__ if isinstance(err, BaseException) else ""
    return line[:limit]


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def run_cli(main: Callable[[], int | None], prog: str) -> NoReturn:
    """Run `main`, mapping UserError to `prog: error: ...` on stderr and a non-zero exit. A process that
    started torch.distributed ends through `exit_process` (no interpreter teardown)."""
    try:
        code = main()
    except UserError as err:
        if not err.every_rank or _is_rank0():
            print(f"{prog}: error: {err}", file=sys.stderr)
        else:  # a launcher kills the other ranks when one exits: leave rank 0 the time to print the message
            import time

            time.sleep(QUIET_RANK_DELAY_S)
        exit_process(err.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        exit_process(130)
    except OSError as err:
        import errno

        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # a write that no caller turned into its own message: still one line, not a traceback
        print(f"{prog}: error: no space left on the device writing {err.filename or 'a file'}; free some space "
              "there or choose a folder on another disk, then rerun the same command", file=sys.stderr)
        exit_process(UserError.exit_code)
    exit_process(code or 0)


def exit_process(code: int) -> NoReturn:
    """End a command-line process with `code`. Where this process started torch.distributed, without the
    interpreter's teardown (os._exit, after flushing stdio and logging): there, now and then, a rank that had
    finished cleanly still aborted while its peer was exporting ("terminate called without an active
    exception", SIGABRT; seen in the ZeRO-3 tests, also after gpt_ds.distributed.shutdown closed the group), and the launcher
    then killed the peer mid-export. By the time a command returns, every file of gpt-ds's is written and
    closed, so the teardown has nothing left to do for us."""
    dist = sys.modules.get("torch.distributed")  # not imported: never started (and no torch import to ask)
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        sys.exit(code)
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it anyway
            pass
    os._exit(code)
