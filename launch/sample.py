"""Sample text from a trained model folder: prints the prompt followed by its continuation.

    python launch/sample.py --model RUN_DIR/model --prompt "ROMEO:" --max-new-tokens 100 --num-samples 3

Tokens are printed as they are generated. With several samples each one starts with a header line
`===== sample i/N =====`; with --seed S, sample i uses seed S+i, so each sample is reproducible on its own.
Informational lines (what was loaded) go to stderr, so stdout holds only the text.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

import torch

from gpt_ds.errors import UserError, run_cli
from gpt_ds.generate import check_sampling, detokenize_stream, stream
from gpt_ds.model_io import DTYPES, load_model, parse_dtype
from gpt_ds.tokenizer import get_encoding

PROG = "gpt-ds-sample"
EOT_TEXT = "<|endoftext|>"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Continue a prompt with a trained gpt-ds model.")
    parser.add_argument("--model", required=True, help="model folder (model.safetensors + config.json), e.g. RUN_DIR/model")
    parser.add_argument("--prompt", default="", help=f"text to continue (default: empty = start after {EOT_TEXT})")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate per sample (default 200)")
    parser.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy (default 0.8)")
    parser.add_argument("--top-k", type=int, default=200, help="sample among the K most likely tokens (default 200; 0 = no limit)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with probability >= P")
    parser.add_argument("--seed", type=int, default=None, help="random seed (sample i uses seed+i)")
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    parser.add_argument("--num-samples", type=int, default=1, help="number of samples (default 1)")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="default float32 on cpu, bfloat16 on cuda")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    return parser


def resolve_device_dtype(device: str, dtype: str | None) -> torch.dtype:
    """The dtype to run in on `device`; UserError for a combination that cannot run here."""
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available on this machine; use --device cpu")
    if dtype is None:
        return torch.float32 if device == "cpu" else torch.bfloat16
    if device == "cpu" and dtype == "float16":
        raise UserError("--dtype float16 is not supported on the CPU; use bfloat16 or float32 (or --device cuda)")
    return parse_dtype(dtype)


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")
    top_k = args.top_k or None  # 0 means no limit
    check_sampling(args.max_new_tokens, args.temperature, top_k, args.top_p)
    dtype = resolve_device_dtype(args.device, args.dtype)

    model, info = load_model(args.model, device=args.device, dtype=dtype)
    encoding = get_encoding(info.tokenizer)
    # A typed <|endoftext|> is the document separator the model was trained on, not literal text.
    prompt = encoding.encode(args.prompt, allowed_special={EOT_TEXT}) or [encoding.eot_token]
    print(
        f"{PROG}: {args.model}: {info.config.n_layer} layers, {model.num_params() / 1e6:.2f}M parameters, "
        f"{args.device} {str(dtype).removeprefix('torch.')}",
        file=sys.stderr,
    )
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"===== sample {i + 1}/{args.num_samples} =====")
        print(args.prompt, end="", flush=True)
        tokens = stream(
            model,
            prompt,
            args.max_new_tokens,
            temperature=args.temperature,
            top_k=top_k,
            top_p=args.top_p,
            seed=None if args.seed is None else args.seed + i,
            greedy=args.greedy,
            stop_token=encoding.eot_token,
        )
        for piece in detokenize_stream(encoding, tokens):
            print(piece, end="", flush=True)
        print()
    return 0


def main(argv: list[str] | None = None) -> NoReturn:
    run_cli(lambda: run(argv), PROG)


if __name__ == "__main__":
    main()
