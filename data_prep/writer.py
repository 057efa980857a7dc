"""Writing token streams to disk: `ShardWriter` cuts one split's stream into llm.c shards, each
written under a temporary name and renamed only when complete; `Spool` holds whole documents on
disk while their split is not yet settled (see data_prep.split).

With masks (--format chat) each document's tokens come with its loss mask: the writer writes NAME.mask
(gpt_ds.data's mask format) in lockstep with each shard NAME.bin, under the same temporary-name-then-rename
rule, and never splits a document across two shards (it starts a new shard instead, so shards may be shorter
than `shard_tokens`); the spool keeps the masks beside the tokens."""

from __future__ import annotations

import hashlib
import os
from array import array
from pathlib import Path
from typing import Iterator

import numpy as np

from gpt_ds.atomic import file_sha256, temp_path
from gpt_ds.data import MASK_DTYPE, MASK_MAGIC, TOKEN_DTYPE, mask_name, shard_header, shard_name

COPY_TOKENS = 1 << 22  # tokens per read when copying documents back out of the spool
WRITE_TOKENS = 1 << 20  # small writes (short documents) are gathered up to this many tokens


class _Output:
    """One file being written under its temporary name, hashed as it is written."""

    def __init__(self, path: Path, header: bytes):
        self.path = path
        self.temp = temp_path(path)
        self.file = open(self.temp, "wb")
        # The header of a full shard, so the checksum can be computed while writing; a last,
        # shorter shard gets its true header (and a checksum read back from disk) when finished.
        self.file.write(header)
        self.digest = hashlib.sha256(header)

    def write(self, data: np.ndarray) -> None:
        self.file.write(data)
        self.digest.update(data)

    def finish(self, true_header: bytes | None) -> str:
        """fsync and rename; the sha256 of the file (`true_header`: replaces the header written first)."""
        if true_header is not None:
            self.file.seek(0)
            self.file.write(true_header)
            self.file.flush()
            sha256 = file_sha256(self.temp)
        else:
            sha256 = self.digest.hexdigest()
        self.file.flush()
        os.fsync(self.file.fileno())  # the bytes are on disk before the name says the shard is complete
        self.file.close()
        os.replace(self.temp, self.path)
        return sha256

    def abort(self) -> None:
        self.file.close()
        self.temp.unlink(missing_ok=True)


