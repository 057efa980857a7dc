"""Writing token streams to disk: `ShardWriter` cuts one split's stream into llm.c shards, each
written under a temporary name and renamed only when complete; `Spool` holds whole documents on
disk while their split is not yet settled (see data_prep.split)."""

from __future__ import annotations

import hashlib
import os
from array import array
from pathlib import Path
from typing import Iterator

import numpy as np

from gpt_ds.atomic import file_sha256, temp_path
from gpt_ds.data import TOKEN_DTYPE, shard_header, shard_name

COPY_TOKENS = 1 << 22  # tokens per read when copying documents back out of the spool
WRITE_TOKENS = 1 << 20  # small writes (short documents) are gathered up to this many tokens


class ShardWriter:
    """Appends tokens to `folder/<split>_NNNNNN.bin` shards of `shard_tokens` tokens (the last may be
    shorter). `shards` lists the finished ones: name, tokens, sha256."""

    def __init__(self, folder: Path, split: str, shard_tokens: int):
        self.folder = folder
        self.split = split
        self.shard_tokens = shard_tokens
        self.shards: list[dict] = []
        self._file = None
        self._temp: Path | None = None
        self._count = 0
        self._digest = None
        self._gathered: list[np.ndarray] = []
        self._gathered_tokens = 0

    def write(self, tokens: np.ndarray) -> None:
        # One file write and hash update per ~2 MB rather than per document: corpora of short
        # documents (jsonl) would otherwise spend much of the main process's time here.
        self._gathered.append(tokens)
        self._gathered_tokens += len(tokens)
        if self._gathered_tokens >= WRITE_TOKENS:
            self._write_gathered()

    def _write_gathered(self) -> None:
        if not self._gathered:
            return
        tokens = self._gathered[0] if len(self._gathered) == 1 else np.concatenate(self._gathered)
        self._gathered, self._gathered_tokens = [], 0
        while len(tokens):
            if self._file is None:
                self._open()
            part = tokens[: self.shard_tokens - self._count]
            self._file.write(part)
            self._digest.update(part)
            self._count += len(part)
            tokens = tokens[len(part):]
            if self._count == self.shard_tokens:
                self._finish()

    def close(self) -> list[dict]:
        """Finish the last, partial shard; return the list of shards."""
        self._write_gathered()
        if self._file is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (an interrupted run must leave nothing that looks complete)."""
        self._gathered, self._gathered_tokens = [], 0
        if self._file is not None:
            self._file.close()
            self._temp.unlink(missing_ok=True)
            self._file = None

    def _open(self) -> None:
        self._temp = temp_path(self.folder / shard_name(self.split, len(self.shards)))
        self._file = open(self._temp, "wb")
        # The header of a full shard, so the checksum can be computed while writing; a last,
        # shorter shard gets its true header (and a checksum read back from disk) when finished.
        header = shard_header(self.shard_tokens)
        self._file.write(header)
        self._digest = hashlib.sha256(header)
        self._count = 0

    def _finish(self) -> None:
        f = self._file
        if self._count != self.shard_tokens:
            f.seek(0)
            f.write(shard_header(self._count))
            f.flush()
            sha256 = file_sha256(self._temp)
        else:
            sha256 = self._digest.hexdigest()
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the name says the shard is complete
        f.close()
        name = shard_name(self.split, len(self.shards))
        os.replace(self._temp, self.folder / name)
        self.shards.append({"name": name, "tokens": self._count, "sha256": sha256})
        self._file = None


class Spool:
    """Documents appended to a temporary file, read back later in order, one document at a time."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "w+b")
        self._starts = array("q")
        self._length = 0

    def __len__(self) -> int:
        return len(self._starts)

    def start_document(self) -> None:
        self._starts.append(self._length)

    def write(self, tokens: np.ndarray) -> None:
        self._file.write(tokens)
        self._length += len(tokens)

    def documents(self) -> Iterator[Iterator[np.ndarray]]:
        """For each spooled document, in order, an iterator over its tokens in blocks."""
        self._file.flush()
        if not self._length:
            return
        tokens = np.memmap(self.path, dtype=TOKEN_DTYPE, mode="r", shape=(self._length,))
        ends = list(self._starts[1:]) + [self._length]
        for start, end in zip(self._starts, ends):
            yield (np.array(tokens[i : min(i + COPY_TOKENS, end)]) for i in range(start, end, COPY_TOKENS))
        del tokens

    def close(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)

