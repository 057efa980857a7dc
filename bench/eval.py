"""Benchmark: examples/s of lm-evaluation-harness on a gpt-ds model folder through the gpt-ds backend
(gpt_ds.harness), against lm-eval's own `hf` backend on the `gpt_ds.hf export` of the same weights, same task.

    python bench/eval.py [--preset gpt2 | --model-dir MODEL_DIR] [--examples 20] [--rounds 3] [--batch-size 16]
                         [--device cpu|cuda] [--threads N]

Everything it needs is built in a temporary folder, the same way every time: a prepared data folder from the
Python standard library's sources (data_prep.stdlib_corpus), a multiple-choice file of --examples questions from
its val split (data_prep.make_mc's defaults: 64-token contexts, 4 endings of 16 tokens), a model folder (--preset,
random initialisation seeded; or --model-dir, a trained GPT-2 folder) and its transformers export. Both backends
run one lm-eval task on that file (acc and acc_norm; lm_eval.simple_evaluate, float32, the same batch size,
no stderr bootstrap). Each side is warmed up on one example, then the two alternate (A B A B, --rounds each) so
that a change of machine load hits both alike. The figures are medians: examples/s of the whole evaluation, and of
the backend's loglikelihood alone (lm-eval's own work around it, the same for both, left out). Their ratio is
gpt-ds / hf (the issue's target: at least 1.5x). Every run of both sides must give the same acc and acc_norm;
where they differ it says so and exits 1. Needs lm-eval (the `eval` extra) and its hf backend's transformers and
accelerate (lm-eval[hf], in the `dev` extra).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.requires import require  # noqa: E402
from data_prep import prepare  # noqa: E402
from data_prep.make_mc import DEFAULT_CHOICES, DEFAULT_CTX_TOKENS, DEFAULT_ENDING_TOKENS, MCSettings, make_mc  # noqa: E402
from data_prep.stdlib_corpus import write_python_corpus  # noqa: E402
from gpt_ds.errors import ArgumentParser, UserError, run_cli  # noqa: E402
from gpt_ds.evaluate import mc_task_config  # noqa: E402
from gpt_ds.hf import check_exportable, export_hf, has_gpt2_vocabulary  # noqa: E402
from gpt_ds.model import GPT, PRESETS, config_from_preset  # noqa: E402
from gpt_ds.model_io import read_model_info, save_model  # noqa: E402

PROG = "bench/eval.py"
NEEDS = {"lm_eval": "eval", "transformers": "dev", "accelerate": "dev"}
SIDES = ("gpt-ds", "hf")
METRICS = ("acc", "acc_norm")
TARGET = 1.5  # the speed target, gpt-ds / hf
MAX_EXAMPLES = 10_000  # about HellaSwag's validation set
# The corpus: 8 files of stdlib sources, a quarter of them val (2 of 8 with the default seed), ~2,000 bytes of
# corpus per example (a val split of 2 MB holds ~2,300 usable passages of 64 + 16 tokens: room for twice the
# examples asked for), at least the test suite's stdlib_corpus (384 KB: ~450 examples).
CORPUS_FILES = 8
CORPUS_BYTES_PER_EXAMPLE = 2_000
MIN_CORPUS_BYTES = 8 * 48_000
VAL_FRACTION = 0.25
WARMUP_EXAMPLES = 1
PROGRESS_BAR = re.compile(r"\d+%\|.*\|")
GPT2_PRESETS = [name for name, config in PRESETS.items() if not config.architecture_differences()]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--preset", default="gpt2", choices=GPT2_PRESETS,
                       help="the model: this GPT-2 preset, randomly initialised (seed 0); default gpt2 (124M)")
    model.add_argument("--model-dir", type=Path, default=None, metavar="MODEL_DIR",
                       help="the model: a GPT-2 model folder (e.g. RUN_DIR/model) instead of a preset")
    parser.add_argument("--examples", type=int, default=20,
                        help=f"multiple-choice questions per evaluation, 1 to {MAX_EXAMPLES:,} (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="timed evaluations per side, alternating (default 3)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="continuations per forward, the same for both backends (default 16)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="default cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice); on a machine shared with other jobs, fewer "
                        "threads than cores keeps small kernels from waiting on descheduled peers")
    return parser


def check_args(args: Any) -> None:
    """UserError naming the flag, before any work."""
    for flag, value, low, high in (("--examples", args.examples, 1, MAX_EXAMPLES), ("--rounds", args.rounds, 1, None),
                                   ("--batch-size", args.batch_size, 1, None), ("--threads", args.threads, 1, None)):
        if value is not None and (value < low or (high is not None and value > high)):
            bound = f"from {low} to {high:,}" if high is not None else f"at least {low}"
            raise UserError(f"{flag} must be {bound}, not {value}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available on this machine; use --device cpu")
    if args.model_dir is not None:
        info = read_model_info(args.model_dir)
        check_exportable(info.config, args.model_dir)
        if not has_gpt2_vocabulary(info.config):
            raise UserError(f"{args.model_dir} has a {info.config.vocab_size}-token vocabulary, not GPT-2's: it has "
                            "no tokenizer to read the task with; pass a model trained on GPT-2 tokens")


def build(tmp: Path, args: Any) -> tuple[Path, Path, Path, str]:
    """The mc file, the model folder, its HF export and a line describing the model, all under tmp."""
    corpus = write_python_corpus(tmp / "corpus", max(MIN_CORPUS_BYTES, args.examples * CORPUS_BYTES_PER_EXAMPLE),
                                 CORPUS_FILES)
    prepare([str(corpus)], tmp / "data", val_fraction=VAL_FRACTION, verbose=False)
    mc = tmp / "mc.jsonl"
    make_mc(MCSettings(data=tmp / "data", out=mc, n=args.examples))
    if args.model_dir is not None:
        model_dir, what = args.model_dir, str(args.model_dir)
        config = read_model_info(model_dir).config
    else:
        config = config_from_preset(args.preset)
        torch.manual_seed(0)
        model = GPT(config)
        model_dir, what = save_model(tmp / "model", model, config), f"preset {args.preset}, random init (seed 0)"
        del model
    hf_dir = export_hf(model_dir, tmp / "hf")
    with torch.device("meta"):
        params = GPT(config).num_params()
    return mc, Path(model_dir), hf_dir, f"{what}: {params / 1e6:.1f}M params, context {config.block_size}"


def task_config(mc: Path, cache: Path) -> dict[str, Any]:
    """The lm-eval task launch/eval.py builds for the file (gpt_ds.evaluate.mc_task_config), its datasets
    cache in the bench's own folder."""
    config = mc_task_config("gpt_ds_bench_mc", mc)
    config["dataset_kwargs"]["cache_dir"] = str(cache)
    return config


