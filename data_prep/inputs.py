"""The corpus side of preparation: which files the inputs name, and their documents as byte pieces.

`resolve_inputs` turns files, folders (recursive) and globs into one sorted list of files, so the
output never depends on the order the file system lists them in. `CorpusReader` streams those
files as pieces of bytes for the tokenizing workers: a plain-text file is one document, a `.jsonl`
line is one document (both plain or gzip-compressed), a row of a parquet or Arrow table is one
document (read by data_prep.tables; `save_to_disk_metadata` names the files of a Hugging Face
`save_to_disk` folder that are not inputs). A large text document is cut into pieces only
where the cut cannot change its tokens (see `safe_cut`), so memory stays bounded by the piece
size even for a single multi-GB file. `default_corpus` names the embedded offline corpus.

With `chat` (--format chat) a document is a conversation: a `.jsonl` line or a table row (its messages as
JSON); `check_chat_inputs` refuses any other file, and no file is skipped as binary (its lines are not JSON,
which the workers refuse).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import sysconfig
import zlib
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

from data_prep.settings import DEFAULT_TEXT_FIELD
from gpt_ds.errors import UserError

# Piece kinds, shared with the workers in data_prep.tokenize.
TEXT_START = 0  # the first piece of a plain-text document: gets an EOT before it
TEXT_CONTINUED = 1  # a later piece of the same document
JSONL_RECORD = 2  # one jsonl line: one whole document
TABLE_ROW = 3  # the text of one table row: one whole document (empty for a null)

PIECE_BYTES = 1 << 20  # read size, and the size text documents are cut into
BINARY_PROBE_BYTES = 8000  # like git: a NUL byte in the first 8000 bytes means binary
JSONL_SUFFIXES = (".jsonl", ".ndjson")
GZIP_MAGIC = b"\x1f\x8b"
PARQUET_SUFFIX = ".parquet"
ARROW_SUFFIX = ".arrow"
DATASET_STATE = "state.json"  # save_to_disk's bookkeeping beside its data-*.arrow files
DATASET_INFO = "dataset_info.json"
DATASET_DICT = "dataset_dict.json"  # a DatasetDict's top folder: one subfolder per split
_VISIBLE_ASCII = range(0x21, 0x7F)


class Piece(NamedTuple):
    kind: int
    data: bytes
    file_index: int
    position: int  # byte offset in the file's text (text pieces), line number (jsonl) or row index (tables)
    disk_bytes: int  # bytes of the file on disk consumed since the previous piece (for progress)


def default_corpus() -> list[Path]:
    """The embedded default corpus: ../shared/corpora/shakespeare beside the repository when it is
    there, else the Python standard library's own top-level public sources (present on every machine;
    the `_`-prefixed ones are left out, as some, e.g. _sysconfigdata_*, differ from machine to machine)."""
    shakespeare = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "shakespeare"
    if shakespeare.is_dir():
        return [shakespeare]
    return stdlib_sources()


def stdlib_sources() -> list[Path]:
    """The Python standard library's top-level public sources, sorted (the corpus every machine has)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return sorted(path for path in stdlib.glob("*.py") if not path.name.startswith("_"))


