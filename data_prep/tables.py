"""Reading table inputs with pyarrow: parquet files and Arrow IPC files (as Hugging Face
`datasets.save_to_disk` writes them), one row a document. Imported only when the inputs hold a table
(data_prep.inputs finds them), so that text-only runs and the tokenizing workers never load pyarrow.

`check_tables` opens every table before any work and refuses, in one line naming the file, a corrupt file, a missing text column (naming the columns there
are) or a column that does not hold strings. `table_batches` streams one table's text column in
batches of about `batch_bytes` of text: a parquet file is read a row group at a time and only its
text column; an Arrow file is memory-mapped and read a record batch at a time. So memory is bounded
by a row group (a record batch), never by the file, however many GB it holds. A null is returned as None.

For --format chat (`chat=True`) the column holds each row's conversation: a list of structs with string fields
`role` and `content` (what Hugging Face chat datasets store), handed on as the JSON of the row's messages (a
null: `null`, which the workers refuse), a struct field that is null left out (so a null `weight` is absent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.inputs import PARQUET_SUFFIX, is_table
from gpt_ds.errors import UserError

ARROW_FILE_MAGIC = b"ARROW1"  # the Arrow IPC file format; without it, the IPC stream format (what datasets writes)
TABLE_BATCH_BYTES = 1 << 20  # text per batch handed on from a table
PARQUET_READ_BYTES = 1 << 24  # text per parquet read (pyarrow is slower in smaller ones), handed on in batches
MAX_BATCH_ROWS = 65_536


CHAT_FIELDS = ("role", "content")  # the struct fields of a message, both strings


def check_tables(files: Sequence[Path], field: str, chat: bool = False) -> None:
    """Refuse, before any work, a table that cannot be read or whose column `field` is not text (with
    `chat`: not a list of messages)."""
    for path in files:
        if is_table(path):
            with _Table(path) as table:
                table.column_index(field, chat)


def table_batches(
    path: Path, field: str, batch_bytes: int = TABLE_BATCH_BYTES, chat: bool = False
) -> Iterator[tuple[list[bytes | None], float]]:
    """The UTF-8 text of column `field`, row by row in order, in lists of about `batch_bytes` (None: a
    null), each with the share of the file read once it is done (for progress). With `chat`: each row's
    messages as JSON."""
    rows_of = _chat_rows if chat else _rows
    with _Table(path) as table:
        column = table.column_index(field, chat)
        first_row = 0  # of the batch
        try:
            for batch, done in table.batches(column, batch_bytes):
                values = batch.column(0 if table.projected else column)
                for rows in rows_of(values, batch_bytes):
                    yield rows, done
                first_row += len(values)
        except (pa.ArrowException, OSError) as err:
            raise _corrupt(path, err) from None
        except _BadRow as err:
            raise UserError(f"{path} (row {first_row + err.row}): {err}") from None


class _Table:
    """A parquet or Arrow IPC file opened for reading: its schema and its batches."""

    def __init__(self, path: Path):
        self.path = path
        self._source = self._parquet = None
        try:
            if path.suffix.lower() == PARQUET_SUFFIX:
                # Buffered reads, page by page, rather than each column chunk pre-read whole: less memory.
                self._parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=TABLE_BATCH_BYTES)
                self.schema = self._parquet.schema_arrow
            else:
                self._source = pa.memory_map(str(path))
                if self._source.read(len(ARROW_FILE_MAGIC)) == ARROW_FILE_MAGIC:
                    self._source.seek(0)
                    self._file = pa.ipc.open_file(self._source)
                else:
                    self._source.seek(0)
                    self._file = None
                self.schema = self._file.schema if self._file is not None else pa.ipc.open_stream(self._source).schema
        except (pa.ArrowException, OSError) as err:
            self.close()
            raise _corrupt(path, err) from None
        self.projected = self._parquet is not None  # parquet reads only the text column

    def __enter__(self) -> "_Table":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._source is not None:
            self._source.close()
            self._source = None

    def column_index(self, field: str, chat: bool = False) -> int:
        names = self.schema.names
        if field not in names:
            shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
            raise UserError(
                f"{self.path} has no column {field!r} (columns: {shown or 'none'}); "
                "pass --text-field NAME to read another column"
            )
        kind = self.schema.field(field).type
        if chat and not _is_messages(kind):
            lists = [f.name for f in self.schema if _is_messages(f.type)]
            raise UserError(
                f"{self.path}: column {field!r} holds {kind}, not conversations (a list of structs with string fields "
                f"role and content); pass --text-field NAME with such a column ({', '.join(lists[:12]) or 'this file has none'})"
            )
        if not chat and not _is_text(kind):
            texts = [f.name for f in self.schema if _is_text(f.type)]
            raise UserError(
                f"{self.path}: column {field!r} holds {kind}, not strings; pass --text-field NAME with a string column "
                f"({', '.join(texts[:12]) or 'this file has none'})"
            )
        return names.index(field)

    def batches(self, column: int, batch_bytes: int) -> Iterator[tuple[pa.RecordBatch, float]]:
        """The file's record batches (parquet: only the text column, about `batch_bytes` of it at a
        time), each with the share of the file read once it is done."""
        if self._parquet is not None:
            meta, name = self._parquet.metadata, self.schema.names[column]
            # The column's leaves: itself for text, role and content (and any other field) for messages.
            paths = [self._parquet.schema.column(i).path for i in range(meta.num_columns)]
            leaves = [i for i, path in enumerate(paths) if path == name or path.startswith(name + ".")]
            text_bytes = sum(meta.row_group(g).column(leaf).total_uncompressed_size
                             for g in range(meta.num_row_groups) for leaf in leaves)
            rows = max(1, min(MAX_BATCH_ROWS, meta.num_rows * max(batch_bytes, PARQUET_READ_BYTES) // max(text_bytes, 1)))
            done = 0
            for batch in self._parquet.iter_batches(batch_size=rows, columns=[name], use_threads=False):
                done += batch.num_rows
                yield batch, done / max(meta.num_rows, 1)
        elif self._file is not None:
            count = self._file.num_record_batches
            for i in range(count):
                yield self._file.get_batch(i), (i + 1) / count
        else:
            self._source.seek(0)
            size = max(self._source.size(), 1)
            for batch in pa.ipc.open_stream(self._source):
                yield batch, self._source.tell() / size


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _is_messages(kind: pa.DataType) -> bool:
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_struct(kind.value_type):
        return False
    fields = {kind.value_type.field(i).name: kind.value_type.field(i).type for i in range(kind.value_type.num_fields)}
    return all(name in fields and _is_text(fields[name]) for name in CHAT_FIELDS)


class _BadRow(Exception):
    """A row that cannot be read: `row` counts from the batch's first."""

    def __init__(self, message: str, row: int):
        super().__init__(message)
        self.row = row


