"""The preparation run: inputs -> reader -> tokenizing workers (in order) -> split router -> shards
-> manifest. `prepare` is the Python API behind `python -m data_prep`. With --format chat the same run
carries each conversation's loss mask beside its tokens, to NAME.mask beside each shard."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

import gpt_ds
from data_prep.inputs import (
    CorpusReader,
    Piece,
    TABLE_ROW,
    TEXT_CONTINUED,
    JSONL_RECORD,
    check_chat_inputs,
    fingerprint,
    is_table,
    resolve_inputs,
)
from data_prep.manifest import abandon_output, finish_output, identity, prepare_output
from data_prep.parallel import OrderedPool
from data_prep.settings import PrepareSettings
from data_prep.split import SPLITS, DocumentRouter
from data_prep.tokenize import check_fits_uint16, encode_batch, init_worker
from data_prep.writer import ShardWriter
from gpt_ds.atomic import full_disk_as_error
from gpt_ds.data import CHAT_FORMAT, MAGIC, MASK_MAGIC, VERSION, HEADER_BYTES
from gpt_ds.errors import UserError
from gpt_ds.lock import FolderLock
from gpt_ds.tokenizer import CHAT_TEMPLATE, CHAT_TOKEN_TEXT, CHAT_VOCAB_SIZE, DEFAULT_ENCODING, EOT_TOKEN, get_encoding

BATCH_BYTES = 1 << 20  # text per worker task: large enough that pickling is noise, small for memory
BATCH_PIECES = 4096  # and at most this many documents (short jsonl records) per task


def prepare(inputs: list[str], out: str | Path, **options) -> dict:
    """Tokenize the corpus `inputs` into shards in `out`; return the manifest.

    `options` are the fields of `PrepareSettings`: val_fraction, shard_tokens, workers, seed,
    encoding, text_field (its old name jsonl_field works too), format ("text" or "chat"), max_tokens (chat),
    force, strict, verbose. Raises UserError on bad input.
    """
    if "jsonl_field" in options:
        options["text_field"] = options.pop("jsonl_field")
    return run(PrepareSettings(inputs=tuple(inputs), out=Path(out), **options))


def run(settings: PrepareSettings) -> dict:
    say = print if settings.verbose else (lambda _message: None)
    encoding = get_encoding(settings.encoding)
    check_fits_uint16(encoding)
    if settings.chat and (encoding.eot_token != EOT_TOKEN or encoding.n_vocab != min(CHAT_TOKEN_TEXT)):
        raise UserError(f"--format chat needs the GPT-2 BPE ({DEFAULT_ENCODING}), not {encoding.name}: the chat markers take "
                        f"the ids after its {min(CHAT_TOKEN_TEXT)} tokens and each conversation starts with EOT {EOT_TOKEN}")
    files = resolve_inputs(settings.inputs, exclude=settings.out)
    if not files:
        raise UserError(
            f"the inputs {' '.join(settings.inputs)} hold no files; give text, .jsonl or .parquet files or folders of them"
        )
    if settings.chat:
        check_chat_inputs(files)
    if any(is_table(path) for path in files):  # pyarrow is loaded only for tables
        from data_prep.tables import check_tables

        check_tables(files, settings.text_field, settings.chat)  # a bad table is refused before anything is written
    digest, total_bytes = fingerprint(files)
    wanted = identity(encoding.name, settings.output_settings(), digest)
    if settings.out.exists() and not settings.out.is_dir():
        raise UserError(f"--out {settings.out} is a file; give a folder path (it is created if missing)")
    with FolderLock(settings.out, "data_prep run"):
        return _prepare(settings, files, total_bytes, wanted, encoding, say)


def _prepare(settings: PrepareSettings, files: list[Path], total_bytes: int, wanted: dict, encoding, say) -> dict:
    existing = prepare_output(settings.out, wanted, settings.force, settings.strict, say)
    if existing is not None:
        say(f"{settings.out} is up to date: {_describe(existing)}")
        return existing
    started = time.perf_counter()
    # Shards take ~2 bytes a token, and text ~2-4 bytes a token: the corpus's size bounds what is written
    with full_disk_as_error(settings.out, total_bytes, "preparing"):
        try:
            counts, shards = _tokenize(settings, files, total_bytes)
        except BaseException:
            abandon_output(settings.out)
            raise
    manifest = (_chat_manifest if settings.chat else _text_manifest)(settings, files, total_bytes, wanted, encoding,
                                                                     counts, shards)
    finish_output(settings.out, manifest)
    elapsed = time.perf_counter() - started
    if counts["binary_files"]:
        names = ", ".join(str(p) for p in counts["binary_files"][:3])
        more = f" and {len(counts['binary_files']) - 3} more" if len(counts["binary_files"]) > 3 else ""
        say(f"skipped {len(counts['binary_files'])} binary files: {names}{more}")
    say(
        f"prepared {settings.out}: {_describe(manifest)}; "
        f"{elapsed:.1f} s, {manifest['total_tokens'] / max(elapsed, 1e-9) / 1e6:.2f} M tokens/s with {settings.workers} workers"
    )
    return manifest


def _text_manifest(settings: PrepareSettings, files: list[Path], total_bytes: int, wanted: dict, encoding,
                   counts: dict, shards: dict) -> dict:
    return {
        "format": {"magic": MAGIC, "version": VERSION, "header_bytes": HEADER_BYTES, "token_bytes": 2},
        "encoding": encoding.name,
        "vocab_size": encoding.n_vocab,
        "eot_token": encoding.eot_token,
        "dtype": "uint16",
        "splits": {
            split: {
                "shards": shards[split],
                "tokens": sum(s["tokens"] for s in shards[split]),
                "documents": counts["documents"][split],
            }
            for split in SPLITS
        },
        "total_tokens": sum(s["tokens"] for split in SPLITS for s in shards[split]),
        "total_documents": sum(counts["documents"].values()),
        "inputs": {"paths": list(settings.inputs), "files": len(files), "bytes": total_bytes, "fingerprint": wanted["inputs"]["fingerprint"]},
        "replaced": {"sequences": counts["replaced_sequences"], "documents": counts["replaced_documents"]},
        "skipped": {"binary_files": len(counts["binary_files"]), "empty_documents": counts["empty_documents"]},
        "settings": {**settings.output_settings(), "strict": settings.strict},
        "created_by": f"gpt-ds {gpt_ds.__version__} data_prep",
    }


def _chat_manifest(settings: PrepareSettings, files: list[Path], total_bytes: int, wanted: dict, encoding,
                   counts: dict, shards: dict) -> dict:
    """The text manifest's facts in the chat format's terms: "format": "chat", the template, the shard format
    with the masks', the vocabulary with the chat markers, and per split conversations, trained tokens (the
    masks' sum) and truncated conversations (each shard entry has its mask's sha256). Nothing is skipped in chat."""
    text = _text_manifest(settings, files, total_bytes, wanted, encoding, counts, shards)
    splits = {
        split: {
            "shards": entry["shards"],
            "tokens": entry["tokens"],
            "conversations": entry["documents"],
            "trained_tokens": counts["trained_tokens"][split],
            "truncated": counts["truncated"][split],
        }
        for split, entry in text["splits"].items()
    }
    return {
        "format": CHAT_FORMAT,
        "chat_template": CHAT_TEMPLATE,
        "shard_format": {**text["format"], "mask_magic": MASK_MAGIC, "mask_bytes": 1},
        "encoding": text["encoding"],
        "vocab_size": CHAT_VOCAB_SIZE,  # the chat markers come after the encoding's tokens
        "eot_token": text["eot_token"],
        "dtype": text["dtype"],
        "splits": splits,
        "total_tokens": text["total_tokens"],
        "total_conversations": text["total_documents"],
        "total_trained_tokens": sum(entry["trained_tokens"] for entry in splits.values()),
        "total_truncated": sum(entry["truncated"] for entry in splits.values()),
        **{key: text[key] for key in ("inputs", "replaced", "settings", "created_by")},
    }


def _describe(manifest: dict) -> str:
    if manifest.get("format") == CHAT_FORMAT:
        parts = [f"{split} {entry['tokens']:,} tokens ({entry['trained_tokens']:,} trained) / {entry['conversations']:,} "
                 f"conversations ({entry['truncated']:,} truncated) / {len(entry['shards'])} shards"
                 for split, entry in manifest["splits"].items()]
        return ", ".join([*parts, f"{manifest['inputs']['files']:,} files, {manifest['inputs']['bytes'] / 1e6:.1f} MB; "
                          f"replaced {manifest['replaced']['sequences']} invalid UTF-8 sequences"])
    parts = []
    for split in SPLITS:
        entry = manifest["splits"][split]
        parts.append(f"{split} {entry['tokens']:,} tokens / {entry['documents']:,} documents / {len(entry['shards'])} shards")
    skipped, replaced = manifest["skipped"], manifest["replaced"]
    parts.append(
        f"{manifest['inputs']['files']:,} files, {manifest['inputs']['bytes'] / 1e6:.1f} MB; "
        f"skipped {skipped['binary_files']} binary files and {skipped['empty_documents']} empty documents; "
        f"replaced {replaced['sequences']} invalid UTF-8 sequences"
    )
    return ", ".join(parts)


def _batches(pieces: Iterable[Piece]) -> Iterator[tuple[tuple[bytes, list[bytes]], tuple[list[Piece], int]]]:
    """Group pieces into worker tasks: (payload for the worker, what the main process keeps: the
    pieces, for their kinds and error locations, and the disk bytes they took, for progress)."""
    kinds, datas, kept, size, disk = bytearray(), [], [], 0, 0
    for piece in pieces:
        kinds.append(piece.kind)
        datas.append(piece.data)
        kept.append(piece)
        size += len(piece.data)
        disk += piece.disk_bytes
        if size >= BATCH_BYTES or len(datas) >= BATCH_PIECES:
            yield (bytes(kinds), datas), (kept, disk)
            kinds, datas, kept, size, disk = bytearray(), [], [], 0, 0
    if datas:
        yield (bytes(kinds), datas), (kept, disk)


def _tokenize(settings: PrepareSettings, files: list[Path], total_bytes: int) -> tuple[dict, dict]:
    reader = CorpusReader(files, strict=settings.strict, text_field=settings.text_field, chat=settings.chat)
    writers = {split: ShardWriter(settings.out, split, settings.shard_tokens, masks=settings.chat) for split in SPLITS}
    router = DocumentRouter(writers, settings.val_fraction, settings.seed, settings.out / f".spool.{os.getpid()}.tmp",
                            masks=settings.chat)
    replaced_sequences = replaced_documents = empty_texts = tokens = 0
    document_replaced = False
    progress = tqdm(
        total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=None if settings.verbose else True
    )
    started = last_postfix = time.perf_counter()
    pool = OrderedPool(settings.workers, encode_batch, init_worker,
                       (settings.encoding, settings.text_field, settings.strict, settings.max_tokens))
    try:
        with pool, progress:
            for (pieces, disk), result in pool.map(_batches(reader.pieces())):
                if result.error is not None:
                    raise UserError(_locate(files, pieces[result.error[0]], result.error))
                ends = np.cumsum(result.counts)
                starts = ends - result.counts
                masks = result.mask  # chat: a loss mask beside the tokens
                cuts = itertools.repeat(0) if result.truncated is None else result.truncated.tolist()
                for piece, start, end, replaced, truncated in zip(
                    pieces, starts.tolist(), ends.tolist(), result.replaced.tolist(), cuts
                ):
                    if piece.kind != TEXT_CONTINUED:
                        if start == end:
                            empty_texts += 1
                            continue
                        router.start_document(truncated=bool(truncated))
                        document_replaced = False
                    router.write(result.tokens[start:end], None if masks is None else masks[start:end])
                    if replaced:
                        replaced_sequences += replaced
                        replaced_documents += not document_replaced
                        document_replaced = True
                tokens += len(result.tokens)
                progress.update(disk)
                now = time.perf_counter()
                if now - last_postfix > 0.5:
                    last_postfix, elapsed = now, now - started
                    progress.set_postfix_str(
                        f"{router.total_documents / elapsed:,.0f} docs/s, {tokens / elapsed / 1e6:.2f} M tokens/s", refresh=False
                    )
            if router.total_documents == 0 and settings.chat:
                raise UserError(f"the inputs hold no conversations: {len(files)} files, all empty; give .jsonl lines or "
                                f"table rows with a {settings.text_field!r} list of messages")
            if router.total_documents == 0:
                raise UserError(
                    f"the inputs hold no documents: {len(files)} files, {len(reader.binary_files)} of them binary "
                    f"(skipped), {reader.empty_documents + empty_texts} empty documents; give files with text"
                )
            router.finish()
    except BaseException:
        router.abort()
        raise
    counts = {
        "documents": router.documents,
        "replaced_sequences": replaced_sequences,
        "replaced_documents": replaced_documents,
        "binary_files": reader.binary_files,
        "empty_documents": reader.empty_documents + empty_texts,
        "trained_tokens": {split: writer.trained_tokens for split, writer in writers.items()},
        "truncated": router.truncated,
    }
    return counts, {split: writer.shards for split, writer in writers.items()}


def _locate(files: list[Path], piece: Piece, error: tuple[int, str, int | None]) -> str:
    """'FILE:LINE: problem' for a jsonl record, 'FILE (row N): problem' for a table row (counted from 0),
    'FILE (byte N): problem' for text."""
    _index, problem, offset = error
    path = files[piece.file_index]
    if piece.kind == JSONL_RECORD:
        return f"{path}:{piece.position}: {problem}"
    if piece.kind == TABLE_ROW:
        return f"{path} (row {piece.position}): {problem}"
    return f"{path} (byte {piece.position + (offset or 0)}): {problem}"
