"""Evaluate a model folder: lm-evaluation-harness tasks through the gpt-ds backend, and bits per byte.

    python launch/eval.py RUN_DIR/model --tasks hellaswag,arc_easy --limit 500
    python launch/eval.py RUN_DIR/model --tasks runs/quickstart/mc.jsonl,runs/quickstart/data

--tasks takes lm-eval task or group names, task YAML files, multiple-choice jsonl files (data_prep.make_mc's),
text files and prepared data folders (bits per byte of the text, of the folder's val split); --include-path
adds folders of task YAMLs. lm-eval's table is printed; each task's results go to MODEL_DIR/evals/<task>.json,
which the app's model card shows. Needs the `eval` extra (pip install -e ".[eval]").
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_ds.errors import ArgumentParser, UserError, run_cli  # noqa: E402
from gpt_ds.model_io import DTYPES  # noqa: E402

PROG = "launch/eval.py"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model folder (model.safetensors + config.json), e.g. RUN_DIR/model")
    parser.add_argument("--tasks", required=True,
                        help="comma-separated: lm-eval task names, task YAML files, multiple-choice jsonl files, "
                             "text files or data folders (bits per byte)")
    parser.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples per question (default: the task's)")
    parser.add_argument("--limit", type=float, default=None,
                        help="examples per task (windows of text for bits per byte): a count, or a fraction below 1 (default: all)")
    parser.add_argument("--batch-size", type=int, default=16, help="continuations per forward (default 16)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default cuda when available, else cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="default bfloat16 on a GPU that supports it, else float32")
    parser.add_argument("--include-path", action="append", default=[], metavar="DIR",
                        help="a folder of lm-eval task YAMLs to add (repeatable), as lm-eval's --include_path")
    return parser


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise UserError(f"--num-fewshot must be 0 or more, got {args.num_fewshot}")
    if args.limit is not None and not (math.isfinite(args.limit) and args.limit > 0):
        raise UserError(f"--limit must be above 0 (a count, or a fraction below 1), got {args.limit:g}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    for folder in args.include_path:
        if not Path(folder).is_dir():
            raise UserError(f"--include-path {folder}: no such folder; give a folder of lm-eval task YAMLs")
    from gpt_ds.evaluate import evaluate, parse_tasks, require_lm_eval
    from gpt_ds.model_io import read_model_info

    read_model_info(args.model)  # a bad folder fails here, before lm-eval indexes its tasks
    specs = parse_tasks(args.tasks)
    require_lm_eval()
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    results, written = evaluate(args.model, specs, num_fewshot=args.num_fewshot, limit=limit,
                                batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                                include_path=args.include_path)
    if results is not None:
        from lm_eval.utils import make_table

        print(make_table(results))
        if results.get("groups"):
            print(make_table(results, "groups"))
    print(f"results: {', '.join(str(path) for path in written)}")
    return 0


def main(argv: list[str] | None = None) -> None:
    run_cli(lambda: run(argv), PROG)


if __name__ == "__main__":
    main()
