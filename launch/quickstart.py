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

With --chat (default --out runs/quickstart-chat) the pretraining corpus is the standard library's sources on
every machine, and the path goes on to a chat model:
6. builds the conversation set (data_prep.make_chat: questions on the standard library's functions and the
   language reference) into DIR/chat and prepares it with `--format chat` into DIR/chat/data;
7. fine-tunes the pretrained model on it (`--init-from`, the assistant's tokens alone) into DIR/chat/run;
8. prints a two-turn conversation with it, and how to chat in the terminal and in the app.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.make_chat import ChatSetSettings, make_chat  # noqa: E402
from data_prep.make_mc import MCSettings, make_mc  # noqa: E402
from gpt_ds import ds_config  # noqa: E402
from gpt_ds.errors import UserError, run_cli  # noqa: E402
from gpt_ds.record import RunRecord  # noqa: E402
from gpt_ds.run_dir import RunDir  # noqa: E402

PROG = "launch/quickstart.py"
DEFAULT_OUT = Path("runs") / "quickstart"
DEFAULT_CHAT_OUT = Path("runs") / "quickstart-chat"  # another corpus than the plain quickstart's: another folder
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
# The fine-tune: a global batch of 16 conversations (the config's 8 per rank, 2 ranks), 300 steps (about 1.7
# epochs of the set's 2,850 train conversations, under 4 minutes on 2 cores) at the config's own lr, not the third
# --init-from defaults to: measured on this set, val loss 2.38 against 2.95 (150 steps: 3.18 against 3.60),
# and only then did the replies name the function asked about (docs/performance.md).
DEFAULT_CHAT_STEPS = 300
CHAT_FLAGS = ["--eval-interval", "50", "--eval-tokens", "16384", "--save-interval", "50", "--sample-tokens", "0"]
CHAT_VAL_FRACTION = 0.05
TRANSCRIPT = ("What does `textwrap.dedent` do?", "And its signature?")  # the two turns printed at the end
CHAT_REPLY_TOKENS = 60


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help=f"run folder (default {DEFAULT_OUT}; with --chat {DEFAULT_CHAT_OUT})")
    parser.add_argument("--chat", action="store_true",
                        help="pretrain on the standard library's sources, then fine-tune on conversations and chat")
    parser.add_argument("--chat-steps", type=int, default=DEFAULT_CHAT_STEPS,
                        help=f"with --chat: the fine-tune's steps (default {DEFAULT_CHAT_STEPS})")
    parser.add_argument("--ranks", type=int, default=2, help="training processes (default 2)")
    parser.add_argument("--target-loss", type=float, default=None,
                        help="validation loss at which training stops (default: the corpus's, "
                             + ", ".join(f"{k} {v}" for k, v in TARGETS.items()) + ")")
    parser.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS,
                        help=f"the schedule's length and upper bound on the training steps (default {DEFAULT_MAX_STEPS})")
    args = parser.parse_args(argv)
    if args.ranks < 1:
        raise UserError(f"--ranks must be at least 1 (got {args.ranks})")
    if args.chat_steps < 1:
        raise UserError(f"--chat-steps must be at least 1 (got {args.chat_steps})")
    if args.out is None:
        args.out = DEFAULT_CHAT_OUT if args.chat else DEFAULT_OUT
    return args


