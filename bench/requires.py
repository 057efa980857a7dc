"""The optional packages a bench needs, checked before it does any work.

`require(program, needs)` takes the bench's name and {import name: pyproject extra}; where any is
missing it prints one line that names them and the `pip install` that brings them, and exits 2.
"""

from __future__ import annotations

import importlib.util
import sys


def missing(modules: list[str]) -> list[str]:
    """The top-level modules of `modules` that this interpreter cannot import."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def require(program: str, needs: dict[str, str]) -> None:
    """Exit 2 with one line when a module of `needs` ({module: extra}) is not installed."""
    gone = missing(list(needs))
    if gone:
        extras = ",".join(sorted({needs[name] for name in gone}))
        are = "is" if len(gone) == 1 else "are"
        print(f"error: {program} needs {' and '.join(gone)}, which {are} not installed: "
              f"pip install -e \".[{extras}]\"", file=sys.stderr)
        raise SystemExit(2)