class Side:
    """One backend: its lm-eval LM, with the time of its last loglikelihood call."""

    def __init__(self, lm: Any) -> None:
        self.lm, self.scoring_s = lm, 0.0
        inner = lm.loglikelihood

        def timed(requests: list, disable_tqdm: bool = False) -> list:
            started = time.perf_counter()
            out = inner(requests, disable_tqdm=True)
            self.scoring_s = time.perf_counter() - started
            return out

        lm.loglikelihood = timed  # the instance's attribute: lm-eval calls getattr(lm, "loglikelihood")

    def evaluate(self, task: dict[str, Any], limit: int, manager: Any) -> tuple[float, float, tuple[float, ...]]:
        """(seconds of the whole evaluation, seconds of loglikelihood, (acc, acc_norm))."""
        import lm_eval

        bars = io.StringIO()  # lm-eval's progress bars, which no argument turns off
        with contextlib.redirect_stderr(bars):
            started = time.perf_counter()
            out = lm_eval.simple_evaluate(model=self.lm, tasks=[task], limit=limit, task_manager=manager,
                                          bootstrap_iters=0, log_samples=False, verbosity="ERROR")
            seconds = time.perf_counter() - started
        sys.stderr.write(without_progress_bars(bars.getvalue()))
        results = out["results"][task["task"]]
        return seconds, self.scoring_s, tuple(results[f"{name},none"] for name in METRICS)


