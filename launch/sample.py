"""Sample text from a trained model folder: prints the prompt followed by its continuation.

    python launch/sample.py --model RUN_DIR/model --prompt "ROMEO:" --max-new-tokens 100 --num-samples 3

Tokens are printed as they are generated. With several samples each one starts with a header line
`===== sample i/N =====`; with --seed S, sample i uses seed S+i, so each sample is reproducible on its own.
Informational lines (what was loaded) go to stderr, so stdout holds only the text.

A chat model (fine-tuned on a chat folder) talks with --chat:

    python launch/sample.py --model RUN_DIR/model --chat                   # interactive: /clear, /quit, Ctrl-C
    python launch/sample.py --model RUN_DIR/model --chat --prompt "Hi"     # one reply, for scripts

Interactively each line is a message; the reply streams after `assistant: `. Ctrl-C stops a reply and keeps
the conversation; /clear starts a new one; /quit or the end of input ends. When the conversation outgrows the
context, the oldest exchanges drop, with a note on stderr.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import NoReturn

from gpt_ds import chat
from gpt_ds.errors import UserError, run_cli
from gpt_ds.generate import Sampling, detokenize_stream, stream
from gpt_ds.inference import inference_device, load_for_inference
from gpt_ds.model import GPT
from gpt_ds.model_io import DTYPES, ModelInfo
from gpt_ds.tokenizer import EOT_TEXT, get_encoding

PROG = "gpt-ds-sample"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Continue a prompt with a trained gpt-ds model.")
    parser.add_argument("--model", required=True, help="model folder (model.safetensors + config.json), e.g. RUN_DIR/model")
    parser.add_argument("--prompt", default="", help=f"text to continue (default: empty = start after {EOT_TEXT})")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate per sample (default 200)")
    parser.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy (default 0.8)")
    parser.add_argument("--top-k", type=int, default=200, help="sample among the K most likely tokens (default 200; 0 = no limit)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with probability >= P")
    parser.add_argument("--seed", type=int, default=None, help="random seed (sample i uses seed+i)")
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token (= --temperature 0)")
    parser.add_argument("--num-samples", type=int, default=1, help="number of samples (default 1)")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="default bfloat16 on a GPU that supports it, else float32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default cuda when available, else cpu")
    parser.add_argument("--chat", action="store_true", help="talk to a chat model: interactive, or one reply to --prompt")
    parser.add_argument("--system", default=None, help="with --chat: a system message that opens the conversation")
    return parser


def sampling_from_args(args: argparse.Namespace) -> Sampling:
    """The Sampling the flags ask for (UserError when one is out of range): --greedy is temperature 0,
    --top-k 0 is no limit."""
    return Sampling(
        args.max_new_tokens,
        temperature=0.0 if args.greedy else args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        seed=args.seed,
    )


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")
    sampling = sampling_from_args(args)
    device, dtype = inference_device(args.device, args.dtype)

    if args.system is not None and not args.chat:
        raise UserError("--system needs --chat")
    if args.chat and args.num_samples != 1:
        raise UserError("--chat answers once per message: drop --num-samples")
    model, info = load_for_inference(args.model, device, dtype)
    if args.chat:
        chat.require_chat_model(info, "drop --chat to continue text, or fine-tune it on conversations first")
        return talk(model, info, sampling, args)
    encoding = get_encoding(info.tokenizer)
    # A typed <|endoftext|> is the document separator the model was trained on, not literal text.
    prompt = encoding.encode(args.prompt, allowed_special={EOT_TEXT}) or [encoding.eot_token]
    print(
        f"{PROG}: {args.model}: {info.config.n_layer} layers, {model.num_params() / 1e6:.2f}M parameters, "
        f"{device} {str(dtype).removeprefix('torch.')}",
        file=sys.stderr,
    )
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"===== sample {i + 1}/{args.num_samples} =====")
        print(args.prompt, end="", flush=True)
        seed = None if args.seed is None else args.seed + i
        tokens = stream(model, prompt, replace(sampling, seed=seed, stop_token=encoding.eot_token))
        for piece in detokenize_stream(encoding, tokens):
            print(piece, end="", flush=True)
        print()
    return 0


def talk(model: GPT, info: ModelInfo, sampling: Sampling, args: argparse.Namespace) -> int:
    """--chat: one reply to --prompt, or a conversation read line by line from stdin."""
    opening = [{"role": "system", "content": args.system}] if args.system else []
    reserve = chat.reply_budget(info.config.block_size, sampling.max_new_tokens)

    def fit(messages: list[dict]) -> chat.ChatPrompt:
        return chat.fit_prompt(messages, info.tokenizer, info.config.block_size, reserve)

    def reply(prompt: chat.ChatPrompt) -> str:
        if prompt.dropped:
            print(f"({chat.dropped_note(prompt.dropped, info.config.block_size)})", file=sys.stderr)
        text = ""
        try:
            for update in chat.stream_reply(model, info, prompt, sampling):
                print(update.text[len(text):], end="", flush=True)
                text = update.text
        except KeyboardInterrupt:  # stops this reply; the conversation goes on
            print(" [stopped]", end="", file=sys.stderr, flush=True)
        print(flush=True)
        return text

    if args.prompt:
        reply(fit(opening + [{"role": "user", "content": args.prompt}]))
        return 0
    print(f"{PROG}: chat with {args.model}: a line is a message; /clear starts over, /quit ends", file=sys.stderr)
    messages = list(opening)
    while True:
        try:
            line = input("you: " if sys.stdin.isatty() else "")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if line.strip() == "/quit":
            return 0
        if line.strip() == "/clear":
            messages = list(opening)
            print("(a new conversation)", file=sys.stderr)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        try:
            prompt = fit(messages)
        except UserError as err:  # this message alone is too long: say so, and the conversation goes on without it
            print(f"{PROG}: {err}", file=sys.stderr)
            messages.pop()
            continue
        print("assistant: ", end="", flush=True)
        messages.append({"role": "assistant", "content": reply(prompt)})


def main(argv: list[str] | None = None) -> NoReturn:
    run_cli(lambda: run(argv), PROG)


if __name__ == "__main__":
    main()
