"""The quickstart: the whole path, on the embedded default corpus, offline, in minutes on a laptop
CPU. `python launch/quickstart.py [--out DIR]` (console script gpt-ds-quickstart).

1. prepares `data_prep.default_corpus()` (Shakespeare from ../shared when present, else the Python
   standard library's sources) into DIR/data, a tenth of its documents in val (rerunning reports the data
   as up to date), and builds the offline benchmark from that val split into DIR/mc.jsonl
   (data_prep.make_mc: which of 4 endings really continues a passage);
2. trains the `tiny` preset with the fastest recipe (`--recipe modern`: rotary positions, QK-norm,
   ReLU², untied head, softcap, wsd schedule, Muon through ds_configs/zero2_muon.json) with the
   `deepspeed` launcher on 2 ranks (CPU: gloo; GPUs where present), ZeRO-2 bf16, about 3 minutes on
   2 cores, until the validation loss reaches the corpus's target, into DIR/run (rerunning resumes,
   or finds the run done), scoring the benchmark at every evaluation (--eval-tasks);
3. the run consolidates its ZeRO-2 checkpoint into DIR/run/model (gpt_ds.export); the quickstart prints
   its final val loss and benchmark score beside chance;
4. prints a sample of the model, continuing a prompt in the corpus's form;
5. prints how to open TensorBoard, sample from the model and open the app.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.make_mc import MCSettings, make_mc  # noqa: E402
from gpt_ds.errors import UserError, run_cli  # noqa: E402
from gpt_ds.record import RunRecord  # noqa: E402
from gpt_ds.run_dir import RunDir  # noqa: E402

PROG = "launch/quickstart.py"
DEFAULT_OUT = Path("runs") / "quickstart"
REPO = Path(__file__).resolve().parents[1]
# The fastest recipe (bench/convergence.py): the modern architecture with Muon, the tiny preset, 2 CPU
# ranks of 8 x 128 tokens. DEFAULT_MAX_STEPS is about 3 minutes of training on 2 cores, and each corpus's
# target is the validation loss that run reaches at its end (its schedule decays over the last 20%).
DEFAULT_MAX_STEPS = 240
TARGETS = {"shakespeare": 5.15, "python": 3.15}  # the val loss the quickstart run reaches on each (docs/performance.md)
# A tenth of the documents in val: tens of thousands of tokens on either corpus (Shakespeare 3 of 77 files,
# 124k tokens; Python 3.11's standard library 9 of 151 files, 66k tokens), where the default 0.005 leaves one.
VAL_FRACTION = 0.1
# In --out: the file eval_tasks/gpt_ds_mc.yaml reads from runs/quickstart; its stem names the TensorBoard tags
# (eval/mc/acc_norm) and the summary line's figures.
BENCHMARK = "mc.jsonl"
BENCHMARK_EXAMPLES = 300  # a few seconds per evaluation for tiny on 2 CPU cores
# Endings of 8 tokens, not make_mc's 16: the quickstart model tells them apart better on both corpora
# (docs/performance.md); the contexts keep make_mc's default length.
BENCHMARK_ENDING_TOKENS = 8
PROMPTS = {"shakespeare": "ROMEO:", "python": "def "}  # a speaker and a `def`: the corpora's forms
SAMPLE_TOKENS = 120  # the sample printed at the end
DS_CONFIG = "ds_configs/zero2_muon.json"
TRAIN_FLAGS = ["--recipe", "modern", "--model", "tiny", "--eval-interval", "50", "--eval-tokens", "16384",
               "--save-interval", "100"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"run folder (default {DEFAULT_OUT})")
    parser.add_argument("--ranks", type=int, default=2, help="training processes (default 2)")
    parser.add_argument("--target-loss", type=float, default=None,
                        help="validation loss at which training stops (default: the corpus's, "
                             + ", ".join(f"{k} {v}" for k, v in TARGETS.items()) + ")")
    parser.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS,
                        help=f"the schedule's length and upper bound on the training steps (default {DEFAULT_MAX_STEPS})")
    args = parser.parse_args(argv)
    if args.ranks < 1:
        raise UserError(f"--ranks must be at least 1 (got {args.ranks})")
    return args


def prepare_data(out: Path) -> tuple[Path, str]:
    """Step 1: tokenize the default corpus into out/data; return that folder and the corpus's name
    (shakespeare, or python for the standard library's sources)."""
    from data_prep import default_corpus, prepare

    corpus = default_corpus()
    name = "shakespeare" if corpus[0].name == "shakespeare" else "python"
    data_dir = out / "data"
    print(f"[1] preparing the default corpus ({', '.join(str(p) for p in corpus[:2])}"
          f"{' ...' if len(corpus) > 2 else ''}) into {data_dir}")
    prepare([str(p) for p in corpus], data_dir, val_fraction=VAL_FRACTION)
    return data_dir, name


def build_benchmark(data_dir: Path, out: Path) -> MCSettings:
    """Step 1, its end: the multiple-choice file from data_dir's val split into out/BENCHMARK (rebuilt at every
    run: the same val split gives the same file). Returns its settings."""
    settings = MCSettings(data=data_dir, out=out / BENCHMARK, n=BENCHMARK_EXAMPLES,
                          ending_tokens=BENCHMARK_ENDING_TOKENS, force=True)
    make_mc(settings)
    print(f"    offline benchmark in {settings.out}: {benchmark_name(settings)}, {settings.n} examples of "
          f"{settings.ctx_tokens} tokens of context and {settings.ending_tokens}-token endings from the val split")
    return settings


def benchmark_name(settings: MCSettings) -> str:
    return f"which continuation is real, {settings.choices} choices"


def benchmark_score(record: RunRecord, settings: MCSettings) -> str:
    """The benchmark's final figures beside chance, as the [3] line ends."""
    figures = record.eval_tasks.get(settings.out.stem)
    if figures is None:  # a run finished before the quickstart scored it
        return f"offline benchmark ({benchmark_name(settings)}): not scored by this run"
    return (f"offline benchmark ({benchmark_name(settings)}): acc_norm {figures['acc_norm']:.1%}, "
            f"acc {figures['acc']:.1%} (chance {1 / settings.choices:.0%})")


def train(data_dir: Path, benchmark: Path, run_dir: RunDir, ranks: int, target_loss: float, max_steps: int) -> Path:
    """Steps 2 and 3: the deepspeed launcher runs launch/train.py on `ranks` ranks, scoring `benchmark` at every
    evaluation; the run ends by consolidating its checkpoint into the run's model folder, which is returned."""
    train_args = ["--deepspeed_config", str(REPO / DS_CONFIG), "--data", str(data_dir), "--eval-tasks", str(benchmark),
                  "--out", str(run_dir), "--target-loss", str(target_loss), "--max-steps", str(max_steps), *TRAIN_FLAGS]
    from gpt_ds.distributed import launcher_command
    from gpt_ds.train import parse_args as check_train_args

    check_train_args(train_args, world_size=ranks)  # bad input fails here, before any process starts
    command = launcher_command(ranks, str(REPO / "launch" / "train.py"), train_args)
    print(f"[2] training the tiny preset with the modern recipe (Muon) on {ranks} ranks (ZeRO-2, bf16) to val loss "
          f"{target_loss} in {run_dir}:\n"
          f"    deepspeed --num_gpus {ranks} launch/train.py {' '.join(train_args)}", flush=True)
    code = subprocess.call(command, cwd=REPO)
    if code != 0:
        raise UserError(f"training stopped with exit code {code} (see its output above); "
                        f"rerun the quickstart to resume from the last checkpoint in {run_dir.checkpoints}")
    return run_dir.model


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir, corpus = prepare_data(args.out)
    prompt = PROMPTS[corpus]
    target_loss = args.target_loss if args.target_loss is not None else TARGETS[corpus]
    print(f"    shards and manifest.json in {data_dir}")
    benchmark = build_benchmark(data_dir, args.out)
    run_dir = RunDir(args.out / "run")
    model_dir = train(data_dir, benchmark.out, run_dir, args.ranks, target_loss, args.max_steps)
    from gpt_ds.model_io import read_model_info

    record = RunRecord.from_dict(read_model_info(model_dir).metadata)
    reached = (f"reached val loss {target_loss} at step {record.target_step} ({record.target_tokens:,} tokens, "
               f"{record.target_seconds:.0f}s of training)" if record.target_reached
               else f"did not reach val loss {target_loss} in {record.step} steps (val loss {record.val_loss:.3f})")
    print(f"[3] {reached}; {benchmark_score(record, benchmark)}; consolidated model in {model_dir} "
          f"(python -m gpt_ds.export {run_dir} redoes it)")
    print(f"[4] a sample of the model, continuing {prompt!r}:\n{indent(sample_text(model_dir, prompt))}")
    print("[5] next:\n"
          f"    tensorboard --logdir {run_dir.tb}            # loss curves, lr, tokens/s, MFU, samples\n"
          f"    python launch/sample.py --model {model_dir} --prompt '{prompt}'\n"
          f"    python launch/eval.py {model_dir} --tasks {benchmark.out},{data_dir}   # lm-eval, bits per byte\n"
          f"    streamlit run app/app.py -- --model {model_dir}")
    return 0


def sample_text(model_dir: Path, prompt: str, new_tokens: int = SAMPLE_TOKENS) -> str:
    """The prompt and a seeded continuation of it by the trained model (CPU, float32)."""
    from gpt_ds.generate import Sampling
    from gpt_ds.inference import StreamUpdate, encode_prompt, load_for_inference, stream_continuation

    model, info = load_for_inference(model_dir)
    ids = encode_prompt(prompt, info.tokenizer, info.config.block_size)
    last = StreamUpdate("", 0, 0.0)
    for last in stream_continuation(model, info.tokenizer, ids, Sampling(new_tokens, temperature=0.8, top_k=50, seed=1)):
        pass
    return prompt + last.text


def indent(text: str) -> str:
    return "\n".join("    | " + line for line in text.splitlines())


def main(argv: list[str] | None = None) -> None:
    run_cli(lambda: run(argv), PROG)


if __name__ == "__main__":
    main()
