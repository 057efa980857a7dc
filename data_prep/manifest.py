"""The output folder's bookkeeping: `manifest.json` (written last, it says the folder is complete),
the in-progress marker (written first, it says a preparation was started with these settings), and
the decision, before any work, whether a folder is up to date, to be finished, or to be refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from gpt_ds import atomic, json_object
from gpt_ds.data import CHAT_FORMAT, IN_PROGRESS_NAME, MANIFEST_NAME, TEXT_FORMAT, check_tokens, open_split, shard_problem
from gpt_ds.errors import UserError

# What a preparation writes into its folder, and so what --force may remove there (nothing else).
OWN_PATTERNS = ("train_*.bin", "val_*.bin", "train_*.mask", "val_*.mask", ".*.tmp", ".spool*")
# Settings recorded under an older name by earlier versions: a folder they prepared stays up to date.
FORMER_SETTING_NAMES = {"text_field": "jsonl_field"}


def identity(encoding: str, output_settings: dict, inputs_fingerprint: str) -> dict:
    """What a preparation's bytes depend on: two runs with equal identities write equal folders."""
    return {"encoding": encoding, "settings": output_settings, "inputs": {"fingerprint": inputs_fingerprint}}


def write_json_atomic(path: Path, data: dict) -> None:
    atomic.write_text(path, json.dumps(data, indent=2) + "\n")


def prepare_output(out: Path, wanted: dict, force: bool, strict: bool, say: Callable[[str], None]) -> dict | None:
    """Check the output folder against the preparation `wanted` (an `identity`).

    Returns the existing manifest when the folder already holds exactly this preparation (and not
    `force`). Otherwise makes the folder ready to write (created, previous shards removed, the
    in-progress marker written) and returns None. Raises UserError for a folder that holds something
    else, unless `force`.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder path (it is created if missing)")
    if out.is_dir() and not force:
        manifest, marker = _read_json(out / MANIFEST_NAME), _read_json(out / IN_PROGRESS_NAME)
        for name, found in ((MANIFEST_NAME, manifest), (IN_PROGRESS_NAME, marker)):
            if found == {}:
                raise UserError(f"{out / name} is unreadable (not a JSON object: damaged or written by something "
                                "else); pass --force to prepare the folder again, or choose another --out")
        if manifest is not None:
            changes = _differences(manifest, wanted)
            if changes:
                raise UserError(
                    f"--out {out} already holds a different preparation ({changes}); "
                    "pass --force to replace it, or choose another --out"
                )
            problem = shard_problem(out, manifest)
            if problem is None:
                _refuse_lax_for_strict(out, manifest, strict)
                return manifest
            say(f"{out}: {problem}; preparing it again")
        elif marker is not None:
            changes = _differences(marker, wanted)
            if changes:
                raise UserError(
                    f"--out {out} holds an unfinished preparation with other inputs or settings ({changes}); "
                    "pass --force to replace it, or choose another --out"
                )
            say(f"{out}: finishing an interrupted preparation")
        elif _own_files(out):
            raise UserError(
                f"--out {out} holds shard files but no {MANIFEST_NAME}; pass --force to replace them, or choose another --out"
            )
    _clear(out)
    write_json_atomic(out / IN_PROGRESS_NAME, wanted)
    return None


def finish_output(out: Path, manifest: dict) -> None:
    """Write the manifest (the folder is now complete), then drop the in-progress marker."""
    write_json_atomic(out / MANIFEST_NAME, manifest)
    (out / IN_PROGRESS_NAME).unlink(missing_ok=True)


def abandon_output(out: Path) -> None:
    """After a failed run: remove the marker when no shard was published (the folder is as before)."""
    if not _own_files(out):
        (out / IN_PROGRESS_NAME).unlink(missing_ok=True)


def _clear(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot create --out {out}: a part of that path is a file; choose another folder") from None
    except PermissionError:
        raise UserError(f"cannot create --out {out}: permission denied; choose a folder you can write") from None
    # The manifest goes first, so that no moment exists where it describes shards that are gone.
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for path in _own_files(out):
        path.unlink(missing_ok=True)


def _own_files(out: Path) -> list[Path]:
    return [path for pattern in OWN_PATTERNS for path in out.glob(pattern)]


def _read_json(path: Path) -> dict | None:
    """The JSON object at `path`; {} when it is there but unreadable; None when absent."""
    if not path.exists():
        return None
    return json_object.read_or_none(path) or {}


def _differences(found: dict, wanted: dict) -> str:
    """'' when `found` (a manifest or marker) was made with `wanted`'s identity, else what differs."""
    changes = []
    if found.get("encoding") != wanted["encoding"]:
        changes.append(f"encoding {found.get('encoding')} -> {wanted['encoding']}")
    old_settings = found.get("settings") or {}
    # A text preparation's settings name no format (they are as they always were): compare it explicitly.
    old_format, new_format = (settings.get("format", TEXT_FORMAT) for settings in (old_settings, wanted["settings"]))
    if old_format != new_format:
        changes.append(f"format {old_format} -> {new_format}")
    for key, value in wanted["settings"].items():
        if key == "format":
            continue
        old = old_settings.get(key, old_settings.get(FORMER_SETTING_NAMES.get(key, key)))
        if old != value:
            changes.append(f"{key.replace('_', '-')} {old} -> {value}")
    if (found.get("inputs") or {}).get("fingerprint") != wanted["inputs"]["fingerprint"]:
        changes.append("the input files (paths, sizes or modification times)")
    return ", ".join(changes)


def verify(out: Path) -> str:
    """Check a prepared folder (manifest, every shard's header, size, sha256 and tokens) without changing it:
    a line saying what was verified, or UserError naming the first problem."""
    manifest = _read_json(out / MANIFEST_NAME) if out.is_dir() else None
    if not manifest:
        raise UserError(f"{out} has no readable {MANIFEST_NAME}: it is not a complete preparation; prepare it "
                        "with python -m data_prep --input ... --out " + str(out))
    problem = shard_problem(out, manifest)
    if problem is not None:
        raise UserError(f"{problem}; prepare it again with --force")
    vocab_size = manifest.get("vocab_size")
    if isinstance(vocab_size, int) and not isinstance(vocab_size, bool):  # every token an id of the encoding
        for split, entry in manifest["splits"].items():
            if entry.get("shards"):
                for tokens in open_split(out, split):
                    check_tokens(tokens, vocab_size, full=True)
    shards = [s for entry in manifest["splits"].values() for s in entry.get("shards", [])]
    masks = " and their loss masks" if manifest.get("format") == CHAT_FORMAT else ""
    return (f"{out}: {len(shards)} shards{masks}, {sum(s['tokens'] for s in shards):,} tokens, sizes and sha256 as recorded, "
            "every token within the vocabulary")


def _refuse_lax_for_strict(out: Path, manifest: dict, strict: bool) -> None:
    binary = (manifest.get("skipped") or {}).get("binary_files", 0)
    replaced = (manifest.get("replaced") or {}).get("sequences", 0)
    truncated = manifest.get("total_truncated", 0)  # conversations cut to --max-tokens (chat)
    if strict and (binary or replaced or truncated):
        cut = f", {truncated} conversations truncated" if truncated else ""
        raise UserError(
            f"--out {out} was prepared without --strict and has {binary} binary files skipped and {replaced} "
            f"invalid UTF-8 sequences replaced{cut}; drop --strict to use it, or add --force to prepare it again strictly"
        )
