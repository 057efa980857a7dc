"""A corpus of a chosen size from the Python standard library's sources, present on every machine
with no network: the one the test suite, the benches and the GPU check train on.

`STDLIB_MODULES` are single-file modules of every supported Python, in a fixed order;
`write_python_corpus(folder, total_bytes, files)` writes their text, in that order, into `files`
files of at most total_bytes // files bytes each, cut after a line break (going round again where more
is asked for than there is), so that the same call makes the same bytes on the same interpreter.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

STDLIB_MODULES = (
    "_pydecimal", "_pyio", "argparse", "ast", "calendar", "configparser", "contextlib", "csv",
    "dataclasses", "difflib", "doctest", "enum", "fractions", "functools", "gettext", "heapq",
    "imaplib", "inspect", "ipaddress", "mailbox", "pickle", "pickletools", "pydoc", "random",
    "shutil", "smtplib", "socket", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "traceback", "turtle", "typing", "uuid", "weakref",
)


def stdlib_sources() -> list[Path]:
    """The STDLIB_MODULES files of this interpreter (those it has), in that order; FileNotFoundError where
    fewer than half are there (an interpreter installed without its sources)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found = [stdlib / f"{name}.py" for name in STDLIB_MODULES if (stdlib / f"{name}.py").is_file()]
    if len(found) < len(STDLIB_MODULES) // 2:
        raise FileNotFoundError(f"the Python standard library's sources are not in {stdlib}")
    return found


def stdlib_text() -> bytes:
    """The STDLIB_MODULES' sources, one after the other, each ending in one line break."""
    return b"".join(p.read_bytes().rstrip(b"\n") + b"\n" for p in stdlib_sources())


def write_python_corpus(folder: Path, total_bytes: int, files: int) -> Path:
    """`files` files 000.py, 001.py, ... in `folder` holding ~total_bytes of stdlib text; returns the folder."""
    text = stdlib_text()
    per_file = total_bytes // files
    if per_file <= 1000:
        raise ValueError("ask for more than 1000 bytes a file")
    folder.mkdir(parents=True, exist_ok=True)
    cursor = 0
    for i in range(files):
        while len(text) - cursor < per_file:
            text += text[: len(text)]  # more than the stdlib holds: go round again
        cut = text.rindex(b"\n", cursor, cursor + per_file) + 1
        (folder / f"{i:03d}.py").write_bytes(text[cursor:cut])
        cursor = cut
    return folder
