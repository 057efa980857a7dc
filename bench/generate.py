"""Benchmark: tokens per second of gpt-ds generation with the KV cache, against transformers' generate on
the same weights and against gpt-ds generation without a cache, measured in one run on this machine.

    python bench/generate.py [--preset small] [--new-tokens 256] [--prompt-tokens 16 128] [--repeats 2] [--threads N]

All three decode greedily with no stop token, so they do the same work (and must produce the same
tokens, which is checked). Each is warmed up with a short run, then timed `--repeats` times; the best time counts,
the one least disturbed by other processes on a shared machine. Needs transformers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.requires import require  # noqa: E402
from gpt_ds.generate import Sampling, generate  # noqa: E402
from gpt_ds.hf import export_hf  # noqa: E402
from gpt_ds.model import GPT, PRESETS, config_from_preset  # noqa: E402
from gpt_ds.model_io import save_model  # noqa: E402


def best_time(fn, repeats: int) -> tuple[float, list[int]]:
    fn(8)  # warm-up (allocator, kernels, lazy imports), short: it is not what is measured
    times, out = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def bench_prompt(ours: GPT, theirs, prompt_tokens: int, n: int, repeats: int) -> bool:
    """Time the three ways for one prompt length; print rates and ratios; True if all tokens agree."""
    prompt = torch.randint(0, ours.config.vocab_size, (1, prompt_tokens))

    def ours_cached(n: int = n) -> list[int]:
        return generate(ours, [prompt[0].tolist()], Sampling(n, temperature=0, stop_token=None))[0]

    def ours_no_cache(n: int = n) -> list[int]:
        return generate(ours, [prompt[0].tolist()], Sampling(n, temperature=0, stop_token=None), use_cache=False)[0]

    def transformers_generate(n: int = n) -> list[int]:
        with torch.inference_mode():
            out = theirs.generate(
                prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None,
            )
        return out[0, prompt_tokens:].tolist()

    print(f"prompt {prompt_tokens} tokens, {n} new tokens:")
    results = {}
    for name, fn in (
        ("gpt-ds (KV cache)", ours_cached),
        ("transformers generate", transformers_generate),
        ("gpt-ds (no cache)", ours_no_cache),
    ):
        seconds, tokens = best_time(fn, repeats)
        results[name] = (n / seconds, tokens)
        print(f"  {name:24s} {n / seconds:9.1f} tokens/s  ({seconds:.3f} s)")
    cached_rate, cached_tokens = results["gpt-ds (KV cache)"]
    same = all(tokens == cached_tokens for _, tokens in results.values())
    print(f"  same tokens from all three: {same}")
    print(f"  ratio cached / transformers: {cached_rate / results['transformers generate'][0]:.2f}x (target >= 1)")
    print(f"  ratio cached / no cache:     {cached_rate / results['gpt-ds (no cache)'][0]:.2f}x (target >= 5)")
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=list(PRESETS))
    parser.add_argument("--new-tokens", type=int, default=256)
    # The cache saves the recomputation of the window, which grows with the prompt, so the speed-up
    # over no cache depends on it: a short and a long prompt are both measured.
    parser.add_argument("--prompt-tokens", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    require("bench/generate.py", {"transformers": "dev"})
    if args.threads:
        # On a machine shared with other jobs, fewer threads than cores avoids threads waiting on
        # descheduled peers, which dominates the many small kernels of one-token decoding.
        torch.set_num_threads(args.threads)
    import transformers

    config = config_from_preset(args.preset)
    if max(args.prompt_tokens) + args.new_tokens > config.block_size:
        print(f"prompt + new tokens must fit the context ({config.block_size}) for transformers", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    ours = GPT(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(save_model(Path(tmp) / "model", ours, config), Path(tmp) / "hf")
        theirs = transformers.GPT2LMHeadModel.from_pretrained(Path(tmp) / "hf").eval()
    print(
        f"preset {args.preset} ({ours.num_params() / 1e6:.1f}M params, {ours.num_params(True) / 1e6:.1f}M "
        f"non-embedding), greedy, fp32, {torch.get_num_threads()} threads, best of {args.repeats}"
    )
    same = [bench_prompt(ours, theirs, length, args.new_tokens, args.repeats) for length in args.prompt_tokens]
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