def without_progress_bars(text: str) -> str:
    """`text` less tqdm's bars (lines redrawn with carriage returns, e.g. " 50%|#####     | 4/8 [...]")."""
    lines = (line.rsplit("\r", 1)[-1] for line in text.splitlines())
    return "".join(line + "\n" for line in lines if line.strip() and not PROGRESS_BAR.search(line))


def quiet_libraries() -> None:
    """No progress bars or info lines from transformers, datasets and lm-eval: the bench prints its own."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def run(args: Any) -> int:
    # Everything is local: no library may wait on the Hub (the normal case on clusters, offline).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    import lm_eval.tasks
    from lm_eval.models.huggingface import HFLM

    from gpt_ds.harness import GPTDSLM

    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="gpt-ds-bench-eval-") as name:
        tmp = Path(name)
        mc, model_dir, hf_dir, what = build(tmp, args)
        sides = {
            "gpt-ds": Side(GPTDSLM(path=str(model_dir), device=args.device, dtype="float32",
                                   batch_size=args.batch_size)),
            "hf": Side(HFLM(pretrained=str(hf_dir), device=args.device, dtype="float32",
                            batch_size=args.batch_size)),
        }
        task, manager = task_config(mc, tmp / "datasets_cache"), lm_eval.tasks.TaskManager(include_defaults=False)
        print(f"{PROG}: {what}; task: {args.examples} questions (make_mc: {DEFAULT_CTX_TOKENS}-token contexts, "
              f"{DEFAULT_CHOICES} endings of {DEFAULT_ENDING_TOKENS} tokens), acc and acc_norm; float32, "
              f"{args.device}, {torch.get_num_threads()} thread(s), batch size {args.batch_size}; "
              f"{args.rounds} round(s) per side, alternating", flush=True)
        for side in sides.values():  # warm-up: the task's dataset cache, lazy imports, first kernels
            side.evaluate(task, WARMUP_EXAMPLES, manager)
        whole: dict[str, list[float]] = {name: [] for name in SIDES}
        scoring: dict[str, list[float]] = {name: [] for name in SIDES}
        scores: dict[str, list[tuple[float, ...]]] = {name: [] for name in SIDES}
        for i in range(args.rounds):
            line = []
            for name in SIDES:
                seconds, scoring_s, metrics = sides[name].evaluate(task, args.examples, manager)
                whole[name].append(seconds)
                scoring[name].append(scoring_s)
                scores[name].append(metrics)
                line.append(f"{name} {seconds:7.2f} s ({scoring_s:7.2f} s scoring)")
            print(f"round {i + 1}: " + "   ".join(line), flush=True)
    return report(args.examples, whole, scoring, scores)


def report(examples: int, whole: dict[str, list[float]], scoring: dict[str, list[float]],
           scores: dict[str, list[tuple[float, ...]]]) -> int:
    """Print the medians, the ratio and the scores; 0 if every run of both sides scored the same, else 1."""
    rate = {name: examples / statistics.median(whole[name]) for name in SIDES}
    scoring_rate = {name: examples / statistics.median(scoring[name]) for name in SIDES}
    for name in SIDES:
        print(f"{name:7s} median {rate[name]:8.2f} examples/s  (loglikelihood alone {scoring_rate[name]:8.2f} "
              f"examples/s)")
    print(f"gpt-ds / hf examples/s: {rate['gpt-ds'] / rate['hf']:.2f}x (loglikelihood alone "
          f"{scoring_rate['gpt-ds'] / scoring_rate['hf']:.2f}x; target >= {TARGET}x)")
    runs = {metrics for name in SIDES for metrics in scores[name]}
    described = ", ".join(f"{name} {' '.join(f'{m} {v:.4f}' for m, v in zip(METRICS, scores[name][0]))}"
                          for name in SIDES)
    if len(runs) == 1:
        print(f"scores identical: {described}")
        return 0
    print(f"scores differ ({', '.join(METRICS)} of each round): {'; '.join(f'{name}: {scores[name]}' for name in SIDES)}")
    return 1


def main(argv: list[str] | None = None) -> None:
    def cli() -> int:
        args = build_parser().parse_args(argv)
        require(PROG, NEEDS)
        check_args(args)
        return run(args)

    run_cli(cli, PROG)


if __name__ == "__main__":
    main()