def _chat_rows(column: pa.Array, batch_bytes: int) -> Iterator[list[bytes]]:
    """The rows of a messages column as JSON (a null: null), in lists of about `batch_bytes` of column data."""
    step = max(1, len(column) * batch_bytes // max(column.nbytes, 1))
    for start in range(0, len(column), step):
        part = column.slice(start, step)
        try:
            conversations = part.to_pylist()
        except UnicodeDecodeError:  # a writer that skipped pyarrow's UTF-8 validation
            bad = next(i for i in range(len(part)) if not _decodes(part.slice(i, 1)))
            raise _BadRow("a message holds invalid UTF-8; rewrite the table with valid UTF-8 text", start + bad) from None
        yield [json.dumps(_without_nulls(messages)).encode() for messages in conversations]


def _decodes(part: pa.Array) -> bool:
    try:
        part.to_pylist()
    except UnicodeDecodeError:
        return False
    return True


def _without_nulls(messages: list | None) -> list | None:
    """The messages with each struct field that is null left out, but role and content (checked by the workers)."""
    if messages is None:
        return None
    return [m if m is None else {k: v for k, v in m.items() if v is not None or k in CHAT_FIELDS} for m in messages]


def _rows(column: pa.Array, batch_bytes: int) -> Iterator[list[bytes | None]]:
    """The rows of a string column as bytes (None for a null), in lists of about `batch_bytes`."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if not pa.types.is_large_string(column.type):
        column = column.cast(pa.large_string())
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int64)[column.offset : column.offset + len(column) + 1]
    valid = column.is_valid().to_numpy(zero_copy_only=False) if column.null_count else None
    start = 0
    while start < len(column):
        # The rows whose text ends within batch_bytes of this chunk's start (at least one row).
        end = max(start + 1, int(np.searchsorted(offsets, offsets[start] + batch_bytes, side="right")) - 1)
        end = min(end, len(column))
        base = int(offsets[start])
        data = column.buffers()[2][base : int(offsets[end])].to_pybytes() if offsets[end] > base else b""
        cuts = (offsets[start : end + 1] - base).tolist()
        rows: list[bytes | None] = [data[a:b] for a, b in zip(cuts, cuts[1:])]
        if valid is not None:
            rows = [row if ok else None for row, ok in zip(rows, valid[start:end].tolist())]
        yield rows
        start = end


def _corrupt(path: Path, err: Exception) -> UserError:
    kind = "parquet" if path.suffix.lower() == PARQUET_SUFFIX else "Arrow IPC"
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(f"{path} is not a readable {kind} file ({reason}); re-download or rewrite it, or remove it from the inputs")