class ShardWriter:
    """Appends tokens to `folder/<split>_NNNNNN.bin` shards of `shard_tokens` tokens (the last may be
    shorter). `shards` lists the finished ones: name, tokens, sha256 (with `masks`: and mask_sha256).
    With `masks`, `trained_tokens` counts the tokens whose mask is 1."""

    def __init__(self, folder: Path, split: str, shard_tokens: int, masks: bool = False):
        self.folder = folder
        self.split = split
        self.shard_tokens = shard_tokens
        self.masks = masks
        self.shards: list[dict] = []
        self.trained_tokens = 0
        self._shard: _Output | None = None
        self._mask: _Output | None = None
        self._count = 0
        self._gathered: list[np.ndarray] = []
        self._gathered_masks: list[np.ndarray] = []
        self._gathered_tokens = 0
        self._document: list[np.ndarray] = []  # with masks: the current document, placed once it is whole
        self._document_masks: list[np.ndarray] = []
        self._document_tokens = 0

    def start_document(self) -> None:
        """A new document begins (with masks, the previous one is now whole and is placed)."""
        if self.masks:
            self._place_document()

    def write(self, tokens: np.ndarray, mask: np.ndarray | None = None) -> None:
        if self.masks:
            self._document.append(tokens)
            self._document_masks.append(mask)
            self._document_tokens += len(tokens)
            return
        self._gather(tokens, None)

    def _gather(self, tokens: np.ndarray, mask: np.ndarray | None) -> None:
        # One file write and hash update per ~2 MB rather than per document: corpora of short
        # documents (jsonl) would otherwise spend much of the main process's time here.
        self._gathered.append(tokens)
        if mask is not None:
            self._gathered_masks.append(mask)
        self._gathered_tokens += len(tokens)
        if self._gathered_tokens >= WRITE_TOKENS:
            self._write_gathered()

    def _place_document(self) -> None:
        """Put the whole current document in this shard, or, when it does not fit, in a new one."""
        if not self._document_tokens:
            return
        if self._document_tokens > self.shard_tokens:  # PrepareSettings keeps --max-tokens within --shard-tokens
            raise ValueError(f"a document of {self._document_tokens} tokens does not fit a shard of {self.shard_tokens}")
        if self._count + self._gathered_tokens + self._document_tokens > self.shard_tokens:
            self._write_gathered()
            if self._shard is not None:
                self._finish()
        tokens, mask = _joined(self._document), _joined(self._document_masks)
        self._document, self._document_masks, self._document_tokens = [], [], 0
        self._gather(tokens, mask)

    def _write_gathered(self) -> None:
        if not self._gathered:
            return
        tokens = _joined(self._gathered)
        mask = _joined(self._gathered_masks) if self.masks else None
        self._gathered, self._gathered_masks, self._gathered_tokens = [], [], 0
        if mask is not None:
            self.trained_tokens += int(np.count_nonzero(mask))
        while len(tokens):
            if self._shard is None:
                self._open()
            size = self.shard_tokens - self._count
            self._shard.write(tokens[:size])
            if mask is not None:
                self._mask.write(mask[:size])
                mask = mask[size:]
            self._count += len(tokens[:size])
            tokens = tokens[size:]
            if self._count == self.shard_tokens:
                self._finish()

    def close(self) -> list[dict]:
        """Finish the last, partial shard; return the list of shards."""
        self._place_document()
        self._write_gathered()
        if self._shard is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (an interrupted run must leave nothing that looks complete)."""
        self._gathered, self._gathered_masks, self._gathered_tokens = [], [], 0
        self._document, self._document_masks, self._document_tokens = [], [], 0
        for output in (self._shard, self._mask):
            if output is not None:
                output.abort()
        self._shard = self._mask = None

    def _open(self) -> None:
        name = shard_name(self.split, len(self.shards))
        self._shard = _Output(self.folder / name, shard_header(self.shard_tokens))
        if self.masks:
            self._mask = _Output(self.folder / mask_name(name), shard_header(self.shard_tokens, MASK_MAGIC))
        self._count = 0

    def _finish(self) -> None:
        full = self._count == self.shard_tokens
        entry = {"name": self._shard.path.name, "tokens": self._count}
        if self._mask is not None:  # renamed first: a shard under its final name always has its mask
            mask_sha256 = self._mask.finish(None if full else shard_header(self._count, MASK_MAGIC))
        entry["sha256"] = self._shard.finish(None if full else shard_header(self._count))
        if self._mask is not None:
            entry["mask_sha256"] = mask_sha256
        self.shards.append(entry)
        self._shard = self._mask = None


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


class Spool:
    """Documents appended to a temporary file, read back later in order, one document at a time.
    With `masks`, each write carries its mask too, kept in a second file (`path` + ".mask")."""

    def __init__(self, path: Path, masks: bool = False):
        self.path = path
        self._file = open(path, "w+b")
        self._mask_path = path.with_name(path.name + ".mask") if masks else None
        self._mask_file = open(self._mask_path, "w+b") if masks else None
        self._starts = array("q")
        self._length = 0

    def __len__(self) -> int:
        return len(self._starts)

    def start_document(self) -> None:
        self._starts.append(self._length)

    def write(self, tokens: np.ndarray, mask: np.ndarray | None = None) -> None:
        self._file.write(tokens)
        if self._mask_file is not None:
            self._mask_file.write(mask)
        self._length += len(tokens)

    def documents(self) -> Iterator[Iterator[tuple[np.ndarray, np.ndarray | None]]]:
        """For each spooled document, in order, an iterator over its (tokens, mask or None) in blocks."""
        self._file.flush()
        if not self._length:
            return
        tokens = np.memmap(self.path, dtype=TOKEN_DTYPE, mode="r", shape=(self._length,))
        masks = None
        if self._mask_file is not None:
            self._mask_file.flush()
            masks = np.memmap(self._mask_path, dtype=MASK_DTYPE, mode="r", shape=(self._length,))
        ends = list(self._starts[1:]) + [self._length]
        for start, end in zip(self._starts, ends):
            yield ((np.array(tokens[i : min(i + COPY_TOKENS, end)]),
                    None if masks is None else np.array(masks[i : min(i + COPY_TOKENS, end)]))
                   for i in range(start, end, COPY_TOKENS))
        del tokens, masks

    def close(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)
        if self._mask_file is not None:
            self._mask_file.close()
            self._mask_path.unlink(missing_ok=True)
