"""The command line of data preparation: `python -m data_prep` (console script gpt-ds-prepare)."""

from __future__ import annotations

import argparse
from pathlib import Path

from data_prep.manifest import verify
from data_prep.pipeline import run
from data_prep.settings import (
    DEFAULT_SEED,
    DEFAULT_SHARD_TOKENS,
    DEFAULT_TEXT_FIELD,
    DEFAULT_VAL_FRACTION,
    PrepareSettings,
    available_cores,
)
from gpt_ds.errors import run_cli
from gpt_ds.tokenizer import DEFAULT_ENCODING

PROG = "python -m data_prep"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Tokenize a text corpus (GPT-2 BPE, EOT before every document) into llm.c-format uint16 "
        "shards DIR/train_NNNNNN.bin, DIR/val_NNNNNN.bin and DIR/manifest.json.",
    )
    parser.add_argument("--verify", metavar="DIR", help="check a prepared folder (every shard's size and sha256 against "
                        "its manifest) and exit; changes nothing")
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
    parser.add_argument("--text-field", "--jsonl-field", dest="text_field", default=DEFAULT_TEXT_FIELD, metavar="NAME",
                        help=f"the text field of .jsonl records and the text column of tables (default {DEFAULT_TEXT_FIELD}; "
                        "--jsonl-field is its old name)")
    parser.add_argument("--force", action="store_true", help="replace a different (or redo the same) preparation in DIR")
    parser.add_argument("--strict", action="store_true",
                        help="fail on binary files and invalid UTF-8 instead of skipping / replacing them")
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
