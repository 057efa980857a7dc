"""Consolidate a run's ZeRO checkpoint into a model folder:

    python launch/export.py RUN_DIR [--tag step_00001000] [--dtype float32|bfloat16|float16] [--out FOLDER] [--force]
    (also `python -m gpt_ds.export ...` and the console script gpt-ds-export)

--out never goes into, onto or above RUN_DIR/checkpoints/ (--force or not); an --out that exists and is
not a model folder is refused unless --force, which replaces it with everything in it.

Thin entry point: the consolidation is gpt_ds.export.export_run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

if __package__ in (None, ""):  # run as a script: make the repository importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_ds.errors import run_cli  # noqa: E402
from gpt_ds.export import export_run  # noqa: E402
from gpt_ds.model_io import DTYPES  # noqa: E402

PROG = "gpt-ds-export"


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Consolidate a run's ZeRO checkpoint into RUN_DIR/model/.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of a training run")
    parser.add_argument("--tag", default=None, help="checkpoint tag, e.g. step_00001000 (default: latest)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES),
                        help="dtype of the exported weights (the master weights are fp32)")
    parser.add_argument("--out", default=None, help="model folder to write (default: RUN_DIR/model)")
    parser.add_argument("--force", action="store_true",
                        help="replace --out whatever it holds (never the run's checkpoints/ or a folder holding it)")
    args = parser.parse_args(argv)
    folder = export_run(args.run_dir, tag=args.tag, dtype=args.dtype, out=args.out, force=args.force)
    print(f"exported {folder} (sample: python launch/sample.py --model {folder})")
    return 0


def main(argv: list[str] | None = None) -> NoReturn:
    """Console entry point: errors as one line and a non-zero exit."""
    run_cli(lambda: run(sys.argv[1:] if argv is None else argv), PROG)


if __name__ == "__main__":
    main()
