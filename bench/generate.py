"""Benchmark: tokens per second of gpt-ds generation with the KV cache, against transformers' generate on
the same weights and against gpt-ds generation without a cache, and the time to the first token of a long
prompt (a conversation's), against transformers: all measured in one run on this machine.

    python bench/generate.py [--preset small] [--new-tokens 256] [--prompt-tokens 16 128] [--repeats 3]
                             [--first-token-prompt 1000] [--threads N] [--skip-no-cache] [--aten-baseline]

All decode greedily with no stop token, so they do the same work (and must produce the same tokens, which is
checked). Each is warmed up with a short run; then the contenders run in alternating rounds (A B C A B C ...,
`--repeats` rounds) and the median of each counts, so a drift in the machine's speed lands on all of them.
Needs transformers.
"""

from __future__ import annotations

import argparse
import statistics
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
from gpt_ds.linear import aten_only  # noqa: E402
from gpt_ds.model import GPT, PRESETS, config_from_preset  # noqa: E402
from gpt_ds.model_io import save_model  # noqa: E402


def alternating_medians(contenders: dict, repeats: int) -> dict[str, tuple[float, list[int]]]:
    """{name: (median seconds, tokens)}: each contender warmed up once (8 tokens), then timed in `repeats`
    alternating rounds."""
    for fn in contenders.values():
        fn(8)  # warm-up (allocator, kernels, lazy imports), short: it is not what is measured
    times: dict[str, list[float]] = {name: [] for name in contenders}
    out: dict[str, list[int]] = {}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            out[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), out[name]) for name in contenders}


def contenders(ours: GPT, theirs, prompt: torch.Tensor, n: int, no_cache: bool, aten: bool = False) -> dict:
    """The generators, each `fn(count=n) -> new tokens` for `prompt` (1, T)."""
    length = prompt.shape[1]

    def ours_cached(count: int = n) -> list[int]:
        return generate(ours, [prompt[0].tolist()], Sampling(count, temperature=0, stop_token=None))[0]

    def ours_no_cache(count: int = n) -> list[int]:
        return generate(ours, [prompt[0].tolist()], Sampling(count, temperature=0, stop_token=None), use_cache=False)[0]

    def ours_aten(count: int = n) -> list[int]:
        with aten_only():
            return ours_cached(count)

    def transformers_generate(count: int = n) -> list[int]:
        with torch.inference_mode():
            out = theirs.generate(
                prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=count, min_new_tokens=count,
                do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None,
            )
        return out[0, length:].tolist()

    found = {"gpt-ds (KV cache)": ours_cached, "transformers generate": transformers_generate}
    if aten:
        found["gpt-ds (F.linear)"] = ours_aten
    if no_cache:
        found["gpt-ds (no cache)"] = ours_no_cache
    return found


def bench_prompt(ours: GPT, theirs, prompt_tokens: int, n: int, repeats: int, no_cache: bool, aten: bool) -> bool:
    """Time the generators for one prompt length; print rates and ratios; True if all tokens agree."""
    prompt = torch.randint(0, ours.config.vocab_size, (1, prompt_tokens))
    print(f"prompt {prompt_tokens} tokens, {n} new tokens:")
    results = alternating_medians(contenders(ours, theirs, prompt, n, no_cache, aten), repeats)
    for name, (seconds, _) in results.items():
        print(f"  {name:24s} {n / seconds:9.1f} tokens/s  ({seconds:.3f} s)")
    cached_s, cached_tokens = results["gpt-ds (KV cache)"]
    same = all(tokens == cached_tokens for _, tokens in results.values())
    print(f"  same tokens from all: {same}")
    print(f"  ratio cached / transformers: {results['transformers generate'][0] / cached_s:.2f}x (target >= 1.2)")
    if aten:
        print(f"  ratio cached / F.linear:     {results['gpt-ds (F.linear)'][0] / cached_s:.2f}x")
    if no_cache:
        print(f"  ratio cached / no cache:     {results['gpt-ds (no cache)'][0] / cached_s:.2f}x (target >= 5)")
    return same


def bench_first_token(ours: GPT, theirs, prompt_tokens: int, repeats: int, aten: bool) -> bool:
    """Time to the first new token of a `prompt_tokens`-long prompt (the prompt's pass and one choice): a long
    conversation's wait before its reply starts."""
    prompt = torch.randint(0, ours.config.vocab_size, (1, prompt_tokens))
    first = {name: (lambda count=1, fn=fn: fn(1)) for name, fn in contenders(ours, theirs, prompt, 1, False, aten).items()}
    results = alternating_medians(first, repeats)
    print(f"time to first token, prompt {prompt_tokens} tokens:")
    for name, (seconds, _) in results.items():
        print(f"  {name:24s} {seconds * 1000:9.1f} ms")
    ours_s, tokens = results["gpt-ds (KV cache)"]
    print(f"  ratio transformers / gpt-ds: {results['transformers generate'][0] / ours_s:.2f}x")
    return all(t == tokens for _, t in results.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=list(PRESETS))
    parser.add_argument("--new-tokens", type=int, default=256)
    # The cache saves the recomputation of the window, which grows with the prompt, so the speed-up
    # over no cache depends on it: a short and a long prompt are both measured.
    parser.add_argument("--prompt-tokens", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds; the median counts (default 3)")
    parser.add_argument("--first-token-prompt", type=int, default=1000, metavar="T",
                        help="prompt length for the time to first token (default 1000; 0: skip)")
    parser.add_argument("--skip-no-cache", action="store_true", help="leave out gpt-ds without a cache (slow at gpt2)")
    parser.add_argument("--aten-baseline", action="store_true",
                        help="also gpt-ds with torch's own F.linear for every product (gpt_ds.linear.aten_only)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    require("bench/generate.py", {"transformers": "dev"})
    if args.threads:
        # On a machine shared with other jobs, fewer threads than cores avoids threads waiting on
        # descheduled peers, which dominates the many small kernels of one-token decoding.
        torch.set_num_threads(args.threads)
    import transformers

    config = config_from_preset(args.preset)
    if max(args.prompt_tokens) + args.new_tokens > config.block_size or args.first_token_prompt >= config.block_size:
        print(f"prompt + new tokens, and --first-token-prompt, must fit the context ({config.block_size}) for "
              "transformers", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    ours = GPT(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(save_model(Path(tmp) / "model", ours, config), Path(tmp) / "hf")
        theirs = transformers.GPT2LMHeadModel.from_pretrained(Path(tmp) / "hf").eval()
    print(
        f"preset {args.preset} ({ours.num_params() / 1e6:.1f}M params, {ours.num_params(True) / 1e6:.1f}M "
        f"non-embedding), greedy, fp32, {torch.get_num_threads()} threads, median of {args.repeats} alternating rounds"
    )
    same = [bench_prompt(ours, theirs, length, args.new_tokens, args.repeats, not args.skip_no_cache, args.aten_baseline)
            for length in args.prompt_tokens]
    if args.first_token_prompt:
        same.append(bench_first_token(ours, theirs, args.first_token_prompt, args.repeats, args.aten_baseline))
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