def prepare_data(out: Path, chat: bool) -> tuple[Path, str]:
    """Step 1: tokenize the default corpus (with `chat`, the standard library's sources) into out/data; return
    that folder and the corpus's name (shakespeare, or python for the standard library's sources)."""
    from data_prep import default_corpus, prepare
    from data_prep.inputs import stdlib_sources

    corpus = stdlib_sources() if chat else default_corpus()
    name = "shakespeare" if corpus[0].name == "shakespeare" else "python"
    data_dir = out / "data"
    print(f"[1] preparing the {'standard library' if chat else 'default'} corpus ({', '.join(str(p) for p in corpus[:2])}"
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
    print(f"[2] training the tiny preset with the modern recipe (Muon) on {ranks} ranks (ZeRO-2, bf16) to val loss "
          f"{target_loss} in {run_dir}:")
    return launch_training(train_args, run_dir, ranks)


def launch_training(train_args: list[str], run_dir: RunDir, ranks: int) -> Path:
    """launch/train.py on `ranks` ranks through the deepspeed launcher, its command printed first; the model folder
    its export wrote."""
    from gpt_ds.distributed import launcher_command
    from gpt_ds.train import parse_args as check_train_args

    check_train_args(train_args, world_size=ranks)  # bad input fails here, before any process starts
    command = launcher_command(ranks, str(REPO / "launch" / "train.py"), train_args)
    print(f"    deepspeed --num_gpus {ranks} launch/train.py {' '.join(train_args)}", flush=True)
    code = subprocess.call(command, cwd=REPO)
    if code != 0:
        raise UserError(f"training stopped with exit code {code} (see its output above); "
                        f"rerun the quickstart to resume from the last checkpoint in {run_dir.checkpoints}")
    return run_dir.model


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir, corpus = prepare_data(args.out, args.chat)
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
    if args.chat:
        fine_tune_chat(args.out, model_dir, args.ranks, args.chat_steps)
    return 0


def fine_tune_chat(out: Path, base: Path, ranks: int, steps: int) -> Path:
    """Steps 6-8: the conversation set, the fine-tune from `base` on it, a two-turn transcript and what next."""
    from data_prep import prepare

    chat_dir = out / "chat"
    files = [chat_dir / "train.jsonl", chat_dir / "val.jsonl"]
    if not all(path.is_file() for path in files):  # kept on a rerun: the preparation below is then up to date
        make_chat(ChatSetSettings(out=chat_dir, force=True))
    data_dir = chat_dir / "data"
    count = sum(len(path.read_text(encoding="utf-8").splitlines()) for path in files)
    print(f"[6] {count:,} conversations from the standard library's docs in {chat_dir}, "
          f"prepared with --format chat into {data_dir}")
    prepare([str(path) for path in files], data_dir, format="chat",
            val_fraction=CHAT_VAL_FRACTION, verbose=False)
    run_dir = RunDir(chat_dir / "run")
    print(f"[7] fine-tuning {base} on them ({steps} steps, the assistant's tokens alone) in {run_dir}:")
    lr = ds_config.resolve(ds_config.load(REPO / DS_CONFIG), REPO / DS_CONFIG, ranks).lr  # the config's own, in full
    model_dir = launch_training(["--deepspeed_config", str(REPO / DS_CONFIG), "--data", str(data_dir), "--out",
                                 str(run_dir), "--init-from", str(base), "--max-steps", str(steps), "--lr", str(lr),
                                 *CHAT_FLAGS], run_dir, ranks)
    print(f"[8] a conversation with {model_dir} (greedy):\n{indent(transcript(model_dir))}")
    print("    next:\n"
          f"    python launch/sample.py --model {model_dir} --chat\n"
          f"    streamlit run app/app.py -- --model {model_dir}        # the chat page")
    return model_dir


def transcript(model_dir: Path) -> str:
    """TRANSCRIPT's two turns and the model's greedy replies, the second written with the first exchange in view."""
    from gpt_ds import chat
    from gpt_ds.generate import Sampling
    from gpt_ds.inference import load_for_inference

    model, info = load_for_inference(model_dir)
    sampling = Sampling(CHAT_REPLY_TOKENS, temperature=0)
    messages: list[dict] = []
    lines = []
    for question in TRANSCRIPT:
        messages.append({"role": "user", "content": question})
        prompt = chat.fit_prompt(messages, info.tokenizer, info.config.block_size,
                                 chat.reply_budget(info.config.block_size, CHAT_REPLY_TOKENS))
        reply = [update.text for update in chat.stream_reply(model, info, prompt, sampling)][-1]
        messages.append({"role": "assistant", "content": reply})
        lines += [f"you: {question}", f"assistant: {reply.strip()}"]
    return "\n".join(lines)


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