def is_jsonl(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return name.endswith(JSONL_SUFFIXES)


def is_table(path: Path) -> bool:
    return path.suffix.lower() in (PARQUET_SUFFIX, ARROW_SUFFIX)


def save_to_disk_metadata(folder: Path, files: Sequence[str], dirs: Sequence[str]) -> set[str]:
    """The names among `files` (in `folder`) that are `datasets.save_to_disk` bookkeeping, not text."""
    names = set()
    if DATASET_STATE in files and any(name.lower().endswith(ARROW_SUFFIX) for name in files):
        names.update(name for name in (DATASET_STATE, DATASET_INFO) if name in files)
    if DATASET_DICT in files:
        try:
            splits = json.loads((folder / DATASET_DICT).read_text(encoding="utf-8")).get("splits")
        except (OSError, ValueError, AttributeError):
            splits = None
        if isinstance(splits, list) and splits and all(split in dirs for split in splits):
            names.add(DATASET_DICT)
    return names


def check_chat_inputs(files: Sequence[Path]) -> None:
    """Refuse, before any work, a file that cannot hold conversations (neither jsonl nor a table)."""
    for path in files:
        if not (is_jsonl(path) or is_table(path)):
            raise UserError(
                f"{path} is neither .jsonl nor a .parquet/.arrow table: --format chat reads conversations (a list of "
                "messages per line or row); remove it from the inputs"
            )


def resolve_inputs(specs: Sequence[str], exclude: Path | None = None) -> list[Path]:
    """All files named by `specs` (files, folders searched recursively, globs), deduplicated and sorted.

    Hidden files and folders (names starting with '.') inside folders are left out, and so is
    anything under `exclude` (the output folder, which may lie inside an input folder).
    """
    excluded = exclude.resolve() if exclude is not None and exclude.is_dir() else None
    found: set[Path] = set()
    for spec in specs:
        path = Path(spec).expanduser()
        if path.exists():
            matches = [path]
        elif any(ch in spec for ch in "*?["):
            matches = [Path(m) for m in glob.glob(os.path.expanduser(spec), recursive=True)]
            if not matches:
                raise UserError(f"no file matches the input glob {spec!r}; check the pattern")
        else:
            raise UserError(f"input {spec} does not exist; give existing files, folders or globs to --input")
        for match in matches:
            if _is_within(match, excluded):
                continue  # a glob such as corpus/* also names the output folder once it exists
            if match.is_dir():
                found.update(_walk(match, excluded))
            elif match.is_file():
                found.add(match.resolve())
            elif match.exists():
                raise UserError(f"input {match} is not a regular file or folder; give text, .jsonl or .parquet files")
    return sorted(found, key=str)


def _is_within(path: Path, folder: Path | None) -> bool:
    """Whether `path` is the (resolved) `folder` or lies below it; False when there is no folder."""
    if folder is None:
        return False
    resolved = path.resolve()
    return resolved == folder or folder in resolved.parents


def _walk(folder: Path, excluded: Path | None) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        dirs[:] = [d for d in dirs if not d.startswith(".") and not _is_within(root_path / d, excluded)]
        bookkeeping = save_to_disk_metadata(root_path, files, dirs)
        for name in files:
            path = root_path / name
            if not name.startswith(".") and name not in bookkeeping and path.is_file():
                yield path.resolve()


def fingerprint(files: Sequence[Path]) -> tuple[str, int]:
    """A digest of the files' paths, sizes and modification times, and their total size in bytes.

    It identifies the corpus a preparation was made from without reading it (as make does)."""
    digest = hashlib.sha256()
    total = 0
    for path in files:
        stat = path.stat()
        total += stat.st_size
        digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest(), total


def safe_cut(data: bytes, start: int = 0) -> int:
    """The last offset (above `start`) at which `data` can be cut without changing its GPT-2 tokens,
    or 0 if there is none.

    That is just before a line break (CR or LF) that follows a visible ASCII character. In the GPT-2
    pre-tokenizer regex no piece can run from a non-space character into the line break, and the
    whitespace run starting at the break matches alike whether or not text came before it, so
    encode(a + b) == encode(a) + encode(b) there. Being ASCII, the cut never splits a UTF-8 sequence.
    """
    end, start = len(data), max(start, 1)
    while end > start:
        cut = max(data.rfind(b"\n", start, end), data.rfind(b"\r", start, end))
        if cut < start:
            return 0
        if data[cut - 1] in _VISIBLE_ASCII:
            return cut
        end = cut
    return 0


class CorpusReader:
    """Streams the documents of `files` as `Piece`s, counting (or, strict, refusing) what it skips.
    `text_field` is the column read from tables (jsonl fields are read by the workers); `chat`: conversations."""

    def __init__(
        self, files: Sequence[Path], strict: bool = False, piece_bytes: int = PIECE_BYTES, text_field: str = DEFAULT_TEXT_FIELD,
        chat: bool = False,
    ):
        self.files = list(files)
        self.text_field = text_field
        self.chat = chat
        self.strict = strict
        self.piece_bytes = piece_bytes
        self.binary_files: list[Path] = []
        self.empty_documents = 0  # empty text files (empty jsonl texts are counted by the pipeline)
        self._pending_disk = 0

    def pieces(self) -> Iterator[Piece]:
        for index, path in enumerate(self.files):
            if is_table(path):
                yield from self._table_pieces(index, path)
                continue
            blocks = self._blocks(path)
            first = next(blocks)
            if not first:
                if not is_jsonl(path):
                    self.empty_documents += 1
                continue
            if b"\0" in first[:BINARY_PROBE_BYTES] and not self.chat:
                if self.strict:
                    raise UserError(
                        f"{path} is a binary file (a NUL byte in its first {BINARY_PROBE_BYTES} bytes); "
                        "remove it from the inputs, or drop --strict to skip binary files"
                    )
                self.binary_files.append(path)
                for _ in blocks:  # count its bytes as done
                    pass
                continue
            reader = self._jsonl_pieces if is_jsonl(path) else self._text_pieces
            yield from reader(index, first, blocks)

    def _take_disk(self) -> int:
        taken, self._pending_disk = self._pending_disk, 0
        return taken

    def _blocks(self, path: Path) -> Iterator[bytes]:
        """The file's (decompressed) bytes in blocks of `piece_bytes`; the last block is shorter."""
        try:
            raw = open(path, "rb")
        except OSError as err:
            raise UserError(f"cannot read input {path}: {err.strerror}; check that it is readable") from None
        with raw:
            compressed = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
            consumed = 0
            while True:
                try:
                    block = stream.read(self.piece_bytes)
                except (EOFError, zlib.error, gzip.BadGzipFile) as err:
                    raise UserError(
                        f"{path} holds corrupt or truncated gzip data ({err}); re-compress it or remove it from the inputs"
                    ) from None
                position = raw.tell()
                self._pending_disk += position - consumed
                consumed = position
                yield block
                if len(block) < self.piece_bytes:
                    return

    def _text_pieces(self, index: int, first: bytes, blocks: Iterator[bytes]) -> Iterator[Piece]:
        kind, offset, data, searched = TEXT_START, 0, first, 0
        at_end = len(first) < self.piece_bytes  # a short read is the end of the file
        while not at_end:
            cut = safe_cut(data, start=searched)
            if cut:
                yield Piece(kind, data[:cut], index, offset, self._take_disk())
                kind, offset, data = TEXT_CONTINUED, offset + cut, data[cut:]
            searched = max(len(data) - 1, 0)  # only new bytes can hold a new cut point
            more = next(blocks)
            at_end = len(more) < self.piece_bytes
            data += more
        if data:
            yield Piece(kind, data, index, offset, self._take_disk())

    def _jsonl_pieces(self, index: int, first: bytes, blocks: Iterator[bytes]) -> Iterator[Piece]:
        line_number, carry = 0, b""
        for block in _chain_first(first, blocks):
            lines = (carry + block).split(b"\n")
            carry = lines.pop()
            for line in lines:
                line_number += 1
                if line and not line.isspace():
                    yield Piece(JSONL_RECORD, line, index, line_number, self._take_disk())
        if carry and not carry.isspace():
            yield Piece(JSONL_RECORD, carry, index, line_number + 1, self._take_disk())


    def _table_pieces(self, index: int, path: Path) -> Iterator[Piece]:
        from data_prep.tables import table_batches  # pyarrow only when a table is read

        size, reported, row = path.stat().st_size, 0, 0
        for rows, done in table_batches(path, self.text_field, self.piece_bytes, self.chat):
            self._pending_disk += round(done * size) - reported
            reported = round(done * size)
            for text in rows:
                yield Piece(TABLE_ROW, text or b"", index, row, self._take_disk())
                row += 1


def _chain_first(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest
