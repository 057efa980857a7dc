"""The user-facing error type and the one place that turns it into a clean exit.

Every entry point raises `UserError` for bad input (a missing path, an inconsistent config, ...)
with a message that names the problem and the fix; `run_cli` prints it as one line on stderr and
exits non-zero, so users never see a traceback for a mistake they can correct.
"""

from __future__ import annotations

import sys
from typing import Callable, NoReturn


class UserError(Exception):
    """Bad input or environment that the user can fix; the message says how."""

    exit_code = 2


def run_cli(main: Callable[[], int | None], prog: str) -> NoReturn:
    """Run `main`, mapping UserError to `prog: error: ...` on stderr and a non-zero exit."""
    try:
        code = main()
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
