"""The quickstart: the whole path that exists, on the embedded default corpus, offline, in minutes
on a laptop CPU. `python -m gpt_ds.quickstart [--out DIR]` (console script gpt-ds-quickstart).

Step 1 prepares `data_prep.default_corpus()` (Shakespeare from ../shared when present, else the
Python standard library's sources) into DIR/data. Rerunning it reports the data as up to date.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt_ds.errors import run_cli

PROG = "python -m gpt_ds.quickstart"
DEFAULT_OUT = Path("runs") / "quickstart"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"run folder (default {DEFAULT_OUT})")
    return parser.parse_args(argv)


def prepare_data(out: Path) -> Path:
    """Step 1: tokenize the default corpus into out/data; return that folder."""
    from data_prep import default_corpus, prepare

    corpus = default_corpus()
    data_dir = out / "data"
    print(f"[1] preparing the default corpus ({', '.join(str(p) for p in corpus[:2])}"
          f"{' ...' if len(corpus) > 2 else ''}) into {data_dir}")
    prepare([str(p) for p in corpus], data_dir)
    return data_dir


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = prepare_data(args.out)
    print(f"done: shards and manifest.json in {data_dir}")
    return 0


def main(argv: list[str] | None = None) -> None:
    run_cli(lambda: run(argv), PROG)


if __name__ == "__main__":
    main()
