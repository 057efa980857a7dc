"""The page's command line and where it finds models.

Defines: the arguments of `streamlit run app/app.py -- [--model DIR] [--runs DIR ...]`
(`AppArgs`, `parse_app_args`), the folders searched for models (`default_run_roots`: runs/ below
the working directory), model-folder discovery (`discover_model_folders`), checking a typed or
chosen folder (`resolve_model_folder`), how a folder is named on the page (`display_name`) and a
cache key that changes with a folder's files (`files_fingerprint`).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from gpt_ds.errors import UserError
from gpt_ds.model_io import CONFIG_FILE, WEIGHTS_FILE

# Discovery walks at most this deep below each root: runs/NAME/model is depth 2 and
# runs/quickstart/run/model depth 3; a few more levels allow grouping runs in folders without
# crawling a whole disk.
DISCOVERY_MAX_DEPTH = 4


@dataclass(frozen=True)
class AppArgs:
    """What `streamlit run app/app.py -- [--model DIR] [--runs DIR ...]` was given."""

    model: Path | None = None
    runs: tuple[Path, ...] = ()  # the folders searched for model folders


def default_run_roots() -> list[Path]:
    """runs/ below the working directory: where training, as the README runs it, writes."""
    return [Path.cwd() / "runs"]


def parse_app_args(argv: Sequence[str]) -> AppArgs:
    """Parse the page's own arguments; unknown ones are ignored (they belong to whoever runs us).
    Without --runs, the folders searched are default_run_roots()."""
    parser = argparse.ArgumentParser(prog="app/app.py", add_help=False)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--runs", type=Path, action="append", default=[])
    known, _unknown = parser.parse_known_args(list(argv))
    runs = tuple(path.expanduser() for path in known.runs) or tuple(default_run_roots())
    return AppArgs(model=known.model.expanduser() if known.model else None, runs=runs)


def is_model_folder(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def discover_model_folders(roots: Iterable[Path], max_depth: int = DISCOVERY_MAX_DEPTH) -> list[Path]:
    """Every model folder at most `max_depth` levels below the roots, newest weights first."""
    found: dict[Path, float] = {}
    for root in roots:
        if not root.is_dir():
            continue
        frontier = [(root, 0)]
        while frontier:
            folder, depth = frontier.pop()
            if is_model_folder(folder):
                found[folder.resolve()] = (folder / WEIGHTS_FILE).stat().st_mtime
                continue  # a model folder holds no further models
            if depth >= max_depth:
                continue
            try:
                children = [c for c in folder.iterdir() if c.is_dir() and not c.name.startswith(".")]
            except OSError:
                continue  # an unreadable folder is not a model; keep looking elsewhere
            frontier.extend((child, depth + 1) for child in children)
    return sorted(found, key=lambda path: (-found[path], str(path)))


def display_name(folder: Path) -> str:
    """The folder relative to the working directory when below it, else the full path."""
    try:
        return str(folder.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(folder)


def resolve_model_folder(text: str | os.PathLike) -> Path:
    """A typed or chosen folder as a Path, with a clear error when it cannot be a model folder."""
    raw = str(text).strip()
    if not raw:
        raise UserError("no model folder given: choose one in the sidebar or type the path of a model folder")
    folder = Path(raw).expanduser()
    if not folder.exists():
        raise UserError(
            f"the model folder {folder} does not exist: check the path, or train a model first "
            "(python launch/quickstart.py writes one to runs/quickstart/run/model)"
        )
    if not folder.is_dir():
        raise UserError(f"{folder} is a file, not a folder: give the folder that holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    return folder


def files_fingerprint(*paths: Path) -> tuple:
    """(path, size, mtime) of each file below the paths: a cache key that changes when they do."""
    stamp = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            try:
                stat = file.stat()
            except OSError:
                continue
            stamp.append((str(file), stat.st_size, stat.st_mtime_ns))
    return tuple(stamp)
