"""The command line of data preparation: `python -m data_prep` (console script gpt-ds-prepare)."""

from __future__ import annotations

import argparse
from pathlib import Path

from data_prep.manifest import verify
from data_prep.pipeline import run
from data_prep.settings import (
    DEFAULT_FIELDS,
    DEFAULT_MAX_TOKENS,
    DEFAULT_SEED,
    DEFAULT_SHARD_TOKENS,
    DEFAULT_VAL_FRACTION,
    FORMATS,
    PrepareSettings,
    available_cores,
)
from gpt_ds.data import CHAT_FORMAT, TEXT_FORMAT
from gpt_ds.errors import run_cli
from gpt_ds.tokenizer import DEFAULT_ENCODING

PROG = "python -m data_prep"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Tokenize a text corpus (GPT-2 BPE, EOT before every document) into llm.c-format uint16 "
        "shards DIR/train_NNNNNN.bin, DIR/val_NNNNNN.bin and DIR/manifest.json; with --format chat, conversations "
        "into shards with a loss mask NAME.mask beside each.",
    )
    parser.add_argument("--verify", metavar="DIR", help="check a prepared folder (every shard's and mask's size and sha256 "
                        "against its manifest) and exit; changes nothing")
    parser.add_argument("--input", nargs="+", metavar="PATH",
                        help="files, folders (searched recursively) or globs: plain text of any extension (a file is "
                        "a document), .jsonl (a line is a document), .gz versions of both, and .parquet or .arrow "
                        "tables (a row is a document; a datasets.save_to_disk folder too)")
    parser.add_argument("--out", metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION, metavar="F",
                        help=f"fraction of documents for validation, chosen by seed (default {DEFAULT_VAL_FRACTION}; "
                        "with 2+ documents at least one; 0: no val split)")
    parser.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, metavar="N",
                        help=f"tokens per shard (default {DEFAULT_SHARD_TOKENS:,})")
    parser.add_argument("--workers", type=int, default=available_cores(), metavar="N",
                        help=f"tokenizing processes (default: all cores, here {available_cores()}); "
                        "the output is the same for any value")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of the val split (default {DEFAULT_SEED})")
    parser.add_argument("--encoding", default=DEFAULT_ENCODING,
                        help=f"tiktoken encoding; its vocabulary must fit uint16 (default {DEFAULT_ENCODING}, GPT-2)")
    parser.add_argument("--format", choices=FORMATS, default=TEXT_FORMAT,
                        help=f"{TEXT_FORMAT}: a document is text (the default); {CHAT_FORMAT}: a document is a conversation, "
                        "a .jsonl line or table row holding a list of {role, content} messages, rendered in the chat "
                        "template with a loss mask on the assistant's tokens")
    parser.add_argument("--max-tokens", type=int, default=None, metavar="N",
                        help=f"--format chat: a conversation longer than N tokens is cut to N and counted (with --strict: "
                        f"refused); default {DEFAULT_MAX_TOKENS}, GPT-2's context and one more")
    parser.add_argument("--text-field", "--jsonl-field", dest="text_field", default=None, metavar="NAME",
                        help="the field of .jsonl records and the column of tables that holds a document (default "
                        + ", ".join(f"{field} for --format {name}" for name, field in DEFAULT_FIELDS.items())
                        + "; --jsonl-field is its old name)")
    parser.add_argument("--force", action="store_true", help="replace a different (or redo the same) preparation in DIR")
    parser.add_argument("--strict", action="store_true",
                        help="fail on binary files and invalid UTF-8 instead of skipping / replacing them (chat: and on "
                        "a conversation longer than --max-tokens instead of truncating it)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser


def settings_from_args(args: argparse.Namespace) -> PrepareSettings:
    return PrepareSettings(
        inputs=tuple(args.input),
        out=args.out,
        val_fraction=args.val_fraction,
        shard_tokens=args.shard_tokens,
        workers=args.workers,
        seed=args.seed,
        encoding=args.encoding,
        text_field=args.text_field,
        format=args.format,
        max_tokens=args.max_tokens,
        force=args.force,
        strict=args.strict,
        verbose=not args.quiet,
    )


def cli(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verify:
        print(verify(Path(args.verify)))
        return 0
    if not args.input or not args.out:
        parser.error("the following arguments are required: --input, --out (or --verify DIR)")
    run(settings_from_args(args))
    return 0


def main(argv: list[str] | None = None) -> None:
    run_cli(lambda: cli(argv), PROG)


if __name__ == "__main__":
    main()
