"""The tokenizing worker: turns a batch of byte pieces into one uint16 token array.

Runs in each worker process (or in the main process for --workers 1). Decoding (UTF-8, invalid
bytes replaced with U+FFFD and counted, or reported under --strict), jsonl parsing and BPE all
happen here so the main process only reads files and writes shards. Problems are returned as
data, not raised, so the main process reports the first one in document order whatever the
worker count. The batch comes back as a single numpy array: cheap to pickle between processes.

For --format chat (`max_tokens` set) a piece is a conversation: gpt_ds.tokenizer.render_chat gives its tokens
and loss mask (a ChatError's message is the problem), cut to `max_tokens` (under --strict: refused), and the
batch comes back with the masks back to back beside the tokens.
"""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass

import numpy as np

from data_prep.inputs import JSONL_RECORD, TEXT_CONTINUED
from data_prep.settings import DEFAULT_TEXT_FIELD
from gpt_ds.data import MASK_DTYPE, TOKEN_DTYPE
from gpt_ds.errors import UserError
from gpt_ds.tokenizer import ChatError, get_encoding, render_chat

REPLACEMENT = "\ufffd"
_ENCODED_REPLACEMENT = REPLACEMENT.encode("utf-8")


@dataclass
class BatchResult:
    """What a worker made of a batch: tokens of all pieces back to back, and per piece its share."""

    tokens: np.ndarray  # uint16; each document's first piece starts with the EOT token
    counts: np.ndarray  # int64 per piece: its number of tokens (0: an empty jsonl text)
    replaced: np.ndarray  # int64 per piece: invalid UTF-8 sequences replaced with U+FFFD
    # The first piece that cannot be used, if any: (piece index, problem, byte offset in the piece
    # or None). Pieces after it are not processed.
    error: tuple[int, str, int | None] | None = None
    mask: np.ndarray | None = None  # chat: uint8 beside `tokens`, 1 on what a fine-tune trains on
    truncated: np.ndarray | None = None  # chat: int64 per piece, 1 where the conversation was cut to max_tokens


class _Worker:
    encoding = None
    eot: np.ndarray | None = None
    text_field = DEFAULT_TEXT_FIELD
    strict = False
    max_tokens: int | None = None  # set: the pieces are conversations (--format chat)


def check_fits_uint16(encoding) -> None:
    """Refuse an encoding whose token ids do not fit the shards' uint16."""
    if encoding.n_vocab > np.iinfo(np.uint16).max + 1:
        raise UserError(
            f"encoding {encoding.name!r} has {encoding.n_vocab:,} tokens, more than the 65,536 that fit in the "
            "shards' uint16; use a GPT-2-sized encoding such as r50k_base"
        )


def init_worker(encoding_name: str, text_field: str, strict: bool, max_tokens: int | None = None) -> None:
    """Set up this process to tokenize batches (the Pool initializer); `max_tokens`: of conversations (chat)."""
    _Worker.encoding = get_encoding(encoding_name)
    check_fits_uint16(_Worker.encoding)
    _Worker.eot = np.array([_Worker.encoding.eot_token], dtype=np.uint32)
    _Worker.text_field = text_field
    _Worker.strict = strict
    _Worker.max_tokens = max_tokens


def encode_batch(batch: tuple[bytes, list[bytes]]) -> BatchResult:
    """Tokenize a batch `(kinds, pieces)`: one kind byte per piece (see data_prep.inputs)."""
    if _Worker.max_tokens is not None:
        return _encode_chats(batch)
    kinds, pieces = batch
    counts = np.zeros(len(pieces), dtype=np.int64)
    replaced = np.zeros(len(pieces), dtype=np.int64)
    arrays: list[np.ndarray] = []
    error = None
    for index, (kind, data) in enumerate(zip(kinds, pieces)):
        try:
            text, replaced[index] = _decode(data)
            if kind == JSONL_RECORD:
                text = _jsonl_text(text)
            if not text:
                continue  # an empty document (jsonl text, table row or null): no EOT, counted by the main process
            tokens, extra = _encode(text)
        except _PieceError as problem:
            error = (index, str(problem), problem.offset)
            break
        replaced[index] += extra
        if kind != TEXT_CONTINUED:
            arrays.append(_Worker.eot)
        arrays.append(tokens)
        counts[index] = len(tokens) + (kind != TEXT_CONTINUED)
    joined = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.uint32)
    return BatchResult(joined.astype(TOKEN_DTYPE), counts, replaced, error)


