"""Convert between a gpt-ds model folder and a Hugging Face GPT-2 folder:

    python launch/hf.py export MODEL_DIR --out HF_DIR   # GPT2LMHeadModel.from_pretrained(HF_DIR) loads it
    python launch/hf.py import HF_DIR --out MODEL_DIR   # e.g. GPT-2 weights you have locally
    (also `python -m gpt_ds.hf ...` and the console script gpt-ds-hf)

Neither writes into its input (--out equal to it, inside it or above it: refused, --force or not), and an
--out that exists and is anything but a previous output of the same command (a folder of the other
kind, other files) is refused unless --force, which replaces it with everything in it.

Thin entry point: the conversions are gpt_ds.hf.export_hf / import_hf.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

if __package__ in (None, ""):  # run as a script: make the repository importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_ds.errors import run_cli  # noqa: E402
from gpt_ds.hf import export_hf, import_hf  # noqa: E402
from gpt_ds.model_io import DTYPES, read_model_info  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt-ds-hf", description="Convert between a gpt-ds model folder and a Hugging Face GPT-2 folder."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="model folder -> folder GPT2LMHeadModel.from_pretrained loads")
    export.add_argument("model_dir", help="gpt-ds model folder (model.safetensors + config.json)")
    export.add_argument("--out", required=True, help="Hugging Face folder to write (new, empty or a previous export)")
    export.add_argument("--dtype", choices=list(DTYPES), default="float32", help="weights' dtype (default float32)")
    imp = commands.add_parser("import", help="Hugging Face GPT-2 folder -> model folder")
    imp.add_argument("hf_dir", help="folder with config.json and model.safetensors of a GPT-2 model")
    imp.add_argument("--out", required=True, help="model folder to write (new, empty or a previous model folder)")
    for command in (export, imp):
        command.add_argument("--force", action="store_true",
                             help="replace --out whatever it holds (never the input, nor a folder inside or above it)")
    return parser


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "export":
        out = export_hf(args.model_dir, args.out, dtype=args.dtype, force=args.force)
        print(f"wrote {out} (load with transformers.GPT2LMHeadModel.from_pretrained({str(out)!r}))")
    else:
        out = import_hf(args.hf_dir, args.out, force=args.force)
        chat = read_model_info(out).chat_template is not None
        print(f"wrote {'chat ' if chat else ''}model folder {out}")
    return 0


def main(argv: list[str] | None = None) -> NoReturn:
    run_cli(lambda: run(argv), "gpt-ds-hf")


if __name__ == "__main__":
    main()
