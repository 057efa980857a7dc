"""The docs stay true: every `--flag` a doc shows for a program is in that program's parser, and every
repository path a doc names exists.

The docs are README.md and docs/*.md. A program's flags are read from its own `--help` (run once per
program, in parallel), so the test follows the parsers without importing their modules' internals.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# How a doc names a program -> the command that prints its --help.
PROGRAMS: dict[str, list[str]] = {
    "launch/train.py": ["launch/train.py"],
    "launch/quickstart.py": ["launch/quickstart.py"],
    "gpt-ds-quickstart": ["launch/quickstart.py"],
    "launch/sample.py": ["launch/sample.py"],
    "gpt-ds-sample": ["launch/sample.py"],
    "launch/submit.py": ["launch/submit.py"],
    "gpt-ds-submit": ["launch/submit.py"],
    "launch/export.py": ["launch/export.py"],
    "python -m gpt_ds.export": ["launch/export.py"],
    "gpt-ds-export": ["launch/export.py"],
    "python -m data_prep": ["-m", "data_prep"],
    "gpt-ds-prepare": ["-m", "data_prep"],
    "python -m data_prep.make_mc": ["-m", "data_prep.make_mc"],
    "gpt-ds-make-mc": ["-m", "data_prep.make_mc"],
    "python -m data_prep.make_chat": ["-m", "data_prep.make_chat"],
    "gpt-ds-make-chat": ["-m", "data_prep.make_chat"],
    "python -m reliability": ["-m", "reliability"],
    **{f"bench/{p.name}": [f"bench/{p.name}"] for p in sorted((ROOT / "bench").glob("*.py"))},
}
# launch/hf.py and python -m gpt_ds.hf take a subcommand first; its flags are the subcommand's.
HF_NAMES = ("launch/hf.py", "python -m gpt_ds.hf", "gpt-ds-hf")
HF_SUBCOMMANDS = ("export", "import")

FLAG = re.compile(r"(?<![\w-])--[A-Za-z][A-Za-z0-9_-]*(?![\w-])")
PATH = re.compile(r"(?<![\w./-])((?:ds_configs|gpt_ds|launch|docs|bench|tests|app|data_prep|reliability)/[\w./{},*-]*)")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
SPAN = re.compile(r"`([^`\n]+)`")


def _help_command(key: str) -> list[str]:
    if key.startswith("hf "):
        return [sys.executable, str(ROOT / "launch/hf.py"), key.split()[1], "--help"]
    argv = PROGRAMS[key]
    return [sys.executable, *(argv if argv[0] == "-m" else [str(ROOT / argv[0])]), "--help"]


def _run_help(key: str) -> tuple[str, frozenset[str] | str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(_help_command(key), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        return key, f"{' '.join(_help_command(key)[1:])} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
    return key, frozenset(FLAG.findall(done.stdout))


@functools.cache
def _all_flags() -> dict[str, frozenset[str] | str]:
    """Every program's flags (or why its --help failed), the --help runs in parallel."""
    keys = sorted({_canonical(k) for k in PROGRAMS} | {f"hf {s}" for s in HF_SUBCOMMANDS})
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(_run_help, keys))


def _canonical(name: str) -> str:
    """The key of the --help run for a program as a doc names it."""
    argv = PROGRAMS[name]
    return argv[0] if argv[0] != "-m" else f"python -m {argv[1]}"


def _commands(text: str) -> list[str]:
    """Command lines: each line of a fenced block (continuations joined, comments cut), and inline code."""
    lines = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            lines.append(re.split(r"\s#\s", " " + line, maxsplit=1)[0])
    return lines + SPAN.findall(FENCE.sub("", text))


def _program_flags(command: str) -> list[tuple[str, list[str]]]:
    """(program key, flags shown for it) in one command line; after a bare `--`, launch/submit.py's flags end and
    launch/train.py's begin."""
    found = []
    names = sorted([*PROGRAMS, *HF_NAMES], key=len, reverse=True)
    hits = sorted(((m.start(), m.end(), name) for name in names
                   for m in re.finditer(r"(?<![\w/.-])" + re.escape(name) + r"(?![\w/-])", command)),
                  key=lambda hit: (hit[0], -hit[1]))  # at one place, the longest name (data_prep.make_mc, not data_prep)
    taken: list[tuple[int, int, str]] = []
    for hit in hits:
        if not any(s <= hit[0] < e for s, e, _ in taken):
            taken.append(hit)
    for i, (start, end, name) in enumerate(taken):
        rest = command[end: taken[i + 1][0] if i + 1 < len(taken) else len(command)]
        if name in HF_NAMES:
            sub = rest.split()[0] if rest.split() else ""
            if sub not in HF_SUBCOMMANDS:
                continue
            key = f"hf {sub}"
        else:
            key = _canonical(name)
        if key == "launch/submit.py" and re.search(r"(?<!\S)--(?!\S)", rest):
            own, train = re.split(r"(?<!\S)--(?!\S)", rest, maxsplit=1)
            found.append(("launch/train.py", FLAG.findall(train)))
            rest = own
        found.append((key, FLAG.findall(rest)))
    return found


def _shown_flags() -> list[tuple[str, str, str]]:
    """(doc, program key, flag) for every flag a doc shows in a command for a program."""
    shown = []
    for doc in DOCS:
        for command in _commands(doc.read_text()):
            for key, flags in _program_flags(command):
                shown += [(doc.relative_to(ROOT).as_posix(), key, flag) for flag in flags]
    return shown


def test_docs_show_commands():
    """The check has something to check: the docs show flags for the main programs."""
    programs = {key for _, key, _ in _shown_flags()}
    assert {"launch/train.py", "python -m data_prep", "launch/sample.py", "launch/submit.py"} <= programs, programs


def test_every_flag_a_doc_shows_exists():
    flags = _all_flags()
    wrong = []
    for doc, key, flag in _shown_flags():
        known = flags.get(key)
        if isinstance(known, str):
            wrong.append(f"{doc}: {key}: {known}")
        elif flag not in known:
            wrong.append(f"{doc}: {key} has no {flag}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def _named_paths(doc: Path) -> list[str]:
    text = doc.read_text()
    paths = [p.rstrip(".,:;)") for p in PATH.findall(text)]
    paths = [p for p in paths if not re.search(r"[{}*<>]|\.\.\.", p) and p.rstrip("/")]
    links = [(doc.parent / link).resolve().relative_to(ROOT).as_posix() for link in LINK.findall(text)
             if "://" not in link and not link.startswith("mailto:")]
    return paths + links


def test_every_path_a_doc_names_exists():
    missing = sorted({f"{doc.relative_to(ROOT).as_posix()}: {path}" for doc in DOCS for path in _named_paths(doc)
                      if not (ROOT / path).exists()})
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("command, key, flag", [
    ("python launch/train.py --data d --out o --no-such-flag", "launch/train.py", "--no-such-flag"),
    ("python launch/submit.py --nodes 2 -- --deepspeed_config x --bogus", "launch/train.py", "--bogus"),
    ("python -m gpt_ds.hf export M --out H --dtypo f", "hf export", "--dtypo"),
    ("python -m data_prep.make_mc D --out F --val-fraction 0.1", "python -m data_prep.make_mc", "--val-fraction"),
])
def test_a_wrong_flag_is_caught(command, key, flag):
    """The check can fail: a flag no parser has is attributed to its program and found missing."""
    attributed = {k: f for k, f in _program_flags(command) if flag in f}
    assert key in attributed
    assert flag not in _all_flags()[key]