def _encode_chats(batch: tuple[bytes, list[bytes]]) -> BatchResult:
    """Render a batch of conversations (jsonl records, or a table row's messages as JSON): tokens and masks."""
    kinds, pieces = batch
    counts = np.zeros(len(pieces), dtype=np.int64)
    replaced = np.zeros(len(pieces), dtype=np.int64)
    truncated = np.zeros(len(pieces), dtype=np.int64)
    tokens, mask = array("H"), array("B")  # extended at C speed, then viewed by numpy without a copy
    error = None
    limit = _Worker.max_tokens
    surrogates = 0  # of the conversation being rendered

    def encode(text: str) -> list[int]:
        nonlocal surrogates
        ids, extra = _encode(text)
        surrogates += extra
        return ids.tolist()

    for index, (kind, data) in enumerate(zip(kinds, pieces)):
        surrogates = 0
        try:
            text, replaced[index] = _decode(data)
            messages = _jsonl_field(text) if kind == JSONL_RECORD else json.loads(text)
            try:
                ids, weights = render_chat(messages, encode)
            except ChatError as err:
                raise _PieceError(f"{err}; fix the conversation or remove it") from None
            if len(ids) > limit:
                if _Worker.strict:
                    raise _PieceError(f"the conversation is {len(ids)} tokens, longer than --max-tokens {limit}; "
                                      "shorten it, raise --max-tokens, or drop --strict to truncate it")
                ids, weights, truncated[index] = ids[:limit], weights[:limit], 1
        except _PieceError as problem:
            error = (index, str(problem), problem.offset)
            break
        replaced[index] += surrogates
        tokens.extend(ids)
        mask.extend(weights)
        counts[index] = len(ids)
    return BatchResult(np.frombuffer(tokens, dtype=np.uint16).astype(TOKEN_DTYPE, copy=False), counts, replaced, error,
                       np.frombuffer(mask, dtype=MASK_DTYPE), truncated)


class _PieceError(Exception):
    """A piece that cannot be used; the caller prefixes the message with its file (and line)."""

    def __init__(self, message: str, offset: int | None = None):
        super().__init__(message)
        self.offset = offset


def _decode(data: bytes) -> tuple[str, int]:
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError as err:
        if _Worker.strict:
            raise _PieceError(
                f"invalid UTF-8 ({err.reason}); convert the file to UTF-8, "
                "or drop --strict to replace invalid bytes with U+FFFD",
                offset=err.start,
            ) from None
    text = data.decode("utf-8", "replace")
    # Each replacement is one U+FFFD; subtract the ones that were already in the text, validly encoded.
    return text, text.count(REPLACEMENT) - data.count(_ENCODED_REPLACEMENT)


def _jsonl_text(line: str) -> str:
    text = _jsonl_field(line)
    if not isinstance(text, str):
        name = _Worker.text_field
        raise _PieceError(f"field {name!r} is {type(text).__name__}, not a string; fix the line or pick another --text-field")
    return text


def _jsonl_field(line: str) -> object:
    """The value of the record's --text-field (a jsonl line's JSON object)."""
    name = _Worker.text_field
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise _PieceError(f"not valid JSON ({err.msg} at column {err.colno}); fix or remove the line") from None
    if not isinstance(record, dict):
        raise _PieceError(f"a JSON {type(record).__name__}, not an object with a {name!r} field; fix or remove the line")
    if name not in record:
        fields = ", ".join(sorted(record)[:8]) or "none"
        raise _PieceError(f"no {name!r} field (fields: {fields}); pass --text-field NAME to read another field")
    return record[name]


def _encode(text: str) -> tuple[np.ndarray, int]:
    """encode_ordinary(text) as a uint32 array (tiktoken's numpy path avoids a list of ints), and the
    number of lone surrogates (possible only from jsonl escapes) replaced with U+FFFD."""
    try:
        return _encode_ordinary(text), 0
    except UnicodeEncodeError:
        if _Worker.strict:
            raise _PieceError(
                "a lone UTF-16 surrogate escape in the text; fix the line or drop --strict to replace it with U+FFFD"
            ) from None
        fixed = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return _encode_ordinary(fixed), fixed.count(REPLACEMENT) - text.count(REPLACEMENT)


def _encode_ordinary(text: str) -> np.ndarray:
    encoding = _Worker.encoding
    if hasattr(encoding, "encode_to_numpy"):  # tiktoken >= 0.8
        # With no special token allowed and none disallowed this is exactly encode_ordinary
        # ("<|endoftext|>" inside a document is ordinary text), minus the list of Python ints.
        return encoding.encode_to_numpy(text, disallowed_special=())
    return np.array(encoding._core_bpe.encode_ordinary(text), dtype=np.uint32)
